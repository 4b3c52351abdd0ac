//! `wxtoken demo`: the quick start. Starts a throwaway `redis-server` (or uses
//! `$WXTOKEN_REDIS_URL` / `$REDIS_URL`, in namespace `wxtoken-demo` so a real
//! registry is left alone), the WeChat simulator in-process, and several
//! refresher replicas as child processes of this binary; then prints every token write
//! as it happens (which replica fetched what) and, at the end, how many WeChat
//! calls each credential cost. Nothing here is used by the refresher itself.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wxtoken_refresher::config::{redacted_url, ENV_CONFIG, ENV_REDIS_URL};
use wxtoken_schema::{
    events_channel, info, CredentialKeys, Kind, UpdateEvent, DEFAULT_NAMESPACE, KINDS,
};
use wxtoken_sim::{Endpoint, SimConfig, Simulator};

#[derive(clap::Args)]
pub struct Args {
    /// Refresher replicas to start.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Credentials (simulated apps) to keep fresh.
    #[arg(long, default_value_t = 4)]
    credentials: usize,
    /// Token lifetime the simulator hands out (WeChat's is 7200s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// Accounts authorized on the demo's third-party platform (0: no
    /// platform). They exist only at the simulator: wxtoken finds them with
    /// api_get_authorizer_list after the first verify-ticket push.
    #[arg(long, default_value_t = 3)]
    authorizers: u32,
    /// Stop after this long [default: run until Ctrl-C].
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

/// The namespace in a Redis the demo did not start: keeps its keys apart
/// from a real registry's (`wxtoken`).
const SHARED_REDIS_NAMESPACE: &str = "wxtoken-demo";

/// Where the demo keeps its keys.
struct Redis {
    /// The URL, password included (for the replicas' config only).
    url: String,
    /// The URL with any password shown as `***`, for printing.
    shown: String,
    /// The key namespace.
    namespace: &'static str,
    /// The throwaway redis-server, when the demo started one.
    local: Option<wxtoken_testkit::RedisServer>,
}

impl Redis {
    /// `$WXTOKEN_REDIS_URL`, else `$REDIS_URL` (namespace `wxtoken-demo`),
    /// else a fresh local redis-server (namespace `wxtoken`).
    fn pick() -> Result<Redis> {
        let given = [ENV_REDIS_URL, "REDIS_URL"]
            .into_iter()
            .find_map(|var| std::env::var(var).ok().filter(|url| !url.is_empty()));
        let (url, namespace, local) = match given {
            Some(url) => (url, SHARED_REDIS_NAMESPACE, None),
            None => {
                // With AOF, as the README recommends for the platform's
                // durable refresh tokens.
                let server = wxtoken_testkit::RedisServer::start_with_args(&[
                    "--appendonly",
                    "yes",
                ])
                .with_context(|| {
                    format!("starting a local redis-server (or set {ENV_REDIS_URL} or REDIS_URL)")
                })?;
                (server.url(), DEFAULT_NAMESPACE, Some(server))
            }
        };
        Ok(Redis {
            shown: redacted_url(&SecretString::from(url.clone())),
            url,
            namespace,
            local,
        })
    }
}

struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for child in &mut self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    if args.replicas == 0 || args.credentials == 0 {
        bail!("--replicas and --credentials must be at least 1");
    }
    if args.lifetime < Duration::from_secs(8) {
        bail!("--lifetime must be at least 8s");
    }

    let redis = Redis::pick()?;
    let namespace = redis.namespace;

    // The simulator, with one app per credential.
    let mut sim_cfg = SimConfig::default();
    sim_cfg.timing.expires_in = args.lifetime;
    sim_cfg.timing.overlap = (args.lifetime / 4).min(Duration::from_secs(300));
    let mut secrets = Vec::new();
    for i in 0..args.credentials {
        let appid = format!("wxdemo{:012}", i + 1);
        let secret = format!("{:032x}", rand::random::<u128>());
        sim_cfg = sim_cfg.with_app(&appid, &secret);
        secrets.push((format!("demo-{}", i + 1), appid, secret));
    }
    // A third-party platform pushing verify tickets to replica-1's
    // receiver, with accounts that authorized it before wxtoken ran.
    let http_ports: Vec<u16> = (0..args.replicas)
        .map(|_| wxtoken_testkit::free_port().context("finding a free port"))
        .collect::<Result<_>>()?;
    let platform = (args.authorizers > 0).then(|| DemoPlatform {
        appid: "wxdemocomponent01".to_owned(),
        secret: format!("{:032x}", rand::random::<u128>()),
        token: format!("{:016x}", rand::random::<u64>()),
        aes_key: (0..43)
            .map(|_| {
                const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                A[rand::random_range(0..A.len())] as char
            })
            .collect(),
    });
    if let Some(p) = &platform {
        sim_cfg = sim_cfg
            .with_component(wxtoken_sim::ComponentConfig {
                appid: p.appid.clone(),
                secret: p.secret.clone(),
                token: p.token.clone(),
                encoding_aes_key: p.aes_key.clone(),
                push_url: Some(format!(
                    "http://127.0.0.1:{}/wechat/component/platform",
                    http_ports[0]
                )),
            })
            .with_authorizers(&p.appid, args.authorizers);
    }
    let sim = Simulator::start(sim_cfg, "127.0.0.1:0".parse()?)
        .await
        .context("starting the WeChat simulator")?;
    let admin = sim.admin();

