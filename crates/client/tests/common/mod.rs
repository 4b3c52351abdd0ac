//! Test helpers: a stand-in refresher that writes tokens with the schema's
//! own scripts, Redis command counters read from `INFO commandstats`, and
//! bounded waits for eventual behaviour. Nothing here knows the client's
//! internals.

#![allow(dead_code)]

use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};
use wxtoken_schema::{CredentialKeys, Kind, WriteOutcome};
use wxtoken_testkit::RedisServer;

pub const NS: &str = "wxtoken";

/// A plain connection for the test's own commands.
pub async fn connect(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Plays the refresher: lock, fenced write, release — as a replica would.
pub struct Refresher {
    con: MultiplexedConnection,
    namespace: String,
}

impl Refresher {
    pub async fn new(server: &RedisServer) -> Refresher {
        Refresher::in_namespace(server, NS).await
    }

    pub async fn in_namespace(server: &RedisServer, namespace: &str) -> Refresher {
        Refresher {
            con: connect(server).await,
            namespace: namespace.to_owned(),
        }
    }

    /// Stores `token` for `id`/`kind` with `ttl` left; returns its fence.
    pub async fn write(&mut self, id: &str, kind: Kind, token: &str, ttl: Duration) -> u64 {
        let keys = CredentialKeys::for_id(&self.namespace, id).unwrap();
        let (outcome, fence) =
            wxtoken_schema::testing::store(&mut self.con, &keys, kind, token, ttl, "test-replica")
                .await
                .unwrap();
        assert!(
            matches!(outcome, WriteOutcome::Written { .. }),
            "write refused: {outcome:?}"
        );
        fence
    }

    /// The connection, for raw commands (PUBLISH, CLIENT KILL, …).
    pub fn con(&mut self) -> &mut MultiplexedConnection {
        &mut self.con
    }
}

/// Total calls of the commands a client read uses (GET, PTTL, HGET) since
/// the server started, from `INFO commandstats`.
pub async fn read_commands(con: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    ["get", "pttl", "hget"]
        .iter()
        .map(|name| command_calls(&info, name))
        .sum()
}

/// Calls of one command in an `INFO commandstats` reply.
pub fn command_calls(info: &str, name: &str) -> u64 {
    let prefix = format!("cmdstat_{name}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// Redis's clock in Unix ms.
pub async fn redis_now_ms(con: &mut MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(con).await.unwrap();
    secs * 1000 + micros / 1000
}

/// Waits until `check` holds, polling every 10 ms; panics after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
