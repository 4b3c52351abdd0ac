//! The binary's promises about configuration and secrets: bad configs fail at
//! start-up with the field named and exit code 1; secrets never appear in logs
//! (human or JSON, at debug level, through failures too).

use crate::common::{Env, Setup};
use std::process::Command;
use std::time::Duration;

fn wxtoken(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxtoken"));
    cmd.args(args)
        .env_remove("WXTOKEN_REDIS_URL")
        .env_remove("WXTOKEN_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_fail_at_start_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[refresh]\nmargn = \"5m\"\n", "2:1", "margn"),
        (
            "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"WXT_NOT_SET\"\n",
            "credential[0].secret_env",
            "WXT_NOT_SET is not set",
        ),
        (
            "[[credential]]\nid = \"a\"\nappid = \"wx1\"\nsecret_env = \"S\"\n[[credential]]\nid = \"a\"\nappid = \"wx2\"\nsecret_env = \"S\"\n",
            "credential[1].id",
            "duplicate",
        ),
        ("[wechat]\nbase_url = \"::nope\"\n", "wechat.base_url", "not a URL"),
    ];
    for (i, (text, field, why)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        for args in [vec!["check-config", p], vec!["run", "--config", p]] {
            let (code, _, err) = wxtoken(&args, &[("S", "x")]);
            assert_eq!(code, 1, "{args:?}: {err}");
            assert!(
                err.contains(p) && err.contains(field) && err.contains(why),
                "{args:?}: {err}"
            );
        }
    }
    let (code, _, err) = wxtoken(&["run", "--config", "/nonexistent/wxtoken.toml"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read config file /nonexistent/wxtoken.toml"),
        "{err}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let (code, out, err) = wxtoken(
        &["check-config", example],
        &[("WX_OA_MAIN_SECRET", "a"), ("WX_MINI_SHOP_SECRET", "b")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (2 credentials)"), "{out}");

    // The config docker-compose.yml mounts is valid too.
    let compose = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose.toml");
    let (code, _, err) = wxtoken(
        &["check-config", compose],
        &[("WX_OA_MAIN_SECRET", "a"), ("WX_MINI_SHOP_SECRET", "b")],
    );
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let env = Env::start(Setup {
        credentials: 2,
        tickets: true,
        lifetime: Duration::from_secs(8),
        ..Setup::default()
    })
    .await;
    // One credential works; the other's secret is wrong (a refused fetch logs errors).
    env.admin.set_secret_frozen(&env.creds[1].appid, true);
    let human = env.spawn_replica("human", None);
    let json = env.spawn_replica_with("json", None, &[("WXTOKEN_LOG_FORMAT", "json")]);
    crate::common::eventually(Duration::from_secs(10), "first token stored", || {
        let (env, con) = (&env, env.redis_con());
        async move { env.token(&mut con.await, 0).await.is_some() }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await; // at least one proactive refresh
    let mut con = env.redis_con().await;
    let token = env.token(&mut con, 0).await.unwrap();
    let all = format!("{}{}", human.logs(), json.logs());
    assert!(all.contains("stored new value"), "{all}");
    assert!(
        all.contains("40243"),
        "the refused credential is not logged: {all}"
    );
    for c in &env.creds {
        assert!(!all.contains(&c.secret), "a secret was logged");
    }
    assert!(!all.contains(&token), "a whole token was logged");
    assert!(json
        .logs()
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

/// Secrets written in the wrong place (a Redis URL missing a slash, a
/// base_url with credentials, a secret pasted as a variable name, an unquoted
/// numeric secret) are refused naming the field, flag or variable, never
/// echoing the value.
#[test]
fn misplaced_secrets_are_refused_without_being_echoed() {
    const PW: &str = "hunter2pw";
    let dir = tempfile::tempdir().unwrap();
    let cred = "[[credential]]\nid = \"a\"\nappid = \"wx1\"\n";
    let cases = [
        (
            format!("[redis]\nurl = \"redis:/u:{PW}@h\"\n"),
            vec![],
            "redis.url: not a usable Redis URL",
        ),
        (
            String::new(),
            vec![("WXTOKEN_REDIS_URL", format!("redis:/u:{PW}@h"))],
            "WXTOKEN_REDIS_URL: not a usable Redis URL",
        ),
        (
            format!("[wechat]\nbase_url = \"https://user:{PW}@api.weixin.qq.com\"\n"),
            vec![],
            "wechat.base_url: must not contain user:password@",
        ),
        (
            format!("{cred}secret_env = \"{PW}-0123456789abcdef\"\n"),
            vec![],
            "credential[0].secret_env: secret_env is not a valid environment variable name",
        ),
        (
            format!("{cred}secret_env = \"{PW}0123456789abcdef\"\n"),
            vec![],
            "credential[0].secret_env: environment variable named in secret_env",
        ),
        (
            format!("{cred}secret = 918273645\n"),
            vec![],
            ":4:10: expected a quoted string",
        ),
    ];
    for (i, (text, env, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for args in [vec!["check-config", p], vec!["run", "--config", p]] {
            let (code, out, err) = wxtoken(&args, &env);
            assert_eq!(code, 1, "{args:?}: {err}");
            assert!(err.contains(want), "{args:?}: want {want}\n got {err}");
            for leak in [PW, "918273645"] {
                assert!(
                    !out.contains(leak) && !err.contains(leak),
                    "{args:?}: {err}"
                );
            }
        }
    }

    // The operator commands: the flag or variable is named, the URL is not shown.
    let bad = format!("redis:/u:{PW}@h");
    let (code, out, err) = wxtoken(&["status", "--redis-url", &bad], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--redis-url: not a usable Redis URL"), "{err}");
    assert!(!out.contains(PW) && !err.contains(PW), "{err}");
    let (code, out, err) = wxtoken(&["status"], &[("WXTOKEN_REDIS_URL", &bad)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("$WXTOKEN_REDIS_URL: not a usable Redis URL"),
        "{err}"
    );
    assert!(!out.contains(PW) && !err.contains(PW), "{err}");
}

/// `wxtoken sim` on a non-loopback address warns loudly (its admin API has
/// no authentication); on loopback it does not.
#[test]
fn the_simulator_warns_when_listening_beyond_loopback() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let first_lines = |listen: &str| -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wxtoken"))
            .args(["sim", "--listen", listen])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let done = line.contains("WeChat simulator listening");
                let _ = tx.send(line);
                if done {
                    break;
                }
            }
        });
        let mut lines = String::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
            lines.push_str(&line);
            lines.push('\n');
            if line.contains("WeChat simulator listening") {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        lines
    };
    let wide = first_lines("0.0.0.0:0");
    assert!(wide.contains("WeChat simulator listening"), "{wide}");
    assert!(
        wide.contains("WARN")
            && wide.contains("NON-LOOPBACK")
            && wide.contains("no authentication"),
        "{wide}"
    );
    let local = first_lines("127.0.0.1:0");
    assert!(local.contains("WeChat simulator listening"), "{local}");
    assert!(!local.contains("NON-LOOPBACK"), "{local}");
}
