//! Listens to the namespace's update events and refresh requests so that
//! waiting loops re-check at once when another replica writes or a business
//! server reports a refused token. Reconnects with backoff; while the
//! subscription is down the loops fall back to their `check_interval`.
//! Events are hints only: correctness never depends on receiving one.

use crate::schedule::backoff;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wxtoken_schema::{events_channel, requests_channel, Kind, UpdateEvent, KINDS};

/// Wakers of the loops, by credential id and kind.
pub type Wakers = HashMap<(String, Kind), Arc<Notify>>;

/// Subscribes until `shutdown`, waking the loop each event names.
pub async fn listen(
    client: redis::Client,
    namespace: String,
    wakers: Arc<Wakers>,
    shutdown: CancellationToken,
) {
    let channel = events_channel(&namespace);
    let requests = requests_channel(&namespace);
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[&channel, &requests]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            r = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe) => r,
            _ = shutdown.cancelled() => break,
        };
        let pubsub = match pubsub {
            Ok(Ok(pubsub)) => {
                if failures > 0 {
                    tracing::info!(%channel, "update event subscription is back");
                }
                pubsub
            }
            failed => {
                failures += 1;
                if failures == 1 {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {SUBSCRIBE_TIMEOUT:?}"),
                    };
                    tracing::warn!(%error, "cannot subscribe to update events; retrying (loops fall back to check_interval)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(Duration::from_millis(200), Duration::from_secs(5), failures)) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        tracing::debug!(%channel, %requests, "subscribed to update events and refresh requests");
        let (requests, wakers) = (&requests, &wakers);
        let session = async move {
            let mut pubsub = pubsub;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                if msg.get_channel_name() == requests {
                    // "<id> <kind>"
                    let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    let mut parts = payload.split_whitespace();
                    let (Some(id), kind) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    for k in KINDS
                        .iter()
                        .filter(|k| kind.is_none_or(|n| n == k.as_str()))
                    {
                        if let Some(n) = wakers.get(&(id.to_owned(), *k)) {
                            n.notify_one();
                        }
                    }
                    continue;
                }
                match UpdateEvent::parse(msg.get_payload_bytes()) {
                    Ok(ev) => {
                        // A new access token also wakes the credential's
                        // ticket loops, which may be waiting for it.
                        let kinds: &[Kind] = match ev.kind {
                            Kind::AccessToken => &KINDS,
                            _ => std::slice::from_ref(&ev.kind),
                        };
                        for kind in kinds {
                            if let Some(n) = wakers.get(&(ev.id.clone(), *kind)) {
                                n.notify_one();
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring unparsable event"),
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            _ = session => {
                failures = 1;
                tracing::warn!(%channel, "update event subscription lost; resubscribing (loops fall back to check_interval)");
            }
            _ = shutdown.cancelled() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(Duration::from_millis(200), Duration::from_secs(5), failures)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Longest wait for a (re)subscription before trying again.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
