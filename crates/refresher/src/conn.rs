//! The replica's one Redis connection and the one way to use it.
//!
//! A multiplexed connection (`redis::aio::ConnectionManager`): every task
//! pipelines its commands over the same socket, so a step is one round trip
//! (no pool checkout, no recycle `PING`), no connection is ever held while
//! WeChat is called, and a burst of work never opens new connections. The
//! manager reconnects by itself after a connection error. Every step is
//! bounded by the configured Redis timeout; a timed-out step leaves the
//! connection usable.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A Redis failure (connection, timeout, or command error). Its text comes
/// from the Redis client and never holds a secret: URLs are not included.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(pub String);

impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        RedisError(e.to_string())
    }
}

/// The shared connection and the timeout of every step.
#[derive(Clone)]
pub struct Redis {
    con: ConnectionManager,
    timeout: Duration,
    tls: Arc<wxtoken_connect::TlsFiles>,
}

impl Redis {
    /// Sets up the connection without connecting: Redis being down at
    /// start is not an error (steps fail and are retried).
    pub fn new(
        client: redis::Client,
        timeout: Duration,
        tls: &wxtoken_connect::TlsFiles,
    ) -> Result<Redis, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let con = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RedisError(format!("{:?}", e.kind())))?;
        Ok(Redis {
            con,
            timeout,
            tls: Arc::new(tls.clone()),
        })
    }

    /// A handle on the connection for one step (cheap to clone).
    pub fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// Runs one step (a command, pipeline or script) within the timeout.
    pub async fn step<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(self.timeout, fut).await {
            // A TLS failure says which file to look at.
            Ok(r) => r.map_err(|e| RedisError(wxtoken_connect::describe(&e, &self.tls))),
            Err(_) => Err(RedisError(format!("no answer within {:?}", self.timeout))),
        }
    }
}
