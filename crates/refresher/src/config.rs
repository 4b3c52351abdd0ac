//! The refresher's configuration: TOML file → validated [`Config`].
//!
//! Everything that can be wrong with a config is found here, at start-up, and
//! reported as one [`ConfigError`] naming the field (and the file position
//! where the TOML parser gives one). Secrets are resolved here, from
//! environment variables or files, into [`SecretString`]s that never print.
//! This module must not do network I/O.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wxtoken_schema::validate_name;

/// Environment variable that overrides `redis.url`.
pub const ENV_REDIS_URL: &str = "WXTOKEN_REDIS_URL";
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `GET /cgi-bin/token`: every fetch invalidates the previous token
    /// after WeChat's overlap (5 minutes).
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

/// A JS-SDK ticket to keep alongside the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ticket {
    /// `jsapi_ticket`.
    Jsapi,
    /// `wx_card` api_ticket.
    WxCard,
}

impl Ticket {
    /// The stored kind.
    pub fn kind(self) -> wxtoken_schema::Kind {
        match self {
            Ticket::Jsapi => wxtoken_schema::Kind::JsapiTicket,
            Ticket::WxCard => wxtoken_schema::Kind::WxCardTicket,
        }
    }

    /// The `type` parameter of `/cgi-bin/ticket/getticket`.
    pub fn wechat_type(self) -> &'static str {
        match self {
            Ticket::Jsapi => "jsapi",
            Ticket::WxCard => "wx_card",
        }
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
}

/// `[wechat]`.
#[derive(Debug, Clone)]
pub struct WechatConfig {
    /// API base URL, no trailing slash.
    pub base_url: String,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// WeChat calls one replica makes at once, at most.
    pub max_concurrent_calls: usize,
    /// WeChat calls per second to this host, shared by all replicas of the
    /// namespace; 0 = no limit.
    pub calls_per_second: f64,
    /// Calls that may start at once after a quiet spell.
    pub burst: u32,
}

