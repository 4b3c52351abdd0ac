//! The background subscriber: holds a pub/sub subscription to the
//! namespace's update events and applies each event to the cache at once
//! (the event carries the token). When the subscription drops — or stops
//! answering pings — it marks it down so reads fall back to polling,
//! reconnects with capped backoff (100 ms → 5 s) and, once back, invalidates
//! the cache so every value is read again once.
//!
//! It must not read values from Redis, and must not keep clients alive: it
//! holds only the cache, and the last `Client` clone aborts it.

use crate::cache::{Cache, EventOutcome};
use crate::token_prefix;
use futures_util::StreamExt;
use redis::aio::PubSub;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use wxtoken_schema::UpdateEvent;

/// Where and how to subscribe.
pub(crate) struct Subscriber {
    pub(crate) client: redis::Client,
    pub(crate) channel: String,
    /// Bound on connecting + subscribing, and on one PING.
    pub(crate) timeout: Duration,
    /// How often to PING the subscription connection, so that one that died
    /// silently (no FIN, e.g. a network partition) is noticed.
    pub(crate) ping_every: Duration,
}

impl Subscriber {
    /// Opens a pub/sub connection and subscribes to the events channel.
    pub(crate) async fn subscribe(&self) -> redis::RedisResult<PubSub> {
        let attempt = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok(pubsub)
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("subscribing to update events")),
        }
    }
}

pub(crate) fn timed_out(what: &str) -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out")).into()
}

/// Delay before resubscription attempt `attempt` (0-based): 100 ms doubling,
/// capped at 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(ms.min(5_000))
}

/// Runs until aborted, starting with an already subscribed connection (the
/// cache must already be marked subscribed).
pub(crate) async fn run(cache: Arc<Cache>, sub: Subscriber, first: PubSub) {
    let mut pubsub = first;
    loop {
        let reason = session(&cache, pubsub, &sub).await;
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

/// Applies events until the subscription ends; returns why it ended.
async fn session(cache: &Cache, pubsub: PubSub, sub: &Subscriber) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval_at(Instant::now() + sub.ping_every, sub.ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => apply(cache, msg.get_payload_bytes()),
                None => return "connection closed".to_owned(),
            },
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

fn apply(cache: &Cache, payload: &[u8]) {
    match UpdateEvent::parse(payload) {
        Ok(event) => {
            let id = event.id.clone();
            let kind = event.kind;
            let fence = event.fence;
            let token = token_prefix(&event.token);
            match cache.apply_event(event) {
                EventOutcome::Applied => {
                    tracing::debug!(%id, %kind, fence, %token, "applied update event");
                }
                EventOutcome::Older => tracing::debug!(
                    %id, %kind, fence, %token,
                    "update event older than the cached value; kept the cached value, will re-read it once"
                ),
            }
        }
        Err(error) => {
            // An event we cannot understand may have been an update to any
            // cached value: trust none of them until re-read.
            cache.invalidate_all();
            tracing::warn!(%error, "unreadable update event; reading all cached values again once");
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
