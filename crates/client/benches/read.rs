//! Warm-cache `Client::access_token()` against a plain Redis `GET` per call.
//! Goal: the cached read is at least 500× faster and makes no round trip.
//!
//! Run: `cargo bench -p wxtoken-client --bench read`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use wxtoken_client::{Client, Options};
use wxtoken_schema::{CredentialKeys, Kind};
use wxtoken_testkit::RedisServer;

fn reads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start().expect("redis-server is needed for this benchmark");
    let token = "x".repeat(136);
    let (client, mut con) = rt.block_on(async {
        let mut con = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let keys = CredentialKeys::new("wxtoken", "bench").expect("keys");
        wxtoken_schema::testing::store(
            &mut con,
            &keys,
            Kind::AccessToken,
            &token,
            Duration::from_secs(7200),
            "bench",
        )
        .await
        .expect("write");
        let client = Client::connect(&server.url(), Options::default())
            .await
            .expect("client");
        assert_eq!(client.access_token("bench").await.expect("read"), token);
        (client, con)
    });

    let mut group = c.benchmark_group("read access token");
    group.bench_function("wxtoken-client access_token (warm cache)", |b| {
        b.to_async(&rt)
            .iter(|| async { client.access_token("bench").await.expect("read") })
    });
    group.bench_function("redis GET per call (loopback)", |b| {
        b.to_async(&rt).iter(|| {
            let mut con = con.clone();
            async move {
                let v: String = redis::cmd("GET")
                    .arg("wxtoken:{bench}:access_token")
                    .query_async(&mut con)
                    .await
                    .expect("get");
                v
            }
        })
    });
    group.finish();
    let _: () = rt.block_on(async {
        redis::cmd("PING")
            .query_async(&mut con)
            .await
            .expect("ping")
    });
}

criterion_group!(benches, reads);
criterion_main!(benches);
