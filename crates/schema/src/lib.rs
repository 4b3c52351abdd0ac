//! The wxtoken Redis contract: key names, value layouts, the update event and
//! the Lua scripts that change them.
//!
//! This is the one place that knows how wxtoken lays out Redis. The refresher,
//! the client crate and the CLI all build key names and run scripts through
//! it, so they cannot drift apart; services in other languages follow the same
//! contract, written down in the README (schema version [`SCHEMA_VERSION`]).
//! Its read side for operators, [`snapshot`], interprets the same keys once
//! for `wxtoken status` and the replicas' status page.
//!
//! It must not own connections (scripts and reads run on the caller's), and
//! it must never put a secret into a key name or a value: only credential ids
//! (chosen by the operator), appids, tokens and bookkeeping live in Redis.

pub mod index;
mod keys;
mod rate;
pub mod registry;
mod scripts;
pub mod snapshot;
pub mod suite;
#[cfg(feature = "testing")]
pub mod testing;

pub use keys::{
    authorizer_id, component_id, corp_id, due_key, parse_member, rate_key, registry_keys,
    registry_shard_key, replicas_key, shard_of, suite_id, validate_name, ComponentKeys,
    CredentialKeys, InvalidName, Kind, Subject, SuiteKeys, DUE_SHARDS, KINDS, SUITE_TICKET_TTL_MS,
    VERIFY_TICKET_TTL_MS,
};
pub use scripts::{
    claim, finish, force_refresh, read_value, renew_lock, request_refresh, store_verify_ticket,
    take_force_budget, wake_if_missing, write_token, Claim, ClaimRules, Exchanged, Failure,
    RateLimit, Request, RequestOutcome, TokenWrite, ValueState, WriteOutcome,
};

use serde::{Deserialize, Serialize};

/// Version of the key schema described in the README. Bumped on any change a
/// reader in another language would notice. 2: schedules per subject, the
/// registry in shards (Redis Cluster); value keys did not change, and
/// refreshers upgrade data of version 1 at start ([`index::migrate_v1`]).
pub const SCHEMA_VERSION: u32 = 2;

/// Default key namespace (the first segment of every key).
pub const DEFAULT_NAMESPACE: &str = "wxtoken";

/// Fields of the `…:info` hash kept beside every stored token or ticket.
pub mod info {
    /// Absolute expiry, Unix milliseconds by the Redis server's clock.
    pub const EXPIRES_AT_MS: &str = "expires_at_ms";
    /// When the value was written, Unix milliseconds by the Redis clock.
    pub const REFRESHED_AT_MS: &str = "refreshed_at_ms";
    /// The lifetime WeChat announced (`expires_in`), in seconds.
    pub const EXPIRES_IN: &str = "expires_in";
    /// The fence number of the lock grant that wrote the value.
    pub const FENCE: &str = "fence";
    /// Id of the refresher replica that fetched the value.
    pub const REPLICA: &str = "replica";
}

/// Fields of the per-credential `…:status` hash, written by refreshers for
/// operators (`wxtoken status`). Absent fields mean "never happened".
pub mod status {
    /// The WeChat appid (public, not a secret).
    pub const APPID: &str = "appid";
    /// `classic` or `stable`.
    pub const MODE: &str = "mode";
    /// Unix ms of the last successful access-token fetch.
    pub const LAST_OK_AT_MS: &str = "last_ok_at_ms";
    /// Human-readable description of the last failure (never contains secrets).
    pub const LAST_ERROR: &str = "last_error";
    /// WeChat errcode of the last failure, when WeChat gave one.
    pub const LAST_ERRCODE: &str = "last_errcode";
    /// Unix ms of the last failure.
    pub const LAST_ERROR_AT_MS: &str = "last_error_at_ms";
    /// Unix ms until which refreshes are paused (daily quota exhausted).
    pub const PAUSED_UNTIL_MS: &str = "paused_until_ms";
    /// Unix ms before which no replica calls WeChat again for this
    /// credential (the backoff after a failure, shared by all replicas).
    pub const RETRY_AFTER_MS: &str = "retry_after_ms";
    /// Consecutive WeChat failures, shared by all replicas (sets the backoff).
    pub const FAILURES: &str = "failures";
    /// Replica that wrote this status last.
    pub const REPLICA: &str = "replica";
}

