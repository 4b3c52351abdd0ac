//! Simulator configuration: which apps exist (appid + secret) and the timing rules WeChat
//! enforces (token lifetime, overlap after replacement, daily quotas, force-refresh limits).
//!
//! Parsed from TOML for `wxtoken sim --config sim.toml` (see `sim.example.toml`), or built in
//! code by tests. Defaults are WeChat's real numbers; tests shorten the durations.
//!
//! Must not: echo an app secret anywhere (Debug output, error messages), or silently accept
//! unknown keys (a typo in a config file must be an error naming the key and its position).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the simulator needs to start.
///
/// `Default` is: no apps, WeChat's real timing. Add apps with [`SimConfig::with_app`] or at
/// run time with [`crate::Admin::add_app`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// The apps the simulator knows. In TOML this is the `[[app]]` array.
    #[serde(rename = "app", default)]
    pub apps: Vec<AppConfig>,
    /// Timing and quota rules (the `[timing]` table).
    #[serde(default)]
    pub timing: Timing,
}

/// One WeChat app (公众号 / 小程序) the simulator accepts.
///
/// `Debug` redacts the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The appid, e.g. `wx0000000000000001`.
    pub appid: String,
    /// The AppSecret. Real ones are 32 lowercase hex characters; the simulator accepts any
    /// non-empty string but uses the 32-hex shape to choose between 40125 and 40001 when a
    /// caller sends a wrong secret.
    pub secret: String,
}

impl AppConfig {
    /// An app with the given appid and secret.
    pub fn new(appid: impl Into<String>, secret: impl Into<String>) -> AppConfig {
        AppConfig {
            appid: appid.into(),
            secret: secret.into(),
        }
    }
}

impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("appid", &self.appid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// WeChat's timing and quota rules. Every field has WeChat's real value as its default; in TOML
/// durations are humantime strings (`"7200s"`, `"300ms"`, `"2h"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// Lifetime of access tokens and tickets (7200 s). Reported on the wire as whole seconds,
    /// at least 1.
    #[serde(with = "humantime_serde")]
    pub expires_in: Duration,
    /// How long a replaced token stays valid (300 s).
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
    /// Successful classic `/cgi-bin/token` fetches per app per day (2000).
    pub daily_quota: u32,
    /// `/cgi-bin/stable_token` calls per app per day (10000).
    pub stable_daily_quota: u32,
    /// Successful `/cgi-bin/ticket/getticket` fetches per app per day (2000).
    pub ticket_daily_quota: u32,
    /// Stable-token `force_refresh` calls per app per day (20).
    pub force_refresh_daily_limit: u32,
    /// Minimum spacing of two effective stable-token force refreshes (30 s); a force refresh
    /// inside it changes nothing and returns the current token.
    #[serde(with = "humantime_serde")]
    pub force_refresh_min_interval: Duration,
    /// Length of the quota window (86400 s), counted from simulator start; counters reset when
    /// it rolls over.
    #[serde(with = "humantime_serde")]
    pub day: Duration,
    /// How long a `hang` fault holds a request before answering -1 (3600 s).
    #[serde(with = "humantime_serde")]
    pub hang: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            expires_in: Duration::from_secs(7200),
            overlap: Duration::from_secs(300),
            daily_quota: 2000,
            stable_daily_quota: 10000,
            ticket_daily_quota: 2000,
            force_refresh_daily_limit: 20,
            force_refresh_min_interval: Duration::from_secs(30),
            day: Duration::from_secs(86400),
            hang: Duration::from_secs(3600),
        }
    }
}

