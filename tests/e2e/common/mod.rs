//! Harness for the end-to-end tests: a real redis-server, the simulator over
//! real HTTP, and refresher replicas as real `wxtoken run` processes that can
//! be killed, paused and cut off from Redis.

#![allow(dead_code)] // each test binary uses a different part of the harness

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use wxtoken_schema::{info, CredentialKeys, Kind};
use wxtoken_sim::{Admin, SimConfig, Simulator, Timing};
use wxtoken_testkit::RedisServer;

/// Timing and shape of one scenario. Durations are short so tests run in seconds.
#[derive(Clone, Debug)]
pub struct Setup {
    pub credentials: usize,
    pub tickets: bool,
    pub stable: bool,
    pub lifetime: Duration,
    pub overlap: Duration,
    pub margin: Duration,
    pub max_margin_fraction: f64,
    pub jitter: Duration,
    pub lock_ttl: Duration,
    pub request_timeout: Duration,
    pub redis_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub config_error_retry: Duration,
    pub quota_pause: Duration,
    pub check_interval: Duration,
    pub min_interval: Duration,
    /// `wechat.calls_per_second` (the shared rate), if not the default.
    pub calls_per_second: Option<f64>,
    /// `wechat.burst`, if not the default.
    pub burst: Option<u32>,
    /// `refresh.force_min_interval`, if not the default.
    pub force_min_interval: Option<Duration>,
    /// Appended to the generated config text (e.g. an `[http]` section).
    pub extra_config: String,
    /// Third-party platforms the simulator knows (`[[component]]` there).
    pub sim_components: Vec<wxtoken_sim::ComponentConfig>,
    /// WeCom apps the simulator knows and the replicas hold
    /// ([`wecom_apps`]; `[[credential]] platform = "wecom"`, secrets inline).
    pub wecom: Vec<WecomApp>,
    /// The tickets each WeCom app keeps (`"jsapi"`, `"agent_config"`).
    pub wecom_tickets: Vec<&'static str>,
    /// WeCom third-party suites the simulator knows (the replicas' side is
    /// the test's: `suite` module).
    pub sim_suites: Vec<wxtoken_sim::WecomSuiteConfig>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            credentials: 3,
            tickets: false,
            stable: false,
            lifetime: Duration::from_secs(6),
            overlap: Duration::from_secs(2),
            margin: Duration::from_secs(2),
            max_margin_fraction: 0.5,
            jitter: Duration::from_millis(300),
            lock_ttl: Duration::from_secs(3),
            request_timeout: Duration::from_millis(2500),
            redis_timeout: Duration::from_secs(1),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            config_error_retry: Duration::from_secs(2),
            quota_pause: Duration::from_secs(2),
            check_interval: Duration::from_secs(1),
            min_interval: Duration::from_millis(500),
            calls_per_second: None,
            burst: None,
            // Test scale, like min_interval (the default is 30 s).
            force_min_interval: Some(Duration::from_millis(500)),
            extra_config: String::new(),
            sim_components: Vec::new(),
            wecom: Vec::new(),
            wecom_tickets: Vec::new(),
            sim_suites: Vec::new(),
        }
    }
}

/// One credential of a scenario.
#[derive(Clone, Debug)]
pub struct Cred {
    pub id: String,
    pub appid: String,
    pub secret: String,
}

