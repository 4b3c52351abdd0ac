//! The wxtoken refresher: keeps every configured WeChat credential's access
//! token (and tickets) fresh in Redis, cooperating with any number of replicas
//! so that exactly one of them calls WeChat per refresh.
//!
//! Entry point: [`run`]. Inside, in the order data flows:
//!
//! - `registry`: the credentials this replica holds secrets for (config,
//!   reloaded at run time), their registration in Redis, the heartbeat that
//!   notices a Redis that lost its data;
//! - `scheduler`: the one due-queue loop — claims due values within the
//!   concurrency limit and the shared call rate;
//! - `lease`: the refresh protocol of one value (claim → decide → confirm →
//!   call while renewing → fenced write or finish);
//! - `policy`: pure decisions (why refresh, when due, backoff);
//! - `suite`: WeCom suites' pushes and the exchange of their auth codes;
//! - `events`: refresh requests and update events from Redis pub/sub;
//! - `conn`: the one multiplexed Redis connection and its bounded steps
//!   (the client itself is built by `wxtoken-connect`, shared with the
//!   client crate and the CLI: `rediss://`, CA file, client certificate);
//! - `checks`: the start-up checks of the Redis settings (TLS failures,
//!   `maxmemory-policy`, persistence);
//! - `config`: the TOML file, validated at start-up;
//! - `wechat`: HTTP calls to WeChat and classification of failures;
//! - `metrics`, `human`, `http`: the operator's view.
//!
//! The key layout and Lua scripts come from `wxtoken_schema`; this crate must
//! not build key names or scripts of its own.

mod authorizer;
mod checks;
pub mod config;
mod conn;
mod events;
mod http;
pub mod human;
mod lease;
pub mod metrics;
mod policy;
mod registry;
mod scheduler;
mod suite;
pub mod wechat;

pub use config::{Config, ConfigError};

use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use wxtoken_schema::RateLimit;

/// Why the refresher could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Redis URL was refused.
    #[error("cannot set up the Redis connection: {0}")]
    Redis(String),
    /// `redis.checks = "refuse"` and the Redis settings put wxtoken's keys
    /// at risk.
    #[error("refusing to start (redis.checks = \"refuse\"): {0}")]
    RedisSettings(String),
    /// The HTTP client could not be built.
    #[error("cannot set up the WeChat HTTP client: {0}")]
    Wechat(#[from] wechat::WechatError),
    /// The HTTP surface could not listen on `http.listen`.
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Http {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why (address in use, not permitted, not local…).
        #[source]
        source: std::io::Error,
    },
}

/// What every task of a replica shares.
pub(crate) struct Shared {
    redis: conn::Redis,
    wechat: wechat::Wechat,
    refresh: config::RefreshConfig,
    /// The shared WeChat call rate (`None`: no limit).
    rate: Option<RateLimit>,
    /// The shared WeCom call rate of WeCom apps (its own host, its own
    /// limit; `None`: no limit).
    wecom_rate: Option<RateLimit>,
    max_concurrent_calls: usize,
    namespace: String,
    replica: String,
    shutdown: CancellationToken,
    metrics: Arc<metrics::Metrics>,
    registry: registry::Registry,
    /// Wake-ups for the scheduler.
    inbox: Arc<scheduler::Inbox>,
}

impl Shared {
    /// The shared call rate a claim on `held` must fit in: a platform's own
    /// (for its component token, reconciliation and authorizers), a
    /// suite's own (its suite token and corps), the WeCom host's for a
    /// WeCom app, else the WeChat host's.
    fn rate_for(&self, held: &registry::Held) -> Option<RateLimit> {
        let component = match &held.target {
            registry::Target::App(c) if c.is_wecom() => return self.wecom_rate.clone(),
            registry::Target::App(_) => return self.rate.clone(),
            registry::Target::Component(c) => c,
            registry::Target::Authorizer { component, .. } => component,
            registry::Target::Suite(suite) | registry::Target::Corp { suite, .. } => {
                return (suite.calls_per_second > 0.0).then(|| RateLimit {
                    key: wxtoken_schema::rate_key(
                        &self.namespace,
                        &format!("suite/{}", suite.suite_id),
                    ),
                    interval: Duration::from_secs_f64(1.0 / suite.calls_per_second),
                    burst: suite.burst,
                })
            }
        };
        (component.calls_per_second > 0.0).then(|| RateLimit {
            key: wxtoken_schema::rate_key(
                &self.namespace,
                &format!("component/{}", component.appid),
            ),
            interval: Duration::from_secs_f64(1.0 / component.calls_per_second),
            burst: component.burst,
        })
    }

