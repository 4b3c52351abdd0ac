//! The background subscriber: holds a pub/sub subscription to the
//! namespace's update events and treats each event as a *hint*: the value it
//! names, if cached, is read again from Redis at once (at most one read in
//! flight per value; a burst during a read causes one more read), and a read
//! waiting for a value that is not cached is woken. Nothing the event claims
//! — token, fence, expiry — is ever stored, so whoever can `PUBLISH` on the
//! channel can cost a client reads, never make it serve a forged value.
//! Events for values neither cached nor waited for, malformed events and
//! oversized ones are dropped (debug log).
//!
//! When the subscription drops — or stops answering pings — it marks it down
//! so reads fall back to polling, reconnects with capped backoff (100 ms →
//! 5 s) and, once back, invalidates the cache so every value is read again
//! once.
//!
//! It must not keep clients alive: it holds only the cache and a Redis
//! connection, and the last `Client` clone aborts it (and its re-reads).

use crate::cache::{Cache, Cell, Hint};
use crate::reader::{timed_out, Reader};
use futures_util::StreamExt;
use redis::aio::PubSub;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use wxtoken_schema::{CredentialKeys, Kind, UpdateEvent};

/// Events longer than this are dropped unread. A real one is a few hundred
/// bytes (ids are at most 64 bytes, refreshers store tokens of at most 2 KiB).
pub(crate) const MAX_EVENT_BYTES: usize = 16 * 1024;

/// Where and how to subscribe.
pub(crate) struct Subscriber {
    pub(crate) channel: String,
    /// Bound on connecting + subscribing, and on one PING.
    pub(crate) timeout: Duration,
    /// How often to PING the subscription connection, so that one that died
    /// silently (no FIN, e.g. a network partition) is noticed.
    pub(crate) ping_every: Duration,
    /// Re-reads the values events name.
    pub(crate) reader: Reader,
}

impl Subscriber {
    /// Opens a pub/sub connection and subscribes to the events channel.
    pub(crate) async fn subscribe(&self) -> redis::RedisResult<PubSub> {
        let attempt = async {
            // The current primary's (behind Sentinel it moves).
            let mut pubsub = self.reader.redis.client().get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok(pubsub)
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("subscribing to update events")),
        };
        if let Err(e) = &result {
            // Behind Sentinel: has the primary moved?
            self.reader.redis.saw_error(Some(e));
        }
        result
    }
}

/// Delay before resubscription attempt `attempt` (0-based): 100 ms doubling,
/// capped at 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(ms.min(5_000))
}

/// Runs until aborted, starting with an already subscribed connection (the
/// cache must already be marked subscribed).
pub(crate) async fn run(sub: Subscriber, first: PubSub) {
    let cache = Arc::clone(&sub.reader.cache);
    // Re-reads in flight: at most one per cached value. Aborted with this
    // task.
    let mut rereads = JoinSet::new();
    let mut pubsub = first;
    loop {
        let reason = session(&cache, pubsub, &sub, &mut rereads).await;
        cache.set_subscribed(false);
        tracing::warn!(
            channel = %sub.channel,
            %reason,
            "update event subscription lost; reading values from Redis until it is back"
        );
        pubsub = resubscribe(&sub).await;
        cache.set_subscribed(true);
        tracing::info!(
            channel = %sub.channel,
            "update event subscription back; cached values will be read again once"
        );
    }
}

async fn resubscribe(sub: &Subscriber) -> PubSub {
    let mut attempt = 0u32;
    loop {
        tokio::time::sleep(backoff(attempt)).await;
        match sub.subscribe().await {
            Ok(pubsub) => return pubsub,
            Err(error) => {
                tracing::debug!(channel = %sub.channel, %error, attempt, "resubscribing failed");
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Handles events until the subscription ends; returns why it ended.
async fn session(
    cache: &Cache,
    pubsub: PubSub,
    sub: &Subscriber,
    rereads: &mut JoinSet<()>,
) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval_at(Instant::now() + sub.ping_every, sub.ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => handle(cache, &sub.reader, rereads, msg.get_payload_bytes()),
                None => return "connection closed".to_owned(),
            },
            Some(_) = rereads.join_next(), if !rereads.is_empty() => {}
            _ = ping.tick() => {
                match tokio::time::timeout(sub.timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return format!("PING failed: {error}"),
                    Err(_) => return "PING timed out".to_owned(),
                }
            }
        }
    }
}

/// One event: O(1) in the number of cached values, allocates at most what
/// parsing the (size-checked) payload needs.
fn handle(cache: &Cache, reader: &Reader, rereads: &mut JoinSet<()>, payload: &[u8]) {
    if payload.len() > MAX_EVENT_BYTES {
        cache.count_dropped();
        tracing::debug!(bytes = payload.len(), "oversized update event; dropped");
        return;
    }
    let event = match UpdateEvent::parse(payload) {
        Ok(event) => event,
        Err(error) => {
            // Not a hint about anything in particular; marking every value
            // stale would let anyone who can publish defeat the cache. The
            // error's text may quote the payload (hostile, or a token): only
            // its class and position are logged.
            cache.count_dropped();
            tracing::debug!(
                class = ?error.classify(),
                line = error.line(),
                column = error.column(),
                "unreadable update event; dropped"
            );
            return;
        }
    };
    let (id, kind) = (event.id, event.kind);
    match cache.hint(&id, kind) {
        Hint::Reread(cell) => match CredentialKeys::for_id(&reader.namespace, &id) {
            Ok(keys) => {
                tracing::debug!(%id, %kind, "update event; reading the value again");
                rereads.spawn(reread(reader.clone(), cell, keys, kind));
            }
            // Unreachable: only values of valid ids are cached.
            Err(error) => {
                cache.reread_abandoned(&cell, kind);
                tracing::debug!(%error, "cannot re-read the value an update event named");
            }
        },
        Hint::Coalesced => {
            tracing::trace!(%id, %kind, "update event while a re-read is in flight; one more to follow");
        }
        Hint::Woke => tracing::debug!(%id, %kind, "update event for a value a read waits for"),
        // The id is whatever the publisher chose: not logged.
        Hint::Ignored => tracing::trace!(%kind, "update event for a value not in use; ignored"),
    }
}

/// Reads a cached value again, once more for every burst of events that
/// arrived while a read was in flight (their writes may have landed after it).
async fn reread(reader: Reader, cell: Arc<Cell>, keys: CredentialKeys, kind: Kind) {
    loop {
        if let Err(error) = reader.read(&keys, kind).await {
            // The event may have announced a new value: stop trusting the
            // cached one, so the next read asks Redis (and falls back to it
            // only while Redis cannot answer).
            reader.cache.unconfirmed(keys.id(), kind);
            tracing::debug!(id = %keys.id(), %kind, %error, "re-reading after an update event failed");
        }
        if reader.cache.reread_done(&cell, kind) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_up_to_5s() {
        let ms: Vec<u128> = (0..8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }
}
