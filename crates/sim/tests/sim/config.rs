//! Config parsing: good files, strictness, error messages naming field and position, and
//! that no secret leaks into an error.

use std::io::Write;
use std::time::Duration;

use wxtoken_sim::{AppConfig, ConfigError, SimConfig, Simulator, Timing};

use crate::common::SECRET;

#[test]
fn example_file_parses_with_wechat_defaults() {
    let config = SimConfig::from_toml_str(include_str!("../../sim.example.toml")).unwrap();
    assert_eq!(config.timing, Timing::default());
    assert_eq!(config.apps.len(), 2);
    assert_eq!(config.apps[0].appid, "wx0000000000000001");
}

#[test]
fn good_file_loads() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "[timing]\nexpires_in = \"4s\"\noverlap = \"300ms\"\ndaily_quota = 3\n\n\
         [[app]]\nappid = \"wx0000000000000001\"\nsecret = \"{SECRET}\"\n"
    )
    .unwrap();
    let config = SimConfig::load(file.path()).unwrap();
    assert_eq!(
        config.timing,
        Timing {
            expires_in: Duration::from_secs(4),
            overlap: Duration::from_millis(300),
            daily_quota: 3,
            ..Timing::default()
        }
    );
    assert_eq!(
        config.apps,
        vec![AppConfig::new("wx0000000000000001", SECRET)]
    );
}

#[test]
fn empty_file_is_no_apps_and_wechat_timing() {
    assert_eq!(SimConfig::from_toml_str("").unwrap(), SimConfig::default());
}

#[test]
fn unknown_timing_field_names_field_and_line() {
    let err = SimConfig::from_toml_str("[timing]\nexpires_in = \"7200s\"\nexpire_in = \"1s\"\n")
        .unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("expire_in"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(
        matches!(
            err,
            ConfigError::Parse {
                line: Some(3),
                column: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unknown_top_level_and_app_fields_are_errors() {
    let msg = SimConfig::from_toml_str("[timings]\nexpires_in = \"1s\"\n")
        .unwrap_err()
        .to_string();
    println!("{msg}");
    assert!(msg.contains("timings") && msg.contains("line 1"), "{msg}");

    let toml = format!("[[app]]\nappid = \"wx1\"\nsecret = \"{SECRET}\"\nname = \"demo\"\n");
    let msg = SimConfig::from_toml_str(&toml).unwrap_err().to_string();
    println!("{msg}");
    assert!(msg.contains("name") && msg.contains("line 4"), "{msg}");
    assert!(!msg.contains(SECRET), "secret leaked: {msg}");

    // `apps` instead of `app`.
    let msg = SimConfig::from_toml_str("[[apps]]\nappid = \"wx1\"\nsecret = \"s\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("apps"), "{msg}");
}

#[test]
fn bad_values_name_the_key() {
    let msg = SimConfig::from_toml_str("[timing]\noverlap = \"five minutes\"\n")
        .unwrap_err()
        .to_string();
    println!("{msg}");
    assert!(msg.contains("overlap") && msg.contains("line 2"), "{msg}");

    let msg = SimConfig::from_toml_str("[timing]\ndaily_quota = \"lots\"\n")
        .unwrap_err()
        .to_string();
    println!("{msg}");
    assert!(
        msg.contains("daily_quota") && msg.contains("line 2"),
        "{msg}"
    );

    let msg = SimConfig::from_toml_str("[[app]]\nappid = \"wx1\"\n")
        .unwrap_err()
        .to_string();
    println!("{msg}");
    assert!(msg.contains("secret"), "{msg}");
}

#[test]
fn file_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = SimConfig::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("nope.toml"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[timing]\nbogus = 1\n").unwrap();
    let msg = SimConfig::load(&bad).unwrap_err().to_string();
    println!("{msg}");
    assert!(
        msg.contains("bad.toml") && msg.contains("bogus") && msg.contains("line 2"),
        "{msg}"
    );
}

#[test]
fn nonsense_values_are_rejected() {
    let toml = format!(
        "[[app]]\nappid = \"wx1\"\nsecret = \"{SECRET}\"\n[[app]]\nappid = \"wx1\"\nsecret = \"{SECRET}\"\n"
    );
    let err = SimConfig::from_toml_str(&toml).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("app[1].appid") && msg.contains("duplicate"),
        "{msg}"
    );
    assert!(!msg.contains(SECRET), "secret leaked: {msg}");

    let msg = SimConfig::from_toml_str("[timing]\nday = \"0s\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("timing.day"), "{msg}");
}

#[tokio::test]
async fn start_rejects_invalid_config() {
    let config = SimConfig::default().with_timing(Timing {
        expires_in: Duration::ZERO,
        ..Timing::default()
    });
    let err = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("timing.expires_in"), "{err}");
}