    /// The rules of this replica's claims.
    fn claim_rules(&self) -> wxtoken_schema::ClaimRules<'_> {
        let r = &self.refresh;
        wxtoken_schema::ClaimRules {
            lock_ttl: r.lock_ttl,
            rate: self.rate.as_ref(),
            min_interval: r.min_interval,
            max_hold: r.quota_pause.max(r.config_error_retry).max(r.retry_max),
        }
    }
}

pub use wxtoken_schema::token_prefix;

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The default replica id: `$WXTOKEN_REPLICA_ID`, else `<hostname>-<pid>`.
pub fn default_replica_id() -> String {
    if let Ok(id) = std::env::var("WXTOKEN_REPLICA_ID") {
        if !id.is_empty() {
            return id;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Runs the refresher until `shutdown` is cancelled. Each config sent on
/// `reloads` replaces the credentials this replica refreshes (other
/// sections take effect at the next start). Leases in flight end (bounded
/// by the WeChat and Redis timeouts) and release their locks before this
/// returns. Redis being down at start or later is not an error: everything
/// retries until it is back.
pub async fn run(
    config: Config,
    replica: String,
    shutdown: CancellationToken,
    mut reloads: mpsc::Receiver<Config>,
) -> Result<(), StartError> {
    let target =
        wxtoken_connect::Target::parse(config.redis.url.expose_secret(), &config.redis.tls)
            .map_err(|e| StartError::Redis(e.to_string()))?;
    let redis = conn::Redis::new(target, config.redis.timeout, &config.redis.tls)
        .await
        .map_err(|e| StartError::Redis(e.to_string()))?;
    let rate = (config.wechat.calls_per_second > 0.0).then(|| RateLimit {
        key: wxtoken_schema::rate_key(
            &config.redis.namespace,
            &wechat_host(&config.wechat.base_url),
        ),
        interval: Duration::from_secs_f64(1.0 / config.wechat.calls_per_second),
        burst: config.wechat.burst,
    });
    let wecom_rate = (config.wechat.wecom_calls_per_second > 0.0).then(|| RateLimit {
        key: wxtoken_schema::rate_key(
            &config.redis.namespace,
            &wechat_host(&config.wechat.wecom_base_url),
        ),
        interval: Duration::from_secs_f64(1.0 / config.wechat.wecom_calls_per_second),
        burst: config.wechat.wecom_burst,
    });
    let sh = Arc::new(Shared {
        redis,
        wechat: wechat::Wechat::new(&config.wechat)?,
        refresh: config.refresh.clone(),
        rate,
        wecom_rate,
        max_concurrent_calls: config.wechat.max_concurrent_calls,
        namespace: config.redis.namespace.clone(),
        replica: replica.clone(),
        shutdown: shutdown.clone(),
        metrics: Arc::new(metrics::Metrics::new()),
        registry: registry::Registry::new(&config.redis.namespace),
        inbox: Arc::new(scheduler::Inbox::default()),
    });
    sh.registry.replace(
        config.credentials.clone(),
        config.components.clone(),
        config.suites.clone(),
    );
    sh.metrics.credentials.set(config.credentials.len() as i64);
    tracing::info!(
        %replica,
        redis = %config::redacted_url(&config.redis.url),
        namespace = %config.redis.namespace,
        wechat = %config.wechat.base_url,
        credentials = config.credentials.len(),
        tls = config.redis.url.expose_secret().starts_with("rediss://"),
        "refresher starting"
    );
    checks::run(&sh.redis.client(), &config).await?;
    let http = match &config.http {
        Some(h) => Some(http::Server::bind(h, sh.clone()).await?),
        None => None,
    };

    let inbox = sh.inbox.clone();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(events::listen(
        sh.clone(),
        config.redis.tls.clone(),
        inbox.clone(),
    ));
    let register = Arc::new(Notify::new());
    tasks.spawn(heartbeat(sh.clone(), register.clone()));
    tasks.spawn(registrar(sh.clone(), inbox.clone(), register));
    tasks.spawn(suite::sweeper(sh.clone()));
    if let Some(server) = http {
        tasks.spawn(server.serve());
    }
    let reloader = {
        let (sh, inbox) = (sh.clone(), inbox.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = reloads.recv() => match next {
                        Some(cfg) => reload(&sh, &inbox, cfg).await,
                        None => sh.shutdown.cancelled().await,
                    },
                    _ = sh.shutdown.cancelled() => return,
                }
            }
        })
    };
    scheduler::run(sh.clone(), inbox).await;
    let _ = reloader.await;
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                tracing::error!(error = %e, "a refresher task panicked");
            }
        }
    }
    registry::retire(&sh).await;
    tracing::info!(%replica, "refresher stopped");
    Ok(())
}

