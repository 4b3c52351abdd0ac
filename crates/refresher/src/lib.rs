//! The wxtoken refresher: keeps every configured WeChat credential's access
//! token (and tickets) fresh in Redis, cooperating with any number of replicas
//! so that exactly one of them calls WeChat per refresh.
//!
//! - `config`: the TOML file, validated at start-up;
//! - `wechat`: HTTP calls to WeChat and classification of failures;
//! - `attempt`: one locked, fenced refresh;
//! - `schedule`: when to attempt, backoff and pauses;
//! - `events`: wake-ups from other replicas' writes;
//! - `store`: Redis reads and status writes;
//! - `metrics`: this replica's Prometheus metrics;
//! - `human`: durations and instants for people (status page, CLI);
//! - `http`: the optional HTTP surface (probes, metrics, status page,
//!   refresh requests).
//!
//! The key layout and Lua scripts come from `wxtoken_schema`; this crate must
//! not build key names or scripts of its own.

mod attempt;
pub mod config;
mod events;
mod http;
pub mod human;
pub mod metrics;
mod schedule;
mod store;
pub mod wechat;

pub use config::{Config, ConfigError};

use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why the refresher could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Redis URL or pool settings were refused.
    #[error("cannot set up the Redis pool: {0}")]
    Redis(String),
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

/// What every loop shares.
pub(crate) struct Shared {
    pool: deadpool_redis::Pool,
    wechat: wechat::Wechat,
    refresh: config::RefreshConfig,
    redis_timeout: Duration,
    namespace: String,
    replica: String,
    shutdown: CancellationToken,
    metrics: Arc<metrics::Metrics>,
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

/// Runs the refresher until `shutdown` is cancelled. Loops finish the attempt
/// they are in (bounded by the WeChat and Redis timeouts), release their
/// locks and stop; then this returns. Redis being down at start or later is
/// not an error: the loops retry until it is back.
pub async fn run(
    config: Config,
    replica: String,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let redis_url = config.redis.url.expose_secret().to_owned();
    let mut pool_cfg = deadpool_redis::Config::from_url(redis_url.clone());
    pool_cfg.pool = Some(deadpool_redis::PoolConfig {
        max_size: config.redis.pool_size,
        timeouts: deadpool_redis::Timeouts {
            wait: Some(config.redis.timeout),
            create: Some(config.redis.timeout),
            recycle: Some(config.redis.timeout),
        },
        ..Default::default()
    });
    let pool = pool_cfg
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| StartError::Redis(e.to_string()))?;
    let client =
        redis::Client::open(redis_url).map_err(|e| StartError::Redis(format!("{:?}", e.kind())))?;
    let shared = Arc::new(Shared {
        pool,
        wechat: wechat::Wechat::new(&config.wechat)?,
        refresh: config.refresh.clone(),
        redis_timeout: config.redis.timeout,
        namespace: config.redis.namespace.clone(),
        replica: replica.clone(),
        shutdown: shutdown.clone(),
        metrics: Arc::new(metrics::Metrics::new()),
    });
    tracing::info!(
        %replica,
        redis = %config::redacted_url(&config.redis.url),
        namespace = %config.redis.namespace,
        wechat = %config.wechat.base_url,
        credentials = config.credentials.len(),
        "refresher starting"
    );
    let http = match &config.http {
        Some(h) => Some(http::Server::bind(h, shared.clone(), &config.credentials).await?),
        None => None,
    };

    let mut wakers: events::Wakers = HashMap::new();
    let mut slots = Vec::new();
    for cred in config.credentials {
        let cred = Arc::new(cred);
        let kinds = std::iter::once(wxtoken_schema::Kind::AccessToken)
            .chain(cred.tickets.iter().map(|t| t.kind()));
        for kind in kinds {
            let wake = Arc::new(Notify::new());
            wakers.insert((cred.id.clone(), kind), wake.clone());
            slots.push((cred.clone(), kind, wake));
        }
    }
    let wakers = Arc::new(wakers);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(register_all(
        shared.clone(),
        slots.iter().map(|s| s.0.clone()).collect(),
    ));
    tasks.spawn(events::listen(
        client,
        shared.namespace.clone(),
        wakers,
        shutdown.clone(),
    ));
    for (cred, kind, wake) in slots {
        tasks.spawn(schedule::run(shared.clone(), cred, kind, wake));
    }
    if let Some(server) = http {
        tasks.spawn(server.serve());
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                tracing::error!(error = %e, "a refresher task panicked");
            }
        }
    }
    tracing::info!(%replica, "refresher stopped");
    Ok(())
}

/// Adds every credential to the registry (for `wxtoken status`), retrying
/// until Redis answers or shutdown.
async fn register_all(sh: Arc<Shared>, creds: Vec<Arc<config::Credential>>) {
    let mut seen = std::collections::HashSet::new();
    let creds: Vec<_> = creds
        .into_iter()
        .filter(|c| seen.insert(c.id.clone()))
        .collect();
    let mut failures = 0;
    while !sh.shutdown.is_cancelled() {
        let r = async {
            let mut con = store::bounded(sh.redis_timeout, sh.pool.get()).await?;
            for c in &creds {
                let keys = wxtoken_schema::CredentialKeys::new(&sh.namespace, &c.id)
                    .map_err(|e| store::RedisError(e.to_string()))?;
                store::bounded(
                    sh.redis_timeout,
                    store::register(&mut con, &sh.namespace, &keys, &c.appid, c.mode.as_str()),
                )
                .await?;
            }
            Ok::<(), store::RedisError>(())
        }
        .await;
        match r {
            Ok(()) => return,
            Err(_) => {
                failures += 1;
                tokio::select! {
                    _ = tokio::time::sleep(schedule::backoff(Duration::from_millis(200), Duration::from_secs(5), failures)) => {}
                    _ = sh.shutdown.cancelled() => return,
                }
            }
        }
    }
}
