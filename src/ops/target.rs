//! Where the operator's commands find Redis: the `--redis-url`,
//! `--namespace` and `--config` flags, resolved in a fixed order, and the
//! connection made with bounded timeouts.
//!
//! Resolution: `--redis-url`, else `$WXTOKEN_REDIS_URL`, else `redis.url` of
//! the `--config` file, else `redis://127.0.0.1:6379`; `--namespace`, else
//! `redis.namespace` of the config, else `wxtoken`; each TLS file
//! (`--tls-ca-file`, `--tls-cert-file`, `--tls-key-file`) from its flag, else
//! its `$WXTOKEN_REDIS_TLS_*_FILE` variable, else `redis.tls_*_file` of the
//! config. The client is built by `wxtoken-connect`, as the refresher's and
//! the client crate's are. The URL may carry a
//! password: it is only ever shown redacted, and scrubbed from error texts; a
//! URL that does not parse is never shown at all (it cannot be redacted
//! reliably): the error names where it came from instead.
//! This module must not read or write any wxtoken key.

use anyhow::{anyhow, Result};
use redis::IntoConnectionInfo;
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wxtoken_connect::Con;
use wxtoken_connect::{ConnectError, TlsFile, TlsFiles};
use wxtoken_refresher::config::{
    redacted_url, RefreshConfig, ENV_REDIS_TLS_CA_FILE, ENV_REDIS_TLS_CERT_FILE,
    ENV_REDIS_TLS_KEY_FILE, ENV_REDIS_URL,
};
use wxtoken_schema::{Kind, DEFAULT_NAMESPACE};

/// Used when neither the flags, the environment nor a config name a Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Bound on connecting to Redis and on every command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags every operator command shares.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// Redis URL [default: $WXTOKEN_REDIS_URL, else redis.url of --config,
    /// else redis://127.0.0.1:6379].
    /// ($WXTOKEN_REDIS_URL is read in `resolve`, not by clap, so that an
    /// error can say which of the two holds a bad URL.)
    #[arg(long)]
    redis_url: Option<String>,
    /// Key namespace [default: redis.namespace of --config, else wxtoken].
    #[arg(long)]
    namespace: Option<String>,
    /// A refresher config file: supplies the Redis URL, the namespace and the
    /// credentials expected to exist. Like `run`, it needs the secrets'
    /// environment variables (or files).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// PEM CA file the server's certificate of a rediss:// URL must chain to
    /// [default: redis.tls_ca_file of --config, else the system's roots].
    #[arg(long, env = ENV_REDIS_TLS_CA_FILE, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for a Redis that requires one (mutual TLS)
    /// [default: redis.tls_cert_file of --config].
    #[arg(long, env = ENV_REDIS_TLS_CERT_FILE, value_name = "FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM key of --tls-cert-file [default: redis.tls_key_file of --config].
    #[arg(long, env = ENV_REDIS_TLS_KEY_FILE, value_name = "FILE")]
    tls_key_file: Option<PathBuf>,
}

/// A credential the `--config` file says should be refreshed.
#[derive(Debug, Clone)]
pub struct Configured {
    /// Credential id.
    pub id: String,
    /// Access token and configured tickets.
    pub kinds: Vec<Kind>,
}

/// A third-party platform the `--config` file lists.
#[derive(Debug, Clone)]
pub struct ConfiguredComponent {
    /// Its component appid.
    pub appid: String,
    /// The values kept for each authorizer: access token, then tickets.
    pub authorizer_kinds: Vec<Kind>,
}

/// The resolved Redis and namespace.
pub struct Target {
    url: SecretString,
    /// TLS files of a `rediss://` URL.
    tls: TlsFiles,
    /// Where the URL came from, for errors: the flag, the variable, the config.
    source: String,
    /// Key namespace (validated).
    pub namespace: String,
    /// Credentials from `--config`, if one was given.
    pub configured: Vec<Configured>,
    /// Third-party platforms from `--config`, if one was given.
    pub components: Vec<ConfiguredComponent>,
    /// Whether `--config` was given.
    pub has_config: bool,
    /// The `[refresh]` settings of `--config`, if one was given.
    pub refresh: Option<RefreshConfig>,
}

