//! Readers in other languages: the examples under `examples/` (PHP with
//! phpredis, Python with redis-py, Node.js with ioredis, Go with redigo), run
//! as real programs against Redis, the simulator and two real replicas.
//! - each reads the token that is stored, and WeChat (the simulator) accepts
//!   it in the business call the example makes;
//! - after WeChat revokes the token each example gets 40001, files the
//!   passive-refresh request with the README's two plain commands, and ends
//!   with the new token, which the replicas fetched with exactly one call;
//! - a wrong, stale or missing token makes each example fail (non-zero exit)
//!   after filing the request the documented way;
//! - an authorizer's token of a third-party platform is read and reported
//!   the same way;
//! - every line the README quotes from an example is in that example.
//!
//! A missing runtime or client library fails the test, saying how to install
//! it (`.ci/run` installs them all).

use crate::common::{eventually, Env, Setup};
use crate::platform::{ports, push_url, spawn, Platform};
use futures_util::StreamExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use wxtoken_schema::{authorizer_id, CredentialKeys, Kind};
use wxtoken_sim::{Endpoint, FetchOutcome};

/// How to run one language's example.
struct Reader {
    lang: &'static str,
    program: PathBuf,
    args: Vec<PathBuf>,
    env: Vec<(&'static str, String)>,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example(path: &str) -> PathBuf {
    repo().join("examples").join(path)
}

/// Runs `cmd`; its exit code (`None` if it could not be started) and output.
fn probe(cmd: &mut Command) -> (Option<i32>, String) {
    match cmd.output() {
        Ok(out) => (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (None, e.to_string()),
    }
}

fn php() -> Reader {
    let php = std::env::var_os("PHP").map_or_else(|| PathBuf::from("php"), PathBuf::from);
    let (code, out) =
        probe(Command::new(&php).args(["-r", "exit(extension_loaded('redis') ? 0 : 3);"]));
    match code {
        Some(0) => {}
        None => panic!(
            "the PHP example needs PHP with phpredis ({} did not run: {out}); \
             install them with `sudo apt-get install -y php-cli php-redis` (or set $PHP)",
            php.display()
        ),
        Some(_) => panic!(
            "the PHP example needs phpredis, which {} does not load ({out}); \
             install it with `sudo apt-get install -y php-redis`",
            php.display()
        ),
    }
    Reader {
        lang: "php",
        program: php,
        args: vec![example("php/reader.php")],
        env: Vec::new(),
    }
}

fn python() -> Reader {
    // Debian's python3-redis is for /usr/bin/python3, which a pyenv or venv
    // `python3` earlier on PATH may hide.
    let candidates: Vec<PathBuf> = match std::env::var_os("PYTHON") {
        Some(p) => vec![p.into()],
        None => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    let mut tried = Vec::new();
    for python in candidates {
        let (code, out) = probe(Command::new(&python).args(["-c", "import redis"]));
        if code == Some(0) {
            return Reader {
                lang: "python",
                program: python,
                args: vec![example("python/reader.py")],
                env: vec![("PYTHONDONTWRITEBYTECODE", "1".into())],
            };
        }
        tried.push(format!("{}: {}", python.display(), out.trim()));
    }
    panic!(
        "the Python example needs Python 3 with redis-py, and none was found ({}); \
         install it with `sudo apt-get install -y python3-redis` (for /usr/bin/python3), \
         or `pip install redis` and set $PYTHON to that interpreter",
        tried.join("; ")
    )
}

fn node() -> Reader {
    let (code, out) = probe(Command::new("node").arg("--version"));
    assert_eq!(
        code,
        Some(0),
        "the Node.js example needs node ({out}); install it with \
         `sudo apt-get install -y nodejs npm`"
    );
    // ioredis, pinned by the example's package-lock.json, installed once
    // into the target directory and reinstalled when the lock file changes.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readers-node");
    let lock = std::fs::read(example("node/package-lock.json")).unwrap();
    let installed = std::fs::read(dir.join("package-lock.json")).ok();
    if installed.as_ref() != Some(&lock) || !dir.join("node_modules/ioredis").is_dir() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(example(&format!("node/{f}")), dir.join(f)).unwrap();
        }
        let (code, out) = probe(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir),
        );
        if code != Some(0) {
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "the Node.js example needs ioredis: `npm ci` in {} failed ({out}); \
                 npm comes with `sudo apt-get install -y nodejs npm` and needs the npm registry",
                dir.display()
            );
        }
    }
    Reader {
        lang: "node",
        program: "node".into(),
        args: vec![example("node/reader.js")],
        env: vec![(
            "NODE_PATH",
            dir.join("node_modules").to_string_lossy().into_owned(),
        )],
    }
}