    // The replicas' config file.
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let config_path = dir.path().join("wxtoken.toml");
    let mut config = format!(
        "[redis]\nurl = \"{}\"\nnamespace = \"{namespace}\"\n\n\
         [wechat]\nbase_url = \"{}\"\nrequest_timeout = \"5s\"\n\n\
         [refresh]\njitter = \"2s\"\nlock_ttl = \"10s\"\ncheck_interval = \"5s\"\n",
        redis.url,
        sim.base_url()
    );
    for (i, (id, appid, _)) in secrets.iter().enumerate() {
        config.push_str(&format!(
            "\n[[credential]]\nid = \"{id}\"\nappid = \"{appid}\"\nsecret_env = \"WXTOKEN_DEMO_SECRET_{i}\"\ntickets = [\"jsapi\"]\n"
        ));
    }
    if let Some(p) = &platform {
        config.push_str(&format!(
            "\n[[component]]\nid = \"platform\"\nappid = \"{}\"\nsecret_env = \"WXTOKEN_DEMO_C_SECRET\"\n\
             token_env = \"WXTOKEN_DEMO_C_TOKEN\"\nencoding_aes_key_env = \"WXTOKEN_DEMO_C_KEY\"\n",
            p.appid
        ));
    }
    std::fs::write(&config_path, &config).context("writing the demo config")?;
    // Each replica serves the status page, metrics, probes and the
    // platform's push receiver on loopback; WeChat pushes to replica-1's.
    let status_url = format!("http://127.0.0.1:{}/", http_ports[0]);
    let mut config_paths = Vec::new();
    for (r, port) in http_ports.iter().enumerate() {
        let path = dir.path().join(format!("wxtoken-replica-{}.toml", r + 1));
        std::fs::write(
            &path,
            format!("{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .context("writing the demo config")?;
        config_paths.push(path);
    }

    // Subscribe before the replicas start, so no write is missed.
    let client = redis::Client::open(redis.url.as_str())
        .with_context(|| format!("Redis URL {}", redis.shown))?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .with_context(|| format!("connecting to Redis at {}", redis.shown))?;
    pubsub.subscribe(events_channel(namespace)).await?;
    if redis.local.is_none() {
        // Tokens an earlier demo stored are still "fresh" but unknown to this
        // run's simulator: start from an empty namespace.
        let mut con = client.get_multiplexed_async_connection().await?;
        let cleared = clear_namespace(&mut con, namespace).await?;
        if cleared > 0 {
            println!(
                "(removed {cleared} credentials an earlier demo left in namespace {namespace})"
            );
        }
    }

    let exe = std::env::current_exe().context("locating this binary")?;
    let mut children = Replicas(Vec::new());
    for r in 1..=args.replicas {
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_paths[r - 1])
            .arg("--replica-id")
            .arg(format!("replica-{r}"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The config file says everything.
            .env_remove(ENV_REDIS_URL)
            .env_remove(ENV_CONFIG)
            .stdin(Stdio::null());
        for (i, (_, _, secret)) in secrets.iter().enumerate() {
            cmd.env(format!("WXTOKEN_DEMO_SECRET_{i}"), secret);
        }
        if let Some(p) = &platform {
            cmd.env("WXTOKEN_DEMO_C_SECRET", &p.secret)
                .env("WXTOKEN_DEMO_C_TOKEN", &p.token)
                .env("WXTOKEN_DEMO_C_KEY", &p.aes_key);
        }
        children
            .0
            .push(cmd.spawn().context("starting a refresher replica")?);
    }

    println!("wxtoken demo");
    println!("  redis      {}  (namespace {namespace})", redis.shown);
    println!(
        "  simulator  {}  (admin: {}/_sim/evidence)",
        sim.base_url(),
        sim.base_url()
    );
    println!(
        "  replicas   {} × `{} run --config {}`",
        args.replicas,
        shell_word(&exe.display().to_string()),
        shell_word(&config_path.display().to_string())
    );
    println!("  status     {status_url}  (served by replica-1; also /metrics, /healthz)");
    println!(
        "  {} credentials, token lifetime {} (WeChat's is 2h), Ctrl-C to stop\n",
        args.credentials,
        humantime::format_duration(args.lifetime)
    );
    if let Some(p) = &platform {
        println!(
            "  platform   {} with {} authorized accounts (found with api_get_authorizer_list)\n",
            p.appid, args.authorizers
        );
    }
    // Wide enough for the platform's ids (`authorizer/<component>/<appid>`).
    let idw = secrets
        .iter()
        .map(|(id, _, _)| id.len())
        .chain(
            platform
                .as_ref()
                .map(|p| "authorizer//".len() + p.appid.len() + 18),
        )
        .max()
        .unwrap_or(10)
        .max(10);
    println!(
        "time      replica     {:<idw$}  kind                    fence  token      valid",
        "credential"
    );

    let started = Instant::now();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut messages = pubsub.on_message();
    let mut shown_help = false;
    let mut seen: BTreeMap<(String, Kind), UpdateEvent> = BTreeMap::new();
    // Every credential's token and ticket; the platform's component token,
    // reconciliation and each account's token.
    let wanted = args.credentials * 2
        + platform
            .as_ref()
            .map_or(0, |_| 2 + args.authorizers as usize);
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { bail!("lost the Redis connection") };
                let Ok(ev) = UpdateEvent::parse(msg.get_payload_bytes()) else { continue };
                let now_ms = unix_ms();
                println!(
                    "{:>7.1}s  {:<10}  {:<idw$}  {:<22}  {:>5}  {}  {}s",
                    started.elapsed().as_secs_f64(),
                    ev.replica,
                    ev.id,
                    ev.kind.as_str(),
                    ev.fence,
                    wxtoken_refresher::token_prefix(&ev.token),
                    ev.expires_at_ms.saturating_sub(now_ms) / 1000,
                );
                seen.insert((ev.id.clone(), ev.kind), ev);
                if !shown_help && seen.len() == wanted {
                    shown_help = true;
                    print_help(&redis, &exe)?;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sleep => break,
        }
    }

    // Summary: WeChat calls per credential against elapsed lifetimes, and a
    // business call with each token as it is in Redis now.
    let elapsed = started.elapsed();
    let mut con = client.get_multiplexed_async_connection().await?;
    println!(
        "\nafter {:.0}s ({:.1} token lifetimes):",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / args.lifetime.as_secs_f64()
    );
    println!("credential  WeChat token calls  fetched by   token in Redis works?");
    for (id, appid, _) in &secrets {
        let keys = CredentialKeys::new(namespace, id)?;
        let token: Option<String> = redis::cmd("GET")
            .arg(keys.value(Kind::AccessToken))
            .query_async(&mut con)
            .await?;
        let replica: Option<String> = redis::cmd("HGET")
            .arg(keys.info(Kind::AccessToken))
            .arg(info::REPLICA)
            .query_async(&mut con)
            .await?;
        let calls = admin
            .app_evidence(appid)
            .map_or(0, |e| e.issued_count(Endpoint::Token));
        let works = match token.as_deref().map(|t| admin.check_token(t)) {
            Some(Ok(())) => "yes".to_string(),
            Some(Err(code)) => format!("NO (errcode {code})"),
            None => "no token".to_string(),
        };
        println!(
            "{id:<10}  {calls:>18}  {:<11}  {works}",
            replica.unwrap_or_default()
        );
    }
    if let Some(p) = &platform {
        let counts = admin.component_evidence(&p.appid).map(|e| e.counts);
        let component = CredentialKeys::component(namespace, &p.appid)?;
        let token: Option<String> = redis::cmd("GET")
            .arg(component.value(Kind::ComponentAccessToken))
            .query_async(&mut con)
            .await?;
        let works = match token.as_deref().map(|t| admin.check_component_token(t)) {
            Some(Ok(())) => "yes".to_string(),
            Some(Err(code)) => format!("NO (errcode {code})"),
            None => "no token".to_string(),
        };
        println!(
            "\nplatform {}: component token fetched {} times, works? {works}",
            p.appid,
            counts.map_or(0, |c| c.component_token_issued)
        );
        let issued = admin.authorizer_issue_counts(&p.appid).unwrap_or_default();
        let mut accounts: Vec<_> = issued.into_iter().collect();
        accounts.sort();
        println!("authorizer          WeChat token calls  token in Redis works?");
        for (appid, calls) in accounts {
            let keys = CredentialKeys::authorizer(namespace, &p.appid, &appid)?;
            let token: Option<String> = redis::cmd("GET")
                .arg(keys.value(Kind::AccessToken))
                .query_async(&mut con)
                .await?;
            let works = match token.as_deref().map(|t| admin.check_authorizer_token(t)) {
                Some(Ok(_)) => "yes".to_string(),
                Some(Err(code)) => format!("NO (errcode {code})"),
                None => "no token".to_string(),
            };
            println!("{appid:<18}  {calls:>18}  {works}");
        }
    }
    drop(children);
    sim.shutdown().await;
    Ok(())
}

/// The demo's third-party platform: its secrets live only in this process
/// and the replicas' environment.
struct DemoPlatform {
    appid: String,
    secret: String,
    token: String,
    aes_key: String,
}

/// Deletes every registered credential's keys in `namespace`, and the
/// registry; returns how many credentials there were. Only for the demo's
/// own namespace in a Redis it did not start.
async fn clear_namespace(
    con: &mut redis::aio::MultiplexedConnection,
    namespace: &str,
) -> Result<usize> {
    let ids = wxtoken_schema::index::registered(con, namespace).await?;
    for id in &ids {
        let Ok(keys) = CredentialKeys::for_id(namespace, id) else {
            continue;
        };
        // One credential's keys share a hash slot: one DEL, even on a cluster.
        let mut del = redis::cmd("DEL");
        for kind in KINDS {
            del.arg(keys.value(kind))
                .arg(keys.info(kind))
                .arg(keys.lock(kind))
                .arg(keys.refresh_request(kind));
        }
        del.arg(keys.fence())
            .arg(keys.status())
            .arg(keys.refresh_token())
            .arg(keys.authorization_code())
            .arg(keys.removed())
            .arg(keys.schedule());
        let _: i64 = del.query_async(con).await?;
        if let Some(wxtoken_schema::Subject::Component(appid)) = wxtoken_schema::Subject::parse(id)
        {
            let platform = wxtoken_schema::ComponentKeys::new(namespace, appid)?;
            let _: i64 = redis::cmd("DEL")
                .arg(platform.verify_ticket())
                .arg(platform.verify_ticket_info())
                .arg(platform.authorizers())
                .query_async(con)
                .await?;
        }
    }
    for key in wxtoken_schema::registry_keys(namespace) {
        let _: i64 = redis::cmd("DEL").arg(key).query_async(con).await?;
    }
    Ok(ids.len())
}

/// How to look for yourself: redis-cli and `wxtoken` command lines for this
/// demo's Redis and namespace.
fn print_help(redis: &Redis, exe: &Path) -> Result<()> {
    let keys = CredentialKeys::new(redis.namespace, "demo-1")?;
    let cli = match &redis.local {
        Some(server) => format!("redis-cli -p {}", server.port()),
        None => format!("redis-cli -u {}", shell_word(&redis.shown)),
    };
    let value = shell_word(&keys.value(Kind::AccessToken));
    println!("\n  every token is in Redis; look with redis-cli:");
    println!("    {cli} GET {value}");
    println!("    {cli} PTTL {value}");
    println!(
        "    {cli} HGETALL {}",
        shell_word(&keys.info(Kind::AccessToken))
    );
    println!(
        "    {cli} SUBSCRIBE {}",
        shell_word(&events_channel(redis.namespace))
    );
    let mut target = format!("--redis-url {}", shell_word(&redis.shown));
    if redis.namespace != DEFAULT_NAMESPACE {
        target.push_str(&format!(" --namespace {}", redis.namespace));
    }
    let wxtoken = shell_word(&exe.display().to_string());
    println!("  or ask wxtoken:");
    println!("    {wxtoken} status {target}");
    println!("    {wxtoken} refresh demo-1 {target}");
    if redis.shown != redis.url {
        println!("  (put the Redis password in place of ***)");
    }
    println!();
    Ok(())
}

/// `word` as one shell word: as is when that is safe, else single-quoted.
fn shell_word(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Now, Unix ms, by this host's clock (close enough to the Redis clock for a
/// column of whole seconds).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
