//! `wxtoken status`: what Redis says about every credential — time left,
//! last refresh and who made it, fence, last error, pause, pending refresh
//! requests — as an aligned table or a stable JSON document, with an exit
//! code for monitoring (0 healthy, 3 unhealthy).
//!
//! Redis is read and interpreted by `wxtoken_schema::snapshot`, the reader
//! the replicas' status page uses too; this module only picks the kinds to
//! show, judges health (`registered`, `configured`, `healthy`, `problems`)
//! and renders. Read-only: it must not change any key or read keys itself,
//! and never shows a token (not even a prefix) or a pending request's
//! reported token.

use super::target::{Target, TargetArgs};
use super::EXIT_UNHEALTHY;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use wxtoken_refresher::human;
use wxtoken_schema::snapshot::{self, Status, ValueStatus};
use wxtoken_schema::{CredentialKeys, Kind};

/// `wxtoken status` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print a JSON array of credential objects (fields in the README)
    /// instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

/// One credential, as printed by `status --json`: what Redis holds
/// (`wxtoken_schema::snapshot`, whose field names are part of the CLI's
/// contract) and this command's verdict.
#[derive(Debug, Serialize)]
pub struct CredentialStatus {
    /// Credential id.
    pub id: String,
    /// The status hash.
    #[serde(flatten)]
    pub status: Status,
    /// Listed in the namespace's registry set (a refresher has run it).
    pub registered: bool,
    /// Listed in the `--config` file.
    pub configured: bool,
    /// No problems.
    pub healthy: bool,
    /// Why it is unhealthy, in words (not for matching).
    pub problems: Vec<String>,
    /// The access token, then each stored or configured ticket.
    pub kinds: Vec<ValueStatus>,
}

