//! What the simulator saw and did, as plain serializable data: every token/ticket fetch, the
//! tokens alive right now, business calls accepted and rejected, quota counters.
//!
//! Tests assert on this ("exactly one refresh happened", "no business call was rejected").
//! Must not: contain a secret or a whole token; tokens appear only as 8-character prefixes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A simulated WeChat endpoint, as far as faults, quotas and evidence are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Classic `GET /cgi-bin/token`.
    Token,
    /// `POST /cgi-bin/stable_token`.
    StableToken,
    /// `GET /cgi-bin/ticket/getticket`.
    Ticket,
    /// The token-checking business API `/cgi-bin/get_api_domain_ip`.
    Business,
}

impl Endpoint {
    /// All endpoints, in a fixed order.
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Token,
        Endpoint::StableToken,
        Endpoint::Ticket,
        Endpoint::Business,
    ];

    /// The snake_case name used on the wire (`"stable_token"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::StableToken => "stable_token",
            Endpoint::Ticket => "ticket",
            Endpoint::Business => "business",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint name that is not one of `token`, `stable_token`, `ticket`, `business`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown endpoint {0:?}, expected one of token, stable_token, ticket, business")]
pub struct UnknownEndpoint(pub String);

impl FromStr for Endpoint {
    type Err = UnknownEndpoint;
    fn from_str(s: &str) -> Result<Endpoint, UnknownEndpoint> {
        Endpoint::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownEndpoint(s.to_string()))
    }
}

/// Evidence for every app, keyed by appid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// appid → that app's evidence.
    pub apps: BTreeMap<String, AppEvidence>,
}

/// Evidence for one app.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEvidence {
    /// Every call of the token, stable_token and ticket endpoints attributed to this app, in
    /// order (including errors and injected faults).
    pub fetches: Vec<FetchRecord>,
    /// Access tokens and tickets valid right now, oldest first.
    pub live_tokens: Vec<LiveToken>,
    /// Business calls rejected, errcode → count (only calls whose token belongs to this app;
    /// injected errcode faults on the business endpoint count here too).
    pub rejected_business_calls: BTreeMap<i64, u64>,
    /// Business calls accepted.
    pub business_ok: u64,
    /// Quota used in the current day window, by endpoint name (`token`, `stable_token`,
    /// `ticket`, `business`; the business API has no limit, it is only counted).
    pub quota_used: BTreeMap<String, u32>,
    /// Effective stable-token force refreshes in the current day window.
    pub force_refreshes_today: u32,
}

impl AppEvidence {
    /// The fetches of one endpoint, in order.
    pub fn fetches_of(&self, endpoint: Endpoint) -> Vec<FetchRecord> {
        self.fetches
            .iter()
            .filter(|f| f.endpoint == endpoint)
            .cloned()
            .collect()
    }

    /// How many fetches of `endpoint` issued a new token or ticket (not counting reused ones).
    pub fn issued_count(&self, endpoint: Endpoint) -> usize {
        self.fetches
            .iter()
            .filter(|f| {
                f.endpoint == endpoint
                    && matches!(f.outcome, FetchOutcome::Issued { reused: false, .. })
            })
            .count()
    }
}

/// One call of a token, stable_token or ticket endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRecord {
    /// Which endpoint was called.
    pub endpoint: Endpoint,
    /// Wall-clock time of the answer, Unix milliseconds.
    pub at_unix_ms: u64,
    /// Milliseconds since the simulator started.
    pub since_start_ms: u64,
    /// Whether the call asked for `force_refresh` (stable token only).
    pub force_refresh: bool,
    /// What the simulator answered.
    pub outcome: FetchOutcome,
}

/// What a fetch was answered with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FetchOutcome {
    /// A token or ticket was returned.
    Issued {
        /// Its first 8 characters.
        token_prefix: String,
        /// True when stable-token normal mode (or a force refresh inside the minimum interval)
        /// returned the current token instead of a new one.
        reused: bool,
        /// The `expires_in` sent on the wire.
        expires_in: u64,
    },
    /// WeChat's rules answered with an errcode.
    Error {
        /// The errcode.
        errcode: i64,
    },
    /// A scripted fault answered: `errcode:<n>`, `http_status:<n>`, `garbage`, `truncated` or
    /// `hang` (delays answer normally and are recorded as the normal outcome).
    Fault {
        /// Which fault.
        kind: String,
    },
}

/// A token or ticket that is valid right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveToken {
    /// `access_token`, `stable_access_token`, `jsapi_ticket` or `wx_card_ticket`.
    pub kind: String,
    /// Its first 8 characters.
    pub token_prefix: String,
    /// Milliseconds until it stops being valid (expiry, or end of overlap if replaced).
    pub expires_in_ms: u64,
    /// Whether a newer one of the same kind has been issued.
    pub replaced: bool,
}
