//! The refresher's configuration: TOML file → validated [`Config`].
//!
//! Everything that can be wrong with a config is found here, at start-up, and
//! reported as one [`ConfigError`] naming the field (and the file position
//! where the TOML parser gives one). Secrets are resolved here, from
//! environment variables or files, into [`SecretString`]s that never print.
//! This module must not do network I/O.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wxtoken_schema::validate_name;

mod suite;
pub use suite::WecomSuite;

/// Environment variable that overrides `redis.url`.
pub const ENV_REDIS_URL: &str = "WXTOKEN_REDIS_URL";
/// Environment variables that override `redis.tls_ca_file`,
/// `redis.tls_cert_file` and `redis.tls_key_file` (an empty value removes
/// the file).
pub const ENV_REDIS_TLS_CA_FILE: &str = "WXTOKEN_REDIS_TLS_CA_FILE";
/// See [`ENV_REDIS_TLS_CA_FILE`].
pub const ENV_REDIS_TLS_CERT_FILE: &str = "WXTOKEN_REDIS_TLS_CERT_FILE";
/// See [`ENV_REDIS_TLS_CA_FILE`].
pub const ENV_REDIS_TLS_KEY_FILE: &str = "WXTOKEN_REDIS_TLS_KEY_FILE";
/// Environment variable that names the config file (read by the binary).
pub const ENV_CONFIG: &str = "WXTOKEN_CONFIG";

/// A config that cannot be used. Messages name the file, the field and what
/// is wrong; they never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error, or an unknown key.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file (or `<string>`).
        path: String,
        /// Dotted field path, e.g. `credential[2].secret_env`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// How access tokens are fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `GET /cgi-bin/token`: every fetch invalidates the previous token
    /// after WeChat's overlap (5 minutes).
    #[default]
    Classic,
    /// `POST /cgi-bin/stable_token` in normal mode: returns the current token
    /// while it has time left; isolated from classic tokens.
    Stable,
}

impl Mode {
    /// `classic` or `stable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Classic => "classic",
            Mode::Stable => "stable",
        }
    }
}

/// Whose API a `[[credential]]` is refreshed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// WeChat (Official Accounts, Mini Programs): `appid`, `mode`.
    #[default]
    Wechat,
    /// WeCom (企业微信) apps: `corpid`, `agentid`; `gettoken` hands back the
    /// same token until it expires.
    Wecom,
}

/// A JS-SDK ticket to keep alongside the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ticket {
    /// `jsapi_ticket` (WeChat's; for WeCom the corp ticket from
    /// `get_jsapi_ticket`, for `wx.config`).
    Jsapi,
    /// `wx_card` api_ticket (WeChat only).
    WxCard,
    /// A WeCom app's `agent_config` ticket, for `wx.agentConfig` (WeCom only).
    AgentConfig,
}

impl Ticket {
    /// The stored kind.
    pub fn kind(self) -> wxtoken_schema::Kind {
        match self {
            Ticket::Jsapi => wxtoken_schema::Kind::JsapiTicket,
            Ticket::WxCard => wxtoken_schema::Kind::WxCardTicket,
            Ticket::AgentConfig => wxtoken_schema::Kind::AgentConfigTicket,
        }
    }

    /// The `type` parameter of `/cgi-bin/ticket/getticket` (WeChat) or
    /// `/cgi-bin/ticket/get` (WeCom's `agent_config`).
    pub fn wechat_type(self) -> &'static str {
        match self {
            Ticket::Jsapi => "jsapi",
            Ticket::WxCard => "wx_card",
            Ticket::AgentConfig => "agent_config",
        }
    }

    /// How it is written in `tickets`.
    pub fn as_str(self) -> &'static str {
        self.wechat_type()
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis connection and key namespace.
    pub redis: RedisConfig,
    /// WeChat API endpoint and HTTP timeouts.
    pub wechat: WechatConfig,
    /// Refresh timing.
    pub refresh: RefreshConfig,
    /// This replica's id, if set in the file.
    pub replica_id: Option<String>,
    /// Credentials to keep fresh.
    pub credentials: Vec<Credential>,
    /// The HTTP surface (health, metrics, status page, refresh requests);
    /// `None` = off, the default.
    pub http: Option<HttpConfig>,
    /// Third-party platforms (`[[component]]`) whose verify-ticket pushes
    /// this replica receives on its HTTP surface.
    pub components: Vec<Component>,
    /// WeCom third-party suites (`[[wecom_suite]]`) whose callbacks this
    /// replica receives on its HTTP surface.
    pub suites: Vec<WecomSuite>,
    /// Non-fatal findings to log at start-up (e.g. inline secrets).
    pub warnings: Vec<String>,
}

/// `[redis]`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. May hold a password: print
    /// it only through [`redacted_url`].
    pub url: SecretString,
    /// First segment of every key.
    pub namespace: String,
    /// Upper bound for any single Redis operation.
    pub timeout: Duration,
    /// TLS files of a `rediss://` URL (`tls_ca_file`, `tls_cert_file`,
    /// `tls_key_file`), checked at load: readable, well formed, the key the
    /// certificate's.
    pub tls: wxtoken_connect::TlsFiles,
    /// What a replica does at start when Redis could evict wxtoken's keys or
    /// does not persist durable state.
    pub checks: RedisChecks,
}

/// `redis.checks`: what the start-up checks of the Redis settings
/// (`maxmemory-policy`, persistence) do when they find a risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisChecks {
    /// Log a warning and run (the default).
    #[default]
    Warn,
    /// Refuse to start.
    Refuse,
}

/// `[wechat]`, deserialized as written (missing keys from [`Default`]);
/// validation only trims `base_url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatConfig {
    /// API base URL, no trailing slash.
    pub base_url: String,
    /// WeCom's API base URL (`qyapi.weixin.qq.com`), no trailing slash.
    pub wecom_base_url: String,
    /// TCP/TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// WeChat calls one replica makes at once, at most.
    pub max_concurrent_calls: usize,
    /// WeChat calls per second to this host, shared by all replicas of the
    /// namespace; 0 = no limit.
    pub calls_per_second: f64,
    /// Calls that may start at once after a quiet spell.
    pub burst: u32,
    /// WeCom calls per second to its host (`wecom_base_url`; WeCom's own
    /// limits: `gettoken` blocks the IP after 2,000 failures an hour),
    /// shared by all replicas of the namespace; 0 = no limit. Suites have
    /// their own (`[[wecom_suite]]` `calls_per_second`).
    pub wecom_calls_per_second: f64,
    /// Calls to WeCom that may start at once after a quiet spell.
    pub wecom_burst: u32,
}

impl Default for WechatConfig {
    fn default() -> Self {
        WechatConfig {
            base_url: "https://api.weixin.qq.com".into(),
            wecom_base_url: "https://qyapi.weixin.qq.com".into(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_concurrent_calls: 32,
            calls_per_second: 200.0,
            burst: 50,
            wecom_calls_per_second: 50.0,
            wecom_burst: 20,
        }
    }
}

/// `[refresh]`, deserialized as written (missing keys from [`Default`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshConfig {
    /// Refresh when less than this is left…
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// …but never more than this fraction of the token's lifetime.
    pub max_margin_fraction: f64,
    /// Random extra delay spread over replicas and credentials (at most half the margin).
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Lock lease; renewed every third of it while WeChat is being called.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// First retry delay after a transient failure; doubles up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Cap of the transient-failure backoff.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Retry delay after a configuration fault (wrong secret, IP whitelist…).
    #[serde(with = "humantime_serde")]
    pub config_error_retry: Duration,
    /// Pause after WeChat reports the daily quota exhausted (45009).
    #[serde(with = "humantime_serde")]
    pub quota_pause: Duration,
    /// Longest sleep between two looks at Redis, whatever the schedule says.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Minimum time between a refresh and a refresh requested by a report
    /// (passive refresh), so a token that WeChat keeps refusing for another
    /// reason cannot cause a refresh loop.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Minimum time between a refresh and a forced one (operators'
    /// `--force`): each forced refresh costs a WeChat call.
    #[serde(with = "humantime_serde")]
    pub force_min_interval: Duration,
    /// Stable-mode `force_refresh`es per credential and day (WeChat allows
    /// 20), shared by all replicas.
    pub force_refresh_per_day: u32,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            margin: Duration::from_secs(300),
            max_margin_fraction: 0.25,
            jitter: Duration::from_secs(30),
            lock_ttl: Duration::from_secs(30),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            config_error_retry: Duration::from_secs(300),
            quota_pause: Duration::from_secs(600),
            check_interval: Duration::from_secs(30),
            min_interval: Duration::from_secs(60),
            force_min_interval: Duration::from_secs(30),
            force_refresh_per_day: 10,
        }
    }
}

impl RefreshConfig {
    /// The margin for a token living `lifetime`: `margin`, clamped to
    /// `max_margin_fraction` of the lifetime.
    pub fn margin_for(&self, lifetime: Duration) -> Duration {
        self.margin
            .min(lifetime.mul_f64(self.max_margin_fraction.clamp(0.0, 1.0)))
    }
}

/// `[http]`, when `listen` is set.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address the HTTP surface listens on.
    pub listen: SocketAddr,
    /// Bearer token that `POST /refresh/{id}` requires. `None`: refresh
    /// requests over HTTP are refused (only allowed for loopback `listen`).
    pub token: Option<SecretString>,
}

/// One `[[credential]]`.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Operator-chosen id, used in key names.
    pub id: String,
    /// WeChat appid; for WeCom, the corpid (shown as the status hash's
    /// `appid`).
    pub appid: String,
    /// AppSecret (WeCom: the app's `corpsecret`). Never printed.
    pub secret: SecretString,
    /// Token API (WeChat; always `Classic` for WeCom, which has one).
    pub mode: Mode,
    /// Tickets to keep.
    pub tickets: Vec<Ticket>,
    /// Whose API.
    pub platform: Platform,
    /// A WeCom app's AgentId (public; for status and duplicate checks:
    /// `gettoken` is called with the corpid and the app's secret).
    pub agentid: Option<u32>,
}

impl Credential {
    /// The mode shown in status: `classic`, `stable` or `wecom`.
    pub fn mode_name(&self) -> &'static str {
        match self.platform {
            Platform::Wechat => self.mode.as_str(),
            Platform::Wecom => "wecom",
        }
    }

    /// Whether it is a WeCom app.
    pub fn is_wecom(&self) -> bool {
        self.platform == Platform::Wecom
    }
}