impl TargetArgs {
    /// Applies the resolution order; loads `--config` if given.
    pub fn resolve(&self) -> Result<Target> {
        let config = match &self.config {
            // The config's own message names the file and the field.
            Some(path) => Some(wxtoken_refresher::Config::load(path)?),
            None => None,
        };
        let from_env = std::env::var(ENV_REDIS_URL).ok().filter(|u| !u.is_empty());
        let (url, source) = match (&self.redis_url, from_env, &config) {
            (Some(url), _, _) if !url.is_empty() => {
                (SecretString::from(url.clone()), "--redis-url".to_owned())
            }
            (_, Some(url), _) => (SecretString::from(url), format!("${ENV_REDIS_URL}")),
            (_, None, Some(cfg)) => (
                cfg.redis.url.clone(),
                format!(
                    "redis.url of {}",
                    self.config
                        .as_deref()
                        .unwrap_or(Path::new("--config"))
                        .display()
                ),
            ),
            _ => (
                SecretString::from(DEFAULT_REDIS_URL.to_owned()),
                "the default Redis URL".to_owned(),
            ),
        };
        // Each TLS file from its flag (or variable), else from the config.
        let from_config = |key: &str| match &self.config {
            Some(path) => format!("redis.{key} of {}", path.display()),
            None => format!("redis.{key}"),
        };
        let pick = |flag: &Option<PathBuf>,
                    name: &str,
                    key: &str,
                    of: fn(&TlsFiles) -> &Option<PathBuf>| {
            match (flag, &config) {
                (Some(p), _) => (Some(p.clone()), name.to_owned()),
                (None, Some(cfg)) => (of(&cfg.redis.tls).clone(), from_config(key)),
                (None, None) => (None, name.to_owned()),
            }
        };
        let (ca_file, ca_source) = pick(&self.tls_ca_file, "--tls-ca-file", "tls_ca_file", |t| {
            &t.ca_file
        });
        let (cert_file, cert_source) = pick(
            &self.tls_cert_file,
            "--tls-cert-file",
            "tls_cert_file",
            |t| &t.cert_file,
        );
        let (key_file, key_source) =
            pick(&self.tls_key_file, "--tls-key-file", "tls_key_file", |t| {
                &t.key_file
            });
        let tls = TlsFiles {
            ca_file,
            cert_file,
            key_file,
        };
        check_url(&url, &source, &tls, [&ca_source, &cert_source, &key_source])?;
        let namespace = match (&self.namespace, &config) {
            (Some(ns), _) => ns.clone(),
            (None, Some(cfg)) => cfg.redis.namespace.clone(),
            (None, None) => DEFAULT_NAMESPACE.to_owned(),
        };
        wxtoken_schema::validate_name("namespace", &namespace)?;
        let refresh = config.as_ref().map(|cfg| cfg.refresh.clone());
        let has_config = config.is_some();
        let components = config
            .as_ref()
            .map(|cfg| {
                cfg.components
                    .iter()
                    .map(|c| ConfiguredComponent {
                        appid: c.appid.clone(),
                        authorizer_kinds: c.authorizer_kinds(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let configured = config
            .map(|cfg| {
                let suites = cfg.suites.iter().map(|s| Configured {
                    id: wxtoken_schema::suite_id(&s.suite_id),
                    kinds: vec![Kind::SuiteAccessToken],
                });
                cfg.credentials
                    .iter()
                    .map(|c| Configured {
                        id: c.id.clone(),
                        kinds: std::iter::once(Kind::AccessToken)
                            .chain(c.tickets.iter().map(|t| t.kind()))
                            .collect(),
                    })
                    .chain(suites)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Target {
            url,
            tls,
            source,
            namespace,
            configured,
            components,
            has_config,
            refresh,
        })
    }
}

impl Target {
    /// Whether `--config` lists `id`: a credential, a suite's
    /// `suite/<suite id>`, or a platform's `component/<appid>`.
    pub fn is_configured(&self, id: &str) -> bool {
        self.configured.iter().any(|c| c.id == id)
            || self
                .components
                .iter()
                .any(|c| wxtoken_schema::component_id(&c.appid) == id)
    }

    /// The Redis URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redacted_url(&self.url)
    }

    /// Connects (a server, the primary Sentinel names, or a Redis Cluster),
    /// bounded by a timeout, and checks the connection with a `PING`.
    /// Errors name the redacted URL.
    pub async fn connect(&self) -> Result<Con> {
        let shown = self.redacted_url();
        let target = wxtoken_connect::Target::parse(self.url.expose_secret(), &self.tls)
            .map_err(|e| anyhow!("{}: {e}", self.source))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let managed = wxtoken_connect::Managed::new(target, &self.tls, config, REDIS_TIMEOUT)
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot connect to Redis at {shown}: {}",
                    self.scrub(&e.to_string())
                )
            })?;
        let mut con = managed.con();
        let pong = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            redis::cmd("PING").query_async::<String>(&mut con),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no answer in time",
            )))
        });
        pong.map_err(|e| {
            anyhow!(
                "cannot connect to Redis at {shown}: {}",
                self.scrub(&wxtoken_connect::describe(&e, &self.tls))
            )
        })?;
        Ok(con)
    }

    /// An error while `doing` something with Redis, naming the redacted URL.
    pub fn failed(&self, doing: &str, e: &anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{doing} (Redis at {}): {}",
            self.redacted_url(),
            self.scrub(&format!("{e:#}"))
        )
    }

    /// `text` with the URL's password (as written and percent-decoded)
    /// replaced by `***`, for error messages from the Redis client.
    pub fn scrub(&self, text: &str) -> String {
        let raw = self.url.expose_secret();
        let mut secrets = Vec::new();
        if let (Some(scheme_end), Some(at)) = (raw.find("://"), raw.rfind('@')) {
            if let Some((_, pass)) = raw.get(scheme_end + 3..at).and_then(|u| u.split_once(':')) {
                secrets.push(pass.to_owned());
            }
        }
        if let Ok(info) = raw.into_connection_info() {
            if let Some(pass) = info.redis_settings().password() {
                secrets.push(pass.to_owned());
            }
        }
        let mut out = text.to_owned();
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            out = out.replace(s.as_str(), "***");
        }
        out
    }
}