/// A running scenario.
pub struct Env {
    pub setup: Setup,
    pub redis: RedisServer,
    pub sim: Simulator,
    pub admin: Admin,
    pub dir: tempfile::TempDir,
    pub creds: Vec<Cred>,
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Env {
    pub async fn start(setup: Setup) -> Env {
        let redis = RedisServer::start().expect("redis-server is needed for the tests");
        let mut sim_cfg = SimConfig::default().with_timing(Timing {
            expires_in: setup.lifetime,
            overlap: setup.overlap,
            ..Timing::default()
        });
        let creds: Vec<Cred> = (0..setup.credentials)
            .map(|i| Cred {
                id: format!("app-{i}"),
                appid: format!("wxtest{i:012}"),
                secret: format!("{:032x}", rand::random::<u128>()),
            })
            .collect();
        for c in &creds {
            sim_cfg = sim_cfg.with_app(&c.appid, &c.secret);
        }
        for c in &setup.sim_components {
            sim_cfg = sim_cfg.with_component(c.clone());
        }
        for corp in wecom_corps(&setup.wecom) {
            sim_cfg = sim_cfg.with_wecom_corp(corp);
        }
        for suite in &setup.sim_suites {
            sim_cfg = sim_cfg.with_wecom_suite(suite.clone());
        }
        let sim = Simulator::start(sim_cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let admin = sim.admin();
        Env {
            setup,
            redis,
            sim,
            admin,
            dir: tempfile::tempdir().unwrap(),
            creds,
        }
    }

    /// The config file text for a replica talking to `redis_url`.
    pub fn config_text(&self, redis_url: &str) -> String {
        let all: Vec<usize> = (0..self.creds.len()).collect();
        self.config_text_for(redis_url, &all)
    }

    /// The config file text for a replica that holds only credentials `held`
    /// (indices into `creds`).
    pub fn config_text_for(&self, redis_url: &str, held: &[usize]) -> String {
        let s = &self.setup;
        let mut text = format!(
            "[redis]\nurl = \"{redis_url}\"\ntimeout = \"{}\"\n\n\
             [wechat]\nbase_url = \"{}\"\nwecom_base_url = \"{}\"\nrequest_timeout = \"{}\"\nconnect_timeout = \"1s\"\n\n\
             [refresh]\nmargin = \"{}\"\nmax_margin_fraction = {}\njitter = \"{}\"\nlock_ttl = \"{}\"\n\
             retry_initial = \"{}\"\nretry_max = \"{}\"\nconfig_error_retry = \"{}\"\n\
             quota_pause = \"{}\"\ncheck_interval = \"{}\"\nmin_interval = \"{}\"\n",
            ms(s.redis_timeout),
            self.sim.base_url(),
            self.sim.wecom_base_url(),
            ms(s.request_timeout),
            ms(s.margin),
            s.max_margin_fraction,
            ms(s.jitter),
            ms(s.lock_ttl),
            ms(s.retry_initial),
            ms(s.retry_max),
            ms(s.config_error_retry),
            ms(s.quota_pause),
            ms(s.check_interval),
            ms(s.min_interval),
        );
        if let Some(rate) = s.calls_per_second {
            text = text.replace(
                "[wechat]\n",
                &format!("[wechat]\ncalls_per_second = {rate}\n"),
            );
        }
        if let Some(f) = s.force_min_interval {
            text = text.replace(
                "[refresh]\n",
                &format!("[refresh]\nforce_min_interval = \"{}\"\n", ms(f)),
            );
        }
        if let Some(burst) = s.burst {
            text = text.replace("[wechat]\n", &format!("[wechat]\nburst = {burst}\n"));
        }
        for &i in held {
            let c = &self.creds[i];
            text.push_str(&format!(
                "\n[[credential]]\nid = \"{}\"\nappid = \"{}\"\nsecret_env = \"WXT_SECRET_{i}\"\nmode = \"{}\"\n",
                c.id,
                c.appid,
                if s.stable { "stable" } else { "classic" }
            ));
            if s.tickets {
                text.push_str("tickets = [\"jsapi\"]\n");
            }
        }
        for app in &s.wecom {
            text.push_str(&app.config(&s.wecom_tickets));
        }
        text.push_str(&s.extra_config);
        text
    }

    /// Rewrites replica `name`'s config file to hold only credentials `held`
    /// (indices into `creds`); the replica reads it on SIGHUP.
    pub fn write_config(&self, name: &str, held: &[usize]) {
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, self.config_text_for(&self.redis.url(), held)).unwrap();
    }

    /// Starts replica `name` holding only credentials `held`.
    pub fn spawn_replica_holding(&self, name: &str, held: &[usize]) -> Replica {
        let log = self.dir.path().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        self.write_config(name, held);
        self.spawn_configured(name, &[], stderr.into()).0
    }

    /// Starts `n` replicas named `replica-1` … `replica-n` against the test Redis.
    pub fn spawn_replicas(&self, n: usize) -> Vec<Replica> {
        (1..=n)
            .map(|r| self.spawn_replica(&format!("replica-{r}"), None))
            .collect()
    }

    /// Starts `wxtoken run` as replica `name` against `redis_url` (default: the test Redis).
    pub fn spawn_replica(&self, name: &str, redis_url: Option<&str>) -> Replica {
        self.spawn_replica_with(name, redis_url, &[])
    }

    pub fn spawn_replica_with(
        &self,
        name: &str,
        redis_url: Option<&str>,
        extra_env: &[(&str, &str)],
    ) -> Replica {
        let log = self.dir.path().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        self.spawn_replica_stderr(name, redis_url, extra_env, stderr.into())
            .0
    }

    /// Like [`Env::spawn_replica_with`], with stderr connected to `stderr`
    /// instead of the replica's log file (so [`Replica::logs`] is empty).
    /// Returns the child's stderr pipe if `stderr` was `Stdio::piped()`.
    pub fn spawn_replica_stderr(
        &self,
        name: &str,
        redis_url: Option<&str>,
        extra_env: &[(&str, &str)],
        stderr: Stdio,
    ) -> (Replica, Option<std::process::ChildStderr>) {
        let url = redis_url.map_or_else(|| self.redis.url(), str::to_owned);
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, self.config_text(&url)).unwrap();
        self.spawn_configured(name, extra_env, stderr)
    }