/// `[refresh]`.
#[derive(Debug, Clone)]
pub struct RefreshConfig {
    /// Refresh when less than this is left…
    pub margin: Duration,
    /// …but never more than this fraction of the token's lifetime.
    pub max_margin_fraction: f64,
    /// Random extra delay spread over replicas and credentials (at most half the margin).
    pub jitter: Duration,
    /// Lock lease; renewed every third of it while WeChat is being called.
    pub lock_ttl: Duration,
    /// First retry delay after a transient failure; doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// Cap of the transient-failure backoff.
    pub retry_max: Duration,
    /// Retry delay after a configuration fault (wrong secret, IP whitelist…).
    pub config_error_retry: Duration,
    /// Pause after WeChat reports the daily quota exhausted (45009).
    pub quota_pause: Duration,
    /// Longest sleep between two looks at Redis, whatever the schedule says.
    pub check_interval: Duration,
    /// Minimum time between a refresh and a refresh requested by a report
    /// (passive refresh), so a token that WeChat keeps refusing for another
    /// reason cannot cause a refresh loop.
    pub min_interval: Duration,
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
    /// WeChat appid.
    pub appid: String,
    /// AppSecret. Never printed.
    pub secret: SecretString,
    /// Token API.
    pub mode: Mode,
    /// Tickets to keep.
    pub tickets: Vec<Ticket>,
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

// ---- raw file shape ------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    redis: RawRedis,
    #[serde(default)]
    wechat: RawWechat,
    #[serde(default)]
    refresh: RawRefresh,
    #[serde(default)]
    replica: RawReplica,
    #[serde(default, rename = "credential")]
    credentials: Vec<RawCredential>,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRedis {
    url: String,
    namespace: String,
    /// No longer used (one multiplexed connection); accepted with a warning.
    pool_size: Option<usize>,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
}

impl Default for RawRedis {
    fn default() -> Self {
        RawRedis {
            url: "redis://127.0.0.1:6379".into(),
            namespace: wxtoken_schema::DEFAULT_NAMESPACE.into(),
            pool_size: None,
            timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWechat {
    base_url: String,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    max_concurrent_calls: usize,
    calls_per_second: f64,
    burst: u32,
}

impl Default for RawWechat {
    fn default() -> Self {
        RawWechat {
            base_url: "https://api.weixin.qq.com".into(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_concurrent_calls: 32,
            calls_per_second: 200.0,
            burst: 50,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRefresh {
    #[serde(with = "humantime_serde")]
    margin: Duration,
    max_margin_fraction: f64,
    #[serde(with = "humantime_serde")]
    jitter: Duration,
    #[serde(with = "humantime_serde")]
    lock_ttl: Duration,
    #[serde(with = "humantime_serde")]
    retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    retry_max: Duration,
    #[serde(with = "humantime_serde")]
    config_error_retry: Duration,
    #[serde(with = "humantime_serde")]
    quota_pause: Duration,
    #[serde(with = "humantime_serde")]
    check_interval: Duration,
    #[serde(with = "humantime_serde")]
    min_interval: Duration,
}

impl Default for RawRefresh {
    fn default() -> Self {
        RawRefresh {
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
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplica {
    id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    id: String,
    appid: String,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    secret: Option<SecretString>,
    #[serde(default = "default_mode")]
    mode: Mode,
    #[serde(default)]
    tickets: Vec<Ticket>,
}

fn default_mode() -> Mode {
    Mode::Classic
}

// ---- loading -------------------------------------------------------------

impl Config {
    /// Reads and validates the file at `path`, applying environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
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
        validate(raw, origin, env)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn validate(
    raw: RawConfig,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        path: origin.to_owned(),
        field: field.to_owned(),
        message,
    };
    let mut warnings = Vec::new();

    // [redis]
    let url = env(ENV_REDIS_URL).unwrap_or(raw.redis.url);
    let url_field = if env(ENV_REDIS_URL).is_some() {
        ENV_REDIS_URL
    } else {
        "redis.url"
    };
    let url = SecretString::from(url);
    if let Err(e) = redis::Client::open(url.expose_secret()) {
        return Err(invalid(
            url_field,
            format!(
                "{} is not a usable Redis URL ({:?}); expected redis://[user:password@]host:port[/db]",
                redacted_url(&url),
                e.kind()
            ),
        ));
    }
    validate_name("namespace", &raw.redis.namespace)
        .map_err(|e| invalid("redis.namespace", e.to_string()))?;
    if raw.redis.pool_size.is_some() {
        warnings.push(
            "redis.pool_size is no longer used (each replica multiplexes one connection); remove it"
                .into(),
        );
    }
    if raw.wechat.max_concurrent_calls == 0 {
        return Err(invalid(
            "wechat.max_concurrent_calls",
            "must be at least 1".into(),
        ));
    }
    if !(raw.wechat.calls_per_second.is_finite() && raw.wechat.calls_per_second >= 0.0) {
        return Err(invalid(
            "wechat.calls_per_second",
            "must be a number of calls per second, 0 for no limit".into(),
        ));
    }
    if raw.wechat.burst == 0 {
        return Err(invalid("wechat.burst", "must be at least 1".into()));
    }
    if raw.redis.timeout.is_zero() {
        return Err(invalid("redis.timeout", "must be more than 0".into()));
    }

    // [wechat]
    let base_url = raw.wechat.base_url.trim_end_matches('/').to_owned();
    match reqwest::Url::parse(&base_url) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
        Ok(u) if u.scheme() == "http" && u.host().is_some() => {
            // The classic token API carries the AppSecret in its URL.
            let loopback = u.host_str().is_some_and(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if !loopback {
                warnings.push(format!(
                    "wechat.base_url {base_url:?} is plain http: AppSecrets cross the network unencrypted; use https unless this is a trusted proxy"
                ));
            }
        }
        Ok(_) => {
            return Err(invalid(
                "wechat.base_url",
                format!("{base_url:?} must be an http:// or https:// URL with a host"),
            ))
        }
        Err(e) => {
            return Err(invalid(
                "wechat.base_url",
                format!("{base_url:?} is not a URL: {e}"),
            ))
        }
    }
    if raw.wechat.request_timeout.is_zero() || raw.wechat.connect_timeout.is_zero() {
        return Err(invalid(
            "wechat.request_timeout",
            "timeouts must be more than 0".into(),
        ));
    }

    // [refresh]
    let r = raw.refresh;
    if !(r.max_margin_fraction > 0.0 && r.max_margin_fraction < 1.0) {
        return Err(invalid(
            "refresh.max_margin_fraction",
            format!(
                "{} must be between 0 and 1 (exclusive)",
                r.max_margin_fraction
            ),
        ));
    }
    if r.margin.is_zero() {
        return Err(invalid("refresh.margin", "must be more than 0".into()));
    }
    if r.lock_ttl <= raw.wechat.request_timeout {
        return Err(invalid(
            "refresh.lock_ttl",
            format!(
                "{} must be longer than wechat.request_timeout ({}), so a lock outlives the call it guards",
                humantime::format_duration(r.lock_ttl),
                humantime::format_duration(raw.wechat.request_timeout)
            ),
        ));
    }
    for (field, d) in [
        ("refresh.retry_initial", r.retry_initial),
        ("refresh.retry_max", r.retry_max),
        ("refresh.config_error_retry", r.config_error_retry),
        ("refresh.quota_pause", r.quota_pause),
        ("refresh.check_interval", r.check_interval),
    ] {
        if d.is_zero() {
            return Err(invalid(field, "must be more than 0".into()));
        }
    }
    if r.retry_max < r.retry_initial {
        return Err(invalid(
            "refresh.retry_max",
            "must not be shorter than refresh.retry_initial".into(),
        ));
    }

    // [replica]
    if let Some(id) = &raw.replica.id {
        validate_name("replica id", id).map_err(|e| invalid("replica.id", e.to_string()))?;
    }

    // [http]
    let http = validate_http(raw.http, &invalid, env, &mut warnings)?;

    // [[credential]]
    if raw.credentials.is_empty() {
        warnings.push("no [[credential]] configured: this replica has nothing to refresh".into());
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut appids: HashMap<(String, Mode), String> = HashMap::new();
    let mut credentials = Vec::with_capacity(raw.credentials.len());
    for (i, c) in raw.credentials.into_iter().enumerate() {
        let at = |f: &str| format!("credential[{i}].{f}");
        validate_name("credential id", &c.id).map_err(|e| invalid(&at("id"), e.to_string()))?;
        if let Some(prev) = ids.insert(c.id.clone(), i) {
            return Err(invalid(
                &at("id"),
                format!("duplicate id {:?} (also credential[{prev}])", c.id),
            ));
        }
        if c.appid.trim().is_empty() || c.appid.chars().any(char::is_whitespace) {
            return Err(invalid(
                &at("appid"),
                format!("{:?} is not an appid", c.appid),
            ));
        }
        if let Some(other) = appids.insert((c.appid.clone(), c.mode), c.id.clone()) {
            return Err(invalid(
                &at("appid"),
                format!(
                    "{} is already used by credential {other:?} in {} mode; two refreshers of one appid and mode would invalidate each other's tokens",
                    c.appid,
                    c.mode.as_str()
                ),
            ));
        }
        let sources = [
            c.secret_env.is_some(),
            c.secret_file.is_some(),
            c.secret.is_some(),
        ];
        let secret = match (c.secret_env, c.secret_file, c.secret) {
            _ if sources.iter().filter(|s| **s).count() > 1 => {
                return Err(invalid(
                    &at("secret_env"),
                    "give exactly one of secret_env, secret_file, secret".into(),
                ))
            }
            (Some(var), None, None) => match env(&var) {
                Some(v) if !v.trim().is_empty() => SecretString::from(v.trim().to_owned()),
                Some(_) => {
                    return Err(invalid(
                        &at("secret_env"),
                        format!("environment variable {var} is empty"),
                    ))
                }
                None => {
                    return Err(invalid(
                        &at("secret_env"),
                        format!("environment variable {var} is not set"),
                    ))
                }
            },
            (None, Some(file), None) => match std::fs::read_to_string(&file) {
                Ok(v) if !v.trim().is_empty() => SecretString::from(v.trim().to_owned()),
                Ok(_) => {
                    return Err(invalid(
                        &at("secret_file"),
                        format!("{} is empty", file.display()),
                    ))
                }
                Err(e) => {
                    return Err(invalid(
                        &at("secret_file"),
                        format!("cannot read {}: {e}", file.display()),
                    ))
                }
            },
            (None, None, Some(inline)) => {
                if inline.expose_secret().trim().is_empty() {
                    return Err(invalid(&at("secret"), "is empty".into()));
                }
                warnings.push(format!(
                    "{}: the secret of credential {:?} is written inline in the config file; prefer secret_env or secret_file",
                    at("secret"),
                    c.id
                ));
                inline
            }
            _ => {
                return Err(invalid(
                    &at("secret_env"),
                    format!(
                        "credential {:?} has no secret: set secret_env or secret_file",
                        c.id
                    ),
                ))
            }
        };
        let tickets = c.tickets;
        let distinct: std::collections::HashSet<_> = tickets.iter().collect();
        if distinct.len() != tickets.len() {
            return Err(invalid(&at("tickets"), "lists a ticket twice".into()));
        }
        credentials.push(Credential {
            id: c.id,
            appid: c.appid,
            secret,
            mode: c.mode,
            tickets,
        });
    }

    Ok(Config {
        redis: RedisConfig {
            url,
            namespace: raw.redis.namespace,
            timeout: raw.redis.timeout,
        },
        wechat: WechatConfig {
            base_url,
            connect_timeout: raw.wechat.connect_timeout,
            request_timeout: raw.wechat.request_timeout,
            max_concurrent_calls: raw.wechat.max_concurrent_calls,
            calls_per_second: raw.wechat.calls_per_second,
            burst: raw.wechat.burst,
        },
        refresh: RefreshConfig {
            margin: r.margin,
            max_margin_fraction: r.max_margin_fraction,
            jitter: r.jitter,
            lock_ttl: r.lock_ttl,
            retry_initial: r.retry_initial,
            retry_max: r.retry_max,
            config_error_retry: r.config_error_retry,
            quota_pause: r.quota_pause,
            check_interval: r.check_interval,
            min_interval: r.min_interval,
        },
        replica_id: raw.replica.id,
        credentials,
        http,
        warnings,
    })
}

/// Tokens shorter than this get a start-up warning.
const SHORT_HTTP_TOKEN: usize = 16;

fn validate_http(
    raw: RawHttp,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<HttpConfig>, ConfigError> {
    let Some(listen) = raw.listen else {
        if raw.token_env.is_some() || raw.token_file.is_some() {
            warnings.push(
                "http: a token is configured but http.listen is not: the HTTP surface is off"
                    .into(),
            );
        }
        return Ok(None);
    };
    let listen: SocketAddr = listen.trim().parse().map_err(|_| {
        invalid(
            "http.listen",
            format!("{listen:?} is not a socket address; expected e.g. \"127.0.0.1:9100\" or \"[::]:9100\""),
        )
    })?;
    let token = match (raw.token_env, raw.token_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "http.token_env",
                "give at most one of token_env, token_file".into(),
            ))
        }
        (Some(var), None) => match env(&var) {
            Some(v) if !v.trim().is_empty() => Some(SecretString::from(v.trim().to_owned())),
            Some(_) => {
                return Err(invalid(
                    "http.token_env",
                    format!("environment variable {var} is empty"),
                ))
            }
            None => {
                return Err(invalid(
                    "http.token_env",
                    format!("environment variable {var} is not set"),
                ))
            }
        },
        (None, Some(file)) => match std::fs::read_to_string(&file) {
            Ok(v) if !v.trim().is_empty() => Some(SecretString::from(v.trim().to_owned())),
            Ok(_) => {
                return Err(invalid(
                    "http.token_file",
                    format!("{} is empty", file.display()),
                ))
            }
            Err(e) => {
                return Err(invalid(
                    "http.token_file",
                    format!("cannot read {}: {e}", file.display()),
                ))
            }
        },
        (None, None) => None,
    };
    match &token {
        None if !listen.ip().is_loopback() => {
            return Err(invalid(
                "http.listen",
                format!(
                    "{listen} is not a loopback address; refusing to expose POST /refresh without a token: set http.token_env or http.token_file"
                ),
            ))
        }
        Some(t) if t.expose_secret().chars().count() < SHORT_HTTP_TOKEN => {
            warnings.push(format!(
                "http: the bearer token is shorter than {SHORT_HTTP_TOKEN} characters; use a long random one (e.g. `openssl rand -hex 32`)"
            ));
        }
        _ => {}
    }
    Ok(Some(HttpConfig { listen, token }))
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

        // The documented [http] section works once uncommented.
        let uncommented = text
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
    }
}
