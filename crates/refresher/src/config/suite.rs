//! `[[wecom_suite]]`: WeCom third-party suites (服务商套件) whose command
//! callback (`suite_ticket`, `create_auth`, `change_auth`, `cancel_auth`)
//! this replica receives at `GET`/`POST /wecom/suite/{id}`, and whose suite
//! token and authorized corps' tokens it keeps. Secrets (suite secret,
//! callback token, EncodingAESKey) come from `_env` or `_file` keys and
//! never print.

use super::{Check, ConfigError, Ticket};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use wxtoken_schema::validate_name;

/// A WeCom third-party suite. Every secret prints redacted.
#[derive(Debug, Clone)]
pub struct WecomSuite {
    /// The operator's name for it (`[A-Za-z0-9_.-]`, the URL path segment
    /// of its callback).
    pub id: String,
    /// The `suite_id` (public).
    pub suite_id: String,
    /// The `suite_secret`.
    pub secret: SecretString,
    /// The callback Token.
    pub token: SecretString,
    /// The callback EncodingAESKey.
    pub encoding_aes_key: wxtoken_crypto::EncodingAesKey,
    /// The previous EncodingAESKey, accepted during a key change.
    pub previous_encoding_aes_key: Option<wxtoken_crypto::EncodingAesKey>,
    /// Tickets kept for every authorized corp: `jsapi` (the corp ticket,
    /// `wx.config`) and/or `agent_config` (the suite app's, `wx.agentConfig`).
    pub corp_tickets: Vec<Ticket>,
    /// WeCom calls per second for this suite and its corps, shared by every
    /// replica (0 = no limit).
    pub calls_per_second: f64,
    /// Calls that may start at once after a quiet spell.
    pub burst: u32,
}

impl WecomSuite {
    /// The values kept for each authorized corp: the access token, then
    /// the tickets.
    pub fn corp_kinds(&self) -> Vec<wxtoken_schema::Kind> {
        std::iter::once(wxtoken_schema::Kind::AccessToken)
            .chain(self.corp_tickets.iter().map(|t| t.kind()))
            .collect()
    }

    /// The message crypto of its callback: the receive id inside every
    /// ciphertext is the suite id.
    pub fn crypt(&self) -> wxtoken_crypto::MsgCrypt {
        wxtoken_crypto::MsgCrypt::new(
            self.token.clone(),
            self.encoding_aes_key.clone(),
            self.previous_encoding_aes_key.clone(),
            self.suite_id.clone(),
        )
    }
}

/// `[[wecom_suite]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuiteSection {
    id: String,
    suite_id: String,
    #[serde(default, deserialize_with = "super::no_echo::opt_string")]
    secret_env: Option<String>,
    #[serde(default, deserialize_with = "super::no_echo::opt_path")]
    secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "super::no_echo::opt_string")]
    token_env: Option<String>,
    #[serde(default, deserialize_with = "super::no_echo::opt_path")]
    token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "super::no_echo::opt_string")]
    encoding_aes_key_env: Option<String>,
    #[serde(default, deserialize_with = "super::no_echo::opt_path")]
    encoding_aes_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "super::no_echo::opt_string")]
    previous_encoding_aes_key_env: Option<String>,
    #[serde(default, deserialize_with = "super::no_echo::opt_path")]
    previous_encoding_aes_key_file: Option<PathBuf>,
    #[serde(default)]
    corp_tickets: Vec<Ticket>,
    #[serde(default = "suite_calls_per_second")]
    calls_per_second: f64,
    #[serde(default = "suite_burst")]
    burst: u32,
}

fn suite_calls_per_second() -> f64 {
    50.0
}

fn suite_burst() -> u32 {
    20
}

const SECRET: [&str; 3] = ["secret_env", "secret_file", "secret"];
const TOKEN: [&str; 3] = ["token_env", "token_file", "token"];
const KEY: [&str; 3] = [
    "encoding_aes_key_env",
    "encoding_aes_key_file",
    "encoding_aes_key",
];
const PREVIOUS_KEY: [&str; 3] = [
    "previous_encoding_aes_key_env",
    "previous_encoding_aes_key_file",
    "previous_encoding_aes_key",
];