    /// Starts replica `name` with `config` as its config file.
    pub fn spawn_replica_config(
        &self,
        name: &str,
        config: &str,
        extra_env: &[(&str, &str)],
    ) -> Replica {
        std::fs::write(self.dir.path().join(format!("{name}.toml")), config).unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        self.spawn_configured(name, extra_env, stderr.into()).0
    }

    /// Starts replica `name` with the config file already written for it.
    fn spawn_configured(
        &self,
        name: &str,
        extra_env: &[(&str, &str)],
        stderr: Stdio,
    ) -> (Replica, Option<std::process::ChildStderr>) {
        let config = self.dir.path().join(format!("{name}.toml"));
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxtoken"));
        cmd.args(["run", "--config"])
            .arg(&config)
            .args(["--replica-id", name])
            .env("RUST_LOG", "debug")
            .env_remove("WXTOKEN_REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (i, c) in self.creds.iter().enumerate() {
            cmd.env(format!("WXT_SECRET_{i}"), &c.secret);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning wxtoken run");
        let pipe = child.stderr.take();
        let replica = Replica {
            name: name.to_owned(),
            child: Some(child),
            log,
        };
        (replica, pipe)
    }

    pub async fn redis_con(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub fn keys(&self, id: &str) -> CredentialKeys {
        CredentialKeys::new("wxtoken", id).unwrap()
    }

    /// The stored access token of credential `i`, if any.
    pub async fn token(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        i: usize,
    ) -> Option<String> {
        stored(con, &self.keys(&self.creds[i].id), Kind::AccessToken).await
    }

    /// Waits until every credential has an access token (and tickets if configured).
    pub async fn wait_all_stored(&self, limit: Duration) {
        let mut con = self.redis_con().await;
        let deadline = Instant::now() + limit;
        loop {
            let mut missing = Vec::new();
            for c in &self.creds {
                let keys = self.keys(&c.id);
                let mut kinds = vec![Kind::AccessToken];
                if self.setup.tickets {
                    kinds.push(Kind::JsapiTicket);
                }
                for k in kinds {
                    if stored(&mut con, &keys, k).await.is_none() {
                        missing.push(format!("{}/{k}", c.id));
                    }
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not stored within {limit:?}: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// The readers below panic on a Redis error: `None` means the key or field is
// really absent, never "Redis did not answer". A test that reads during an
// outage must query Redis itself and handle the error.

/// The stored value of `kind`, if any.
pub async fn stored(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &CredentialKeys,
    kind: Kind,
) -> Option<String> {
    redis::cmd("GET")
        .arg(keys.value(kind))
        .query_async(con)
        .await
        .expect("redis")
}

/// The fence of the stored `kind`, if any.
pub async fn fence_of(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &CredentialKeys,
    kind: Kind,
) -> Option<u64> {
    redis::cmd("HGET")
        .arg(keys.info(kind))
        .arg(info::FENCE)
        .query_async(con)
        .await
        .expect("redis")
}

/// The replica that wrote the stored `kind`, if any.
pub async fn replica_of(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &CredentialKeys,
    kind: Kind,
) -> Option<String> {
    redis::cmd("HGET")
        .arg(keys.info(kind))
        .arg(info::REPLICA)
        .query_async(con)
        .await
        .expect("redis")
}

/// Polls `check` every 20 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `wxtoken run` child process; SIGKILLed on drop.
pub struct Replica {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Replica {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// SIGKILL: no chance to release locks.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {limit:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of Redis that can be paused: while paused it moves
/// no bytes in either direction (a network partition that heals).
pub struct Proxy {
    pub port: u16,
    paused: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (paused, rx) = watch::channel(false);
        let rx = Arc::new(rx);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, (*rx).clone()));
                tokio::spawn(pump(sr, cw, (*rx).clone()));
            }
        });
        Proxy { port, paused }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Data read just before a pause is held until the pause ends.
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A business call with `token` through the simulator's HTTP API; `Ok` or the errcode.
pub async fn business_call(http: &reqwest::Client, base: &str, token: &str) -> Result<(), i64> {
    let v: serde_json::Value = http
        .get(format!("{base}/cgi-bin/get_api_domain_ip"))
        .query(&[("access_token", token)])
        .send()
        .await
        .map_err(|_| -2)?
        .json()
        .await
        .map_err(|_| -3)?;
    match v.get("errcode").and_then(|c| c.as_i64()) {
        None | Some(0) => Ok(()),
        Some(code) => Err(code),
    }
}

/// Calls per command from `INFO commandstats`.
pub fn commandstats(info: &str) -> std::collections::BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .next()?
                .strip_prefix("calls=")?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Waits (up to 15 s) until `GET {base}/healthz` answers 200; on time-out,
/// fails with the replica's log (`logs`).
pub async fn wait_healthz(base: &str, logs: impl Fn() -> String) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP surface did not come up at {base}; replica log:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Env {
    /// Like [`Env::start`], with `redis` (e.g. a TLS server, or one started
    /// with other settings) as the scenario's Redis.
    pub async fn start_with_redis(setup: Setup, redis: RedisServer) -> Env {
        let mut env = Env::start(setup).await;
        env.redis = redis;
        env
    }

    /// The config file text for a replica talking to `redis_url` with
    /// `redis_extra` (e.g. TLS files, `checks`) added to its `[redis]`.
    pub fn config_text_with(&self, redis_url: &str, redis_extra: &str) -> String {
        self.config_text(redis_url)
            .replacen("[redis]\n", &format!("[redis]\n{redis_extra}"), 1)
    }
}

/// What a `wxtoken` command printed and its exit code.
pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` and `env`, none of the `WXTOKEN_REDIS_*` /
/// `WXTOKEN_CONFIG` variables inherited (without a runtime-blocking wait:
/// the simulator serves replicas from the test's runtime meanwhile).
pub async fn wxtoken_cli(args: &[&str], env: &[(&str, &str)]) -> CliOut {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"));
    cmd.args(args)
        .env_remove("WXTOKEN_REDIS_URL")
        .env_remove("WXTOKEN_CONFIG")
        .env_remove("WXTOKEN_REDIS_TLS_CA_FILE")
        .env_remove("WXTOKEN_REDIS_TLS_CERT_FILE")
        .env_remove("WXTOKEN_REDIS_TLS_KEY_FILE")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("wxtoken {args:?} did not exit within 60s"))
        .unwrap();
    CliOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Replica {
    /// Waits up to `limit` for the process to exit by itself; its exit code
    /// (`None` if it is still running, then it is killed).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A WeCom app of a scenario (secret inline in the replicas' config).
#[derive(Clone, Debug)]
pub struct WecomApp {
    /// The credential id, `wc-<corp>-<app>`.
    pub id: String,
    pub corpid: String,
    pub agentid: u32,
    /// 43 characters of WeCom's secret alphabet.
    pub secret: String,
}

impl WecomApp {
    /// Its `[[credential]]` table, keeping `tickets`.
    pub fn config(&self, tickets: &[&str]) -> String {
        let tickets: Vec<String> = tickets.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            "\n[[credential]]\nid = \"{}\"\nplatform = \"wecom\"\ncorpid = \"{}\"\nagentid = {}\nsecret = \"{}\"\ntickets = [{}]\n",
            self.id,
            self.corpid,
            self.agentid,
            self.secret,
            tickets.join(", ")
        )
    }
}

/// `apps` WeCom apps in each of `corps` corps (corpid `ww<16 digits>`,
/// agentids from 1000002).
pub fn wecom_apps(corps: usize, apps: usize) -> Vec<WecomApp> {
    let mut out = Vec::new();
    for c in 0..corps {
        for a in 0..apps {
            let secret: String = format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            )
            .chars()
            .take(43)
            .collect();
            out.push(WecomApp {
                id: format!("wc-{c}-{a}"),
                corpid: format!("ww{:016}", c + 1),
                agentid: 1_000_002 + a as u32,
                secret,
            });
        }
    }
    out
}

/// The simulator's corps for `apps`.
pub fn wecom_corps(apps: &[WecomApp]) -> Vec<wxtoken_sim::WecomCorpConfig> {
    let mut corps: Vec<wxtoken_sim::WecomCorpConfig> = Vec::new();
    for app in apps {
        let entry = wxtoken_sim::WecomAppConfig {
            agentid: app.agentid,
            secret: app.secret.clone(),
        };
        match corps.iter_mut().find(|c| c.corpid == app.corpid) {
            Some(corp) => corp.apps.push(entry),
            None => corps.push(wxtoken_sim::WecomCorpConfig {
                corpid: app.corpid.clone(),
                apps: vec![entry],
            }),
        }
    }
    corps
}

/// Every update event published on the test Redis' `wxtoken:events`, as it
/// arrives (one per fenced write), recorded until dropped.
pub struct Events {
    seen: Arc<std::sync::Mutex<Vec<wxtoken_schema::UpdateEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    /// Subscribes now: every later write is recorded.
    pub async fn record(env: &Env) -> Events {
        use futures_util::StreamExt;
        let client = redis::Client::open(env.redis.url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("wxtoken:events").await.unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    if let Ok(ev) = wxtoken_schema::UpdateEvent::parse(msg.get_payload_bytes()) {
                        seen.lock().unwrap().push(ev);
                    }
                }
            })
        };
        Events { seen, task }
    }

    /// The events of `kind` so far, in order.
    pub fn of(&self, kind: Kind) -> Vec<wxtoken_schema::UpdateEvent> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}