/// A third-party platform (第三方平台, "component") whose
/// `component_verify_ticket` pushes this replica receives at
/// `POST /wechat/component/{id}`. Every secret prints redacted.
#[derive(Debug, Clone)]
pub struct Component {
    /// The operator's name for it (`[A-Za-z0-9_.-]`, the URL path segment).
    pub id: String,
    /// `component_appid`.
    pub appid: String,
    /// `component_appsecret`.
    pub secret: SecretString,
    /// The message verification token (消息校验Token).
    pub token: SecretString,
    /// The current EncodingAESKey (消息加解密Key).
    pub encoding_aes_key: wxtoken_crypto::EncodingAesKey,
    /// The previous EncodingAESKey, accepted during a key change.
    pub previous_encoding_aes_key: Option<wxtoken_crypto::EncodingAesKey>,
    /// JS-SDK tickets kept for every authorizer (only `jsapi`).
    pub authorizer_tickets: Vec<Ticket>,
    /// WeChat calls per second for this platform and its authorizers,
    /// shared by every replica (0 = no limit).
    pub calls_per_second: f64,
    /// Calls that may start at once after a quiet spell.
    pub burst: u32,
    /// Longest time between two reconciliations with
    /// `api_get_authorizer_list`.
    pub reconcile_interval: Duration,
}

impl Component {
    /// The values kept for each authorizer: the access token, then tickets.
    pub fn authorizer_kinds(&self) -> Vec<wxtoken_schema::Kind> {
        std::iter::once(wxtoken_schema::Kind::AccessToken)
            .chain(self.authorizer_tickets.iter().map(|t| t.kind()))
            .collect()
    }
}

/// Prints a Redis URL with any password replaced by `***`.
/// Masks both places a redis-rs URL can carry one: the userinfo
/// (`redis://user:pw@host`) and a `pass`/`password` query parameter
/// (`redis+unix:///sock?pass=pw`).
pub fn redacted_url(url: &SecretString) -> String {
    let raw = url.expose_secret();
    let masked = match (raw.find("://"), raw.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &raw[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &raw[..scheme_end + 3], user, &raw[at..])
        }
        _ => raw.to_owned(),
    };
    match masked.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => masked,
    }
}

// ---- file shape ----------------------------------------------------------
//
// `[wechat]` and `[refresh]` deserialize straight into their public structs.
// The sections below hold what validation still has to resolve: an env
// override and a deprecated key (`[redis]`), a socket address and a token
// (`[http]`), secrets (`[[credential]]`).

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    redis: RedisSection,
    wechat: WechatConfig,
    refresh: RefreshConfig,
    replica: ReplicaSection,
    #[serde(rename = "credential")]
    credentials: Vec<CredentialSection>,
    http: HttpSection,
    #[serde(rename = "component")]
    components: Vec<ComponentSection>,
    #[serde(rename = "wecom_suite")]
    suites: Vec<suite::SuiteSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RedisSection {
    #[serde(deserialize_with = "no_echo::secret")]
    url: SecretString,
    namespace: String,
    /// No longer used (one multiplexed connection); accepted with a warning.
    pool_size: Option<usize>,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    checks: RedisChecks,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: SecretString::from("redis://127.0.0.1:6379"),
            namespace: wxtoken_schema::DEFAULT_NAMESPACE.into(),
            pool_size: None,
            timeout: Duration::from_secs(2),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            checks: RedisChecks::Warn,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaSection {
    id: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    listen: Option<String>,
    #[serde(default, deserialize_with = "no_echo::opt_string")]
    token_env: Option<String>,
    #[serde(default, deserialize_with = "no_echo::opt_path")]
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialSection {
    id: String,
    #[serde(default)]
    platform: Platform,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    corpid: Option<String>,
    #[serde(default)]
    agentid: Option<u32>,
    #[serde(default, deserialize_with = "no_echo::opt_string")]
    secret_env: Option<String>,
    #[serde(default, deserialize_with = "no_echo::opt_path")]
    secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "no_echo::opt_secret")]
    secret: Option<SecretString>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    tickets: Vec<Ticket>,
}

/// Deserializers for keys that hold a secret or may have one pasted into them
/// (`secret`, `secret_env`, `secret_file`, `token_env`, `token_file`,
/// `redis.url`): a value of the wrong type is refused without quoting it
/// (serde's own "invalid type: integer `123456`" would put an unquoted
/// numeric secret into the error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentSection {
    id: String,
    appid: String,
    #[serde(default, deserialize_with = "no_echo::opt_string")]
    secret_env: Option<String>,
    #[serde(default, deserialize_with = "no_echo::opt_path")]
    secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "no_echo::opt_string")]
    token_env: Option<String>,
    #[serde(default, deserialize_with = "no_echo::opt_path")]
    token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "no_echo::opt_string")]
    encoding_aes_key_env: Option<String>,
    #[serde(default, deserialize_with = "no_echo::opt_path")]
    encoding_aes_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "no_echo::opt_string")]
    previous_encoding_aes_key_env: Option<String>,
    #[serde(default, deserialize_with = "no_echo::opt_path")]
    previous_encoding_aes_key_file: Option<PathBuf>,
    #[serde(default)]
    authorizer_tickets: Vec<Ticket>,
    #[serde(default = "component_calls_per_second")]
    calls_per_second: f64,
    #[serde(default = "component_burst")]
    burst: u32,
    #[serde(default = "component_reconcile_interval", with = "humantime_serde")]
    reconcile_interval: Duration,
}

fn component_calls_per_second() -> f64 {
    100.0
}

fn component_burst() -> u32 {
    20
}

fn component_reconcile_interval() -> Duration {
    Duration::from_secs(24 * 3600)
}

mod no_echo {
    use secrecy::SecretString;
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;
    use std::path::PathBuf;

    fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match toml::Value::deserialize(d) {
            Ok(toml::Value::String(s)) => Ok(s),
            Ok(other) => Err(D::Error::custom(format!(
                "expected a quoted string, found {} {} (the value is not shown: this key may hold a secret)",
                if other.type_str() == "integer" { "an" } else { "a" },
                other.type_str()
            ))),
            Err(_) => Err(D::Error::custom(
                "expected a quoted string (the value is not shown: this key may hold a secret)",
            )),
        }
    }

    pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        string(d).map(SecretString::from)
    }

    pub(super) fn opt_secret<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SecretString>, D::Error> {
        string(d).map(|s| Some(SecretString::from(s)))
    }

    pub(super) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        string(d).map(Some)
    }

    pub(super) fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        string(d).map(|s| Some(PathBuf::from(s)))
    }
}

// ---- secrets -------------------------------------------------------------

/// Largest secret or token file read (a secret is a line of text).
pub const MAX_SECRET_FILE: u64 = 64 * 1024;
/// Largest config file read.
pub const MAX_CONFIG_FILE: u64 = 64 * 1024 * 1024;

/// Whether `name` can be an environment variable's name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether a valid variable name or a path looks more like a pasted secret
/// (an AppSecret is 32 lowercase hex digits): long, with lower-case letters
/// and digits and no separator. Such names are not repeated in errors.
fn looks_like_secret(name: &str) -> bool {
    name.len() >= 16
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && name.bytes().any(|b| b.is_ascii_digit())
        && !name.bytes().any(|b| matches!(b, b'_' | b'/' | b'.' | b'-'))
}

/// How an error names a secret file: its path if it looks like one (has a
/// directory part and does not look like a pasted secret), else the key.
fn shown_path(path: &Path, key: &str) -> String {
    let text = path.to_string_lossy();
    if text.contains('/') && !looks_like_secret(&text) && !text.chars().any(char::is_control) {
        text.into_owned()
    } else {
        format!("the file named in {key}")
    }
}

/// Reads a secret or token file: a regular file of at most
/// [`MAX_SECRET_FILE`] bytes of UTF-8, read through a bounded reader (a
/// device such as `/dev/zero` or a FIFO is refused before it is opened).
fn read_secret_file(path: &Path, key: &str) -> Result<String, String> {
    use std::io::Read;
    let shown = shown_path(path, key);
    let not_regular = || format!("{shown} is not a regular file");
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let too_large = || format!("{shown} is larger than {} KiB", MAX_SECRET_FILE / 1024);
    if meta.len() > MAX_SECRET_FILE {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    // The file could have been replaced since the check above.
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))
}

/// Where a secret (an AppSecret, the HTTP bearer token) comes from: exactly
/// one of its `*_env`, `*_file` or inline keys.
enum SecretSource {
    /// The name of an environment variable holding it.
    Env(String),
    /// A file holding it.
    File(PathBuf),
    /// The secret itself, written in the config file.
    Inline(SecretString),
}

// The keys a secret is written under (env, file, inline), to name them in
// errors. `[http]` has no inline key: `token` is refused as an unknown key.
const CREDENTIAL_SECRET: [&str; 3] = ["secret_env", "secret_file", "secret"];
const HTTP_TOKEN: [&str; 3] = ["token_env", "token_file", "token"];
// `[[component]]` has no inline keys: `secret`, `token`… are unknown keys.
const COMPONENT_SECRET: [&str; 3] = ["secret_env", "secret_file", "secret"];
const COMPONENT_TOKEN: [&str; 3] = ["token_env", "token_file", "token"];
const COMPONENT_KEY: [&str; 3] = [
    "encoding_aes_key_env",
    "encoding_aes_key_file",
    "encoding_aes_key",
];
const COMPONENT_PREVIOUS_KEY: [&str; 3] = [
    "previous_encoding_aes_key_env",
    "previous_encoding_aes_key_file",
    "previous_encoding_aes_key",
];

/// More than one of a secret's keys is set.
struct SeveralSources;

impl SecretSource {
    /// The source given by the keys that are set: `None` if none is.
    fn from_keys(
        env: Option<String>,
        file: Option<PathBuf>,
        inline: Option<SecretString>,
    ) -> Result<Option<SecretSource>, SeveralSources> {
        match (env, file, inline) {
            (None, None, None) => Ok(None),
            (Some(var), None, None) => Ok(Some(SecretSource::Env(var))),
            (None, Some(path), None) => Ok(Some(SecretSource::File(path))),
            (None, None, Some(secret)) => Ok(Some(SecretSource::Inline(secret))),
            _ => Err(SeveralSources),
        }
    }

