//! A connection that follows the primary: one multiplexed
//! `ConnectionManager` for a fixed server, or — behind Sentinel — for the
//! primary the sentinels name, replaced when a failover moves it; or a
//! Redis Cluster connection, which follows the cluster's primaries itself
//! (see [`crate::cluster`]).
//!
//! The owner reports every failed step ([`Managed::saw_error`]); behind
//! Sentinel that asks the sentinels again (one question at a time, at most
//! every [`REDISCOVER_EVERY`]) and, when they name another primary, swaps
//! in a connection to it. Commands in flight on the old connection fail and
//! are retried by their owners like any Redis error. A server (or cluster)
//! that is down at start is not an error: the connection is made lazily.

use crate::cluster::{addr_text, slots_nodes, Cluster, Layout};
use crate::{client, describe, ClusterCon, Con, ConnectError, Sentinel, TlsFiles};
use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// A Redis Cluster, by its seed nodes.
    Cluster(Cluster),
}

impl Target {
    /// The target of `url` (`redis[s]://…`, `redis[s]+sentinel://…` or
    /// `redis[s]+cluster://…`) with `tls`. Connects to nothing.
    pub fn parse(url: &str, tls: &TlsFiles) -> Result<Target, ConnectError> {
        if let Some(c) = Cluster::parse(url, tls) {
            return Ok(Target::Cluster(c?));
        }
        match Sentinel::parse(url, tls) {
            Some(s) => Ok(Target::Sentinel(s?)),
            None => Ok(Target::Server(client(url, tls)?)),
        }
    }

    /// A client for the server, or the primary the sentinels name now
    /// (each sentinel and the node get `timeout`), or — for a cluster —
    /// the first seed node that answers `PING` within `timeout` (the first
    /// seed if none does): one node, which answers `MOVED` for keys it does
    /// not own.
    pub async fn resolve(&self, timeout: Duration) -> Result<redis::Client, ConnectError> {
        match self {
            Target::Server(c) => Ok(c.clone()),
            Target::Sentinel(s) => s.primary(timeout).await.map(|(c, _)| c),
            Target::Cluster(c) => {
                let mut first = None;
                for seed in c.seeds() {
                    let node = c.node_client(seed)?;
                    let answers = async {
                        let mut con = node.get_multiplexed_async_connection().await?;
                        redis::cmd("PING").query_async::<()>(&mut con).await
                    };
                    if matches!(tokio::time::timeout(timeout, answers).await, Ok(Ok(()))) {
                        return Ok(node);
                    }
                    first.get_or_insert(node);
                }
                first.ok_or_else(|| ConnectError::Mismatch {
                    which: None,
                    message: "the Redis Cluster URL names no node".into(),
                })
            }
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
    con: ArcSwap<Con>,
    client: ArcSwap<redis::Client>,
    /// The primary's `ip:port` (Sentinel), or empty.
    addr: Mutex<String>,
    asking: AtomicBool,
    last_asked: Mutex<Option<Instant>>,
    /// The nodes [`Managed::client`] rotates through (cluster only).
    rotation: Option<Rotation>,
}

/// A cluster's nodes for pub/sub clients: the seeds, then the nodes the
/// cluster last named; [`Managed::client`] hands out the next one on each
/// call.
struct Rotation {
    cluster: Cluster,
    seeds: Vec<(String, redis::Client)>,
    /// `(host:port, client)`, seeds first.
    nodes: Mutex<Vec<(String, redis::Client)>>,
    next: AtomicUsize,
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
}

impl Rotation {
    fn pick(&self) -> redis::Client {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let i = self.next.fetch_add(1, Ordering::Relaxed) % nodes.len().max(1);
        match nodes.get(i) {
            Some((_, c)) => c.clone(),
            None => self.seeds[0].1.clone(),
        }
    }

    /// The seeds, then every node in `all` (`(host, port)`) not a seed.
    fn learn(&self, all: &[(String, u16)]) {
        let mut nodes = self.seeds.clone();
        for (host, port) in all {
            let addr = addr_text(host, *port);
            if nodes.iter().any(|(a, _)| *a == addr) {
                continue;
            }
            if let Ok(c) = self.cluster.node_client(&addr) {
                nodes.push((addr, c));
            }
        }
        *self.nodes.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// Whether a refresh is due (at most one every [`REDISCOVER_EVERY`]).
    fn due(&self) -> bool {
        let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < REDISCOVER_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// Asks the cluster (any node) for its slot map.
async fn cluster_nodes(con: &Con) -> redis::RedisResult<Layout> {
    let answer: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut con.clone())
        .await?;
    slots_nodes(&answer)
        .map_err(|why| redis::RedisError::from((redis::ErrorKind::Client, "Redis Cluster", why)))
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
        if let Target::Cluster(cluster) = &target {
            return Managed::new_cluster(cluster.clone(), tls, config, timeout);
        }
        let (client, addr) = match &target {
            Target::Server(c) => (c.clone(), String::new()),
            Target::Cluster(_) => unreachable!("handled above"),
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
                con: ArcSwap::from_pointee(Con::Server(con)),
                client: ArcSwap::from_pointee(client),
                addr: Mutex::new(addr),
                asking: AtomicBool::new(false),
                last_asked: Mutex::new(None),
                rotation: None,
            }),
        })
    }

