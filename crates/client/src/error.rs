//! [`Error`]: everything a read or a connect can fail with. Messages name the
//! credential id and kind concerned; they must never contain a token or the
//! Redis URL (which may carry a password).

use std::time::Duration;
use wxtoken_schema::{InvalidName, Kind};

/// Why a [`Client`](crate::Client) call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace, credential id or an appid in it cannot be part of a
    /// key name (`what` says which).
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The credential id is well formed, but refreshers never keep this kind
    /// for what it names (e.g. an `access_token` of a `component/…`, whose
    /// token is a `component_access_token`).
    #[error("{id:?} has no {kind}: refreshers keep only {} for it", kinds(kept))]
    KindNotKept {
        /// Credential id.
        id: String,
        /// What was asked for.
        kind: Kind,
        /// The kinds kept for it.
        kept: &'static [Kind],
    },
    /// [`Client::connect`](crate::Client::connect) could not reach Redis or
    /// subscribe to the update events.
    #[error("connecting to Redis: {0}")]
    Connect(#[source] redis::RedisError),
    /// The Redis URL or the TLS files of [`Options`](crate::Options) cannot
    /// be used (the message names the file; never the URL or file contents).
    #[error("Redis connection settings: {0}")]
    Settings(#[from] wxtoken_connect::ConnectError),
    /// [`Client::connect`](crate::Client::connect) failed because of TLS: the
    /// server's certificate is not signed by the CA (file), or the server
    /// requires or refused the client certificate. `hint` names the file.
    #[error("connecting to Redis: {hint} ({source})")]
    Tls {
        /// What went wrong and which file to look at.
        hint: String,
        /// What the connection said.
        #[source]
        source: redis::RedisError,
    },
    /// Redis failed or timed out while reading a value that was not cached
    /// (or no longer fresh, and already expired).
    #[error("reading {kind} of credential {id:?} from Redis: {source}")]
    Redis {
        /// Credential id.
        id: String,
        /// What was being read.
        kind: Kind,
        /// What Redis (or the connection) said.
        #[source]
        source: redis::RedisError,
    },
    /// Redis failed, timed out or refused (e.g. `NOPERM`: the Redis user may
    /// not write request keys) while a refresh request was being filed.
    #[error("filing a refresh request for {kind} of credential {id:?} in Redis: {source}")]
    Report {
        /// Credential id.
        id: String,
        /// What was reported.
        kind: Kind,
        /// What Redis (or the connection) said.
        #[source]
        source: redis::RedisError,
    },
    /// Nothing was stored for this credential and kind, no unexpired value was
    /// cached, and nothing arrived within
    /// [`Options::wait_for_token`](crate::Options::wait_for_token).
    #[error(
        "no {kind} of credential {id:?} in Redis after waiting {waited:?} \
         (is a wxtoken refresher managing this credential in this namespace?)"
    )]
    NotAvailable {
        /// Credential id.
        id: String,
        /// What was asked for.
        kind: Kind,
        /// How long the read waited.
        waited: Duration,
    },
    /// A reported value was still the stored one when
    /// [`Client::replaced`](crate::Client::replaced) gave up.
    #[error(
        "{kind} of credential {id:?} was not replaced within {waited:?} \
         (the request stays pending; is a wxtoken refresher running?)"
    )]
    NotReplaced {
        /// Credential id.
        id: String,
        /// What was reported.
        kind: Kind,
        /// How long it waited.
        waited: Duration,
    },
}

fn kinds(kept: &[Kind]) -> String {
    kept.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
