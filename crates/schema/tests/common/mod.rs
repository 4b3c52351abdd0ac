//! What the schema's integration tests share: a connection to a throwaway
//! redis-server.

use wxtoken_testkit::RedisServer;

/// A multiplexed connection to `server`.
pub async fn connect(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