    /// The cluster connection, made in the background: with `config`'s
    /// connection and response timeouts (else `timeout`), at least 3
    /// retries (a redirection after a failover is one), waiting up to
    /// `config`'s longest delay between them.
    fn new_cluster(
        cluster: Cluster,
        tls: &TlsFiles,
        config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Managed, ConnectError> {
        let connect_timeout = config.connection_timeout().unwrap_or(timeout);
        let response_timeout = config.response_timeout().unwrap_or(timeout);
        let retries = u32::try_from(config.number_of_retries())
            .unwrap_or(u32::MAX)
            .max(3);
        let max_delay = config.max_delay().unwrap_or(Duration::from_secs(1));
        let client = cluster.client(connect_timeout, response_timeout, retries, max_delay)?;
        let con = client.get_pending_async_connection_with_config(Cluster::config(
            connect_timeout,
            response_timeout,
        ));
        let seeds = cluster
            .seeds()
            .iter()
            .map(|s| Ok((s.clone(), cluster.node_client(s)?)))
            .collect::<Result<Vec<_>, ConnectError>>()?;
        let first = seeds[0].1.clone();
        let con = ClusterCon::new(con, seeds.clone(), connect_timeout);
        Ok(Managed {
            inner: Arc::new(Inner {
                target: Target::Cluster(cluster.clone()),
                tls: tls.clone(),
                config,
                timeout,
                con: ArcSwap::from_pointee(Con::Cluster(con)),
                client: ArcSwap::from_pointee(first),
                addr: Mutex::new(String::new()),
                asking: AtomicBool::new(false),
                last_asked: Mutex::new(None),
                rotation: Some(Rotation {
                    cluster,
                    nodes: Mutex::new(seeds.clone()),
                    seeds,
                    next: AtomicUsize::new(0),
                    refreshing: AtomicBool::new(false),
                    last_refresh: Mutex::new(None),
                }),
            }),
        })
    }

    /// A handle on the current connection for one step.
    pub fn con(&self) -> Con {
        self.inner.con.load().as_ref().clone()
    }

    /// A client for the current primary (for pub/sub, which needs its own
    /// connection): ask again after each lost subscription.
    ///
    /// For a cluster: a client for one node, the next one on each call
    /// (the seeds, then the other nodes the cluster named when last asked —
    /// each call may ask again in the background, at most every 500 ms). Classic `PUBLISH` reaches the subscribers of
    /// every node, so any node will do; one that lost its node gets
    /// another next time.
    pub fn client(&self) -> redis::Client {
        let Some(rotation) = &self.inner.rotation else {
            return self.inner.client.load().as_ref().clone();
        };
        if rotation.due() && !rotation.refreshing.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let inner = self.inner.clone();
                    rt.spawn(async move {
                        let con = inner.con.load().as_ref().clone();
                        let asked = tokio::time::timeout(inner.timeout, cluster_nodes(&con)).await;
                        if let (Some(rotation), Ok(Ok(layout))) = (&inner.rotation, &asked) {
                            rotation.learn(&layout.all);
                        }
                        if let Some(rotation) = &inner.rotation {
                            rotation.refreshing.store(false, Ordering::Release);
                        }
                    });
                }
                Err(_) => rotation.refreshing.store(false, Ordering::Release),
            }
        }
        rotation.pick()
    }

    /// One connection per primary, for sweeps (`SCAN`) that must visit
    /// every primary: for a cluster, a [`Con::Node`] per primary the
    /// cluster names now (asked of any node, bounded by the connection's
    /// response timeout); for a single server or behind Sentinel, the one
    /// connection. A primary that fails over during the sweep fails the
    /// sweep's next command; ask again.
    pub async fn nodes(&self) -> redis::RedisResult<Vec<Con>> {
        let con = self.con();
        let Con::Cluster(cluster) = &con else {
            return Ok(vec![con]);
        };
        let layout = cluster_nodes(&con).await?;
        if let Some(rotation) = &self.inner.rotation {
            rotation.learn(&layout.all);
        }
        Ok(layout
            .primaries
            .into_iter()
            .map(|(host, port)| Con::Node {
                con: cluster.clone(),
                host,
                port,
            })
            .collect())
    }

    /// The TLS files.
    pub fn tls(&self) -> &TlsFiles {
        &self.inner.tls
    }

    /// A step on the connection failed with `e`. Behind Sentinel, the
    /// sentinels are asked (in the background) whether the primary moved.
    /// A cluster connection follows failovers itself (it asks for the slot
    /// map again on `MOVED` and connection errors): nothing to do.
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
                                inner.con.store(Arc::new(Con::Server(con)));
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