fn go() -> Reader {
    // GOPATH mode with Debian's redigo (golang-github-gomodule-redigo-dev);
    // a $GOPATH of one's own that has redigo works too.
    let gopath = match std::env::var("GOPATH") {
        Ok(p) if !p.is_empty() => format!("{p}:/usr/share/gocode"),
        _ => "/usr/share/gocode".to_owned(),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readers-go");
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("reader");
    let (code, out) = probe(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(example("go/reader.go"))
            .env("GO111MODULE", "off")
            .env("GOPATH", &gopath)
            .env("GOFLAGS", ""),
    );
    assert_eq!(
        code,
        Some(0),
        "the Go example needs Go and redigo (`go build` failed: {out}); install them with \
         `sudo apt-get install -y golang-go golang-github-gomodule-redigo-dev`"
    );
    Reader {
        lang: "go",
        program: binary,
        args: Vec::new(),
        env: Vec::new(),
    }
}

/// Every language's reader, prepared once per test binary.
async fn readers() -> &'static [Reader] {
    static READERS: OnceLock<Vec<Reader>> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        READERS
            .get_or_init(|| {
                let started = Instant::now();
                let readers = vec![php(), python(), node(), go()];
                eprintln!("readers prepared in {:?}", started.elapsed());
                readers
            })
            .as_slice()
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// What one run of an example did.
struct Run {
    lang: &'static str,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    /// The JSON line of a successful run (fails the test otherwise).
    fn ok(&self) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "the {} example failed: {self}",
            self.lang
        );
        let line = self.stdout.lines().last().unwrap_or_default();
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "the {} example printed no JSON line ({e}): {self}",
                self.lang
            )
        });
        assert_eq!(v["errcode"], 0, "{}: {self}", self.lang);
        v
    }

    /// Asserts that the run failed (non-zero exit) and printed no result.
    fn failed(&self) {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "the {} example should have failed: {self}",
            self.lang
        );
        assert!(
            !self.stdout.contains("token_prefix"),
            "the {} example printed a result although it failed: {self}",
            self.lang
        );
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// Runs `reader` against `env`'s Redis and simulator with the variables
/// `vars` (`WXTOKEN_ID` or the authorizer's appids, `WXTOKEN_WAIT_MS`).
async fn run(reader: &Reader, env: &Env, vars: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(&reader.program);
    cmd.args(&reader.args)
        .env("REDIS_URL", env.redis.url())
        .env("WECHAT_API", env.sim.base_url())
        .env("WXTOKEN_WAIT_MS", "10000")
        .env_remove("WXTOKEN_ID")
        .env_remove("WXTOKEN_COMPONENT_APPID")
        .env_remove("WXTOKEN_AUTHORIZER_APPID")
        .kill_on_drop(true);
    for (k, v) in &reader.env {
        cmd.env(k, v);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let started = Instant::now();
    // Asynchronously: the simulator is served by this test's runtime.
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the {} example did not exit within 30 s", reader.lang))
        .unwrap_or_else(|e| panic!("running the {} example: {e}", reader.lang));
    let run = Run {
        lang: reader.lang,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    };
    eprintln!(
        "{}: {vars:?} exit {:?} in {:?}",
        run.lang, run.code, run.took
    );
    run
}

/// The next message on a subscribed channel (within 2 s).
async fn next_message(
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> String {
    let msg = tokio::time::timeout(Duration::from_secs(2), messages.next())
        .await
        .expect("a message within 2 s")
        .expect("subscribed");
    msg.get_payload().unwrap()
}

fn prefix(token: &str) -> String {
    token.chars().take(8).collect()
}

fn setup() -> Setup {
    Setup {
        credentials: 1,
        // No scheduled refresh during the test: every new token is the
        // answer to a reader's request.
        lifetime: Duration::from_secs(300),
        overlap: Duration::from_secs(5),
        min_interval: Duration::from_millis(200),
        ..Setup::default()
    }
}

/// `appid`'s calls of WeChat's token endpoint, in order: the prefix of the
/// token each issued, `None` for a call that issued none.
fn token_calls(env: &Env, appid: &str) -> Vec<Option<String>> {
    env.admin
        .fetches(appid, Endpoint::Token)
        .into_iter()
        .map(|f| match f.outcome {
            FetchOutcome::Issued { token_prefix, .. } => Some(token_prefix),
            _ => None,
        })
        .collect()
}

async fn get(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(con)
        .await
        .expect("redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_reads_the_stored_token_and_files_a_passive_refresh() {
    let readers = readers().await;
    let env = Env::start(setup()).await;
    let (id, appid) = (env.creds[0].id.clone(), env.creds[0].appid.clone());
    let _replicas = env.spawn_replicas(2);
    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let evidence = |env: &Env| env.admin.app_evidence(&appid).unwrap();

    for reader in readers {
        // The stored token, read and accepted by WeChat.
        let stored = env.token(&mut con, 0).await.unwrap();
        let ok_before = evidence(&env).business_ok;
        let v = run(reader, &env, &[("WXTOKEN_ID", &id)]).await.ok();
        assert_eq!(v["id"], id.as_str(), "{}", reader.lang);
        assert_eq!(
            v["token_prefix"],
            prefix(&stored).as_str(),
            "{}",
            reader.lang
        );
        assert_eq!(v["refreshed"], false, "{}", reader.lang);
        assert_eq!(env.admin.check_token(&stored), Ok(()));
        assert_eq!(
            evidence(&env).business_ok - ok_before,
            1,
            "{}: WeChat saw one accepted call",
            reader.lang
        );

        // WeChat revokes it: the example gets 40001, reports it, and ends
        // with the replacement the replicas fetched with one call.
        env.admin.revoke_tokens(&appid);
        let calls_before = token_calls(&env, &appid).len();
        let rejected_before = evidence(&env)
            .rejected_business_calls
            .get(&40001)
            .copied()
            .unwrap_or(0);
        let r = run(reader, &env, &[("WXTOKEN_ID", &id)]).await;
        let v = r.ok();
        let new = env.token(&mut con, 0).await.unwrap();
        assert_ne!(new, stored, "{}", reader.lang);
        assert_eq!(v["refreshed"], true, "{}: {r}", reader.lang);
        assert_eq!(
            v["refused_prefix"],
            prefix(&stored).as_str(),
            "{}",
            reader.lang
        );
        assert_eq!(v["token_prefix"], prefix(&new).as_str(), "{}", reader.lang);
        assert_eq!(env.admin.check_token(&new), Ok(()));
        let e = evidence(&env);
        assert_eq!(
            (
                e.rejected_business_calls.get(&40001).copied().unwrap_or(0) - rejected_before,
                e.business_ok - ok_before,
            ),
            (1, 2),
            "{}: WeChat refused the revoked token once, then accepted the new one",
            reader.lang
        );
        // Any second fetch the request caused would show by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls = token_calls(&env, &appid);
        assert_eq!(
            calls[calls_before..],
            [Some(prefix(&new))],
            "{}: the replicas fetched the new token with exactly one WeChat call",
            reader.lang
        );
        assert_eq!(env.token(&mut con, 0).await.as_deref(), Some(new.as_str()));
        let request = env.keys(&id).refresh_request(Kind::AccessToken);
        assert_eq!(get(&mut con, &request).await, None, "answered and deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_fails_on_a_wrong_stale_or_missing_token() {
    let readers = readers().await;
    let env = Env::start(setup()).await;
    let (id, appid) = (env.creds[0].id.clone(), env.creds[0].appid.clone());
    let mut con = env.redis_con().await;
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("wxtoken:requests").await.unwrap();
    let mut requests = pubsub.into_on_message();

    // A stale token: stored by a replica that has stopped, revoked by WeChat.
    let mut replica = env.spawn_replica("replica-1", None);
    env.wait_all_stored(Duration::from_secs(10)).await;
    assert_eq!(replica.terminate(Duration::from_secs(10)), Some(0));
    let stale = env.token(&mut con, 0).await.unwrap();
    env.admin.revoke_tokens(&appid);
    // A wrong token: one WeChat never issued, under an id nobody refreshes.
    let wrong_keys = env.keys("not-refreshed");
    redis::cmd("SET")
        .arg(wrong_keys.value(Kind::AccessToken))
        .arg("NOT-A-TOKEN-issued-by-nobody")
        .query_async::<()>(&mut con)
        .await
        .unwrap();

    let wait = [("WXTOKEN_WAIT_MS", "500")];
    for reader in readers {
        for (case, cid, refused) in [
            ("stale", id.as_str(), stale.as_str()),
            ("wrong", "not-refreshed", "NOT-A-TOKEN-issued-by-nobody"),
            ("missing", "never-stored", "-"),
        ] {
            let request = env.keys(cid).refresh_request(Kind::AccessToken);
            redis::cmd("DEL")
                .arg(&request)
                .query_async::<()>(&mut con)
                .await
                .unwrap();
            let r = run(reader, &env, &[("WXTOKEN_ID", cid), wait[0]]).await;
            r.failed();
            assert!(
                r.stderr.contains("no new token"),
                "{} ({case}): {r}",
                reader.lang
            );
            // It filed the request the documented way before giving up.
            assert_eq!(
                get(&mut con, &request).await.as_deref(),
                Some(refused),
                "{} ({case})",
                reader.lang
            );
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&request)
                .query_async(&mut con)
                .await
                .unwrap();
            assert!(
                (590_000..=600_000).contains(&pttl),
                "{}: PTTL {pttl}",
                reader.lang
            );
            assert_eq!(
                next_message(&mut requests).await,
                format!("{cid} access_token"),
                "{}",
                reader.lang
            );
        }
    }
    // Nothing was refreshed behind the readers' backs.
    assert_eq!(
        env.token(&mut con, 0).await.as_deref(),
        Some(stale.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_reads_and_reports_an_authorizer_token() {
    let readers = readers().await;
    let platform = Platform::new(21);
    let ports = ports(2);
    let env = Env::start(Setup {
        credentials: 0,
        sim_components: vec![platform.sim(push_url(ports[0], &platform))],
        ..setup()
    })
    .await;
    let _replicas = spawn(&env, std::slice::from_ref(&platform), &ports, "").await;
    let component = platform.keys();
    eventually(Duration::from_secs(20), "the component token", || async {
        get(
            &mut env.redis_con().await,
            &component.value(Kind::ComponentAccessToken),
        )
        .await
        .is_some()
    })
    .await;
    let appid = "wxreaderauthz0001";
    let record = env.admin.authorize(&platform.appid, appid).await.unwrap();
    assert!(record.push.expect("pushed").success);
    let keys = CredentialKeys::authorizer("wxtoken", &platform.appid, appid).unwrap();
    let mut con = env.redis_con().await;
    eventually(Duration::from_secs(20), "the authorizer's token", || {
        let (mut con, key) = (con.clone(), keys.value(Kind::AccessToken));
        async move { get(&mut con, &key).await.is_some() }
    })
    .await;
    let vars = [
        ("WXTOKEN_COMPONENT_APPID", platform.appid.as_str()),
        ("WXTOKEN_AUTHORIZER_APPID", appid),
    ];
    let counts = |env: &Env| env.admin.authorizer_counts(&platform.appid, appid).unwrap();

    for reader in readers {
        let stored = get(&mut con, &keys.value(Kind::AccessToken)).await.unwrap();
        let before = counts(&env);
        let v = run(reader, &env, &vars).await.ok();
        assert_eq!(
            counts(&env).business_ok - before.business_ok,
            1,
            "{}",
            reader.lang
        );
        assert_eq!(
            v["id"],
            authorizer_id(&platform.appid, appid),
            "{}",
            reader.lang
        );
        assert_eq!(
            v["token_prefix"],
            prefix(&stored).as_str(),
            "{}",
            reader.lang
        );
        assert_eq!(v["refreshed"], false, "{}", reader.lang);

        env.admin
            .revoke_authorizer_token(&platform.appid, appid)
            .unwrap();
        let before = counts(&env);
        let v = run(reader, &env, &vars).await.ok();
        let new = get(&mut con, &keys.value(Kind::AccessToken)).await.unwrap();
        assert_ne!(new, stored, "{}", reader.lang);
        assert_eq!(v["refreshed"], true, "{}", reader.lang);
        assert_eq!(
            v["refused_prefix"],
            prefix(&stored).as_str(),
            "{}",
            reader.lang
        );
        assert_eq!(v["token_prefix"], prefix(&new).as_str(), "{}", reader.lang);
        assert_eq!(env.admin.check_token(&new), Ok(()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = counts(&env);
        assert_eq!(
            (
                after.authorizer_token_calls - before.authorizer_token_calls,
                after.authorizer_token_issued - before.authorizer_token_issued,
            ),
            (1, 1),
            "{}: one api_authorizer_token call for the report",
            reader.lang
        );
        assert_eq!(
            (
                after.business_rejected - before.business_rejected,
                after.business_ok - before.business_ok,
            ),
            (1, 1),
            "{}: WeChat refused the revoked token, then accepted the new one",
            reader.lang
        );
    }
}

/// The README's snippets for other languages are lines of the examples: a
/// fenced block right after a line naming `examples/<file>` must consist of
/// lines of that file.
#[test]
fn the_readme_quotes_the_examples_verbatim() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let mut quoted = std::collections::BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(start) = line.find("](examples/") else {
            continue;
        };
        if !lines.get(i + 1).is_some_and(|l| l.starts_with("```")) {
            continue;
        }
        let file = &line[start + 2..];
        let file = &file[..file.find(')').unwrap()];
        let text = std::fs::read_to_string(repo().join(file))
            .unwrap_or_else(|e| panic!("README.md line {}: {file}: {e}", i + 1));
        let source: Vec<&str> = text.lines().map(str::trim).collect();
        for (j, quote) in lines[i + 2..]
            .iter()
            .take_while(|l| !l.starts_with("```"))
            .enumerate()
        {
            let quote = quote.trim();
            assert!(
                quote.is_empty() || source.contains(&quote),
                "README.md line {} is not a line of {file}: {quote}",
                i + 3 + j
            );
        }
        quoted.insert(file.to_owned());
    }
    for file in [
        "examples/php/reader.php",
        "examples/python/reader.py",
        "examples/node/reader.js",
        "examples/go/reader.go",
    ] {
        assert!(quoted.contains(file), "the README quotes nothing of {file}");
    }
}