/// Runs `wxtoken status`.
pub async fn run(args: Args) -> Result<ExitCode> {
    let target = args.target.resolve()?;
    let mut con = target.connect().await?;
    let (now_ms, report) = gather(&target, &mut con)
        .await
        .map_err(|e| target.failed("reading the status", &e))?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report).context("encoding JSON")?;
        s.push('\n');
        s
    } else {
        render(&report, now_ms)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    if report.is_empty() {
        // Nothing to monitor is a finding too: most likely the wrong Redis
        // or namespace.
        eprintln!(
            "no credentials in namespace {} at {}: no refresher has registered one (wrong --redis-url or --namespace? --config lists the configured ones)",
            target.namespace,
            target.redacted_url(),
        );
    }
    Ok(if report.is_empty() || report.iter().any(|c| !c.healthy) {
        ExitCode::from(EXIT_UNHEALTHY)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads the registry, then the Redis clock and every registered or
/// configured credential in one round trip.
async fn gather(
    target: &Target,
    con: &mut redis::aio::MultiplexedConnection,
) -> Result<(u64, Vec<CredentialStatus>)> {
    let registered = snapshot::registered(con, &target.namespace)
        .await
        .context("reading the registry")?;
    // id → (registered, configured kinds)
    let mut ids: BTreeMap<String, (bool, Option<Vec<Kind>>)> = BTreeMap::new();
    for id in registered {
        ids.entry(id).or_default().0 = true;
    }
    for c in &target.configured {
        ids.entry(c.id.clone()).or_default().1 = Some(c.kinds.clone());
    }
    let mut keys = Vec::with_capacity(ids.len());
    let mut found = Vec::with_capacity(ids.len());
    for (id, found_as) in ids {
        match CredentialKeys::new(&target.namespace, &id) {
            Ok(k) => {
                keys.push(k);
                found.push(found_as);
            }
            Err(e) => eprintln!("warning: skipping registry entry: {e}"),
        }
    }
    let snap = snapshot::read(con, &target.namespace, &keys)
        .await
        .context("reading the credentials")?;
    let report = snap
        .credentials
        .into_iter()
        .zip(found)
        .map(|(c, (registered, configured))| judge(c, registered, configured.as_deref()))
        .collect();
    Ok((snap.now_ms, report))
}

/// Picks the kinds worth showing and says what is wrong.
fn judge(
    c: snapshot::Credential,
    registered: bool,
    configured: Option<&[Kind]>,
) -> CredentialStatus {
    let kinds: Vec<ValueStatus> = c
        .kinds
        .into_iter()
        .filter(|v| {
            v.kind == Kind::AccessToken
                || configured.is_some_and(|k| k.contains(&v.kind))
                || v.stored
                || v.refresh_request.is_some()
                || v.refreshed_at_ms.is_some()
                || v.fence.is_some()
        })
        .collect();
    let mut problems: Vec<String> = kinds
        .iter()
        .filter(|v| missing(v, configured.is_some()))
        .map(|v| format!("no {} stored", v.kind))
        .collect();
    if c.status.failing() {
        problems.push("the last refresh attempt failed".to_owned());
    }
    if c.status.paused {
        problems.push("refreshes are paused (daily quota exhausted)".to_owned());
    }
    CredentialStatus {
        id: c.id,
        status: c.status,
        registered,
        configured: configured.is_some(),
        healthy: problems.is_empty(),
        problems,
        kinds,
    }
}

/// Nothing is stored where something should be: the access token, or any
/// kind shown for a credential listed in `--config`.
fn missing(v: &ValueStatus, configured: bool) -> bool {
    !v.stored && (v.kind == Kind::AccessToken || configured)
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One line of text, whatever a refresher wrote.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The table, then one line per failing or paused credential.
fn render(report: &[CredentialStatus], now_ms: u64) -> String {
    let mut rows = vec![[
        "CREDENTIAL",
        "KIND",
        "MODE",
        "APPID",
        "LEFT",
        "REFRESHED",
        "BY",
        "FENCE",
        "REQUEST",
        "STATE",
    ]
    .map(String::from)
    .to_vec()];
    let mut details = Vec::new();
    for c in report {
        let st = &c.status;
        let mut state = Vec::new();
        if c.kinds.iter().any(|k| missing(k, c.configured)) {
            state.push("missing".to_owned());
        }
        if st.failing() {
            let when = st
                .last_error_at_ms
                .map(|at| format!(" {}", human::relative(at, now_ms)))
                .unwrap_or_default();
            state.push(match st.last_errcode {
                Some(code) => format!("error {code}{when}"),
                None => format!("error{when}"),
            });
            details.push(format!(
                "{}: last error{} ({}by {}): {}",
                c.id,
                when,
                st.last_errcode
                    .map(|code| format!("errcode {code}, "))
                    .unwrap_or_default(),
                st.replica.as_deref().unwrap_or("?"),
                one_line(st.last_error.as_deref().unwrap_or_default())
            ));
        }
        if let (true, Some(until)) = (st.paused, st.paused_until_ms) {
            let left = human::duration(until.saturating_sub(now_ms));
            state.push(format!("paused {left}"));
            details.push(format!(
                "{}: refreshes paused for {left} more (daily quota exhausted)",
                c.id
            ));
        }
        if state.is_empty() {
            state.push(if c.healthy { "ok" } else { "unhealthy" }.to_owned());
        }
        for (i, k) in c.kinds.iter().enumerate() {
            let first = i == 0;
            let cred_cell = |s: String| if first { s } else { String::new() };
            let left = match (k.stored, k.ttl_ms) {
                (false, _) => "missing".to_owned(),
                (true, Some(ms)) => format!("{} left", human::duration(ms)),
                (true, None) => "no expiry".to_owned(),
            };
            let request = match &k.refresh_request {
                None => "-".to_owned(),
                Some(r) if r.force => "pending (force)".to_owned(),
                Some(_) => "pending".to_owned(),
            };
            rows.push(vec![
                cred_cell(c.id.clone()),
                k.kind.to_string(),
                cred_cell(or_dash(st.mode.as_deref())),
                cred_cell(or_dash(st.appid.as_deref())),
                left,
                or_dash(k.refreshed_at_ms.map(|at| human::relative(at, now_ms))),
                or_dash(k.replica.as_deref()),
                or_dash(k.fence),
                request,
                cred_cell(state.join(", ")),
            ]);
        }
    }
    let mut out = if report.is_empty() {
        String::new()
    } else {
        table(&rows)
    };
    if !details.is_empty() {
        out.push('\n');
        for d in details {
            out.push_str(&d);
            out.push('\n');
        }
    }
    out
}

/// Rows of cells as columns padded to the widest cell; the last column is
/// not padded. Every row ends with a newline.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["long".into(), "".into(), "x".into()],
        ]);
        assert_eq!(t, "A     BB  C\nlong      x\n");
    }

    fn value(kind: Kind, stored: bool) -> ValueStatus {
        ValueStatus {
            stored,
            ..ValueStatus::unknown(kind)
        }
    }

    fn credential(kinds: Vec<ValueStatus>, status: Status) -> snapshot::Credential {
        snapshot::Credential {
            id: "oa".into(),
            status,
            kinds,
        }
    }

    #[test]
    fn shows_expected_or_known_kinds_and_names_problems() {
        let all = || {
            vec![
                value(Kind::AccessToken, true),
                value(Kind::JsapiTicket, false),
                ValueStatus {
                    fence: Some(3),
                    ..value(Kind::WxCardTicket, false)
                },
            ]
        };
        // Not configured: the access token and what Redis knows about.
        let c = judge(credential(all(), Status::default()), true, None);
        let kinds: Vec<Kind> = c.kinds.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, [Kind::AccessToken, Kind::WxCardTicket]);
        assert!(c.healthy && c.problems.is_empty() && c.registered && !c.configured);

        // Configured with the jsapi ticket: it must be stored.
        let c = judge(
            credential(all(), Status::default()),
            false,
            Some(&[Kind::AccessToken, Kind::JsapiTicket]),
        );
        assert_eq!(c.kinds.len(), 3);
        assert!(!c.healthy);
        assert_eq!(
            c.problems,
            ["no jsapi_ticket stored", "no wx_card_ticket stored"]
        );

        let failing = Status {
            last_error: Some("x".into()),
            last_error_at_ms: Some(5),
            last_ok_at_ms: Some(4),
            paused_until_ms: Some(10),
            paused: true,
            ..Status::default()
        };
        let c = judge(
            credential(vec![value(Kind::AccessToken, false)], failing),
            true,
            None,
        );
        assert_eq!(c.problems.len(), 3, "{:?}", c.problems);
        let json = serde_json::to_value(&c).unwrap();
        for field in [
            "id",
            "appid",
            "registered",
            "healthy",
            "paused",
            "status_replica",
        ] {
            assert!(json.get(field).is_some(), "{field}: {json}");
        }
        let text = render(&[c], 1_000);
        assert!(text.contains("missing") && text.contains("error"), "{text}");
        assert!(text.contains("oa: refreshes paused"), "{text}");
    }
}
