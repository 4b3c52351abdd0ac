//! A third-party platform's component token refreshed by three real
//! replicas against the simulator, which pushes encrypted verify tickets
//! to one replica's receiver as WeChat does:
//! - one `api_component_token` call per refresh in total, every issued
//!   token written once, the stored token valid at every sampled instant;
//! - a refused ticket (61006) asks WeChat for a push and recovers, with
//!   one call per push, never a tight loop;
//! - two platforms on one deployment keep their tickets and tokens apart.

use crate::common::{eventually, wait_healthz, Env, Events, Replica, Setup};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use wxtoken_schema::{ComponentKeys, CredentialKeys, Kind};
use wxtoken_sim::ComponentConfig;

/// One simulated platform and the secrets the replicas need for it.
pub struct Platform {
    pub id: String,
    pub appid: String,
    pub secret: String,
    pub token: String,
    pub aes_key: String,
}

impl Platform {
    pub fn new(n: usize) -> Platform {
        let chars = |len: usize| -> String {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            (0..len)
                .map(|_| A[rand::random_range(0..A.len())] as char)
                .collect()
        };
        Platform {
            id: format!("platform-{n}"),
            appid: format!("wxcomponent{n:08}"),
            secret: format!("csecret{}", chars(25)),
            token: format!("ctoken{}", chars(20)),
            aes_key: chars(43),
        }
    }

    /// The simulator's side, pushing to `push_url`.
    pub fn sim(&self, push_url: Option<String>) -> ComponentConfig {
        ComponentConfig {
            appid: self.appid.clone(),
            secret: self.secret.clone(),
            token: self.token.clone(),
            encoding_aes_key: self.aes_key.clone(),
            push_url,
        }
    }

    /// The `[[component]]` table, secrets from `WXT_<n>_…` variables.
    pub fn config(&self, n: usize, extra: &str) -> String {
        format!(
            "\n[[component]]\nid = \"{}\"\nappid = \"{}\"\nsecret_env = \"WXT_{n}_SECRET\"\n\
             token_env = \"WXT_{n}_TOKEN\"\nencoding_aes_key_env = \"WXT_{n}_KEY\"\n{extra}",
            self.id, self.appid
        )
    }

    pub fn env(&self, n: usize) -> Vec<(String, String)> {
        vec![
            (format!("WXT_{n}_SECRET"), self.secret.clone()),
            (format!("WXT_{n}_TOKEN"), self.token.clone()),
            (format!("WXT_{n}_KEY"), self.aes_key.clone()),
        ]
    }

    pub fn keys(&self) -> CredentialKeys {
        CredentialKeys::component("wxtoken", &self.appid).unwrap()
    }
}

/// Replicas `replica-1..=n`, each with its own HTTP port; the platforms'
/// pushes go to replica-1 (`ports[0]`). They hold every app credential of
/// `env` as well.
pub async fn spawn(env: &Env, platforms: &[Platform], ports: &[u16], extra: &str) -> Vec<Replica> {
    spawn_on(env, &env.redis.url(), platforms, ports, extra).await
}

/// [`spawn`] with the replicas on the Redis at `redis_url`.
pub async fn spawn_on(
    env: &Env,
    redis_url: &str,
    platforms: &[Platform],
    ports: &[u16],
    extra: &str,
) -> Vec<Replica> {
    let vars: Vec<(String, String)> = platforms
        .iter()
        .enumerate()
        .flat_map(|(n, p)| p.env(n))
        .collect();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut replicas = Vec::new();
    for (r, port) in ports.iter().enumerate() {
        let mut config = env.config_text(redis_url);
        config.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n"));
        for (n, p) in platforms.iter().enumerate() {
            config.push_str(&p.config(n, extra));
        }
        let replica = env.spawn_replica_config(&format!("replica-{}", r + 1), &config, &vars);
        wait_healthz(&format!("http://127.0.0.1:{port}"), || replica.logs()).await;
        replicas.push(replica);
    }
    replicas
}

pub fn ports(n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| wxtoken_testkit::free_port().unwrap())
        .collect()
}

pub fn push_url(port: u16, platform: &Platform) -> Option<String> {
    Some(format!(
        "http://127.0.0.1:{port}/wechat/component/{}",
        platform.id
    ))
}

