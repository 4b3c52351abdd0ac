//! The client against a real redis-server, with tokens written by the
//! schema's own scripts (as a refresher would): reads, the in-process cache,
//! update events, waiting for missing values, expiry, and recovery from a
//! cut subscription and a Redis restart.

mod common;

use common::{connect, eventually, read_commands, redis_now_ms, Refresher, NS};
use std::time::{Duration, Instant};
use wxtoken_client::{Client, Error, Kind, Options};
use wxtoken_schema::{events_channel, CredentialKeys};
use wxtoken_testkit::RedisServer;

const HOUR: Duration = Duration::from_secs(3600);
const LIMIT: Duration = Duration::from_secs(10);

async fn client(server: &RedisServer, options: Options) -> Client {
    Client::connect(&server.url(), options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_value_a_write_stored_and_tickets() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    let fence = refresher
        .write(
            "oa-main",
            Kind::AccessToken,
            "AT-1",
            Duration::from_secs(7000),
        )
        .await;
    refresher
        .write("oa-main", Kind::JsapiTicket, "JSAPI-1", HOUR)
        .await;
    refresher
        .write("oa-main", Kind::WxCardTicket, "CARD-1", HOUR)
        .await;

    let client = client(&server, Options::default()).await;
    assert!(client.subscribed());
    assert_eq!(client.access_token("oa-main").await.unwrap(), "AT-1");
    assert_eq!(
        client.ticket("oa-main", Kind::JsapiTicket).await.unwrap(),
        "JSAPI-1"
    );
    assert_eq!(
        client.ticket("oa-main", Kind::WxCardTicket).await.unwrap(),
        "CARD-1"
    );

    let token = client.get("oa-main", Kind::AccessToken).await.unwrap();
    assert_eq!(token.value, "AT-1");
    assert_eq!(token.fence, fence);
    assert!(
        token.expires_in <= Duration::from_secs(7000)
            && token.expires_in > Duration::from_secs(6900),
        "{:?}",
        token.expires_in
    );
    let shown = format!("{token:?}");
    assert!(
        !shown.contains("AT-1\""),
        "Debug must not show whole tokens: {shown}"
    );

    // Clones share everything and are usable from other tasks.
    let clone = client.clone();
    let value = tokio::spawn(async move { clone.access_token("oa-main").await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value, "AT-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_reads_make_no_redis_round_trip() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    refresher
        .write("app", Kind::AccessToken, "AT-1", HOUR)
        .await;
    refresher
        .write("app", Kind::JsapiTicket, "JT-1", HOUR)
        .await;
    let client = client(&server, Options::default()).await;
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");
    assert_eq!(
        client.ticket("app", Kind::JsapiTicket).await.unwrap(),
        "JT-1"
    );

    let mut admin = connect(&server).await;
    let before = read_commands(&mut admin).await;
    for _ in 0..1000 {
        assert_eq!(client.access_token("app").await.unwrap(), "AT-1");
        assert_eq!(
            client.ticket("app", Kind::JsapiTicket).await.unwrap(),
            "JT-1"
        );
    }
    let after = read_commands(&mut admin).await;
    assert_eq!(after, before, "cached reads must not touch Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_event_switches_the_cache_at_once_through_one_reread() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    let f1 = refresher
        .write("app", Kind::AccessToken, "AT-1", HOUR)
        .await;
    let client = client(&server, Options::default()).await;
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");
    let before = client.debug_stats();

    let f2 = refresher
        .write("app", Kind::AccessToken, "AT-2", HOUR)
        .await;
    assert!(f2 > f1);
    eventually("the new token", LIMIT, async || {
        client.access_token("app").await.unwrap() == "AT-2"
    })
    .await;
    assert_eq!(
        client.get("app", Kind::AccessToken).await.unwrap().fence,
        f2
    );
    // The cached value is trusted while subscribed, so only the event could
    // have switched it: by one re-read of what Redis holds.
    let after = client.debug_stats();
    assert_eq!(after.events - before.events, 1);
    assert_eq!(after.rereads - before.rereads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_event_does_not_replace_a_newer_cached_value() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    let f1 = refresher
        .write("app", Kind::AccessToken, "AT-1", HOUR)
        .await;
    let f2 = refresher
        .write("app", Kind::AccessToken, "AT-2", HOUR)
        .await;
    let client = client(&server, Options::default()).await;
    assert_eq!(client.access_token("app").await.unwrap(), "AT-2");

    // An event with the older fence arrives late (out of order).
    let exp = redis_now_ms(refresher.con()).await + 3_600_000;
    let stale = format!(
        r#"{{"v":1,"id":"app","kind":"access_token","token":"AT-1-LATE","expires_at_ms":{exp},"fence":{f1},"replica":"late"}}"#
    );
    // Then a marker: a credential the client already caches gets a new value,
    // which (while the subscription is live) only its event can deliver.
    // Events arrive in order, so once the marker switches, the late event was
    // handled too.
    refresher
        .write("marker", Kind::AccessToken, "MARK-1", HOUR)
        .await;
    assert_eq!(client.access_token("marker").await.unwrap(), "MARK-1");
    let channel = events_channel(NS);
    let receivers: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(stale)
        .query_async(refresher.con())
        .await
        .unwrap();
    assert_eq!(receivers, 1);
    refresher
        .write("marker", Kind::AccessToken, "MARK-2", HOUR)
        .await;
    eventually("the marker event", LIMIT, async || {
        client.access_token("marker").await.unwrap() == "MARK-2"
    })
    .await;

    let token = client.get("app", Kind::AccessToken).await.unwrap();
    assert_eq!(token.value, "AT-2");
    assert_eq!(token.fence, f2);
    // A newer write is still taken.
    refresher
        .write("app", Kind::AccessToken, "AT-3", HOUR)
        .await;
    eventually("the newer token", LIMIT, async || {
        client.access_token("app").await.unwrap() == "AT-3"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_is_waited_for_then_not_available() {
    let server = RedisServer::start().unwrap();
    let wait = Duration::from_millis(300);
    let client = client(&server, Options::default().wait_for_token(wait)).await;

    let started = Instant::now();
    let err = client.access_token("nobody").await.unwrap_err();
    let elapsed = started.elapsed();
    let Error::NotAvailable { id, kind, waited } = &err else {
        panic!("expected NotAvailable, got {err:?}")
    };
    assert_eq!((id.as_str(), *kind), ("nobody", Kind::AccessToken));
    assert!(*waited >= wait, "waited {waited:?}");
    assert!(elapsed >= wait, "returned after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "returned after {elapsed:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("\"nobody\"") && msg.contains("access_token"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_written_during_the_wait_is_returned() {
    let server = RedisServer::start().unwrap();
    let client = client(
        &server,
        Options::default().wait_for_token(Duration::from_secs(8)),
    )
    .await;
    let mut refresher = Refresher::new(&server).await;
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        refresher
            .write("late", Kind::JsapiTicket, "JT-LATE", HOUR)
            .await;
    });
    let started = Instant::now();
    assert_eq!(
        client.ticket("late", Kind::JsapiTicket).await.unwrap(),
        "JT-LATE"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_near_expiry_are_read_again_and_expired_ones_never_served() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    let client = client(
        &server,
        Options::default()
            .expiry_margin(Duration::from_millis(1500))
            .wait_for_token(Duration::from_millis(200)),
    )
    .await;
    refresher
        .write("short", Kind::AccessToken, "SHORT", Duration::from_secs(2))
        .await;
    assert_eq!(client.access_token("short").await.unwrap(), "SHORT");

    // Now less than the 1.5 s margin is left: each read asks Redis.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut admin = connect(&server).await;
    let before = read_commands(&mut admin).await;
    let token = client.get("short", Kind::AccessToken).await.unwrap();
    assert_eq!(token.value, "SHORT");
    assert!(token.expires_in < Duration::from_millis(1500));
    assert!(
        read_commands(&mut admin).await > before,
        "a value inside the expiry margin must be read again"
    );

    // Once expired it is gone from Redis and never served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = client.access_token("short").await.unwrap_err();
    assert!(matches!(err, Error::NotAvailable { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_subscription_is_noticed_and_restored() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    refresher
        .write("app", Kind::AccessToken, "AT-1", HOUR)
        .await;
    let client = client(
        &server,
        Options::default().poll_interval(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");

    // Watch `subscribed()` closely so a short gap is still seen.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut saw_down = false;
            loop {
                saw_down |= !client.subscribed();
                tokio::select! {
                    _ = &mut stopped => return saw_down,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
            }
        })
    };

    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(refresher.con())
        .await
        .unwrap();
    assert_eq!(killed, 1);
    // Written right after the kill: the event is lost.
    refresher
        .write("app", Kind::AccessToken, "AT-2", HOUR)
        .await;

    eventually("the token written during the gap", LIMIT, async || {
        client.access_token("app").await.unwrap() == "AT-2"
    })
    .await;
    eventually("the subscription to come back", LIMIT, async || {
        client.subscribed()
    })
    .await;
    let _ = stop.send(());
    assert!(watcher.await.unwrap(), "subscribed() never went false");

    // Events flow again: a new write arrives through its event (one
    // re-read), not through polling.
    assert_eq!(client.access_token("app").await.unwrap(), "AT-2");
    let before = client.debug_stats();
    refresher
        .write("app", Kind::AccessToken, "AT-3", HOUR)
        .await;
    eventually("the event after resubscribing", LIMIT, async || {
        client.access_token("app").await.unwrap() == "AT-3"
    })
    .await;
    assert_eq!(client.debug_stats().rereads - before.rereads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_survives_a_redis_restart() {
    let mut server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    for token in ["AT-a", "AT-b", "AT-1"] {
        refresher.write("app", Kind::AccessToken, token, HOUR).await;
    }
    let client = client(
        &server,
        Options::default()
            .poll_interval(Duration::from_millis(300))
            .redis_timeout(Duration::from_millis(500)),
    )
    .await;
    let before = client.get("app", Kind::AccessToken).await.unwrap();
    assert_eq!((before.value.as_str(), before.fence), ("AT-1", 3));

    server.stop();
    eventually("the subscription to drop", LIMIT, async || {
        !client.subscribed()
    })
    .await;
    // While Redis is down, the cached value has not expired: it is served
    // (from memory within the poll interval, then instead of the error).
    let down_until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < down_until {
        match client.access_token("app").await {
            Ok(value) => assert_eq!(value, "AT-1"),
            Err(err) => panic!("the unexpired cached value must be served, got {err:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back, empty: the fence counter starts over below the cached fence.
    server.restart().unwrap();
    let mut refresher = Refresher::new(&server).await;
    let fence = refresher
        .write("app", Kind::AccessToken, "AT-2", HOUR)
        .await;
    assert!(fence < before.fence);
    eventually("the token written after the restart", LIMIT, async || {
        matches!(client.access_token("app").await.as_deref(), Ok("AT-2"))
    })
    .await;
    eventually("the subscription to come back", LIMIT, async || {
        client.subscribed()
    })
    .await;
    // And events are followed again.
    refresher
        .write("app", Kind::AccessToken, "AT-3", HOUR)
        .await;
    eventually("the next token", LIMIT, async || {
        matches!(client.access_token("app").await.as_deref(), Ok("AT-3"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_cached_token_is_served_while_redis_comes_back_empty() {
    let mut server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    for token in ["AT-a", "AT-1"] {
        refresher.write("app", Kind::AccessToken, token, HOUR).await;
    }
    let wait = Duration::from_secs(5);
    let client = client(&server, Options::default().wait_for_token(wait)).await;
    let before = client.get("app", Kind::AccessToken).await.unwrap();
    assert_eq!((before.value.as_str(), before.fence), ("AT-1", 2));

    // Redis loses its data; the token is still valid at WeChat for an hour.
    server.restart().unwrap();
    let mut admin = connect(&server).await;
    // Until the client has actually asked the empty Redis (its cached value
    // may still count as fresh for a moment), and once more after that:
    // every call returns the cached token at once, without waiting for one.
    let mut calls_after_a_read = 0;
    eventually("reads of the empty Redis", LIMIT, async || {
        let started = Instant::now();
        let got = client.access_token("app").await;
        let elapsed = started.elapsed();
        assert!(
            matches!(got.as_deref(), Ok("AT-1")),
            "the unexpired cached token must be served, got {got:?}"
        );
        assert!(elapsed < wait, "waited {elapsed:?} for a token it had");
        if read_commands(&mut admin).await > 0 {
            calls_after_a_read += 1;
        }
        calls_after_a_read >= 2
    })
    .await;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut admin).await.unwrap();
    assert_eq!(keys, 0, "Redis is still empty");

    // A new token (its fence counter started over, below the cached one) is
    // taken on the next read: the kept value is not trusted as fresh.
    let mut refresher = Refresher::new(&server).await;
    let fence = refresher
        .write("app", Kind::AccessToken, "AT-2", HOUR)
        .await;
    assert!(fence < before.fence);
    let token = client.get("app", Kind::AccessToken).await.unwrap();
    assert_eq!((token.value.as_str(), token.fence), ("AT-2", fence));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_waits_without_bound_for_duration_max() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    refresher
        .write("app", Kind::AccessToken, "AT-1", HOUR)
        .await;
    let client = client(&server, Options::default()).await;
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");

    // Already replaced: returns at once.
    let token = tokio::time::timeout(
        LIMIT,
        client.replaced("app", Kind::AccessToken, "AT-0", Duration::MAX),
    )
    .await
    .expect("returns at once")
    .unwrap();
    assert_eq!(token.value, "AT-1");

    // Not yet replaced: waits (no overflow) until it is.
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        refresher
            .write("app", Kind::AccessToken, "AT-2", HOUR)
            .await;
    });
    let token = tokio::time::timeout(
        LIMIT,
        client.replaced("app", Kind::AccessToken, "AT-1", Duration::MAX),
    )
    .await
    .expect("returns once the value is replaced")
    .unwrap();
    assert_eq!(token.value, "AT-2");
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_stops_with_the_last_clone() {
    let server = RedisServer::start().unwrap();
    let mut admin = connect(&server).await;
    async fn pubsub_clients(con: &mut redis::aio::MultiplexedConnection) -> usize {
        let list: String = redis::cmd("CLIENT")
            .arg(&["LIST", "TYPE", "pubsub"])
            .query_async(con)
            .await
            .unwrap();
        list.lines().filter(|l| !l.trim().is_empty()).count()
    }

    let client = client(&server, Options::default()).await;
    let clone = client.clone();
    assert_eq!(pubsub_clients(&mut admin).await, 1);
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pubsub_clients(&mut admin).await,
        1,
        "a clone is still alive"
    );
    assert!(clone.subscribed());
    drop(clone);
    eventually("the subscription to close", LIMIT, async || {
        pubsub_clients(&mut admin).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_separate_and_names_are_checked() {
    let server = RedisServer::start().unwrap();
    let mut default_ns = Refresher::new(&server).await;
    let mut other_ns = Refresher::in_namespace(&server, "staging").await;
    default_ns
        .write("app", Kind::AccessToken, "PROD", HOUR)
        .await;
    other_ns
        .write("app", Kind::AccessToken, "STAGING", HOUR)
        .await;
    let staging = client(&server, Options::default().namespace("staging")).await;
    assert_eq!(staging.access_token("app").await.unwrap(), "STAGING");
    default_ns
        .write("app", Kind::AccessToken, "PROD-2", HOUR)
        .await;
    other_ns
        .write("app", Kind::AccessToken, "STAGING-2", HOUR)
        .await;
    eventually("the staging update", LIMIT, async || {
        staging.access_token("app").await.unwrap() == "STAGING-2"
    })
    .await;

    let err = staging.access_token("bad:id").await.unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    assert!(err.to_string().contains("bad:id"), "{err}");
    let err = Client::connect(&server.url(), Options::default().namespace("a b"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_when_redis_is_unreachable() {
    let port = wxtoken_testkit::free_port().unwrap();
    let err = Client::connect(
        &format!("redis://127.0.0.1:{port}"),
        Options::default().redis_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");

    // The URL's password never shows up in the error.
    let err = Client::connect(
        &format!("redis://:s3cret-pw@127.0.0.1:{port}"),
        Options::default().redis_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("s3cret-pw"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_stops_answering_is_noticed_by_ping() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    refresher
        .write("app", Kind::AccessToken, "AT-1", HOUR)
        .await;
    // Pings every second (the minimum), each allowed 300 ms.
    let client = client(
        &server,
        Options::default()
            .poll_interval(Duration::from_millis(300))
            .redis_timeout(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");

    // The connection stays open but Redis answers nothing for 3 s.
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "3000", "ALL"])
        .query_async(refresher.con())
        .await
        .unwrap();
    eventually("the silent subscription to be noticed", LIMIT, async || {
        !client.subscribed()
    })
    .await;
    eventually("the subscription to come back", LIMIT, async || {
        client.subscribed()
    })
    .await;
    refresher
        .write("app", Kind::AccessToken, "AT-2", HOUR)
        .await;
    eventually("the next token", LIMIT, async || {
        matches!(client.access_token("app").await.as_deref(), Ok("AT-2"))
    })
    .await;
}

/// An update event as a refresher would publish it, with any claims.
fn event_json(id: &str, kind: &str, token: &str, fence: u64, expires_at_ms: u64) -> String {
    format!(
        r#"{{"v":1,"id":"{id}","kind":"{kind}","token":"{token}","expires_at_ms":{expires_at_ms},"fence":{fence},"replica":"forger"}}"#
    )
}

/// Publishes `messages` on the events channel in pipelines of 1,000; returns
/// how many subscribers got each (asserted equal).
async fn publish_all(con: &mut redis::aio::MultiplexedConnection, messages: &[Vec<u8>]) -> u64 {
    let channel = events_channel(NS);
    let mut receivers = None;
    for chunk in messages.chunks(1000) {
        let mut pipe = redis::pipe();
        for m in chunk {
            pipe.cmd("PUBLISH").arg(&channel).arg(m.as_slice());
        }
        let got: Vec<u64> = pipe.query_async(con).await.unwrap();
        for n in got {
            assert_eq!(*receivers.get_or_insert(n), n);
        }
    }
    receivers.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_event_changes_nothing_a_client_serves() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    let f1 = refresher
        .write("app", Kind::AccessToken, "AT-1", HOUR)
        .await;
    let client = client(&server, Options::default()).await;
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");

    // Anyone who may PUBLISH claims a new token with the largest fence and an
    // expiry ten days away; and a ticket the client never asked for.
    let far = redis_now_ms(refresher.con()).await + 10 * 24 * 3_600_000;
    let forged = event_json("app", "access_token", "FORGED", u64::MAX, far);
    let ticket = event_json("app", "jsapi_ticket", "FORGED-JT", u64::MAX, far);
    let receivers = publish_all(
        refresher.con(),
        &[forged.clone().into_bytes(), ticket.into_bytes()],
    )
    .await;
    assert_eq!(receivers, 1);
    eventually("both events handled", LIMIT, async || {
        client.debug_stats().events == 2
    })
    .await;
    let stats = client.debug_stats();
    assert_eq!((stats.rereads, stats.ignored), (1, 1), "{stats:?}");
    assert_eq!(
        stats.cached_values, 1,
        "the ticket was not cached: {stats:?}"
    );
    // While and after the re-read: what Redis holds, with Redis's expiry.
    for _ in 0..30 {
        let token = client.get("app", Kind::AccessToken).await.unwrap();
        assert_eq!((token.value.as_str(), token.fence), ("AT-1", f1));
        assert!(token.expires_in <= HOUR, "{:?}", token.expires_in);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A burst of forged events for the cached value: re-reads coalesced
    // (at most one in flight), the value unchanged.
    let burst: Vec<Vec<u8>> = (0..1000).map(|_| forged.clone().into_bytes()).collect();
    publish_all(refresher.con(), &burst).await;
    eventually("the burst handled", LIMIT, async || {
        client.debug_stats().events == 1002
    })
    .await;
    let stats = client.debug_stats();
    println!("1,000 forged events for one cached value: {stats:?}");
    // Every event either started a re-read or was folded into one in flight;
    // each fold costs at most one more read, whatever the burst's size.
    assert_eq!(stats.ignored, 1, "{stats:?}");
    assert!(stats.coalesced > 0, "{stats:?}");
    assert!(stats.rereads - 1 < 1000, "bursts are coalesced: {stats:?}");
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");

    // The forged fence outranks nothing: a real write switches at once.
    let f2 = refresher
        .write("app", Kind::AccessToken, "AT-2", HOUR)
        .await;
    eventually("the real write", LIMIT, async || {
        client.access_token("app").await.unwrap() == "AT-2"
    })
    .await;
    assert_eq!(
        client.get("app", Kind::AccessToken).await.unwrap().fence,
        f2
    );
    // And the forged ticket was never served: there is none in Redis.
    let waiting = Client::connect(
        &server.url(),
        Options::default().wait_for_token(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let err = waiting.ticket("app", Kind::JsapiTicket).await.unwrap_err();
    assert!(matches!(err, Error::NotAvailable { .. }), "{err:?}");
    let err = client.ticket("app", Kind::JsapiTicket).await;
    assert!(err.is_err(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_ids_not_in_use_create_nothing_even_20000_of_them() {
    let server = RedisServer::start().unwrap();
    let mut admin = connect(&server).await;
    let client = client(
        &server,
        Options::default().wait_for_token(Duration::from_millis(200)),
    )
    .await;
    let far = redis_now_ms(&mut admin).await + 3_600_000;
    let events: Vec<Vec<u8>> = (0..20_000)
        .map(|n| {
            let kind = ["access_token", "jsapi_ticket", "wx_card_ticket"][n % 3];
            event_json(&format!("ghost-{n}"), kind, "FORGED", n as u64, far).into_bytes()
        })
        .collect();
    let started = Instant::now();
    assert_eq!(publish_all(&mut admin, &events).await, 1);
    eventually(
        "20,000 events handled",
        Duration::from_secs(60),
        async || client.debug_stats().events == 20_000,
    )
    .await;
    let elapsed = started.elapsed();
    let stats = client.debug_stats();
    println!("20,000 events for unknown ids handled in {elapsed:?}: {stats:?}");
    assert_eq!(stats.ignored, 20_000, "{stats:?}");
    assert_eq!(
        (stats.cached_values, stats.cached_ids, stats.rereads),
        (0, 0, 0),
        "{stats:?}"
    );
    // Nothing an event claimed is served.
    let err = client.access_token("ghost-0").await.unwrap_err();
    assert!(matches!(err, Error::NotAvailable { .. }), "{err:?}");
    assert_eq!(client.debug_stats().cached_values, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_events_are_dropped_without_touching_the_cache() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    refresher
        .write("app", Kind::AccessToken, "AT-1", HOUR)
        .await;
    let client = client(&server, Options::default()).await;
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");

    let far = redis_now_ms(refresher.con()).await + 3_600_000;
    let huge_token = "x".repeat(64 * 1024);
    let junk: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{}".to_vec(),
        vec![0xff; 100],
        br#"{"v":1,"id":"app","kind":"no_such_kind","token":"T","expires_at_ms":1,"fence":1,"replica":"r"}"#.to_vec(),
        br#"{"v":1,"id":"app","kind":"access_token","token":"T","expires_at_ms":-1,"fence":"1","replica":"r"}"#.to_vec(),
        event_json("app", "access_token", &huge_token, u64::MAX, far).into_bytes(),
        vec![b'['; 1024 * 1024],
    ];
    let mut admin = connect(&server).await;
    let before = read_commands(&mut admin).await;
    publish_all(refresher.con(), &junk).await;
    eventually("the junk handled", LIMIT, async || {
        client.debug_stats().dropped == junk.len() as u64
    })
    .await;
    // Nothing was invalidated or re-read: the cached value is still served
    // from memory.
    assert_eq!(client.access_token("app").await.unwrap(), "AT-1");
    assert_eq!(read_commands(&mut admin).await, before);
    assert_eq!(client.debug_stats().rereads, 0);
    assert!(client.subscribed());

    // Real events still work.
    refresher
        .write("app", Kind::AccessToken, "AT-2", HOUR)
        .await;
    eventually("the real write", LIMIT, async || {
        client.access_token("app").await.unwrap() == "AT-2"
    })
    .await;
}

// ---- Third-party platforms: component and authorizer subjects ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_and_component_tokens_are_read_by_appid() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    // One account (wxshop) authorized two platforms: two separate tokens.
    refresher
        .write(
            "authorizer/wxcompA/wxshop",
            Kind::AccessToken,
            "AUTH-A",
            HOUR,
        )
        .await;
    refresher
        .write(
            "authorizer/wxcompB/wxshop",
            Kind::AccessToken,
            "AUTH-B",
            HOUR,
        )
        .await;
    refresher
        .write("authorizer/wxcompA/wxshop", Kind::JsapiTicket, "JT-A", HOUR)
        .await;
    refresher
        .write(
            "component/wxcompA",
            Kind::ComponentAccessToken,
            "COMP-A",
            HOUR,
        )
        .await;

    let client = client(&server, Options::default()).await;
    assert_eq!(
        client.authorizer_token("wxcompA", "wxshop").await.unwrap(),
        "AUTH-A"
    );
    assert_eq!(
        client.authorizer_token("wxcompB", "wxshop").await.unwrap(),
        "AUTH-B"
    );
    assert_eq!(
        client
            .access_token(&wxtoken_client::authorizer_id("wxcompB", "wxshop"))
            .await
            .unwrap(),
        "AUTH-B"
    );
    assert_eq!(
        client
            .ticket("authorizer/wxcompA/wxshop", Kind::JsapiTicket)
            .await
            .unwrap(),
        "JT-A"
    );
    assert_eq!(client.component_token("wxcompA").await.unwrap(), "COMP-A");
    assert_eq!(
        client
            .get("component/wxcompA", Kind::ComponentAccessToken)
            .await
            .unwrap()
            .value,
        "COMP-A"
    );

    // An update event about an authorizer switches the cached value through
    // one re-read, like a credential's.
    let before = client.debug_stats();
    refresher
        .write(
            "authorizer/wxcompA/wxshop",
            Kind::AccessToken,
            "AUTH-A2",
            HOUR,
        )
        .await;
    eventually("the new authorizer token", LIMIT, async || {
        client.authorizer_token("wxcompA", "wxshop").await.unwrap() == "AUTH-A2"
    })
    .await;
    let after = client.debug_stats();
    assert_eq!(after.rereads - before.rereads, 1);
    // The other platform's token of the same account is untouched.
    assert_eq!(
        client.authorizer_token("wxcompB", "wxshop").await.unwrap(),
        "AUTH-B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_about_an_authorizer_token_files_a_request_under_its_keys() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    refresher
        .write(
            "authorizer/wxcompA/wxshop",
            Kind::AccessToken,
            "AUTH-A",
            HOUR,
        )
        .await;
    refresher
        .write(
            "authorizer/wxcompB/wxshop",
            Kind::AccessToken,
            "AUTH-B",
            HOUR,
        )
        .await;
    let client = client(&server, Options::default()).await;
    let token = client.authorizer_token("wxcompA", "wxshop").await.unwrap();

    let outcome = client
        .report_authorizer_invalid("wxcompA", "wxshop", &token)
        .await
        .unwrap();
    assert_eq!(outcome, wxtoken_client::RequestOutcome::Requested);
    let mut con = connect(&server).await;
    let a = CredentialKeys::authorizer(NS, "wxcompA", "wxshop").unwrap();
    let b = CredentialKeys::authorizer(NS, "wxcompB", "wxshop").unwrap();
    let filed: Option<String> = redis::cmd("GET")
        .arg(a.refresh_request(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(filed.as_deref(), Some("AUTH-A"));
    assert_eq!(
        a.refresh_request(Kind::AccessToken),
        "wxtoken:{authorizer/wxcompA/wxshop}:refresh_request:access_token"
    );
    let other: Option<String> = redis::cmd("GET")
        .arg(b.refresh_request(Kind::AccessToken))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        other, None,
        "the other platform's authorizer was not reported"
    );

    // `report` with the id does the same, for any kind it keeps; a report
    // about a token that was replaced meanwhile files nothing.
    let outcome = client
        .report("authorizer/wxcompB/wxshop", Kind::AccessToken, "OLD")
        .await
        .unwrap();
    assert_eq!(outcome, wxtoken_client::RequestOutcome::AlreadyReplaced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_appids_and_kinds_a_subject_does_not_keep_are_refused() {
    let server = RedisServer::start().unwrap();
    let client = client(&server, Options::default()).await;
    let mut admin = connect(&server).await;
    let before = read_commands(&mut admin).await;
    let started = Instant::now();

    let err = client.component_token("wx:bad").await.unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    assert!(
        err.to_string().contains("component appid \"wx:bad\""),
        "{err}"
    );
    let err = client
        .authorizer_token("wx{c}", "wxshop")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("component appid \"wx{c}\""),
        "{err}"
    );
    let err = client.authorizer_token("wxcomp", "").await.unwrap_err();
    assert!(err.to_string().contains("authorizer appid \"\""), "{err}");
    let err = client
        .report_authorizer_invalid("wx/comp", "wxshop", "AT")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("component appid \"wx/comp\""),
        "{err}"
    );
    // Whole ids: the error names the part that is wrong.
    let err = client
        .access_token("authorizer/wxcomp/wx shop")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("authorizer appid \"wx shop\""),
        "{err}"
    );
    let err = client
        .get("component/wx:1", Kind::ComponentAccessToken)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("component appid \"wx:1\""),
        "{err}"
    );
    for bad in ["authorizer/wxcomp", "component/a/b", "other/wxcomp", "a/b"] {
        let err = client.access_token(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidName(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    // A platform has no access_token; an authorizer no component token.
    let err = client.access_token("component/wxcomp").await.unwrap_err();
    assert!(matches!(err, Error::KindNotKept { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("component_access_token, authorizer_list"),
        "{err}"
    );
    let err = client
        .get("authorizer/wxcomp/wxshop", Kind::ComponentAccessToken)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KindNotKept { .. }), "{err:?}");
    let err = client
        .report("oa-main", Kind::ComponentAccessToken, "AT")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KindNotKept { .. }), "{err:?}");

    // Refused before Redis: no read, no wait.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(read_commands(&mut admin).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_corp_tokens_are_read_by_suite_and_corpid() {
    let server = RedisServer::start().unwrap();
    let mut refresher = Refresher::new(&server).await;
    refresher
        .write("corp/wwsuiteA/wwcorp1", Kind::AccessToken, "CORP-A1", HOUR)
        .await;
    refresher
        .write("corp/wwsuiteB/wwcorp1", Kind::AccessToken, "CORP-B1", HOUR)
        .await;
    refresher
        .write(
            "corp/wwsuiteA/wwcorp1",
            Kind::AgentConfigTicket,
            "AGENT-A1",
            HOUR,
        )
        .await;
    refresher
        .write("suite/wwsuiteA", Kind::SuiteAccessToken, "SUITE-A", HOUR)
        .await;
    let client = client(&server, Options::default()).await;
    assert_eq!(
        client
            .suite_corp_token("wwsuiteA", "wwcorp1")
            .await
            .unwrap(),
        "CORP-A1"
    );
    assert_eq!(
        client
            .suite_corp_token("wwsuiteB", "wwcorp1")
            .await
            .unwrap(),
        "CORP-B1"
    );
    let id = wxtoken_client::corp_id("wwsuiteA", "wwcorp1");
    assert_eq!(
        client.ticket(&id, Kind::AgentConfigTicket).await.unwrap(),
        "AGENT-A1"
    );
    assert_eq!(
        client
            .get(
                &wxtoken_client::suite_id("wwsuiteA"),
                Kind::SuiteAccessToken
            )
            .await
            .unwrap()
            .value,
        "SUITE-A"
    );
    // Malformed parts are named; kinds a subject does not keep are refused.
    let err = client
        .suite_corp_token("ww:s", "wwcorp1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("suite id \"ww:s\""), "{err}");
    let err = client
        .access_token("corp/wwsuiteA/ww corp")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corpid \"ww corp\""), "{err}");
    let err = client
        .get("corp/wwsuiteA/wwcorp1", Kind::WxCardTicket)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KindNotKept { .. }), "{err:?}");
}