/// How long the status hash lives after its last update, in seconds.
pub const STATUS_TTL_SECS: u64 = 7 * 24 * 3600;

/// How many characters of a token logs, pages and `Debug` output may show.
pub const TOKEN_PREFIX_CHARS: usize = 8;

/// The first [`TOKEN_PREFIX_CHARS`] characters of a token followed by `…`:
/// the only form in which tokens appear in logs and diagnostics. Anything
/// but printable ASCII (a hostile "token" with newlines or terminal escape
/// sequences) is shown as `?`, so a prefix can never forge a log line.
pub fn token_prefix(token: &str) -> String {
    let head: String = token
        .chars()
        .take(TOKEN_PREFIX_CHARS)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    format!("{head}…")
}

/// Longest token or ticket wxtoken accepts anywhere (WeChat's are about
/// 140 characters; room to spare).
pub const MAX_TOKEN_LEN: usize = 2048;

/// Whether `token` can be a WeChat token: 1 to [`MAX_TOKEN_LEN`] printable
/// ASCII characters. Reports of anything else are refused.
pub fn is_printable_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The message published on [`events_channel`] each time a token or ticket is
/// written. JSON; `token` is included so subscribers switch without a read.
/// Its `Debug` shows only a prefix of the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateEvent {
    /// Schema version of the message.
    pub v: u32,
    /// Credential id.
    pub id: String,
    /// What was written.
    pub kind: Kind,
    /// The new value.
    pub token: String,
    /// Absolute expiry, Unix ms by the Redis clock.
    pub expires_at_ms: u64,
    /// Fence number of the write.
    pub fence: u64,
    /// Replica that fetched it.
    pub replica: String,
}

impl std::fmt::Debug for UpdateEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateEvent")
            .field("v", &self.v)
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("token", &token_prefix(&self.token))
            .field("expires_at_ms", &self.expires_at_ms)
            .field("fence", &self.fence)
            .field("replica", &self.replica)
            .finish()
    }
}

impl UpdateEvent {
    /// Parses a message received on the events channel.
    pub fn parse(payload: &[u8]) -> Result<UpdateEvent, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// The pub/sub channel carrying [`UpdateEvent`]s for a whole namespace.
pub fn events_channel(namespace: &str) -> String {
    format!("{namespace}:events")
}

/// The pub/sub channel that wakes refreshers when a refresh is requested.
/// Messages are plain text `"<id> <kind>"`, e.g. `oa-main access_token`
/// (a due-queue member).
pub fn requests_channel(namespace: &str) -> String {
    format!("{namespace}:requests")
}

/// Passed as the reported value to [`request_refresh`], asks for a refresh
/// whatever is stored (operators' `wxtoken refresh --force`): recorded in
/// the force-request key, not the request key. Written into a request key
/// by anyone else, it only asks for a value while none is stored.
pub const FORCE_REQUEST: &str = "*";

/// The reported value of a request made because nothing is stored (a reader
/// found the value missing: lost, evicted, deleted by hand). Never equal to
/// a stored token, so it is served only while nothing is stored.
pub const MISSING_REPORT: &str = "-";

/// How long a refresh request waits for a refresher before it lapses.
pub const REQUEST_TTL_SECS: u64 = 600;

/// A reply from a key of the wrong type (corrupt or hostile data) read as
/// `absent`: one bad key never stops a read. Other errors stay errors.
pub(crate) fn or_absent<T>(reply: redis::RedisResult<T>, absent: T) -> redis::RedisResult<T> {
    match reply {
        Err(e) if e.code() == Some("WRONGTYPE") => Ok(absent),
        other => other,
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    #[test]
    fn prefixes_cannot_carry_control_characters() {
        assert_eq!(token_prefix("86_abcdefghij"), "86_abcde…");
        assert_eq!(token_prefix("a\nb\x1b[31mc"), "a?b?[31m…");
        assert_eq!(token_prefix("短い"), "??…");
        assert!(is_printable_token("86_abc-DEF"));
        for bad in ["", "a b", "a\nb", "é", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(!is_printable_token(bad), "{bad:?}");
        }
    }
}