/// Why a configuration could not be loaded. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read simulator config {}: {source}", path.display())]
    Read {
        /// The path that was given.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not match the expected shape (unknown key, wrong type).
    #[error(
        "invalid simulator config{}{}: {message}",
        path_suffix(path),
        position(line, column)
    )]
    Parse {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
        /// What is wrong, naming the key (e.g. "unknown field `expire_in`, expected ...").
        message: String,
    },
    /// The values parse but make no sense (zero lifetime, duplicate appid, ...).
    #[error("invalid simulator config{}: {field}: {reason}", path_suffix(path))]
    Invalid {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// The offending field, e.g. `timing.day` or `app[1].appid`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}

fn position(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

impl SimConfig {
    /// Parses a TOML configuration and validates it.
    pub fn from_toml_str(s: &str) -> Result<SimConfig, ConfigError> {
        parse(s, None)
    }

    /// Reads and parses a TOML configuration file. Errors name the path.
    pub fn load(path: &Path) -> Result<SimConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, Some(path))
    }

    /// Adds an app (builder style).
    pub fn with_app(mut self, appid: impl Into<String>, secret: impl Into<String>) -> SimConfig {
        self.apps.push(AppConfig::new(appid, secret));
        self
    }

    /// Replaces the timing rules (builder style).
    pub fn with_timing(mut self, timing: Timing) -> SimConfig {
        self.timing = timing;
        self
    }

    /// Checks the values make sense: positive `expires_in` and `day`, non-empty and unique
    /// appids, non-empty secrets. [`crate::Simulator::start`] runs this too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| ConfigError::Invalid {
            path: None,
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if self.timing.expires_in.is_zero() {
            return Err(invalid("timing.expires_in", "must be greater than zero"));
        }
        if self.timing.day.is_zero() {
            return Err(invalid("timing.day", "must be greater than zero"));
        }
        for (i, app) in self.apps.iter().enumerate() {
            if app.appid.trim().is_empty() {
                return Err(invalid(&format!("app[{i}].appid"), "must not be empty"));
            }
            if app.secret.is_empty() {
                return Err(invalid(&format!("app[{i}].secret"), "must not be empty"));
            }
            if self.apps[..i].iter().any(|a| a.appid == app.appid) {
                return Err(invalid(
                    &format!("app[{i}].appid"),
                    &format!("duplicate appid {}", app.appid),
                ));
            }
        }
        Ok(())
    }
}

fn parse(s: &str, path: Option<&Path>) -> Result<SimConfig, ConfigError> {
    let config: SimConfig = toml::from_str(s).map_err(|e| {
        // Build the message ourselves instead of using toml's Display: that one quotes the
        // offending source line, which may be the one holding a secret.
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = line_col(s, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        let mut message = e.message().trim().to_string();
        if let Some(key) = e.span().and_then(|span| key_at(s, span.start)) {
            if !message.contains(&format!("`{key}`")) {
                message = format!("`{key}`: {message}");
            }
        }
        ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            line,
            column,
            message,
        }
    })?;
    config.validate().map_err(|e| match e {
        ConfigError::Invalid { field, reason, .. } => ConfigError::Invalid {
            path: path.map(Path::to_path_buf),
            field,
            reason,
        },
        other => other,
    })?;
    Ok(config)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(s: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(s.len());
    let before = s.get(..offset).unwrap_or(s);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |t| t.chars().count()) + 1;
    (line, column)
}

/// The key of a `key = value` line containing `offset`, so that type errors (whose toml message
/// names only the type) still name the field.
fn key_at(s: &str, offset: usize) -> Option<String> {
    let offset = offset.min(s.len());
    let before = s.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = s
        .get(line_start..)?
        .find('\n')
        .map_or(s.len(), |i| line_start + i);
    let line = s.get(line_start..line_end)?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    simple.then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc", 0), (1, 1));
        assert_eq!(line_col("a\nbc", 3), (2, 2));
    }

    #[test]
    fn key_at_finds_key_of_line() {
        let s = "[timing]\nexpires_in = 5\n";
        assert_eq!(
            key_at(s, s.find('5').unwrap_or(0)),
            Some("expires_in".into())
        );
        assert_eq!(key_at(s, 1), None);
    }

    #[test]
    fn serializes_back_to_the_same_config() {
        let c = SimConfig::default()
            .with_app("wx1", "s")
            .with_timing(Timing {
                overlap: Duration::from_millis(1500),
                ..Timing::default()
            });
        let text = toml::to_string(&c).unwrap_or_default();
        assert!(text.contains("[[app]]"), "{text}");
        assert_eq!(SimConfig::from_toml_str(&text).ok(), Some(c));
    }

    #[test]
    fn debug_redacts_secret() {
        let c = SimConfig::default().with_app("wx1", "0123456789abcdef0123456789abcdef");
        let dbg = format!("{c:?}");
        assert!(dbg.contains("wx1"));
        assert!(!dbg.contains("0123456789abcdef"));
    }
}
