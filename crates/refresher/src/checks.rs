//! Start-up checks of the Redis a replica is about to use.
//!
//! - A connection that fails because of TLS (the server's certificate is not
//!   signed by the configured CA, the server requires a client certificate)
//!   is a configuration error: the replica does not start, and the error
//!   names the file to look at. Any other failure (Redis down, slow) is an
//!   outage: one line says the settings could not be checked, and the
//!   replica starts and retries as always.
//! - `maxmemory-policy` other than `noeviction` lets Redis evict wxtoken's
//!   keys under memory pressure: tokens, fences, the due-queue, and with
//!   `volatile-*` the locks (the only keys with a TTL) — so a fenced write
//!   could be lost or a second caller let in.
//! - Persistence off (no AOF, no RDB save points) while durable state is
//!   kept (`[[component]]`: authorizer refresh tokens, the verify ticket)
//!   loses that state when Redis restarts; tokens alone are re-fetched.
//!
//! The settings come from `CONFIG GET`, else (a user refused `CONFIG`, a
//! managed Redis that renamed it) from `INFO memory` / `INFO persistence`;
//! a least-privilege ACL user is usually refused both, and then one line
//! says so. `redis.checks = "refuse"` turns findings into a refusal to
//! start; nothing that could not be checked is ever a refusal.

use crate::config::{redacted_url, Config, RedisChecks};
use crate::StartError;
use std::collections::HashMap;

/// What could be learned of the server's settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `maxmemory-policy`.
    pub policy: Option<String>,
    /// `maxmemory` in bytes (0 = no limit).
    pub maxmemory: Option<u64>,
    /// `appendonly` on.
    pub aof: Option<bool>,
    /// RDB save points configured (`save` not empty).
    pub rdb: Option<bool>,
}

/// Runs the checks against `client`; `Err` when the replica must not start.
pub(crate) async fn run(client: &redis::Client, config: &Config) -> Result<(), StartError> {
    let url = redacted_url(&config.redis.url);
    let tls = &config.redis.tls;
    let fatal_tls = |e: &redis::RedisError| {
        wxtoken_connect::explain(e, tls)
            .map(|hint| StartError::Redis(format!("cannot connect to Redis at {url}: {hint}")))
    };
    let timeouts = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.redis.timeout))
        .set_response_timeout(Some(config.redis.timeout));
    let mut con = match client
        .get_multiplexed_async_connection_with_config(&timeouts)
        .await
    {
        Ok(con) => con,
        Err(e) => {
            if let Some(fatal) = fatal_tls(&e) {
                return Err(fatal);
            }
            tracing::warn!(redis = %url, error = %e, "could not check the Redis settings at start (Redis did not answer); starting anyway, Redis is retried");
            return Ok(());
        }
    };
    let settings = match config_get(&mut con).await {
        Ok(s) => s,
        Err(config_err) => {
            if let Some(fatal) = fatal_tls(&config_err) {
                return Err(fatal);
            }
            match info(&mut con).await {
                Ok(s) => s,
                Err(e) => {
                    if let Some(fatal) = fatal_tls(&e) {
                        return Err(fatal);
                    }
                    tracing::info!(redis = %url, config_get = %config_err, info = %e, "could not check the Redis settings (maxmemory-policy, persistence): this Redis user may not run CONFIG GET or INFO; check them by hand (README: Running Redis)");
                    return Ok(());
                }
            }
        }
    };
    let findings = findings(&settings, !config.components.is_empty());
    if findings.is_empty() {
        tracing::debug!(?settings, "Redis settings checked");
        return Ok(());
    }
    match config.redis.checks {
        RedisChecks::Warn => {
            for f in &findings {
                tracing::warn!(redis = %url, "{f}");
            }
            Ok(())
        }
        RedisChecks::Refuse => Err(StartError::RedisSettings(findings.join("; "))),
    }
}

async fn config_get(con: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<Settings> {
    let mut pipe = redis::pipe();
    for name in ["maxmemory-policy", "maxmemory", "appendonly", "save"] {
        pipe.cmd("CONFIG").arg("GET").arg(name);
    }
    let maps: Vec<HashMap<String, String>> = pipe.query_async(con).await?;
    let get = |name: &str| maps.iter().find_map(|m| m.get(name).cloned());
    Ok(Settings {
        policy: get("maxmemory-policy"),
        maxmemory: get("maxmemory").and_then(|v| v.parse().ok()),
        aof: get("appendonly").map(|v| v == "yes"),
        rdb: get("save").map(|v| !v.trim().is_empty()),
    })
}

async fn info(con: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<Settings> {
    let (memory, persistence): (String, String) = redis::pipe()
        .cmd("INFO")
        .arg("memory")
        .cmd("INFO")
        .arg("persistence")
        .query_async(con)
        .await?;
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    Ok(Settings {
        policy: field(&memory, "maxmemory_policy"),
        maxmemory: field(&memory, "maxmemory").and_then(|v| v.parse().ok()),
        aof: field(&persistence, "aof_enabled").map(|v| v == "1"),
        // INFO does not show the save points.
        rdb: None,
    })
}

/// The risks `settings` carry, one sentence each.
pub(crate) fn findings(settings: &Settings, durable_state: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(policy) = settings.policy.as_deref().filter(|p| *p != "noeviction") {
        let locks = if policy.starts_with("volatile-") {
            ", including the refresh locks (the keys with a TTL)"
        } else {
            " (tokens, fences, the due-queue, locks)"
        };
        let limit = match settings.maxmemory {
            Some(0) => " (maxmemory is 0 now, but a limit set later makes it evict)",
            _ => "",
        };
        out.push(format!(
            "maxmemory-policy is {policy}{limit}: Redis may evict wxtoken's keys when memory runs out{locks}; set maxmemory-policy noeviction"
        ));
    }
    if durable_state {
        match (settings.aof, settings.rdb) {
            (Some(false), Some(false)) => out.push(
                "Redis persistence is off (appendonly no, save \"\") but [[component]] keeps durable state (authorizer refresh tokens, the verify ticket): a Redis restart loses it; turn on appendonly yes or RDB save points".into(),
            ),
            (Some(false), None) => tracing::info!(
                "Redis has AOF off and its RDB save points could not be checked (CONFIG GET refused); [[component]] keeps durable state that a Redis without persistence loses at restart"
            ),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(policy: &str, aof: bool, rdb: bool) -> Settings {
        Settings {
            policy: Some(policy.into()),
            maxmemory: Some(1 << 30),
            aof: Some(aof),
            rdb: Some(rdb),
        }
    }

    #[test]
    fn only_noeviction_is_safe_and_persistence_matters_for_durable_state() {
        assert!(findings(&s("noeviction", false, false), false).is_empty());
        assert!(findings(&s("noeviction", true, false), true).is_empty());
        assert!(findings(&s("noeviction", false, true), true).is_empty());
        let f = findings(&s("allkeys-lru", true, true), true);
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("maxmemory-policy is allkeys-lru"), "{f:?}");
        let f = findings(&s("volatile-ttl", true, true), false);
        assert!(f[0].contains("refresh locks"), "{f:?}");
        let f = findings(&s("noeviction", false, false), true);
        assert!(f[0].contains("persistence is off"), "{f:?}");
        // Nothing known, nothing found.
        assert!(findings(&Settings::default(), true).is_empty());
    }
}
