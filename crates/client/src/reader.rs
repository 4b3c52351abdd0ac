//! [`Reader`]: the one way a value is read from Redis — GET, PTTL and the
//! info hash's fence in one pipelined round trip, bounded by the Redis
//! timeout — and merged into the cache. Used by the client for reads it was
//! asked for, and by the subscriber to re-read a cached value an update event
//! named.
//!
//! It must not build key names itself (the schema crate does) and must never
//! log a whole token.

use crate::cache::{Cache, Entry, Stored};
use std::sync::Arc;
use std::time::Duration;
use wxtoken_schema::{info, CredentialKeys, Kind};

/// GET value, PTTL value, HGET info fence.
type Reply = (Option<String>, i64, Option<String>);

/// A Redis connection and the cache its reads are merged into. Cheap to
/// clone; holds nothing that keeps a [`Client`](crate::Client) alive.
#[derive(Clone)]
pub(crate) struct Reader {
    /// The connection (behind Sentinel, it follows the primary).
    pub(crate) redis: wxtoken_connect::Managed,
    pub(crate) cache: Arc<Cache>,
    pub(crate) namespace: String,
    pub(crate) timeout: Duration,
}

impl Reader {
    /// One pipelined round trip: the value, its PTTL and its fence. Merges the
    /// answer into the cache and returns the entry in effect.
    pub(crate) async fn read(
        &self,
        keys: &CredentialKeys,
        kind: Kind,
    ) -> redis::RedisResult<Option<Arc<Entry>>> {
        let value_key = keys.value(kind);
        let mut pipe = redis::pipe();
        pipe.get(&value_key)
            .pttl(&value_key)
            .hget(keys.info(kind), info::FENCE);
        let mut con = self.redis.con();
        let start = self.cache.start_read();
        // The whole read, reconnection attempts included, is bounded: a read
        // with a cached value to fall back on must not hang on Redis.
        let reply: redis::RedisResult<Reply> =
            match tokio::time::timeout(self.timeout, pipe.query_async(&mut con)).await {
                Ok(r) => r,
                Err(_) => Err(timed_out("reading from Redis")),
            };
        if let Err(e) = &reply {
            self.redis.saw_error(Some(e));
        }
        let reply = reply?;
        let (value, pttl, fence) = reply;

        // PTTL: -1 = no TTL, -2 = gone (expired between GET and PTTL).
        let ttl = match pttl {
            -1 => Some(None),
            ms => u64::try_from(ms)
                .ok()
                .filter(|&ms| ms > 0)
                .map(|ms| Some(Duration::from_millis(ms))),
        };
        let stored = match (value, ttl) {
            (Some(value), Some(ttl)) => Some(Stored {
                value,
                fence: fence.and_then(|f| f.parse().ok()).unwrap_or(0),
                ttl,
            }),
            _ => None,
        };
        Ok(self.cache.apply_read(keys.id(), kind, &start, stored))
    }
}

pub(crate) fn timed_out(what: &str) -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out")).into()
}
