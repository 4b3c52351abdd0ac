//! A connection that follows the primary: one multiplexed
//! `ConnectionManager` for a fixed server, or — behind Sentinel — for the
//! primary the sentinels name, replaced when a failover moves it.
//!
//! The owner reports every failed step ([`Managed::saw_error`]); behind
//! Sentinel that asks the sentinels again (one question at a time, at most
//! every [`REDISCOVER_EVERY`]) and, when they name another primary, swaps
//! in a connection to it. Commands in flight on the old connection fail and
//! are retried by their owners like any Redis error. A server that is down
//! at start is not an error: the connection is made lazily.

use crate::{client, describe, ConnectError, Sentinel, TlsFiles};
use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest time between two questions to the sentinels.
pub const REDISCOVER_EVERY: Duration = Duration::from_millis(500);

/// Where Redis is.
#[derive(Clone, Debug)]
pub enum Target {
    /// One server, by `redis://` / `rediss://` URL (the client is built).
    Server(redis::Client),
    /// The primary Redis Sentinel names.
    Sentinel(Sentinel),
}

impl Target {
    /// The target of `url` (`redis[s]://…` or `redis[s]+sentinel://…`)
    /// with `tls`. Connects to nothing.
    pub fn parse(url: &str, tls: &TlsFiles) -> Result<Target, ConnectError> {
        match Sentinel::parse(url, tls) {
            Some(s) => Ok(Target::Sentinel(s?)),
            None => Ok(Target::Server(client(url, tls)?)),
        }
    }

    /// A client for the server, or the primary the sentinels name now
    /// (each sentinel and the node get `timeout`).
    pub async fn resolve(&self, timeout: Duration) -> Result<redis::Client, ConnectError> {
        match self {
            Target::Server(c) => Ok(c.clone()),
            Target::Sentinel(s) => s.primary(timeout).await.map(|(c, _)| c),
        }
    }
}

/// The connection of a refresher or a reader (cheap to clone).
#[derive(Clone)]
pub struct Managed {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    tls: TlsFiles,
    config: ConnectionManagerConfig,
    timeout: Duration,
    con: ArcSwap<ConnectionManager>,
    client: ArcSwap<redis::Client>,
    /// The primary's `ip:port` (Sentinel), or empty.
    addr: Mutex<String>,
    asking: AtomicBool,
    last_asked: Mutex<Option<Instant>>,
}

impl Managed {
    /// Sets up the connection. Behind Sentinel the sentinels are asked once
    /// (bounded by `timeout`); if none answers, the connection starts
    /// without a primary and asks again on the first error.
    pub async fn new(
        target: Target,
        tls: &TlsFiles,
        config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Managed, ConnectError> {
        let (client, addr) = match &target {
            Target::Server(c) => (c.clone(), String::new()),
            Target::Sentinel(s) => match s.primary(timeout).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "Redis Sentinel did not name a primary yet; asking again on the first use");
                    // A placeholder that fails every command until the
                    // sentinels answer: the first error asks again.
                    let placeholder = redis::Client::open("redis://127.0.0.1:1")
                        .map_err(|e| ConnectError::Url { kind: e.kind() })?;
                    (placeholder, String::new())
                }
            },
        };
        let con = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| ConnectError::Url { kind: e.kind() })?;
        Ok(Managed {
            inner: Arc::new(Inner {
                target,
                tls: tls.clone(),
                config,
                timeout,
                con: ArcSwap::from_pointee(con),
                client: ArcSwap::from_pointee(client),
                addr: Mutex::new(addr),
                asking: AtomicBool::new(false),
                last_asked: Mutex::new(None),
            }),
        })
    }

    /// A handle on the current connection for one step.
    pub fn con(&self) -> ConnectionManager {
        self.inner.con.load().as_ref().clone()
    }

    /// A client for the current primary (for pub/sub, which needs its own
    /// connection): ask again after each lost subscription.
    pub fn client(&self) -> redis::Client {
        self.inner.client.load().as_ref().clone()
    }

    /// The TLS files.
    pub fn tls(&self) -> &TlsFiles {
        &self.inner.tls
    }

    /// A step on the connection failed with `e`. Behind Sentinel, the
    /// sentinels are asked (in the background) whether the primary moved.
    pub fn saw_error(&self, e: Option<&redis::RedisError>) {
        let Target::Sentinel(sentinel) = &self.inner.target else {
            return;
        };
        if e.is_some_and(|e| {
            // Answers about the data, not about the server.
            matches!(
                e.code(),
                Some("WRONGTYPE" | "NOSCRIPT" | "NOPERM" | "BUSY" | "EXECABORT")
            )
        }) {
            return;
        }
        {
            let mut last = self
                .inner
                .last_asked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REDISCOVER_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        if self.inner.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (inner, sentinel) = (self.inner.clone(), sentinel.clone());
        tokio::spawn(async move {
            match sentinel.primary(inner.timeout).await {
                Ok((client, addr)) => {
                    let moved = {
                        let mut cur = inner.addr.lock().unwrap_or_else(|p| p.into_inner());
                        let moved = *cur != addr;
                        if moved {
                            cur.clone_from(&addr);
                        }
                        moved
                    };
                    if moved {
                        match ConnectionManager::new_lazy_with_config(
                            client.clone(),
                            inner.config.clone(),
                        ) {
                            Ok(con) => {
                                inner.con.store(Arc::new(con));
                                inner.client.store(Arc::new(client));
                                tracing::warn!(master = sentinel.master(), primary = %addr, "Redis Sentinel names a new primary; following it");
                            }
                            Err(e) => {
                                tracing::warn!(error = %describe(&e, &inner.tls), "cannot set up the connection to the new primary")
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "asking Redis Sentinel for the primary"),
            }
            inner.asking.store(false, Ordering::Release);
        });
    }
}