async fn stored(env: &Env, keys: &CredentialKeys, kind: Kind) -> Option<String> {
    crate::common::stored(&mut env.redis_con().await, keys, kind).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_token_is_fetched_once_per_refresh_by_three_replicas() {
    let platform = Platform::new(1);
    let ports = ports(3);
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(8),
        overlap: Duration::from_secs(2),
        margin: Duration::from_secs(3),
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    // Every write publishes one update event: record them from the start.
    let events = Events::record(&env).await;
    let replicas = spawn(&env, std::slice::from_ref(&platform), &ports, "").await;
    let keys = platform.keys();
    eventually(
        Duration::from_secs(20),
        "a component token is stored",
        || async {
            stored(&env, &keys, Kind::ComponentAccessToken)
                .await
                .is_some()
        },
    )
    .await;

    // Three lifetimes: the stored token is valid whenever we look.
    let until = Instant::now() + Duration::from_secs(24);
    let mut seen = HashSet::new();
    while Instant::now() < until {
        let token = stored(&env, &keys, Kind::ComponentAccessToken)
            .await
            .unwrap_or_else(|| panic!("the component token lapsed; log:\n{}", replicas[0].logs()));
        assert_eq!(
            env.admin.check_component_token(&token),
            Ok(()),
            "stored component token refused by WeChat"
        );
        seen.insert(token);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen.len() >= 3,
        "refreshed before expiry: {} tokens",
        seen.len()
    );
    // Settle: no lease in flight, then compare WeChat's count with writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = env
        .admin
        .component_evidence(&platform.appid)
        .unwrap()
        .counts;
    let id = platform.keys().id().to_owned();
    let written: Vec<String> = events
        .of(Kind::ComponentAccessToken)
        .into_iter()
        .filter(|e| e.id == id)
        .map(|e| e.token)
        .collect();
    let distinct: HashSet<&String> = written.iter().collect();
    assert_eq!(distinct.len(), written.len(), "a token written twice");
    // A call may be in flight right now: at most one more issued than written.
    assert!(
        counts.component_token_issued == written.len() as u64
            || counts.component_token_issued == written.len() as u64 + 1,
        "exactly one api_component_token per refresh: {} issued, {} written",
        counts.component_token_issued,
        written.len()
    );
    assert_eq!(
        counts.component_token, counts.component_token_issued,
        "no failed calls"
    );
    drop(events);

    // The verify ticket and component token never reach the logs whole.
    let tickets = ComponentKeys::new("wxtoken", &platform.appid).unwrap();
    let ticket: Option<String> = redis::cmd("GET")
        .arg(tickets.verify_ticket())
        .query_async(&mut env.redis_con().await)
        .await
        .unwrap();
    for r in &replicas {
        let logs = r.logs();
        for (what, value) in [
            ("secret", platform.secret.as_str()),
            ("message token", platform.token.as_str()),
            ("aes key", platform.aes_key.as_str()),
            ("ticket", ticket.as_deref().unwrap_or("-")),
        ] {
            assert!(!logs.contains(value), "the {what} is in {}'s log", r.name);
        }
        for token in &written {
            assert!(
                !logs.contains(token.as_str()),
                "a component token is in {}'s log",
                r.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ticket_asks_for_a_push_and_recovers_without_a_loop() {
    let platform = Platform::new(2);
    let ports = ports(1);
    let env = Env::start(Setup {
        credentials: 0,
        lifetime: Duration::from_secs(60),
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    // The first api_component_token calls say the ticket is invalid/expired.
    env.admin
        .fail_component_token(&platform.appid, 61006, 1)
        .unwrap();
    env.admin
        .fail_component_token(&platform.appid, 61005, 1)
        .unwrap();
    let replicas = spawn(&env, std::slice::from_ref(&platform), &ports, "").await;
    let keys = platform.keys();
    eventually(
        Duration::from_secs(20),
        "a component token is stored",
        || async {
            stored(&env, &keys, Kind::ComponentAccessToken)
                .await
                .is_some()
        },
    )
    .await;
    let token = stored(&env, &keys, Kind::ComponentAccessToken)
        .await
        .unwrap();
    assert_eq!(env.admin.check_component_token(&token), Ok(()));
    let counts = env
        .admin
        .component_evidence(&platform.appid)
        .unwrap()
        .counts;
    // Two refusals, then one success; each refusal asked for one push.
    assert_eq!(
        counts.component_token,
        3,
        "{counts:?}\n{}",
        replicas[0].logs()
    );
    assert_eq!(counts.component_token_issued, 1, "{counts:?}");
    assert!(
        (2..=3).contains(&counts.start_push_ticket),
        "one push asked per refusal (plus at most one before the first ticket): {counts:?}"
    );
    // Quiet afterwards: no call until the token is due again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = env
        .admin
        .component_evidence(&platform.appid)
        .unwrap()
        .counts;
    assert_eq!(later.component_token, counts.component_token);
    assert_eq!(later.start_push_ticket, counts.start_push_ticket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_platforms_on_one_deployment_keep_tickets_and_tokens_apart() {
    let (a, b) = (Platform::new(3), Platform::new(4));
    let ports = ports(1);
    let env = Env::start(Setup {
        credentials: 1,
        lifetime: Duration::from_secs(60),
        sim_components: vec![a.sim(push_url(ports[0], &a)), b.sim(push_url(ports[0], &b))],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    let platforms = [a, b];
    let _replicas = spawn(&env, &platforms, &ports, "").await;
    for p in &platforms {
        let keys = p.keys();
        eventually(
            Duration::from_secs(20),
            "both component tokens are stored",
            || async {
                stored(&env, &keys, Kind::ComponentAccessToken)
                    .await
                    .is_some()
            },
        )
        .await;
    }
    let mut tickets = HashSet::new();
    for p in &platforms {
        let token = stored(&env, &p.keys(), Kind::ComponentAccessToken)
            .await
            .unwrap();
        assert_eq!(env.admin.check_component_token(&token), Ok(()));
        let counts = env.admin.component_evidence(&p.appid).unwrap().counts;
        assert_eq!(counts.component_token_issued, 1, "{}: {counts:?}", p.id);
        let ticket: String = redis::cmd("GET")
            .arg(
                ComponentKeys::new("wxtoken", &p.appid)
                    .unwrap()
                    .verify_ticket(),
            )
            .query_async(&mut env.redis_con().await)
            .await
            .unwrap();
        tickets.insert(ticket);
    }
    assert_eq!(tickets.len(), 2, "each platform keeps its own ticket");
    // The app credential is refreshed beside them.
    env.wait_all_stored(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_added_and_removed_by_sighup_is_received_and_refreshed() {
    let platform = Platform::new(5);
    let port = ports(1)[0];
    let env = Env::start(Setup {
        credentials: 1,
        lifetime: Duration::from_secs(60),
        sim_components: vec![platform.sim(push_url(port, &platform))],
        // Leases that outlast a loaded 2-core machine's stalls.
        lock_ttl: Duration::from_secs(8),
        request_timeout: Duration::from_secs(4),
        ..Setup::default()
    })
    .await;
    let base =
        env.config_text(&env.redis.url()) + &format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let vars = platform.env(0);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let replica = env.spawn_replica_config("replica-1", &base, &vars);
    wait_healthz(&format!("http://127.0.0.1:{port}"), || replica.logs()).await;
    env.wait_all_stored(Duration::from_secs(10)).await;

    // Not configured yet: pushes are 404 and nothing is fetched.
    let push = env.admin.push_ticket(&platform.appid).await.unwrap();
    assert_eq!(push.status, Some(404), "{push:?}");

    // Added by SIGHUP: received, and the component token fetched.
    let config = env.dir.path().join("replica-1.toml");
    std::fs::write(&config, base.clone() + &platform.config(0, "")).unwrap();
    replica.signal(nix::sys::signal::Signal::SIGHUP);
    let keys = platform.keys();
    eventually(
        Duration::from_secs(20),
        "the component token after SIGHUP",
        || async {
            if stored(&env, &keys, Kind::ComponentAccessToken)
                .await
                .is_some()
            {
                return true;
            }
            // The replica asks for a push when it finds no ticket; push too, in
            // case the reload came after WeChat's push.
            let _ = env.admin.push_ticket(&platform.appid).await;
            false
        },
    )
    .await;
    let token = stored(&env, &keys, Kind::ComponentAccessToken)
        .await
        .unwrap();
    assert_eq!(env.admin.check_component_token(&token), Ok(()));

    // Removed by SIGHUP: pushes are 404 again, the platform's own keys go
    // (no other replica holds it); the app credential stays.
    std::fs::write(&config, &base).unwrap();
    replica.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "pushes refused after removal",
        || async {
            env.admin
                .push_ticket(&platform.appid)
                .await
                .is_ok_and(|p| p.status == Some(404))
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the platform's keys deleted",
        || async {
            stored(&env, &keys, Kind::ComponentAccessToken)
                .await
                .is_none()
        },
    )
    .await;
    env.wait_all_stored(Duration::from_secs(5)).await;
}