/// Refuses a URL or TLS files the Redis client cannot use, naming where the
/// value came from (`source` for the URL, `tls_sources` for the CA,
/// certificate and key files); never the URL.
fn check_url(
    url: &SecretString,
    source: &str,
    tls: &TlsFiles,
    tls_sources: [&str; 3],
) -> Result<()> {
    let named = |which: Option<TlsFile>| match which {
        Some(TlsFile::Ca) => tls_sources[0],
        Some(TlsFile::Cert) => tls_sources[1],
        Some(TlsFile::Key) => tls_sources[2],
        None => source,
    };
    wxtoken_connect::Target::parse(url.expose_secret(), tls)
        .map(drop)
        .map_err(|e| match &e {
            ConnectError::Url { .. } | ConnectError::Sentinel { .. } => anyhow!("{source}: {e}"),
            ConnectError::File { which, .. } => anyhow!("{}: {e}", named(Some(*which))),
            ConnectError::Mismatch { which, .. } => anyhow!("{}: {e}", named(*which)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target {
            url: SecretString::from(url.to_owned()),
            tls: TlsFiles::default(),
            source: "--redis-url".into(),
            namespace: DEFAULT_NAMESPACE.into(),
            configured: Vec::new(),
            components: Vec::new(),
            has_config: false,
            refresh: None,
        }
    }

    #[test]
    fn passwords_never_show() {
        let t = target("redis://user:hun%40ter2@127.0.0.1:1/0");
        assert_eq!(t.redacted_url(), "redis://user:***@127.0.0.1:1/0");
        assert_eq!(t.scrub("x hun%40ter2 y hun@ter2"), "x *** y ***");
        let t = target("redis://127.0.0.1:6379");
        assert_eq!(t.scrub("plain"), "plain");
    }

    #[test]
    fn a_url_that_does_not_parse_is_named_by_its_source_never_shown() {
        let e = check_url(
            &SecretString::from("redis:/u:hunter2@h".to_owned()),
            "--redis-url",
            &TlsFiles::default(),
            ["--tls-ca-file", "--tls-cert-file", "--tls-key-file"],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--redis-url: not a usable Redis URL"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
