//! What operators deploy, checked with the tools they use:
//! - `deploy/systemd/wxtoken.service` passes `systemd-analyze verify`, and
//!   the replica tells systemd it is ready (`Type=notify`) once it has
//!   registered its credentials;
//! - `deploy/prometheus/wxtoken.rules.yml` passes `promtool check rules`
//!   and its unit tests (`promtool test rules`, synthetic series);
//! - every `wxtoken_*` metric the rules and the Grafana dashboard use is one
//!   a running replica exports.

use crate::common::{wait_healthz, Env, Setup};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tool args` in `dir`; fails saying how to install it when missing.
fn run(tool: &str, package: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("`{tool}` is needed for this test ({e}); install it: `sudo apt-get install -y {package}`")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{tool} {}` failed:\n{text}",
        args.join(" ")
    );
    text
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/wxtoken.service")).unwrap();
    for needed in [
        "Type=notify",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LoadCredential=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    // `verify` checks that ExecStart exists: point it at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/wxtoken", env!("CARGO_BIN_EXE_wxtoken")),
    )
    .unwrap();
    let out = run(
        "systemd-analyze",
        "systemd",
        &["verify", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        !out.contains("wxtoken.service:"),
        "systemd-analyze complains:\n{out}"
    );
}

#[test]
fn the_alert_rules_check_and_pass_their_tests() {
    let dir = root().join("deploy/prometheus");
    let out = run(
        "promtool",
        "prometheus",
        &["check", "rules", "wxtoken.rules.yml"],
        &dir,
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run(
        "promtool",
        "prometheus",
        &["test", "rules", "wxtoken.rules.test.yml"],
        &dir,
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The `wxtoken_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("wxtoken_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len().max(1)..];
        names.insert(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_exports_what_the_alerts_and_dashboard_use_and_notifies_systemd() {
    let env = Env::start(Setup {
        credentials: 1,
        lifetime: Duration::from_secs(60),
        ..Setup::default()
    })
    .await;
    // systemd's notification socket, played by the test.
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let port = wxtoken_testkit::free_port().unwrap();
    let config =
        env.config_text(&env.redis.url()) + &format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let secret = env.creds[0].secret.clone();
    let replica = env.spawn_replica_config(
        "replica-1",
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WXT_SECRET_0", &secret),
        ],
    );
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no READY=1 within 20 s; log:\n{}", replica.logs()))
        .unwrap();
    let message = String::from_utf8_lossy(&buf[..n]);
    assert!(message.contains("READY=1"), "{message}");

    let base = format!("http://127.0.0.1:{port}");
    wait_healthz(&base, || replica.logs()).await;
    // The container health check: `wxtoken probe`.
    let probe = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
            .args(["probe", &url, "--timeout", "2s"])
            .output()
            .await
            .unwrap()
            .status
            .code()
    };
    assert_eq!(probe(format!("{base}/healthz")).await, Some(0));
    assert_eq!(probe(format!("{base}/no-such-route")).await, Some(1));
    let closed = wxtoken_testkit::free_port().unwrap();
    assert_eq!(
        probe(format!("http://127.0.0.1:{closed}/healthz")).await,
        Some(1)
    );
    env.wait_all_stored(Duration::from_secs(10)).await;
    let exported = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = metric_names(&exported);
    let mut used = BTreeSet::new();
    for file in [
        "deploy/prometheus/wxtoken.rules.yml",
        "deploy/grafana/wxtoken.dashboard.json",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        used.extend(metric_names(&text));
    }
    assert!(used.len() >= 8, "{used:?}");
    // Families with no series yet (pushes without a platform, contention
    // without a second replica) export nothing: those must at least be
    // registered (`crates/refresher/src/metrics.rs`).
    let source = std::fs::read_to_string(root().join("crates/refresher/src/metrics.rs")).unwrap();
    let registered: BTreeSet<String> = source
        .split("registry.register(")
        .skip(1)
        .filter_map(|r| r.split('"').nth(1).map(|n| format!("wxtoken_{n}")))
        .collect();
    let family = |m: &str| {
        ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .unwrap_or(m)
            .to_owned()
    };
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| !exported.contains(*m) && !registered.contains(&family(m)))
        .collect();
    assert!(registered.len() >= 10, "{registered:?}");
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
}

#[test]
fn completions_and_the_manual_page_come_from_clap() {
    let wxtoken = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wxtoken"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "wxtoken {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let text = wxtoken(&["completions", shell]);
        for sub in ["run", "status", "refresh", "authorizers", "completions"] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let man = wxtoken(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH wxtoken 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("authorizers") && man.contains("status"));
    let bad = Command::new(env!("CARGO_BIN_EXE_wxtoken"))
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