    /// Reads the secret: from the environment or the file trimmed, inline as
    /// written; an empty one is an error. The error names the key at fault
    /// and never contains the secret.
    fn resolve(
        self,
        [env_key, file_key, inline_key]: [&'static str; 3],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SecretString, (&'static str, String)> {
        let trimmed = |v: String| SecretString::from(v.trim().to_owned());
        match self {
            SecretSource::Env(var) if !is_env_name(&var) => Err((
                env_key,
                format!(
                    "{env_key} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*); it takes the name of a variable holding the secret, not the secret itself"
                ),
            )),
            SecretSource::Env(var) => {
                let shown = if looks_like_secret(&var) {
                    format!("named in {env_key} (the name looks like a secret; {env_key} takes the name of a variable, not the secret itself)")
                } else {
                    var.clone()
                };
                match env(&var) {
                    Some(v) if !v.trim().is_empty() => Ok(trimmed(v)),
                    Some(_) => Err((env_key, format!("environment variable {shown} is empty"))),
                    None => Err((env_key, format!("environment variable {shown} is not set"))),
                }
            }
            SecretSource::File(path) => match read_secret_file(&path, file_key) {
                Ok(v) if !v.trim().is_empty() => Ok(trimmed(v)),
                Ok(_) => Err((file_key, format!("{} is empty", shown_path(&path, file_key)))),
                Err(why) => Err((file_key, why)),
            },
            SecretSource::Inline(s) if s.expose_secret().trim().is_empty() => {
                Err((inline_key, "is empty".into()))
            }
            SecretSource::Inline(s) => Ok(s),
        }
    }
}

// ---- loading -------------------------------------------------------------

impl Config {
    /// Reads and validates the file at `path`, applying environment overrides.
    /// At most [`MAX_CONFIG_FILE`] bytes are read.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let read = || -> std::io::Result<String> {
            let mut text = String::new();
            std::fs::File::open(path)?
                .take(MAX_CONFIG_FILE + 1)
                .read_to_string(&mut text)?;
            if text.len() as u64 > MAX_CONFIG_FILE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("larger than {} MiB", MAX_CONFIG_FILE >> 20),
                ));
            }
            Ok(text)
        };
        let text = read().map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), &|k| {
            std::env::var(k).ok()
        })
    }

    /// Parses and validates `text`; `origin` names it in errors and `env`
    /// looks up environment variables (secrets and overrides).
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            // Only the parser's message, never its snippet of the file: the
            // offending line could hold an inline secret.
            ConfigError::Parse {
                path: origin.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        let mut check = Check {
            origin,
            env,
            warnings: Vec::new(),
        };
        let redis = check.redis(file.redis)?;
        let wechat = check.wechat(file.wechat)?;
        check.refresh(&file.refresh, &wechat)?;
        if let Some(id) = &file.replica.id {
            validate_name("replica id", id)
                .map_err(|e| check.invalid("replica.id", e.to_string()))?;
        }
        let http = check.http(file.http)?;
        let credentials = check.credentials(file.credentials)?;
        let components = check.components(file.components)?;
        let component_ids: Vec<&str> = components.iter().map(|c| c.id.as_str()).collect();
        let suites = check.suites(file.suites, &component_ids)?;
        if credentials.is_empty() && components.is_empty() && suites.is_empty() {
            check.warnings.push(
                "no [[credential]], [[component]] or [[wecom_suite]] configured: this replica has nothing to refresh"
                    .into(),
            );
        }
        if !suites.is_empty() && http.is_none() {
            check.warnings.push(
                "[[wecom_suite]] is configured but http.listen is not: no suite_ticket push can be received"
                    .into(),
            );
        }
        if !components.is_empty() && http.is_none() {
            check.warnings.push(
                "[[component]] is configured but http.listen is not: no verify-ticket push can be received"
                    .into(),
            );
        }
        Ok(Config {
            redis,
            wechat,
            refresh: file.refresh,
            replica_id: file.replica.id,
            credentials,
            http,
            components,
            suites,
            warnings: check.warnings,
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Ids of credentials with inline secrets named in the one warning about them.
const INLINE_IDS_SHOWN: usize = 3;

/// Tokens shorter than this get a start-up warning.
const SHORT_HTTP_TOKEN: usize = 16;

/// Validation of one file: where errors point, how secrets are looked up,
/// what to warn about.
struct Check<'a> {
    origin: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<String>,
}

impl Check<'_> {
    /// Checks entry `i` of the `[[table]]` tables: its `id` is a valid name
    /// and no earlier entry has it.
    fn unique_id(
        &self,
        seen: &mut HashMap<String, usize>,
        table: &str,
        i: usize,
        id: &str,
    ) -> Result<(), ConfigError> {
        let field = format!("{table}[{i}].id");
        let what = if table == "component" {
            "component id"
        } else {
            "credential id"
        };
        validate_name(what, id).map_err(|e| self.invalid(&field, e.to_string()))?;
        match seen.insert(id.to_owned(), i) {
            Some(prev) => {
                Err(self.invalid(field, format!("duplicate id {id:?} (also {table}[{prev}])")))
            }
            None => Ok(()),
        }
    }

    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// `d` within `min..=max`; the error names the field and the bound.
    fn bounded(
        &self,
        field: &str,
        d: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<(), ConfigError> {
        let fmt = humantime::format_duration;
        if d < min {
            let why = if min == Duration::from_millis(1) {
                "must be more than 0".to_owned()
            } else {
                format!("{} is less than the minimum of {}", fmt(d), fmt(min))
            };
            return Err(self.invalid(field, why));
        }
        if d > max {
            return Err(self.invalid(
                field,
                format!("{} is more than the maximum of {}", fmt(d), fmt(max)),
            ));
        }
        Ok(())
    }

    fn redis(&mut self, r: RedisSection) -> Result<RedisConfig, ConfigError> {
        let (url, url_field) = match (self.env)(ENV_REDIS_URL) {
            Some(url) => (SecretString::from(url), ENV_REDIS_URL),
            None => (r.url, "redis.url"),
        };
        // Each TLS file from its variable if set (empty: none), else the file.
        let mut fields = [
            (ENV_REDIS_TLS_CA_FILE, "redis.tls_ca_file", r.tls_ca_file),
            (
                ENV_REDIS_TLS_CERT_FILE,
                "redis.tls_cert_file",
                r.tls_cert_file,
            ),
            (ENV_REDIS_TLS_KEY_FILE, "redis.tls_key_file", r.tls_key_file),
        ]
        .map(|(var, key, path)| match (self.env)(var) {
            Some(v) => (var, (!v.is_empty()).then(|| PathBuf::from(v))),
            None => (key, path),
        });
        let tls = wxtoken_connect::TlsFiles {
            ca_file: fields[0].1.take(),
            cert_file: fields[1].1.take(),
            key_file: fields[2].1.take(),
        };
        let field_of = |which: Option<wxtoken_connect::TlsFile>| match which {
            Some(wxtoken_connect::TlsFile::Ca) => fields[0].0,
            Some(wxtoken_connect::TlsFile::Cert) => fields[1].0,
            Some(wxtoken_connect::TlsFile::Key) => fields[2].0,
            None => url_field,
        };
        // The one client builder reads and checks the TLS files, and never
        // shows the URL: one that did not parse cannot be redacted reliably
        // (`redis:/u:PW@h` has no `://`).
        if let Err(e) = wxtoken_connect::Target::parse(url.expose_secret(), &tls) {
            use wxtoken_connect::ConnectError as E;
            return Err(match e {
                E::Url { .. } | E::Sentinel { .. } => self.invalid(url_field, e.to_string()),
                E::File {
                    which,
                    ref path,
                    ref reason,
                } => self.invalid(
                    field_of(Some(which)),
                    format!("{}: {reason}", path.display()),
                ),
                E::Mismatch { which, ref message } => {
                    self.invalid(field_of(which), message.clone())
                }
            });
        }
        validate_name("namespace", &r.namespace)
            .map_err(|e| self.invalid("redis.namespace", e.to_string()))?;
        if r.pool_size.is_some() {
            self.warnings.push(
                "redis.pool_size is no longer used (each replica multiplexes one connection); remove it"
                    .into(),
            );
        }
        self.bounded(
            "redis.timeout",
            r.timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        Ok(RedisConfig {
            url,
            namespace: r.namespace,
            timeout: r.timeout,
            tls,
            checks: r.checks,
        })
    }

    fn wechat(&mut self, mut w: WechatConfig) -> Result<WechatConfig, ConfigError> {
        if w.max_concurrent_calls == 0 {
            return Err(self.invalid("wechat.max_concurrent_calls", "must be at least 1"));
        }
        if !(w.calls_per_second.is_finite() && w.calls_per_second >= 0.0) {
            return Err(self.invalid(
                "wechat.calls_per_second",
                "must be a number of calls per second, 0 for no limit",
            ));
        }
        if w.burst == 0 {
            return Err(self.invalid("wechat.burst", "must be at least 1"));
        }
        if !(w.wecom_calls_per_second.is_finite() && w.wecom_calls_per_second >= 0.0) {
            return Err(self.invalid(
                "wechat.wecom_calls_per_second",
                "must be a number of calls per second, 0 for no limit",
            ));
        }
        if w.wecom_burst == 0 {
            return Err(self.invalid("wechat.wecom_burst", "must be at least 1"));
        }
        w.base_url = self.base_url("wechat.base_url", &w.base_url, "https://api.weixin.qq.com")?;
        w.wecom_base_url = self.base_url(
            "wechat.wecom_base_url",
            &w.wecom_base_url,
            "https://qyapi.weixin.qq.com",
        )?;
        let five_minutes = Duration::from_secs(300);
        for (field, d) in [
            ("wechat.request_timeout", w.request_timeout),
            ("wechat.connect_timeout", w.connect_timeout),
        ] {
            self.bounded(field, d, Duration::from_millis(1), five_minutes)?;
        }
        Ok(w)
    }

    /// A WeChat or WeCom API base URL (`field`), without trailing slashes.
    /// One that does not parse, or carries credentials, is never shown.
    fn base_url(&mut self, field: &str, url: &str, example: &str) -> Result<String, ConfigError> {
        let url = url.trim_end_matches('/').to_owned();
        // A URL that did not parse, or one with credentials, is never shown:
        // it is logged at every start and may carry `user:password@`.
        let u = reqwest::Url::parse(&url).map_err(|e| {
            self.invalid(
                field,
                format!("is not a URL ({e}); expected e.g. {example}"),
            )
        })?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(self.invalid(
                field,
                "must not contain user:password@ (the URL is logged; the value is not shown)",
            ));
        }
        let Some(host) = u
            .host_str()
            .filter(|_| matches!(u.scheme(), "http" | "https"))
        else {
            return Err(self.invalid(field, "must be an http:// or https:// URL with a host"));
        };
        if u.scheme() == "http" {
            // The classic token API carries the AppSecret in its URL.
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
                self.warnings.push(format!(
                    "{field} \"http://{host}{port}\" is plain http: AppSecrets cross the network unencrypted; use https unless this is a trusted proxy"
                ));
            }
        }
        Ok(url)
    }

    fn refresh(&self, r: &RefreshConfig, wechat: &WechatConfig) -> Result<(), ConfigError> {
        if !(r.max_margin_fraction > 0.0 && r.max_margin_fraction < 1.0) {
            return Err(self.invalid(
                "refresh.max_margin_fraction",
                format!(
                    "{} must be between 0 and 1 (exclusive)",
                    r.max_margin_fraction
                ),
            ));
        }
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        const DAY: u64 = 24 * HOUR;
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        // Upper bounds keep every deadline and Redis millisecond value far
        // from overflow, and catch a unit typo ("30d" for "30s").
        for (field, d, min, max) in [
            ("refresh.margin", r.margin, ms(1), s(DAY)),
            ("refresh.jitter", r.jitter, ms(0), s(DAY)),
            ("refresh.lock_ttl", r.lock_ttl, ms(1), s(HOUR)),
            ("refresh.retry_initial", r.retry_initial, ms(1), s(DAY)),
            ("refresh.retry_max", r.retry_max, ms(1), s(DAY)),
            (
                "refresh.config_error_retry",
                r.config_error_retry,
                ms(1),
                s(DAY),
            ),
            ("refresh.quota_pause", r.quota_pause, ms(1), s(7 * DAY)),
            ("refresh.check_interval", r.check_interval, ms(1), s(HOUR)),
            ("refresh.min_interval", r.min_interval, ms(0), s(DAY)),
            (
                "refresh.force_min_interval",
                r.force_min_interval,
                ms(0),
                s(DAY),
            ),
        ] {
            self.bounded(field, d, min, max)?;
        }
        if r.lock_ttl <= wechat.request_timeout {
            return Err(self.invalid(
                "refresh.lock_ttl",
                format!(
                    "{} must be longer than wechat.request_timeout ({}), so a lock outlives the call it guards",
                    humantime::format_duration(r.lock_ttl),
                    humantime::format_duration(wechat.request_timeout)
                ),
            ));
        }
        if r.force_refresh_per_day > 20 {
            return Err(self.invalid(
                "refresh.force_refresh_per_day",
                "must be at most 20 (WeChat's daily limit of stable force_refresh)",
            ));
        }
        if r.retry_max < r.retry_initial {
            return Err(self.invalid(
                "refresh.retry_max",
                "must not be shorter than refresh.retry_initial",
            ));
        }
        Ok(())
    }

    fn http(&mut self, h: HttpSection) -> Result<Option<HttpConfig>, ConfigError> {
        let Some(listen) = h.listen else {
            if h.token_env.is_some() || h.token_file.is_some() {
                self.warnings.push(
                    "http: a token is configured but http.listen is not: the HTTP surface is off"
                        .into(),
                );
            }
            return Ok(None);
        };
        let listen: SocketAddr = listen.trim().parse().map_err(|_| {
            self.invalid(
                "http.listen",
                format!("{listen:?} is not a socket address; expected e.g. \"127.0.0.1:9100\" or \"[::]:9100\""),
            )
        })?;
        let token = match SecretSource::from_keys(h.token_env, h.token_file, None) {
            Err(SeveralSources) => {
                return Err(self.invalid(
                    "http.token_env",
                    "give at most one of token_env, token_file",
                ))
            }
            Ok(None) => None,
            Ok(Some(source)) => Some(
                source
                    .resolve(HTTP_TOKEN, self.env)
                    .map_err(|(key, why)| self.invalid(format!("http.{key}"), why))?,
            ),
        };
        match &token {
            None if !listen.ip().is_loopback() => {
                return Err(self.invalid(
                    "http.listen",
                    format!(
                        "{listen} is not a loopback address; refusing to expose POST /refresh without a token: set http.token_env or http.token_file"
                    ),
                ))
            }
            Some(t) if t.expose_secret().chars().count() < SHORT_HTTP_TOKEN => {
                self.warnings.push(format!(
                    "http: the bearer token is shorter than {SHORT_HTTP_TOKEN} characters; use a long random one (e.g. `openssl rand -hex 32`)"
                ));
            }
            _ => {}
        }
        Ok(Some(HttpConfig { listen, token }))
    }

    /// One secret of a `[[component]]` (or `[[wecom_suite]]`), from its
    /// `_env` or `_file` key.
    /// `None` when neither is given.
    fn component_secret(
        &self,
        at: &dyn Fn(&str) -> String,
        keys: [&'static str; 3],
        env: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Option<SecretString>, ConfigError> {
        match SecretSource::from_keys(env, file, None) {
            Err(SeveralSources) => Err(self.invalid(
                at(keys[0]),
                format!("give exactly one of {}, {}", keys[0], keys[1]),
            )),
            Ok(None) => Ok(None),
            Ok(Some(source)) => source
                .resolve(keys, self.env)
                .map(Some)
                .map_err(|(key, why)| self.invalid(at(key), why)),
        }
    }

    /// `[[component]]` tables. Errors name the field and never show a
    /// secret, token or key.
    fn components(&self, entries: Vec<ComponentSection>) -> Result<Vec<Component>, ConfigError> {
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut appids: HashMap<String, String> = HashMap::new();
        let mut components = Vec::with_capacity(entries.len());
        for (i, c) in entries.into_iter().enumerate() {
            let at = |f: &str| format!("component[{i}].{f}");
            self.unique_id(&mut ids, "component", i, &c.id)?;
            validate_name("component appid", &c.appid)
                .map_err(|e| self.invalid(at("appid"), e.to_string()))?;
            if let Some(other) = appids.insert(c.appid.clone(), c.id.clone()) {
                return Err(self.invalid(
                    at("appid"),
                    format!("{} is already used by component {other:?}", c.appid),
                ));
            }
            let required = |keys: [&'static str; 3], v: Option<SecretString>| {
                v.ok_or_else(|| {
                    self.invalid(
                        at(keys[0]),
                        format!(
                            "component {:?} has no {}: set {} or {}",
                            c.id, keys[2], keys[0], keys[1]
                        ),
                    )
                })
            };
            let secret =
                self.component_secret(&at, COMPONENT_SECRET, c.secret_env, c.secret_file)?;
            let secret = required(COMPONENT_SECRET, secret)?;
            let token = self.component_secret(&at, COMPONENT_TOKEN, c.token_env, c.token_file)?;
            let token = required(COMPONENT_TOKEN, token)?;
            let key = |keys: [&'static str; 3],
                       env: Option<String>,
                       file: Option<PathBuf>|
             -> Result<Option<wxtoken_crypto::EncodingAesKey>, ConfigError> {
                let Some(raw) = self.component_secret(&at, keys, env.clone(), file)? else {
                    return Ok(None);
                };
                // The error says what is wrong (length, alphabet), never the key.
                let field = if env.is_some() { keys[0] } else { keys[1] };
                wxtoken_crypto::EncodingAesKey::parse(raw.expose_secret())
                    .map(Some)
                    .map_err(|e| self.invalid(at(field), e.to_string()))
            };
            let encoding_aes_key = key(
                COMPONENT_KEY,
                c.encoding_aes_key_env.clone(),
                c.encoding_aes_key_file.clone(),
            )?
            .ok_or_else(|| {
                self.invalid(
                    at(COMPONENT_KEY[0]),
                    format!(
                        "component {:?} has no encoding_aes_key: set encoding_aes_key_env or encoding_aes_key_file",
                        c.id
                    ),
                )
            })?;
            let previous_encoding_aes_key = key(
                COMPONENT_PREVIOUS_KEY,
                c.previous_encoding_aes_key_env,
                c.previous_encoding_aes_key_file,
            )?;
            if c.authorizer_tickets.iter().any(|t| *t != Ticket::Jsapi) {
                return Err(self.invalid(
                    at("authorizer_tickets"),
                    "only \"jsapi\" is kept for authorizers",
                ));
            }
            let mut tickets = c.authorizer_tickets.clone();
            tickets.dedup();
            if !(c.calls_per_second.is_finite() && c.calls_per_second >= 0.0) {
                return Err(self.invalid(
                    at("calls_per_second"),
                    "must be a number of calls per second, 0 for no limit",
                ));
            }
            if c.burst == 0 {
                return Err(self.invalid(at("burst"), "must be at least 1"));
            }
            if c.reconcile_interval < Duration::from_secs(60) {
                return Err(self.invalid(at("reconcile_interval"), "must be at least 1m"));
            }
            components.push(Component {
                id: c.id,
                appid: c.appid,
                secret,
                token,
                encoding_aes_key,
                previous_encoding_aes_key,
                authorizer_tickets: tickets,
                calls_per_second: c.calls_per_second,
                burst: c.burst,
                reconcile_interval: c.reconcile_interval,
            });
        }
        Ok(components)
    }

    /// Linear in the number of credentials: duplicates are found by hashing.
    fn credentials(
        &mut self,
        entries: Vec<CredentialSection>,
    ) -> Result<Vec<Credential>, ConfigError> {
        let mut ids: HashMap<String, usize> = HashMap::with_capacity(entries.len());
        let mut appids: HashMap<(String, Mode), String> = HashMap::with_capacity(entries.len());
        let mut wecom_apps: HashMap<(String, u32), String> = HashMap::new();
        let mut inline = (0usize, Vec::new()); // count, first ids
        let mut credentials = Vec::with_capacity(entries.len());
        for (i, c) in entries.into_iter().enumerate() {
            let at = |f: &str| format!("credential[{i}].{f}");
            self.unique_id(&mut ids, "credential", i, &c.id)?;
            let (appid, mode) = match c.platform {
                Platform::Wechat => {
                    for (field, given) in [
                        ("corpid", c.corpid.is_some()),
                        ("agentid", c.agentid.is_some()),
                    ] {
                        if given {
                            return Err(self.invalid(
                                at(field),
                                format!("{field} is for WeCom apps: add platform = \"wecom\" (WeChat credentials take appid)"),
                            ));
                        }
                    }
                    let Some(appid) = c.appid else {
                        return Err(self
                            .invalid(at("appid"), format!("credential {:?} has no appid", c.id)));
                    };
                    if appid.trim().is_empty() || appid.chars().any(char::is_whitespace) {
                        return Err(self.invalid(at("appid"), format!("{appid:?} is not an appid")));
                    }
                    let mode = c.mode.unwrap_or_default();
                    if let Some(other) = appids.insert((appid.clone(), mode), c.id.clone()) {
                        return Err(self.invalid(
                            at("appid"),
                            format!(
                                "{appid} is already used by credential {other:?} in {} mode; two refreshers of one appid and mode would invalidate each other's tokens",
                                mode.as_str()
                            ),
                        ));
                    }
                    if let Some(t) = c.tickets.iter().find(|t| **t == Ticket::AgentConfig) {
                        return Err(self.invalid(
                            at("tickets"),
                            format!("\"{}\" is a WeCom ticket; WeChat credentials keep \"jsapi\" and \"wx_card\"", t.as_str()),
                        ));
                    }
                    (appid, mode)
                }
                Platform::Wecom => {
                    if c.appid.is_some() {
                        return Err(self.invalid(
                            at("appid"),
                            "a WeCom app is named by corpid (and agentid), not appid",
                        ));
                    }
                    if c.mode.is_some() {
                        return Err(self.invalid(
                            at("mode"),
                            "WeCom has one token API (gettoken, which hands back the same token until it expires): remove mode",
                        ));
                    }
                    let Some(corpid) = c.corpid else {
                        return Err(self.invalid(
                            at("corpid"),
                            format!("WeCom credential {:?} has no corpid", c.id),
                        ));
                    };
                    validate_name("corpid", &corpid)
                        .map_err(|e| self.invalid(at("corpid"), e.to_string()))?;
                    if let Some(t) = c.tickets.iter().find(|t| **t == Ticket::WxCard) {
                        return Err(self.invalid(
                            at("tickets"),
                            format!("\"{}\" is a WeChat ticket; WeCom apps keep \"jsapi\" (the corp ticket, for wx.config) and \"agent_config\" (the app ticket, for wx.agentConfig)", t.as_str()),
                        ));
                    }
                    match c.agentid {
                        Some(0) => {
                            return Err(self.invalid(at("agentid"), "must be a positive AgentId"))
                        }
                        Some(agentid) => {
                            if let Some(other) =
                                wecom_apps.insert((corpid.clone(), agentid), c.id.clone())
                            {
                                return Err(self.invalid(
                                    at("agentid"),
                                    format!("app {agentid} of corp {corpid} is already credential {other:?}"),
                                ));
                            }
                        }
                        None if c.tickets.contains(&Ticket::AgentConfig) => {
                            return Err(self.invalid(
                                at("agentid"),
                                format!("WeCom credential {:?} keeps the agent_config ticket: give the app's agentid", c.id),
                            ));
                        }
                        None => {}
                    }
                    (corpid, Mode::Classic)
                }
            };
            let source = match SecretSource::from_keys(c.secret_env, c.secret_file, c.secret) {
                Ok(Some(source)) => source,
                Ok(None) => {
                    return Err(self.invalid(
                        at("secret_env"),
                        format!(
                            "credential {:?} has no secret: set secret_env or secret_file",
                            c.id
                        ),
                    ))
                }
                Err(SeveralSources) => {
                    return Err(self.invalid(
                        at("secret_env"),
                        "give exactly one of secret_env, secret_file, secret",
                    ))
                }
            };
            let is_inline = matches!(source, SecretSource::Inline(_));
            let secret = source
                .resolve(CREDENTIAL_SECRET, self.env)
                .map_err(|(key, why)| self.invalid(at(key), why))?;
            if is_inline {
                inline.0 += 1;
                if inline.1.len() < INLINE_IDS_SHOWN {
                    inline.1.push(c.id.clone());
                }
            }
            let distinct: HashSet<_> = c.tickets.iter().collect();
            if distinct.len() != c.tickets.len() {
                return Err(self.invalid(at("tickets"), "lists a ticket twice"));
            }
            credentials.push(Credential {
                id: c.id,
                appid,
                secret,
                mode,
                tickets: c.tickets,
                platform: c.platform,
                agentid: c.agentid,
            });
        }
        // One warning for all of them: a generated config may have 100,000.
        let (count, shown) = inline;
        if count > 0 {
            let noun = if count == 1 {
                "credential has its"
            } else {
                "credentials have their"
            };
            let more = match count - shown.len() {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            self.warnings.push(format!(
                "{count} {noun} secret written inline in the config file ({}{more}); prefer secret_env or secret_file",
                shown.join(", ")
            ));
        }
        Ok(credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const GOOD: &str = r#"
[redis]
url = "redis://:pw@127.0.0.1:6390/0"
namespace = "prod"

[wechat]
base_url = "http://127.0.0.1:9000/"

[refresh]
margin = "5m"
lock_ttl = "20s"

[[credential]]
id = "oa-main"
appid = "wx0000000000000001"
secret_env = "OA_SECRET"
tickets = ["jsapi", "wx_card"]

[[credential]]
id = "mini"
appid = "wx0000000000000001"
mode = "stable"
secret_env = "MINI_SECRET"
"#;

    #[test]
    fn good_config_parses_with_defaults_and_secrets_from_env() {
        let c = Config::parse(
            GOOD,
            "good.toml",
            &env_with(&[("OA_SECRET", "s3cr3t-oa"), ("MINI_SECRET", "s3cr3t-mini\n")]),
        )
        .unwrap();
        assert_eq!(c.redis.namespace, "prod");
        assert_eq!(c.wechat.base_url, "http://127.0.0.1:9000");
        assert_eq!(c.credentials.len(), 2);
        assert_eq!(c.credentials[0].secret.expose_secret(), "s3cr3t-oa");
        assert_eq!(c.credentials[1].secret.expose_secret(), "s3cr3t-mini");
        assert_eq!(c.credentials[1].mode, Mode::Stable);
        assert_eq!(
            c.credentials[0].tickets,
            vec![Ticket::Jsapi, Ticket::WxCard]
        );
        assert_eq!(c.refresh.jitter, Duration::from_secs(30));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cr3t"),
            "secrets leak through Debug: {debug}"
        );
        assert!(
            !debug.contains(":pw@"),
            "redis password leaks through Debug"
        );
        assert_eq!(redacted_url(&c.redis.url), "redis://:***@127.0.0.1:6390/0");
    }

    #[test]
    fn redis_tls_files_are_checked_at_load_and_named_by_field() {
        let pki = wxtoken_testkit::TestPki::generate().unwrap();
        let p = |path: &Path| path.display().to_string();
        let redis = |url: &str, extra: &str| format!("[redis]\nurl = \"{url}\"\n{extra}");
        // System roots, a CA, mutual TLS: all load.
        let c = Config::parse(&redis("rediss://h:1", ""), "t.toml", &env_with(&[])).unwrap();
        assert!(c.redis.tls.is_empty());
        assert_eq!(c.redis.checks, RedisChecks::Warn);
        let text = redis(
            "rediss://h:1",
            &format!(
                "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nchecks = \"refuse\"\n",
                p(&pki.ca),
                p(&pki.client_cert),
                p(&pki.client_key)
            ),
        );
        let c = Config::parse(&text, "t.toml", &env_with(&[])).unwrap();
        assert_eq!(c.redis.tls.ca_file.as_deref(), Some(pki.ca.as_path()));
        assert_eq!(c.redis.checks, RedisChecks::Refuse);
        // The environment overrides a file, and an empty value removes it.
        let other = p(&pki.other_ca);
        let env = |k: &str| match k {
            ENV_REDIS_TLS_CA_FILE => Some(other.clone()),
            ENV_REDIS_TLS_CERT_FILE | ENV_REDIS_TLS_KEY_FILE => Some(String::new()),
            _ => None,
        };
        let c = Config::parse(&text, "t.toml", &env).unwrap();
        assert_eq!(c.redis.tls.ca_file.as_deref(), Some(pki.other_ca.as_path()));
        assert!(c.redis.tls.cert_file.is_none() && c.redis.tls.key_file.is_none());

        let key_text = std::fs::read_to_string(&pki.client_key).unwrap();
        let key_body = key_text.lines().nth(1).unwrap().to_owned();
        for (extra, url, expected) in [
            (
                format!("tls_ca_file = \"{}\"\n", p(&pki.client_key)),
                "rediss://h:1",
                "t.toml: redis.tls_ca_file: ".to_owned(),
            ),
            (
                "tls_ca_file = \"/nonexistent/ca.pem\"\n".to_owned(),
                "rediss://h:1",
                "t.toml: redis.tls_ca_file: /nonexistent/ca.pem: cannot read it".to_owned(),
            ),
            (
                format!("tls_cert_file = \"{}\"\n", p(&pki.client_cert)),
                "rediss://h:1",
                "t.toml: redis.tls_key_file: a TLS client certificate file is given without its key file".to_owned(),
            ),
            (
                format!(
                    "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                    p(&pki.client_cert),
                    p(&pki.server_key)
                ),
                "rediss://h:1",
                "t.toml: redis.tls_key_file: ".to_owned(),
            ),
            (
                format!("tls_ca_file = \"{}\"\n", p(&pki.ca)),
                "redis://h:1",
                "t.toml: redis.tls_ca_file: TLS files are given but the Redis URL is not rediss://".to_owned(),
            ),
            (
                "checks = \"maybe\"\n".to_owned(),
                "redis://h:1",
                "unknown variant `maybe`".to_owned(),
            ),
        ] {
            let e = Config::parse(&redis(url, &extra), "t.toml", &env_with(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&expected), "{e}");
            assert!(!e.contains(&key_body), "key material in {e}");
        }
    }

    #[test]
    fn redis_url_can_be_overridden_by_environment() {
        let c = Config::parse(
            GOOD,
            "good.toml",
            &env_with(&[
                ("OA_SECRET", "a"),
                ("MINI_SECRET", "b"),
                (ENV_REDIS_URL, "redis://10.1.1.1:7000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.redis.url.expose_secret(), "redis://10.1.1.1:7000");
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, "bad.toml", &env_with(&[("S", "x")]))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_keys_are_named_with_their_position() {
        let e = error_of("[refresh]\nmargin = \"5m\"\nmargn = \"4m\"\n");
        assert!(e.starts_with("bad.toml:3:1:"), "{e}");
        assert!(e.contains("margn"), "{e}");
    }

    #[test]
    fn bad_durations_and_types_are_named() {
        let e = error_of("[refresh]\nlock_ttl = \"thirty seconds\"\n");
        assert!(e.starts_with("bad.toml:2:"), "{e}");
        let e = error_of("[[credential]]\nid = \"a\"\nappid = 7\nsecret_env = \"S\"\n");
        assert!(e.starts_with("bad.toml:3:"), "{e}");
    }

    #[test]
    fn parse_errors_never_echo_an_inline_secret() {
        let e =
            error_of("[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret = \"topsecret\" junk\n");
        assert!(!e.contains("topsecret"), "{e}");
    }

    const WECOM: &str = r#"
[wechat]
wecom_base_url = "http://127.0.0.1:9001/qyapi/"

[[credential]]
id = "corp-hr"
platform = "wecom"
corpid = "ww00000000000000a1"
agentid = 1000002
secret_env = "S"
tickets = ["jsapi", "agent_config"]

[[credential]]
id = "corp-contacts"
platform = "wecom"
corpid = "ww00000000000000a1"
secret_env = "S"

[[credential]]
id = "oa"
appid = "ww00000000000000a1"
secret_env = "S"
"#;

    #[test]
    fn wecom_credentials_are_parsed() {
        let c = Config::parse(WECOM, "t", &env_with(&[("S", "corp-secret")])).unwrap();
        assert_eq!(c.wechat.wecom_base_url, "http://127.0.0.1:9001/qyapi");
        assert_eq!(c.wechat.base_url, "https://api.weixin.qq.com");
        let hr = &c.credentials[0];
        assert_eq!(hr.platform, Platform::Wecom);
        assert!(hr.is_wecom());
        assert_eq!(hr.appid, "ww00000000000000a1");
        assert_eq!(hr.agentid, Some(1000002));
        assert_eq!(hr.mode_name(), "wecom");
        assert_eq!(hr.secret.expose_secret(), "corp-secret");
        assert_eq!(hr.tickets, vec![Ticket::Jsapi, Ticket::AgentConfig]);
        assert_eq!(
            hr.tickets.iter().map(|t| t.kind()).collect::<Vec<_>>(),
            vec![
                wxtoken_schema::Kind::JsapiTicket,
                wxtoken_schema::Kind::AgentConfigTicket
            ]
        );
        // An app without agentid (e.g. the contacts secret) keeps no agent ticket.
        assert_eq!(c.credentials[1].agentid, None);
        // A WeChat appid equal to a corpid is another credential.
        assert_eq!(c.credentials[2].mode_name(), "classic");
        assert!(!c.credentials[2].is_wecom());
        assert_eq!(
            Config::parse("", "t", &|_| None)
                .unwrap()
                .wechat
                .wecom_base_url,
            "https://qyapi.weixin.qq.com"
        );
    }

    #[test]
    fn wecom_errors_name_the_field_and_never_the_secret() {
        let wecom = |extra: &str| {
            format!(
                "[[credential]]\nid = \"w\"\nplatform = \"wecom\"\ncorpid = \"ww1\"\nagentid = 1000002\nsecret_env = \"S\"\n{extra}"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (
                "[[credential]]\nid = \"w\"\nplatform = \"wecom\"\nsecret_env = \"S\"\n".into(),
                "credential[0].corpid: WeCom credential \"w\" has no corpid",
            ),
            (
                "[[credential]]\nid = \"w\"\nplatform = \"wecom\"\ncorpid = \"ww:1\"\nsecret_env = \"S\"\n".into(),
                "credential[0].corpid: invalid corpid",
            ),
            (
                wecom("appid = \"wx1\"\n"),
                "credential[0].appid: a WeCom app is named by corpid",
            ),
            (wecom("mode = \"stable\"\n"), "credential[0].mode: WeCom has one token API"),
            (wecom("mode = \"classic\"\n"), "credential[0].mode:"),
            (
                wecom("tickets = [\"wx_card\"]\n"),
                "credential[0].tickets: \"wx_card\" is a WeChat ticket",
            ),
            (
                "[[credential]]\nid = \"w\"\nplatform = \"wecom\"\ncorpid = \"ww1\"\nsecret_env = \"S\"\ntickets = [\"agent_config\"]\n".into(),
                "credential[0].agentid: WeCom credential \"w\" keeps the agent_config ticket",
            ),
            (wecom("").replace("1000002", "0"), "credential[0].agentid: must be a positive"),
            (
                format!("{}{}", wecom(""), wecom("").replace("id = \"w\"", "id = \"v\"")),
                "credential[1].agentid: app 1000002 of corp ww1 is already credential \"w\"",
            ),
            (
                wecom("tickets = [\"jsapi\", \"jsapi\"]\n"),
                "credential[0].tickets: lists a ticket twice",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"S\"\ntickets = [\"agent_config\"]\n".into(),
                "credential[0].tickets: \"agent_config\" is a WeCom ticket",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\ncorpid = \"ww1\"\nsecret_env = \"S\"\n".into(),
                "credential[0].corpid: corpid is for WeCom apps",
            ),
            (
                "[[credential]]\nid = \"a\"\nsecret_env = \"S\"\n".into(),
                "credential[0].appid: credential \"a\" has no appid",
            ),
            (
                "[[credential]]\nid = \"w\"\nplatform = \"wecom\"\ncorpid = \"ww1\"\n".into(),
                "credential[0].secret_env: credential \"w\" has no secret",
            ),
            (
                "[wechat]\nwecom_base_url = \"https://u:hunter2@qyapi.weixin.qq.com\"\n".into(),
                "wechat.wecom_base_url: must not contain user:password@",
            ),
            ("[wechat]\nwecom_base_url = \"ftp://x\"\n".into(), "wechat.wecom_base_url:"),
            (
                "[[credential]]\nid = \"w\"\nplatform = \"qq\"\n".into(),
                "unknown variant `qq`",
            ),
        ];
        for (text, want) in &cases {
            let e = error_of(text);
            assert!(e.starts_with("bad.toml:"), "{e}");
            assert!(e.contains(want), "for {text:?}\n got {e}\nwant {want}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // An inline WeCom secret is never echoed, even in a type error.
        let e = error_of(&wecom("").replace("secret_env = \"S\"", "secret = 123456789"));
        assert!(!e.contains("123456789"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"MISSING\"\n",
                "credential[0].secret_env: environment variable MISSING is not set",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\n",
                "credential[0].secret_env: credential \"a\" has no secret",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"S\"\n[[credential]]\nid = \"a\"\nappid = \"wx2\"\nsecret_env = \"S\"\n",
                "credential[1].id: duplicate id \"a\" (also credential[0])",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"S\"\n[[credential]]\nid = \"b\"\nappid = \"wx1\"\nsecret_env = \"S\"\n",
                "credential[1].appid: wx1 is already used by credential \"a\" in classic mode",
            ),
            (
                "[[credential]]\nid = \"a:b\"\nappid = \"wx1\"\nsecret_env = \"S\"\n",
                "credential[0].id: invalid credential id",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"S\"\nsecret_file = \"/x\"\n",
                "credential[0].secret_env: give exactly one",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_file = \"/nonexistent/secret\"\n",
                "credential[0].secret_file: cannot read /nonexistent/secret",
            ),
            ("[wechat]\nbase_url = \"ftp://x\"\n", "wechat.base_url:"),
            ("[wechat]\nbase_url = \"not a url\"\n", "wechat.base_url:"),
            ("[redis]\nurl = \"mysql://x\"\n", "redis.url:"),
            ("[redis]\nnamespace = \"a b\"\n", "redis.namespace:"),
            ("[refresh]\nlock_ttl = \"5s\"\n", "refresh.lock_ttl: 5s must be longer"),
            ("[refresh]\nmax_margin_fraction = 1.5\n", "refresh.max_margin_fraction"),
        ];
        for (text, want) in cases {
            let e = error_of(text);
            assert!(e.starts_with("bad.toml: "), "{e}");
            assert!(e.contains(want), "for {text:?}\n got {e}\nwant {want}");
        }
    }

    #[test]
    fn inline_secret_works_with_a_warning_that_does_not_contain_it() {
        let c = Config::parse(
            "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret = \"inline-secret\"\n",
            "x.toml",
            &env_with(&[]),
        )
        .unwrap();
        assert_eq!(c.credentials[0].secret.expose_secret(), "inline-secret");
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("inline"));
        assert!(!c.warnings[0].contains("inline-secret"));
    }

    #[test]
    fn many_inline_secrets_parse_with_one_warning() {
        let n = 20_000;
        let text: String = (0..n)
            .map(|i| {
                format!(
                    "[[credential]]\nid = \"app-{i}\"\nappid = \"wx{i:016}\"\nsecret = \"inline-secret-{i}\"\n"
                )
            })
            .collect();
        let c = Config::parse(&text, "big.toml", &env_with(&[])).unwrap();
        assert_eq!(c.credentials.len(), n);
        assert_eq!(
            c.credentials[n - 1].secret.expose_secret(),
            "inline-secret-19999"
        );
        let inline: Vec<_> = c.warnings.iter().filter(|w| w.contains("inline")).collect();
        assert_eq!(inline.len(), 1, "{:?}", c.warnings);
        assert!(
            inline[0].starts_with("20000 credentials have their secret written inline")
                && inline[0].contains("(app-0, app-1, app-2 and 19997 more)"),
            "{}",
            inline[0]
        );
        assert!(!inline[0].contains("inline-secret"), "{}", inline[0]);
    }

    #[test]
    fn redacted_url_masks_userinfo_and_query_passwords() {
        let r = |u: &str| redacted_url(&SecretString::from(u.to_owned()));
        assert_eq!(r("redis://:pw1@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(r("redis://user:pw2@h:1"), "redis://user:***@h:1");
        assert_eq!(
            r("redis+unix:///run/redis.sock?db=2&pass=pw3"),
            "redis+unix:///run/redis.sock?db=2&pass=***"
        );
        assert_eq!(r("redis://h:1/?password=pw4"), "redis://h:1/?password=***");
        assert_eq!(r("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn tickets_listed_twice_are_refused_even_apart() {
        let e = error_of(
            "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"S\"\ntickets = [\"jsapi\", \"wx_card\", \"jsapi\"]\n",
        );
        assert!(
            e.contains("credential[0].tickets: lists a ticket twice"),
            "{e}"
        );
    }

    #[test]
    fn plain_http_to_a_remote_host_warns() {
        let c = Config::parse(
            "[wechat]\nbase_url = \"http://proxy.corp:8080\"\n",
            "x.toml",
            &env_with(&[]),
        )
        .unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("plain http")),
            "{:?}",
            c.warnings
        );
        let c = Config::parse(
            "[wechat]\nbase_url = \"http://127.0.0.1:8090\"\n",
            "x.toml",
            &env_with(&[]),
        )
        .unwrap();
        assert!(
            !c.warnings.iter().any(|w| w.contains("plain http")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn redis_password_is_not_in_url_errors() {
        let e = Config::parse(
            "[redis]\nurl = \"redis://:hunter2@[bad\"\n",
            "x.toml",
            &env_with(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn margin_is_clamped_to_a_fraction_of_the_lifetime() {
        let c = Config::parse("", "x.toml", &env_with(&[])).unwrap();
        assert_eq!(
            c.refresh.margin_for(Duration::from_secs(7200)),
            Duration::from_secs(300)
        );
        assert_eq!(
            c.refresh.margin_for(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn http_is_off_by_default() {
        let c = Config::parse("", "x.toml", &env_with(&[])).unwrap();
        assert!(c.http.is_none());
    }

    #[test]
    fn http_section_with_a_token_from_env_or_file() {
        let c = Config::parse(
            "[http]\nlisten = \"0.0.0.0:9100\"\ntoken_env = \"HTTP_TOKEN\"\n",
            "x.toml",
            &env_with(&[("HTTP_TOKEN", "  bearer-token-0123456789abcdef\n")]),
        )
        .unwrap();
        let http = c.http.as_ref().unwrap();
        assert_eq!(http.listen, "0.0.0.0:9100".parse().unwrap());
        assert_eq!(
            http.token.as_ref().unwrap().expose_secret(),
            "bearer-token-0123456789abcdef"
        );
        assert!(
            !c.warnings.iter().any(|w| w.starts_with("http")),
            "{:?}",
            c.warnings
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("bearer-token"), "token leaks: {debug}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-token-0123456789abcdef\n").unwrap();
        let c = Config::parse(
            &format!(
                "[http]\nlisten = \"[::]:9100\"\ntoken_file = \"{}\"\n",
                file.display()
            ),
            "x.toml",
            &env_with(&[]),
        )
        .unwrap();
        let http = c.http.unwrap();
        assert!(http.listen.is_ipv6());
        assert_eq!(
            http.token.unwrap().expose_secret(),
            "file-token-0123456789abcdef"
        );
    }

    #[test]
    fn http_on_loopback_may_go_without_a_token() {
        for listen in ["127.0.0.1:9100", "[::1]:9100", "127.0.0.2:0"] {
            let c = Config::parse(
                &format!("[http]\nlisten = \"{listen}\"\n"),
                "x.toml",
                &env_with(&[]),
            )
            .unwrap();
            assert!(c.http.unwrap().token.is_none());
        }
    }

    #[test]
    fn http_errors_name_the_field_and_never_the_token() {
        let env = env_with(&[("EMPTY", " "), ("T", "sekrit-token-0123456789")]);
        let cases: &[(&str, &str)] = &[
            (
                "[http]\nlisten = \"localhost\"\n",
                "http.listen: \"localhost\" is not a socket address",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:99999\"\n",
                "http.listen: \"127.0.0.1:99999\" is not a socket address",
            ),
            (
                "[http]\nlisten = \"0.0.0.0:9100\"\n",
                "http.listen: 0.0.0.0:9100 is not a loopback address; refusing to expose POST /refresh without a token",
            ),
            (
                "[http]\nlisten = \"10.0.0.5:9100\"\n",
                "refusing to expose POST /refresh without a token",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:9100\"\ntoken_env = \"MISSING\"\n",
                "http.token_env: environment variable MISSING is not set",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:9100\"\ntoken_env = \"EMPTY\"\n",
                "http.token_env: environment variable EMPTY is empty",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:9100\"\ntoken_file = \"/nonexistent/token\"\n",
                "http.token_file: cannot read /nonexistent/token",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:9100\"\ntoken_env = \"T\"\ntoken_file = \"/x\"\n",
                "http.token_env: give at most one of token_env, token_file",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(text, "bad.toml", &env)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("bad.toml: "), "{e}");
            assert!(e.contains(want), "for {text:?}\n got {e}\nwant {want}");
            assert!(!e.contains("sekrit"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = Config::parse(
            &format!(
                "[http]\nlisten = \"127.0.0.1:1\"\ntoken_file = \"{}\"\n",
                empty.display()
            ),
            "bad.toml",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("http.token_file: ") && e.ends_with(" is empty"),
            "{e}"
        );
    }

    #[test]
    fn http_unknown_keys_are_refused_with_their_position() {
        let e = error_of("[http]\nlisten = \"127.0.0.1:9100\"\ntoken = \"inline\"\n");
        assert!(e.starts_with("bad.toml:3:1:"), "{e}");
        assert!(e.contains("token"), "{e}");
        assert!(!e.contains("inline"), "{e}");
    }

    #[test]
    fn http_warnings_for_short_tokens_and_a_token_without_listen() {
        let c = Config::parse(
            "[http]\nlisten = \"127.0.0.1:9100\"\ntoken_env = \"T\"\n",
            "x.toml",
            &env_with(&[("T", "short")]),
        )
        .unwrap();
        let http: Vec<_> = c
            .warnings
            .iter()
            .filter(|w| w.starts_with("http"))
            .collect();
        assert_eq!(http.len(), 1, "{:?}", c.warnings);
        assert!(http[0].contains("shorter than 16"), "{http:?}");
        assert!(!http[0].contains("short\""));
        let c = Config::parse(
            "[http]\ntoken_env = \"T\"\n",
            "x.toml",
            &env_with(&[("T", "0123456789abcdef0123")]),
        )
        .unwrap();
        assert!(c.http.is_none());
        assert!(
            c.warnings[0].contains("HTTP surface is off"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn example_config_in_the_repository_is_valid() {
        let text = include_str!("../../../config.example.toml");
        let c = Config::parse(text, "config.example.toml", &|k| {
            (!k.starts_with("WXTOKEN_")).then(|| "example-secret".to_owned())
        })
        .unwrap();
        assert!(!c.credentials.is_empty());
        assert!(c.http.is_none(), "the example keeps HTTP off");

        // The documented [http] section works once uncommented (the
        // [[component]] example at the end is left out here).
        let (http_part, component_part) = text
            .split_once("# [[component]]")
            .expect("the example documents [[component]]");
        // (Up to the commented WeCom examples, whose `token_env` is a
        // suite's, not the HTTP surface's.)
        let http_part = http_part.split("# A WeCom").next().unwrap_or(http_part);
        let uncommented = http_part
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest == "[http]"
                        || rest.starts_with("listen =")
                        || rest.starts_with("token_env =") =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&uncommented, "config.example.toml", &|k| {
            (!k.starts_with("WXTOKEN_") || k == "WXTOKEN_HTTP_TOKEN")
                .then(|| "example-secret-0123456789".to_owned())
        })
        .unwrap();
        let http = c.http.expect("[http] uncommented");
        assert!(http.listen.ip().is_loopback() && http.token.is_some());

        // So does the WeCom example (commented out).
        let wecom: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# A WeCom"))
            .skip(1)
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with("[[")
                    || l.split_once(" = ")
                        .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            wecom.starts_with("[[credential]]\nid = \"corp-hr\""),
            "{wecom}"
        );
        let c = Config::parse(&wecom, "config.example.toml", &|k| {
            (!k.starts_with("WXTOKEN_")).then(|| "example-secret".to_owned())
        })
        .unwrap();
        let corp = &c.credentials[0];
        assert_eq!((corp.mode_name(), corp.agentid), ("wecom", Some(1000002)));
        assert_eq!(corp.tickets, vec![Ticket::Jsapi, Ticket::AgentConfig]);

        // So does the [[wecom_suite]] example.
        let suite: String = text
            .lines()
            .skip_while(|l| *l != "# [[wecom_suite]]")
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with("[[") || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&suite, "config.example.toml", &|k| {
            (!k.starts_with("WXTOKEN_")).then(|| match k {
                "WECOM_CRM_AES_KEY" => "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".to_owned(),
                _ => "example-secret".to_owned(),
            })
        })
        .unwrap();
        assert_eq!(c.suites.len(), 1, "{suite}");
        assert_eq!(c.suites[0].corp_tickets.len(), 2);

        // So does the [[component]] example, given its variables.
        let uncommented = std::iter::once("[[component]]")
            .chain(
                component_part
                    .lines()
                    .filter_map(|l| l.strip_prefix("# ").filter(|r| r.contains(" = "))),
            )
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(
            &format!("{http_part}\n{uncommented}\n"),
            "config.example.toml",
            &|k| match k {
                "WX_COMPONENT_AES_KEY" | "WX_COMPONENT_OLD_AES_KEY" => Some(AES_KEY.to_owned()),
                k if !k.starts_with("WXTOKEN_") => Some("example-secret".to_owned()),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(c.components.len(), 1);
        assert!(c.components[0].previous_encoding_aes_key.is_some());
        assert_eq!(
            c.components[0].authorizer_kinds(),
            [
                wxtoken_schema::Kind::AccessToken,
                wxtoken_schema::Kind::JsapiTicket
            ]
        );
        assert_eq!(c.components[0].calls_per_second, 100.0);
        assert_eq!(
            c.components[0].reconcile_interval,
            Duration::from_secs(86_400)
        );
    }

    const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn component_env(k: &str) -> Option<String> {
        match k {
            "CS" => Some("component-secret-0123456789".into()),
            "CT" => Some("message-token-0123".into()),
            "CK" => Some(AES_KEY.into()),
            "SHORT" => Some("c3VwZXJzZWNyZXQ".into()),
            "BADCHARS" => Some("supersecret!supersecret!supersecret!superse".into()),
            _ => None,
        }
    }

    fn component(extra: &str) -> String {
        format!(
            "[[component]]\nid = \"platform\"\nappid = \"wxc1\"\nsecret_env = \"CS\"\ntoken_env = \"CT\"\n{extra}"
        )
    }

    #[test]
    fn components_are_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old-key");
        std::fs::write(&old, format!("{AES_KEY}\n")).unwrap();
        let c = Config::parse(
            &component(&format!(
                "encoding_aes_key_env = \"CK\"\nprevious_encoding_aes_key_file = \"{}\"\n",
                old.display()
            )),
            "x.toml",
            &component_env,
        )
        .unwrap();
        assert_eq!(c.components.len(), 1);
        let p = &c.components[0];
        assert_eq!((p.id.as_str(), p.appid.as_str()), ("platform", "wxc1"));
        assert_eq!(p.secret.expose_secret(), "component-secret-0123456789");
        assert_eq!(p.token.expose_secret(), "message-token-0123");
        assert!(p.previous_encoding_aes_key.is_some());
        let shown = format!("{p:?}");
        assert!(!shown.contains("component-secret") && !shown.contains("message-token"));
        assert!(!shown.contains(AES_KEY), "{shown}");
        // Without [http] nothing can be received: a warning says so.
        assert!(
            c.warnings.iter().any(|w| w.contains("[[component]]")),
            "{:?}",
            c.warnings
        );
        let c = Config::parse("", "x.toml", &component_env).unwrap();
        assert!(c.components.is_empty());
    }

    #[test]
    fn component_errors_name_the_field_and_never_the_secret() {
        let cases: &[(String, &str)] = &[
            (
                component("encoding_aes_key_env = \"SHORT\"\n"),
                "component[0].encoding_aes_key_env: invalid EncodingAESKey: must be 43 characters",
            ),
            (
                component("encoding_aes_key_env = \"BADCHARS\"\n"),
                "component[0].encoding_aes_key_env: invalid EncodingAESKey: not base64",
            ),
            (
                component("encoding_aes_key_env = \"CK\"\nprevious_encoding_aes_key_env = \"SHORT\"\n"),
                "component[0].previous_encoding_aes_key_env: invalid EncodingAESKey",
            ),
            (
                component(""),
                "component[0].encoding_aes_key_env: component \"platform\" has no encoding_aes_key",
            ),
            (
                component("encoding_aes_key_env = \"MISSING\"\n"),
                "component[0].encoding_aes_key_env: environment variable MISSING is not set",
            ),
            (
                component("encoding_aes_key_env = \"CK\"\nencoding_aes_key_file = \"/x\"\n"),
                "component[0].encoding_aes_key_env: give exactly one of encoding_aes_key_env, encoding_aes_key_file",
            ),
            (
                "[[component]]\nid = \"p\"\nappid = \"wxc1\"\ntoken_env = \"CT\"\nencoding_aes_key_env = \"CK\"\n".into(),
                "component[0].secret_env: component \"p\" has no secret",
            ),
            (
                "[[component]]\nid = \"p\"\nappid = \"wxc1\"\nsecret_env = \"CS\"\nencoding_aes_key_env = \"CK\"\n".into(),
                "component[0].token_env: component \"p\" has no token",
            ),
            (
                component("encoding_aes_key_env = \"CK\"\n").replace("platform", "a/b"),
                "component[0].id: invalid component id",
            ),
            (
                component("encoding_aes_key_env = \"CK\"\n").replace("wxc1", "wx c1"),
                "component[0].appid: invalid component appid",
            ),
            (
                format!(
                    "{}{}",
                    component("encoding_aes_key_env = \"CK\"\n"),
                    component("encoding_aes_key_env = \"CK\"\n")
                ),
                "component[1].id: duplicate id \"platform\"",
            ),
            (
                format!(
                    "{}{}",
                    component("encoding_aes_key_env = \"CK\"\n"),
                    component("encoding_aes_key_env = \"CK\"\n").replace("platform", "other")
                ),
                "component[1].appid: wxc1 is already used by component \"platform\"",
            ),
            (
                component("encoding_aes_key_env = \"CK\"\nauthorizer_tickets = [\"wx_card\"]\n"),
                "component[0].authorizer_tickets: only \"jsapi\" is kept for authorizers",
            ),
            (
                component("encoding_aes_key_env = \"CK\"\nburst = 0\n"),
                "component[0].burst: must be at least 1",
            ),
            (
                component("encoding_aes_key_env = \"CK\"\ncalls_per_second = -1\n"),
                "component[0].calls_per_second: must be a number of calls per second",
            ),
            (
                component("encoding_aes_key_env = \"CK\"\nreconcile_interval = \"10s\"\n"),
                "component[0].reconcile_interval: must be at least 1m",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(text, "bad.toml", &component_env)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("bad.toml: "), "{e}");
            assert!(e.contains(want), "for {text:?}\n got {e}\nwant {want}");
            for secret in [
                "c3VwZXJ",
                "supersecret",
                AES_KEY,
                "component-secret",
                "message-token",
            ] {
                assert!(!e.contains(secret), "{e}");
            }
        }
        // Inline secrets are unknown keys, refused without their value.
        for key in ["secret", "token", "encoding_aes_key"] {
            let e = Config::parse(
                &component(&format!(
                    "encoding_aes_key_env = \"CK\"\n{key} = \"{AES_KEY}\"\n"
                )),
                "bad.toml",
                &component_env,
            )
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("bad.toml:7:1:"), "{e}");
            assert!(!e.contains(AES_KEY), "{e}");
        }
    }

    #[test]
    fn base_url_with_credentials_is_refused_and_never_echoed() {
        for url in [
            "https://user:hunter2@api.weixin.qq.com",
            "http://hunter2@127.0.0.1:9000",
            "https://user:hunter2@[bad",
            "ftp://user:hunter2@host",
            "hunter2",
        ] {
            let e = error_of(&format!("[wechat]\nbase_url = \"{url}\"\n"));
            assert!(e.starts_with("bad.toml: wechat.base_url: "), "{e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
        let e = error_of("[wechat]\nbase_url = \"https://user:hunter2@api.weixin.qq.com\"\n");
        assert!(e.contains("must not contain user:password@"), "{e}");
    }

    #[test]
    fn a_redis_url_that_does_not_parse_is_never_echoed() {
        for url in ["redis:/u:hunter2@h", "redis//:hunter2@h:1", "hunter2"] {
            let e = error_of(&format!("[redis]\nurl = \"{url}\"\n"));
            assert!(
                e.starts_with("bad.toml: redis.url: not a usable Redis URL"),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{url}: {e}");
            let e = Config::parse("", "bad.toml", &move |k| {
                (k == ENV_REDIS_URL).then(|| url.to_owned())
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("bad.toml: WXTOKEN_REDIS_URL: not a usable Redis URL"),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }

    #[test]
    fn a_secret_pasted_as_a_variable_name_is_never_echoed() {
        let cases = [
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"0123456789abcdef0123456789abcdef\"\n",
                "credential[0].secret_env: secret_env is not a valid environment variable name",
                "0123456789abcdef",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"p@ss w0rd!\"\n",
                "credential[0].secret_env: secret_env is not a valid environment variable name",
                "p@ss",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"abcdef0123456789abcdef0123456789\"\n",
                "credential[0].secret_env: environment variable named in secret_env (the name looks like a secret",
                "abcdef0123456789",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:1\"\ntoken_env = \"tok-en/secret\"\n",
                "http.token_env: token_env is not a valid environment variable name",
                "tok-en",
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_file = \"abcdef0123456789abcdef0123456789\"\n",
                "credential[0].secret_file: cannot read the file named in secret_file: ",
                "abcdef0123456789",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:1\"\ntoken_file = \"s3cr3tt0k3nvalue42\"\n",
                "http.token_file: cannot read the file named in token_file: ",
                "s3cr3t",
            ),
        ];
        for (text, want, secret) in cases {
            let e = error_of(text);
            assert!(e.contains(want), "for {text:?}\n got {e}\nwant {want}");
            assert!(!e.contains(secret), "{e}");
        }
    }

    #[test]
    fn a_wrongly_typed_secret_is_not_quoted_in_the_parse_error() {
        for (text, line) in [
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret = 918273645\n",
                4,
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret = 9182.73645\n",
                4,
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret = [918273645]\n",
                4,
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = 918273645\n",
                4,
            ),
            (
                "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_file = 918273645\n",
                4,
            ),
            (
                "[http]\nlisten = \"127.0.0.1:1\"\ntoken_env = 918273645\n",
                3,
            ),
            (
                "[http]\nlisten = \"127.0.0.1:1\"\ntoken_file = 918273645\n",
                3,
            ),
            ("[redis]\nurl = 918273645\n", 2),
        ] {
            let e = error_of(text);
            assert!(e.starts_with(&format!("bad.toml:{line}:")), "{e}");
            assert!(e.contains("expected a quoted string"), "{e}");
            assert!(!e.contains("918273645") && !e.contains("9182.7"), "{e}");
        }
    }

    #[test]
    fn secret_files_must_be_small_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE as usize + 1]).unwrap();
        let just = dir.path().join("just");
        std::fs::write(&just, vec![b'y'; MAX_SECRET_FILE as usize]).unwrap();
        let cred = |path: &str| {
            format!("[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_file = \"{path}\"\n")
        };
        // /dev/null, not /dev/zero: a regression must fail, not eat the machine's memory.
        let e = error_of(&cred("/dev/null"));
        assert!(
            e.contains("credential[0].secret_file: /dev/null is not a regular file"),
            "{e}"
        );
        let e = error_of(&cred(&dir.path().display().to_string()));
        assert!(e.ends_with("is not a regular file"), "{e}");
        let e = error_of(&cred(&big.display().to_string()));
        assert!(e.ends_with("is larger than 64 KiB"), "{e}");
        let c =
            Config::parse(&cred(&just.display().to_string()), "x.toml", &env_with(&[])).unwrap();
        assert_eq!(c.credentials[0].secret.expose_secret().len(), 65536);
        let e = error_of("[http]\nlisten = \"127.0.0.1:1\"\ntoken_file = \"/dev/null\"\n");
        assert!(
            e.contains("http.token_file: /dev/null is not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn durations_have_upper_bounds_named_in_the_error() {
        let cases: &[(&str, &str)] = &[
            (
                "[refresh]\nlock_ttl = \"2h\"\n",
                "refresh.lock_ttl: 2h is more than the maximum of 1h",
            ),
            (
                "[refresh]\nquota_pause = \"8days\"\n",
                "refresh.quota_pause: 8days is more than the maximum of 7days",
            ),
            (
                "[refresh]\nmargin = \"25h\"\n",
                "refresh.margin: 1day 1h is more than the maximum of 1day",
            ),
            (
                "[refresh]\nretry_max = \"2days\"\n",
                "refresh.retry_max: 2days is more than the maximum of 1day",
            ),
            (
                "[refresh]\ncheck_interval = \"61m\"\n",
                "refresh.check_interval: 1h 1m is more than the maximum of 1h",
            ),
            (
                "[refresh]\nmin_interval = \"100years\"\n",
                "refresh.min_interval: ",
            ),
            (
                "[refresh]\nconfig_error_retry = \"30days\"\n",
                "refresh.config_error_retry: 30days is more than the maximum of 1day",
            ),
            (
                "[wechat]\nrequest_timeout = \"6m\"\n",
                "wechat.request_timeout: 6m is more than the maximum of 5m",
            ),
            (
                "[wechat]\nconnect_timeout = \"1h\"\n",
                "wechat.connect_timeout: 1h is more than the maximum of 5m",
            ),
            (
                "[wechat]\nconnect_timeout = \"0s\"\n",
                "wechat.connect_timeout: must be more than 0",
            ),
            (
                "[redis]\ntimeout = \"5ms\"\n",
                "redis.timeout: 5ms is less than the minimum of 10ms",
            ),
            (
                "[redis]\ntimeout = \"2m\"\n",
                "redis.timeout: 2m is more than the maximum of 1m",
            ),
            (
                "[redis]\ntimeout = \"0s\"\n",
                "redis.timeout: 0s is less than the minimum of 10ms",
            ),
        ];
        for (text, want) in cases {
            let e = error_of(text);
            assert!(e.starts_with("bad.toml: "), "{e}");
            assert!(e.contains(want), "for {text:?}\n got {e}\nwant {want}");
        }
        // The largest allowed values work together.
        Config::parse(
            "[redis]\ntimeout = \"60s\"\n[wechat]\nrequest_timeout = \"5m\"\nconnect_timeout = \"5m\"\n\
             [refresh]\nlock_ttl = \"1h\"\nquota_pause = \"7days\"\nmargin = \"1day\"\nretry_max = \"1day\"\n\
             check_interval = \"1h\"\nmin_interval = \"1day\"\n",
            "x.toml",
            &env_with(&[]),
        )
        .unwrap();
    }
}
