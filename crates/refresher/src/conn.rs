//! The replica's one Redis connection and the one way to use it.
//!
//! A multiplexed connection (`redis::aio::ConnectionManager`): every task
//! pipelines its commands over the same socket, so a step is one round trip
//! (no pool checkout, no recycle `PING`), no connection is ever held while
//! WeChat is called, and a burst of work never opens new connections. The
//! manager reconnects by itself after a connection error; behind Redis
//! Sentinel, a failed step also makes the connection ask the sentinels
//! whether the primary moved, and follow it (`wxtoken_connect::Managed`).
//! Every step is bounded by the configured Redis timeout; a timed-out step
//! leaves the connection usable.

use redis::aio::ConnectionManagerConfig;
use std::future::Future;
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
    managed: wxtoken_connect::Managed,
    timeout: Duration,
}

impl Redis {
    /// Sets up the connection without connecting (behind Sentinel, the
    /// sentinels are asked once): Redis being down at start is not an
    /// error (steps fail and are retried).
    pub async fn new(
        target: wxtoken_connect::Target,
        timeout: Duration,
        tls: &wxtoken_connect::TlsFiles,
    ) -> Result<Redis, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let managed = wxtoken_connect::Managed::new(target, tls, config, timeout)
            .await
            .map_err(|e| RedisError(e.to_string()))?;
        Ok(Redis { managed, timeout })
    }

    /// A handle on the connection for one step (cheap to clone).
    pub fn con(&self) -> wxtoken_connect::Con {
        self.managed.con()
    }

    /// A client for the current primary (pub/sub needs its own connection).
    pub fn client(&self) -> redis::Client {
        self.managed.client()
    }

    /// One connection per primary (a Redis Cluster's), or the one
    /// connection: for `SCAN` sweeps, which must visit every primary.
    pub async fn nodes(&self) -> Result<Vec<wxtoken_connect::Con>, RedisError> {
        self.step(self.managed.nodes()).await
    }

    /// Something outside a step failed (a lost subscription): behind
    /// Sentinel, check whether the primary moved.
    pub fn saw_error(&self) {
        self.managed.saw_error(None);
    }

    /// Runs one step (a command, pipeline or script) within the timeout.
    /// A failure is reported to the connection, which (behind Sentinel)
    /// checks whether the primary moved.
    pub async fn step<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            // A TLS failure says which file to look at.
            Ok(Err(e)) => {
                self.managed.saw_error(Some(&e));
                Err(RedisError(wxtoken_connect::describe(
                    &e,
                    self.managed.tls(),
                )))
            }
            Err(_) => {
                self.managed.saw_error(None);
                Err(RedisError(format!("no answer within {:?}", self.timeout)))
            }
        }
    }
}
