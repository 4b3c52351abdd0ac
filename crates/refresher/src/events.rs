//! Listens to the namespace's refresh requests and update events.
//!
//! A request (`"<id> <kind>"` on the requests channel) puts the value on the
//! scheduler's agenda as due now; the claim then checks with the queue
//! whether it really is. An update event sets the value's expiry metric. A
//! (re)subscription asks the scheduler for a rescan, since requests may have
//! been missed while it was down; until then the periodic rescan
//! (`check_interval`) covers for it. Events are hints only: correctness
//! never depends on receiving one. Messages for values this replica does not
//! hold are dropped at once.

use crate::policy::backoff;
use crate::registry::Registry;
use crate::scheduler::Inbox;
use crate::Shared;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use wxtoken_schema::{events_channel, parse_member, requests_channel, UpdateEvent};

/// Longest wait for a (re)subscription before trying again.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest message looked at; longer ones are not wxtoken's.
const MAX_MESSAGE: usize = 64 * 1024;

/// Subscribes until shutdown, passing requests on to the scheduler.
pub async fn listen(sh: Arc<Shared>, tls: wxtoken_connect::TlsFiles, inbox: Arc<Inbox>) {
    let channel = events_channel(&sh.namespace);
    let requests = requests_channel(&sh.namespace);
    let shutdown = sh.shutdown.clone();
    let mut failures = 0u32;
    let pause = |failures| {
        backoff(
            Duration::from_millis(200),
            Duration::from_secs(5),
            failures,
            rand::random::<f64>(),
        )
    };
    while !shutdown.is_cancelled() {
        // The current primary's client: behind Sentinel it moves.
        let client = sh.redis.client();
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
                    tracing::info!(%channel, "event subscription is back");
                }
                pubsub
            }
            failed => {
                failures += 1;
                sh.redis.saw_error();
                if failures == 1 {
                    let error = match failed {
                        Ok(Err(e)) => wxtoken_connect::describe(&e, &tls),
                        _ => format!("no answer within {SUBSCRIBE_TIMEOUT:?}"),
                    };
                    tracing::warn!(%error, "cannot subscribe to refresh requests; retrying (the scheduler rescans every check_interval)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause(failures)) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        tracing::debug!(%channel, %requests, "subscribed to update events and refresh requests");
        inbox.rescan();
        // Requests filed while nobody listened (plain SETs move nothing in
        // the due-queue): look for them once per subscription.
        tokio::spawn(sweep(sh.clone(), inbox.clone()));
        let session = async {
            let mut pubsub = pubsub;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let payload = msg.get_payload_bytes();
                if payload.len() > MAX_MESSAGE {
                    continue;
                }
                if msg.get_channel_name() == requests {
                    on_request(&sh.registry, &inbox, payload);
                } else {
                    on_update(&sh, payload);
                }
            }
        };
        tokio::select! {
            _ = session => {
                failures = 1;
                sh.redis.saw_error();
                tracing::warn!(%channel, "event subscription lost; resubscribing (the scheduler rescans every check_interval)");
            }
            _ = shutdown.cancelled() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(pause(failures)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Finds pending refresh requests with `SCAN` (once per subscription; on
/// every primary of a Redis Cluster) and puts those of held values on the
/// agenda. Bounded by the keyspace; gives up quietly on a Redis error (the
/// next subscription sweeps again).
async fn sweep(sh: Arc<Shared>, inbox: Arc<Inbox>) {
    let nodes = match sh.redis.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::debug!(error = %e, "sweep for pending refresh requests not started");
            return;
        }
    };
    let mut found = 0usize;
    for node in nodes {
        let mut cursor = 0;
        loop {
            let mut con = node.clone();
            let page = sh
                .redis
                .step(wxtoken_schema::registry::pending_requests(
                    &mut con,
                    &sh.namespace,
                    cursor,
                    1000,
                ))
                .await;
            let (next, members) = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "sweep for pending refresh requests stopped");
                    return;
                }
            };
            for m in members {
                if parse_member(&m).is_some_and(|(id, _)| sh.registry.holds(id)) {
                    found += 1;
                    inbox.due_now(m);
                }
            }
            if next == 0 || sh.shutdown.is_cancelled() {
                break;
            }
            cursor = next;
        }
    }
    if found > 0 {
        tracing::info!(found, "pending refresh requests found");
    }
}

/// `"<id> <kind>"`: due now, if this replica holds it.
fn on_request(registry: &Registry, inbox: &Inbox, payload: &[u8]) {
    let Ok(text) = std::str::from_utf8(payload) else {
        return;
    };
    if let Some((id, _)) = parse_member(text) {
        if registry.holds(id) {
            inbox.due_now(text.to_owned());
        }
    }
}

/// An update event: the value's expiry, for the metrics (not for
/// authorizers and a suite's corps: up to 100,000 run-time subjects, whose
/// gauges would never be dropped).
fn on_update(sh: &Shared, payload: &[u8]) {
    match UpdateEvent::parse(payload) {
        Ok(ev)
            if sh.registry.holds(&ev.id)
                && !matches!(
                    wxtoken_schema::Subject::parse(&ev.id),
                    Some(
                        wxtoken_schema::Subject::Authorizer { .. }
                            | wxtoken_schema::Subject::Corp { .. }
                    )
                ) =>
        {
            sh.metrics
                .expires_at
                .get_or_create(&crate::metrics::value(&ev.id, ev.kind))
                .set(ev.expires_at_ms as f64 / 1000.0);
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "ignoring unparsable event"),
    }
}