/// The host (and port, if any) of the WeChat base URL, naming the shared
/// rate.
fn wechat_host(base_url: &str) -> String {
    reqwest::Url::parse(base_url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "wechat".into())
}

/// Marks the replica alive every [`registry::HEARTBEAT`], on its own timer;
/// when Redis did not know it (first start, Redis lost its data, taken for
/// dead), asks the registrar to register every held credential again.
async fn heartbeat(sh: Arc<Shared>, register: Arc<Notify>) {
    let mut failures = 0u32;
    while !sh.shutdown.is_cancelled() {
        let wait = match registry::heartbeat(&sh).await {
            Ok(forgotten) => {
                if forgotten {
                    register.notify_one();
                }
                failures = 0;
                registry::HEARTBEAT
            }
            Err(e) => {
                failures += 1;
                sh.metrics.redis_up.set(0);
                if failures == 1 {
                    tracing::warn!(error = %e, "heartbeat failed; retrying");
                }
                registry::HEARTBEAT.min(policy::backoff(
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                    failures,
                    rand::random::<f64>(),
                ))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = sh.shutdown.cancelled() => return,
        }
    }
}

/// How often a replica registers its credentials again although Redis
/// knows it: registration is idempotent, and it repairs due-queue and
/// registry entries lost between two steps (see `wxtoken_schema::index`).
const REINDEX_EVERY: Duration = Duration::from_secs(600);

/// Registers every held credential whenever the heartbeat asks, and every
/// [`REINDEX_EVERY`], retrying until one registration has gone through
/// completely (a chunk that fails part-way must not leave values out of
/// the queue), then has the scheduler rescan. Runs beside the heartbeat,
/// so a long registration never looks like a dead replica.
async fn registrar(sh: Arc<Shared>, inbox: Arc<scheduler::Inbox>, register: Arc<Notify>) {
    let mut first = true;
    loop {
        let asked = tokio::select! {
            _ = register.notified() => true,
            _ = tokio::time::sleep(REINDEX_EVERY), if !first => false,
            _ = sh.shutdown.cancelled() => return,
        };
        let mut failures = 0u32;
        loop {
            let held: Vec<_> = sh.registry.all().values().cloned().collect();
            let registered = match registry::migrate(&sh).await {
                Ok(()) => registry::register(&sh, &held).await,
                Err(e) => Err(e),
            };
            match registered {
                Ok(queued) => {
                    if first {
                        tracing::info!(credentials = held.len(), queued, "registered credentials");
                        // systemd (Type=notify): ready once Redis knows what
                        // this replica refreshes. A no-op without NOTIFY_SOCKET.
                        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
                            tracing::debug!(error = %e, "could not notify systemd");
                        }
                    } else if asked {
                        tracing::warn!(credentials = held.len(), queued, "Redis did not know this replica (data lost, or taken for dead): registered every credential again");
                    } else if queued > 0 {
                        tracing::warn!(credentials = held.len(), queued, "periodic registration found values that were not scheduled, and scheduled them");
                    }
                    first = false;
                    inbox.rescan();
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot register the credentials; retrying until every one is registered");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(policy::backoff(Duration::from_millis(200), Duration::from_secs(5), failures, rand::random::<f64>())) => {}
                        _ = sh.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Applies a reloaded config: new credentials are registered (due at
/// once), dropped ones unregistered. Retries Redis until it answers.
async fn reload(sh: &Shared, inbox: &scheduler::Inbox, cfg: Config) {
    let n = cfg.credentials.len();
    let changes = sh
        .registry
        .replace(cfg.credentials, cfg.components, cfg.suites);
    sh.metrics.credentials.set(n as i64);
    tracing::info!(
        credentials = n,
        added = changes.added.len(),
        removed = changes.removed.len(),
        "config reloaded"
    );
    let mut failures = 0;
    loop {
        let r = async {
            registry::register(sh, &changes.added).await?;
            for keys in &changes.removed {
                let deleted = registry::unregister(sh, keys).await?;
                tracing::info!(
                    id = keys.id(),
                    deleted,
                    "no longer refreshing this credential here{}",
                    if deleted {
                        "; no other replica holds it, so its keys were deleted"
                    } else {
                        ""
                    }
                );
            }
            Ok::<_, conn::RedisError>(())
        }
        .await;
        match r {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot apply the reloaded credentials to Redis; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(policy::backoff(Duration::from_millis(200), Duration::from_secs(5), failures, rand::random::<f64>())) => {}
                    _ = sh.shutdown.cancelled() => return,
                }
            }
        }
    }
    inbox.rescan();
}
