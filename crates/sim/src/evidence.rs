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

    /// Position in [`Endpoint::ALL`].
    pub fn index(self) -> usize {
        match self {
            Endpoint::Token => 0,
            Endpoint::StableToken => 1,
            Endpoint::Ticket => 2,
            Endpoint::Business => 3,
        }
    }

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
    /// Time of the answer, Unix milliseconds: the wall clock at start plus simulator time
    /// since (real wall-clock time unless [`crate::Admin::advance`] moved the clock).
    pub at_unix_ms: u64,
    /// Milliseconds of simulator time since the simulator started.
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

/// How the calls of one endpoint were answered. Kept as counters, so reading them is O(1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Every call (what [`AppEvidence::fetches`] records).
    pub calls: u64,
    /// Calls that issued a new token or ticket.
    pub issued: u64,
    /// Calls answered with the current token (stable normal mode, early force refresh).
    pub reused: u64,
    /// Calls answered with an errcode by WeChat's rules.
    pub errors: u64,
    /// Calls answered by a scripted fault.
    pub faults: u64,
}

impl Counts {
    /// No calls at all.
    pub fn is_zero(&self) -> bool {
        self.calls == 0
    }

    fn add(&mut self, outcome: &FetchOutcome) {
        self.calls += 1;
        match outcome {
            FetchOutcome::Issued { reused: false, .. } => self.issued += 1,
            FetchOutcome::Issued { reused: true, .. } => self.reused += 1,
            FetchOutcome::Error { .. } => self.errors += 1,
            FetchOutcome::Fault { .. } => self.faults += 1,
        }
    }

    fn plus(self, other: Counts) -> Counts {
        Counts {
            calls: self.calls + other.calls,
            issued: self.issued + other.issued,
            reused: self.reused + other.reused,
            errors: self.errors + other.errors,
            faults: self.faults + other.faults,
        }
    }
}

/// Fetch counts by endpoint (for one app, or all apps together). Endpoints never called are
/// left out of the JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchCounts {
    /// Classic `GET /cgi-bin/token`.
    #[serde(default, skip_serializing_if = "Counts::is_zero")]
    pub token: Counts,
    /// `POST /cgi-bin/stable_token`.
    #[serde(default, skip_serializing_if = "Counts::is_zero")]
    pub stable_token: Counts,
    /// `GET /cgi-bin/ticket/getticket`.
    #[serde(default, skip_serializing_if = "Counts::is_zero")]
    pub ticket: Counts,
}

impl FetchCounts {
    /// The counts of one endpoint (`None` for [`Endpoint::Business`], which is not a fetch).
    pub fn of(&self, endpoint: Endpoint) -> Option<&Counts> {
        match endpoint {
            Endpoint::Token => Some(&self.token),
            Endpoint::StableToken => Some(&self.stable_token),
            Endpoint::Ticket => Some(&self.ticket),
            Endpoint::Business => None,
        }
    }

    /// All endpoints together.
    pub fn total(&self) -> Counts {
        self.token.plus(self.stable_token).plus(self.ticket)
    }

    pub(crate) fn add(&mut self, endpoint: Endpoint, outcome: &FetchOutcome) {
        match endpoint {
            Endpoint::Token => self.token.add(outcome),
            Endpoint::StableToken => self.stable_token.add(outcome),
            Endpoint::Ticket => self.ticket.add(outcome),
            Endpoint::Business => {}
        }
    }
}

/// The whole simulator's fetch counts (`GET /_sim/counts`): cheap at any number of apps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimCounts {
    /// How many apps the simulator knows.
    pub apps: u64,
    /// Fetches of all apps together, by endpoint.
    pub fetches: FetchCounts,
    /// Per-app counts (appid → counts), only when asked for (`?per_app=true`,
    /// [`crate::Admin::counts_per_app`]); apps never called are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_app: Option<BTreeMap<String, FetchCounts>>,
}