impl Check<'_> {
    /// `[[wecom_suite]]` tables. Errors name the field and never show a
    /// secret, token or key. `component_ids`: ids of `[[component]]`s (a
    /// suite may not share one: both name status rows and metrics).
    pub(super) fn suites(
        &self,
        entries: Vec<SuiteSection>,
        component_ids: &[&str],
    ) -> Result<Vec<WecomSuite>, ConfigError> {
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut suite_ids: HashMap<String, String> = HashMap::new();
        let mut suites = Vec::with_capacity(entries.len());
        for (i, s) in entries.into_iter().enumerate() {
            let at = |f: &str| format!("wecom_suite[{i}].{f}");
            validate_name("suite id", &s.id).map_err(|e| self.invalid(at("id"), e.to_string()))?;
            if let Some(prev) = ids.insert(s.id.clone(), i) {
                return Err(self.invalid(
                    at("id"),
                    format!("duplicate id {:?} (also wecom_suite[{prev}])", s.id),
                ));
            }
            if component_ids.contains(&s.id.as_str()) {
                return Err(self.invalid(
                    at("id"),
                    format!("{:?} is already the id of a [[component]]", s.id),
                ));
            }
            validate_name("suite_id", &s.suite_id)
                .map_err(|e| self.invalid(at("suite_id"), e.to_string()))?;
            if let Some(other) = suite_ids.insert(s.suite_id.clone(), s.id.clone()) {
                return Err(self.invalid(
                    at("suite_id"),
                    format!("{} is already used by wecom_suite {other:?}", s.suite_id),
                ));
            }
            let required = |keys: [&'static str; 3], v: Option<SecretString>| {
                v.ok_or_else(|| {
                    self.invalid(
                        at(keys[0]),
                        format!(
                            "wecom_suite {:?} has no {}: set {} or {}",
                            s.id, keys[2], keys[0], keys[1]
                        ),
                    )
                })
            };
            let secret = self.component_secret(&at, SECRET, s.secret_env, s.secret_file)?;
            let secret = required(SECRET, secret)?;
            let token = self.component_secret(&at, TOKEN, s.token_env, s.token_file)?;
            let token = required(TOKEN, token)?;
            let key = |keys: [&'static str; 3],
                       env: Option<String>,
                       file: Option<PathBuf>|
             -> Result<Option<wxtoken_crypto::EncodingAesKey>, ConfigError> {
                let field = if env.is_some() { keys[0] } else { keys[1] };
                let Some(raw) = self.component_secret(&at, keys, env, file)? else {
                    return Ok(None);
                };
                // The error says what is wrong (length, alphabet), never the key.
                wxtoken_crypto::EncodingAesKey::parse(raw.expose_secret())
                    .map(Some)
                    .map_err(|e| self.invalid(at(field), e.to_string()))
            };
            let encoding_aes_key = key(KEY, s.encoding_aes_key_env, s.encoding_aes_key_file)?
                .ok_or_else(|| {
                    self.invalid(
                        at(KEY[0]),
                        format!(
                            "wecom_suite {:?} has no encoding_aes_key: set encoding_aes_key_env or encoding_aes_key_file",
                            s.id
                        ),
                    )
                })?;
            let previous_encoding_aes_key = key(
                PREVIOUS_KEY,
                s.previous_encoding_aes_key_env,
                s.previous_encoding_aes_key_file,
            )?;
            let mut corp_tickets: Vec<Ticket> = Vec::new();
            for t in s.corp_tickets {
                if t == Ticket::WxCard {
                    return Err(self.invalid(
                        at("corp_tickets"),
                        "\"wx_card\" is a WeChat ticket; corps keep \"jsapi\" (the corp ticket, for wx.config) and \"agent_config\" (the suite app's, for wx.agentConfig)",
                    ));
                }
                if corp_tickets.contains(&t) {
                    return Err(self.invalid(
                        at("corp_tickets"),
                        format!("{:?} is listed twice", t.as_str()),
                    ));
                }
                corp_tickets.push(t);
            }
            if !(s.calls_per_second.is_finite() && s.calls_per_second >= 0.0) {
                return Err(self.invalid(
                    at("calls_per_second"),
                    "must be a number of calls per second, 0 for no limit",
                ));
            }
            if s.burst == 0 {
                return Err(self.invalid(at("burst"), "must be at least 1"));
            }
            suites.push(WecomSuite {
                id: s.id,
                suite_id: s.suite_id,
                secret,
                token,
                encoding_aes_key,
                previous_encoding_aes_key,
                corp_tickets,
                calls_per_second: s.calls_per_second,
                burst: s.burst,
            });
        }
        Ok(suites)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use secrecy::ExposeSecret;

    const SECRET: &str = "suite-secret-0123456789abcdef";
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn env(k: &str) -> Option<String> {
        match k {
            "SS" => Some(SECRET.into()),
            "ST" => Some("callback-token-xyz".into()),
            "SK" => Some(KEY.into()),
            "SHORT" => Some("abc".into()),
            _ => None,
        }
    }

    fn suite(extra: &str) -> String {
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[[wecom_suite]]\nid = \"crm\"\nsuite_id = \"wwsuite1\"\nsecret_env = \"SS\"\ntoken_env = \"ST\"\nencoding_aes_key_env = \"SK\"\n{extra}"
        )
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, "bad.toml", &env)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn suites_are_parsed() {
        let c = Config::parse(
            &suite("corp_tickets = [\"jsapi\", \"agent_config\"]\ncalls_per_second = 5\n"),
            "x.toml",
            &env,
        )
        .unwrap();
        assert_eq!(c.suites.len(), 1);
        let s = &c.suites[0];
        assert_eq!((s.id.as_str(), s.suite_id.as_str()), ("crm", "wwsuite1"));
        assert_eq!(s.secret.expose_secret(), SECRET);
        assert_eq!(
            s.corp_kinds(),
            vec![
                wxtoken_schema::Kind::AccessToken,
                wxtoken_schema::Kind::JsapiTicket,
                wxtoken_schema::Kind::AgentConfigTicket
            ]
        );
        assert_eq!((s.calls_per_second, s.burst), (5.0, 20));
        assert_eq!(s.crypt().appid(), "wwsuite1");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("callback-token") && !shown.contains(KEY),
            "{shown}"
        );
        assert!(c.warnings.iter().all(|w| !w.contains("nothing to refresh")));
    }

    #[test]
    fn suite_errors_name_the_field_and_never_the_secret() {
        for (text, expected) in [
            (
                suite("").replace("secret_env = \"SS\"\n", ""),
                "wecom_suite[0].secret_env: wecom_suite \"crm\" has no secret",
            ),
            (
                suite("").replace("token_env = \"ST\"\n", ""),
                "wecom_suite[0].token_env: wecom_suite \"crm\" has no token",
            ),
            (
                suite("").replace("encoding_aes_key_env = \"SK\"\n", ""),
                "wecom_suite[0].encoding_aes_key_env: wecom_suite \"crm\" has no encoding_aes_key",
            ),
            (
                suite("").replace("\"SK\"", "\"SHORT\""),
                "wecom_suite[0].encoding_aes_key_env: invalid EncodingAESKey",
            ),
            (
                suite("previous_encoding_aes_key_env = \"SHORT\"\n"),
                "wecom_suite[0].previous_encoding_aes_key_env: invalid EncodingAESKey",
            ),
            (
                suite("").replace("\"wwsuite1\"", "\"ww/1\""),
                "wecom_suite[0].suite_id: invalid suite_id",
            ),
            (
                suite("").replace("\"crm\"", "\"a b\""),
                "wecom_suite[0].id: invalid suite id",
            ),
            (
                suite("corp_tickets = [\"wx_card\"]\n"),
                "wecom_suite[0].corp_tickets: \"wx_card\" is a WeChat ticket",
            ),
            (
                suite("corp_tickets = [\"jsapi\", \"jsapi\"]\n"),
                "wecom_suite[0].corp_tickets: \"jsapi\" is listed twice",
            ),
            (
                suite("calls_per_second = -1\n"),
                "wecom_suite[0].calls_per_second: must be a number",
            ),
            (
                suite("burst = 0\n"),
                "wecom_suite[0].burst: must be at least 1",
            ),
            (
                suite("secret_file = \"/nonexistent\"\n"),
                "wecom_suite[0].secret_env: give exactly one of secret_env, secret_file",
            ),
            (
                suite("").replace("\"SS\"", "\"UNSET\""),
                "wecom_suite[0].secret_env:",
            ),
            (
                format!(
                    "{}{}",
                    suite(""),
                    suite("").replace("[http]\nlisten = \"127.0.0.1:0\"\n", "")
                ),
                "wecom_suite[1].id: duplicate id \"crm\" (also wecom_suite[0])",
            ),
            (
                format!(
                    "{}{}",
                    suite(""),
                    suite("")
                        .replace("[http]\nlisten = \"127.0.0.1:0\"\n", "")
                        .replace("\"crm\"", "\"crm2\"")
                ),
                "wecom_suite[1].suite_id: wwsuite1 is already used by wecom_suite \"crm\"",
            ),
        ] {
            let e = error_of(&text);
            assert!(e.contains(expected), "{e}\n  expected: {expected}");
            for secret in [SECRET, "callback-token", KEY] {
                assert!(!e.contains(secret), "{e}");
            }
        }
        // An inline secret is an unknown key, refused without echoing it.
        let e = error_of(&suite("secret = \"inline-suite-secret\"\n"));
        assert!(!e.contains("inline-suite-secret"), "{e}");
    }

    #[test]
    fn a_suite_without_http_gets_a_warning() {
        let text = suite("").replace("[http]\nlisten = \"127.0.0.1:0\"\n", "");
        let c = Config::parse(&text, "x.toml", &env).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("[[wecom_suite]]")),
            "{:?}",
            c.warnings
        );
    }
}
