//! `wxtoken status`: what Redis says about every credential — time left,
//! last refresh and who made it, fence, last error, pause, pending refresh
//! requests — as an aligned table or a stable JSON document, with an exit
//! code for monitoring (0 healthy, 3 unhealthy).
//!
//! Built for 100,000 credentials: the table starts with a summary (counts by
//! kind and state), lists unhealthy credentials first and stops after
//! `--limit` credentials; `--id`, `--prefix` and `--problems` select. The
//! summary and the exit code cover every selected credential, whatever the
//! limit.
//!
//! Redis is read and interpreted by `wxtoken_schema::snapshot`, the reader
//! the replicas' status page uses too; this module only picks the kinds to
//! show, judges health (`registered`, `configured`, `healthy`, `problems`)
//! and renders. Read-only: it must not change any key or read keys itself,
//! and never shows a token (not even a prefix) or a pending request's
//! reported token.

use super::target::{Target, TargetArgs};
use super::EXIT_UNHEALTHY;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use wxtoken_refresher::config::RefreshConfig;
use wxtoken_refresher::human;
use wxtoken_schema::snapshot::{self, Status, ValueStatus};
use wxtoken_schema::{CredentialKeys, Kind, KINDS};

/// Table rows (credentials) shown when `--limit` is not given.
pub const DEFAULT_LIMIT: usize = 200;

/// The refreshers' default `refresh.margin` and `max_margin_fraction`, used
/// to call a value "due" when no `--config` says otherwise.
const DEFAULT_MARGIN: Duration = Duration::from_secs(300);
const DEFAULT_MAX_MARGIN_FRACTION: f64 = 0.25;
/// Lifetime assumed when Redis holds no announced `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(7200);

/// `wxtoken status` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print a JSON array of credential objects (fields in the README)
    /// instead of a table: every selected credential, ignoring --limit.
    #[arg(long)]
    json: bool,
    /// Only unhealthy credentials (the summary still counts every selected
    /// one).
    #[arg(long)]
    problems: bool,
    /// Only this credential (repeatable). With --prefix, credentials
    /// matching either are selected.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Only credentials whose id starts with P.
    #[arg(long, value_name = "P")]
    prefix: Option<String>,
    /// Show at most N credentials in the table (unhealthy ones first), and a
    /// line saying how many were left out; 0 shows all.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    limit: usize,
    #[command(flatten)]
    target: TargetArgs,
}

/// Which credentials `--id` and `--prefix` select (all when neither is
/// given).
#[derive(Debug, Default)]
struct Selection {
    ids: BTreeSet<String>,
    prefix: Option<String>,
}

impl Selection {
    fn is_all(&self) -> bool {
        self.ids.is_empty() && self.prefix.is_none()
    }

    fn matches(&self, id: &str) -> bool {
        self.is_all()
            || self.ids.contains(id)
            || self.prefix.as_deref().is_some_and(|p| id.starts_with(p))
    }
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
    let selection = Selection {
        ids: args.ids.iter().cloned().collect(),
        prefix: args.prefix.clone(),
    };
    for id in &selection.ids {
        CredentialKeys::new(&target.namespace, id).map_err(|e| anyhow!("--id {id:?}: {e}"))?;
    }
    let mut con = target.connect().await?;
    let gathered = gather(&target, &mut con, &selection)
        .await
        .map_err(|e| target.failed("reading the status", &e))?;
    let Gathered {
        now_ms,
        report,
        in_namespace,
    } = gathered;
    let unhealthy = report.iter().filter(|c| !c.healthy).count();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let shown: Vec<&CredentialStatus> = report
            .iter()
            .filter(|c| !args.problems || !c.healthy)
            .collect();
        serde_json::to_writer_pretty(&mut out, &shown).context("writing JSON to stdout")?;
        out.write_all(b"\n").context("writing to stdout")?;
    } else if !report.is_empty() {
        let margin = Margin(target.refresh.clone());
        let text = render_all(&report, now_ms, &margin, &args, &selection, in_namespace);
        out.write_all(text.as_bytes())
            .context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    if report.is_empty() {
        // Nothing to monitor is a finding too: most likely the wrong Redis
        // or namespace.
        if in_namespace == 0 {
            eprintln!(
                "no credentials in namespace {} at {}: no refresher has registered one (wrong --redis-url or --namespace? --config lists the configured ones)",
                target.namespace,
                target.redacted_url(),
            );
        } else {
            eprintln!(
                "no credentials match --id/--prefix among the {in_namespace} in namespace {} at {}",
                target.namespace,
                target.redacted_url(),
            );
        }
    }
    Ok(if report.is_empty() || unhealthy > 0 {
        ExitCode::from(EXIT_UNHEALTHY)
    } else {
        ExitCode::SUCCESS
    })
}

/// What [`gather`] found.
struct Gathered {
    /// The Redis clock, Unix ms.
    now_ms: u64,
    /// Every selected credential, sorted by id.
    report: Vec<CredentialStatus>,
    /// Credentials registered or configured, selected or not.
    in_namespace: usize,
}

/// Reads the registry, then the Redis clock and every selected registered
/// or configured credential (and every `--id`, known or not), in chunks.
async fn gather(
    target: &Target,
    con: &mut redis::aio::MultiplexedConnection,
    selection: &Selection,
) -> Result<Gathered> {
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
    let in_namespace = ids.len();
    // Asked about by name: shown even if nothing knows it (then unhealthy).
    for id in &selection.ids {
        ids.entry(id.clone()).or_default();
    }
    ids.retain(|id, _| selection.matches(id));
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
    Ok(Gathered {
        now_ms: snap.now_ms,
        report,
        in_namespace,
    })
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

/// The refresh margin values are judged by: `--config`'s `[refresh]`, else
/// the refreshers' defaults.
struct Margin(Option<RefreshConfig>);

impl Margin {
    /// Refreshers replace a value living `expires_in` seconds when less than
    /// this is left, ms.
    fn ms(&self, expires_in: Option<u64>) -> u64 {
        let lifetime = expires_in
            .filter(|s| *s > 0)
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let margin = match &self.0 {
            Some(refresh) => refresh.margin_for(lifetime),
            None => DEFAULT_MARGIN.min(lifetime.mul_f64(DEFAULT_MAX_MARGIN_FRACTION)),
        };
        u64::try_from(margin.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The state one shown value is counted under in the summary: the first
/// that applies, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueState {
    /// Nothing stored.
    Missing,
    /// Stored, but the credential's refreshes are paused.
    Paused,
    /// Stored, but the credential's last refresh attempt failed.
    Failing,
    /// Stored, within the refresh margin: a refresh is due.
    Due,
    /// Stored, more than the margin left.
    Ok,
}

/// Summary columns, in order.
const STATES: [(ValueState, &str); 5] = [
    (ValueState::Ok, "OK"),
    (ValueState::Due, "DUE"),
    (ValueState::Missing, "MISSING"),
    (ValueState::Failing, "FAILING"),
    (ValueState::Paused, "PAUSED"),
];

fn value_state(c: &CredentialStatus, v: &ValueStatus, margin: &Margin) -> ValueState {
    if !v.stored {
        ValueState::Missing
    } else if c.status.paused {
        ValueState::Paused
    } else if c.status.failing() {
        ValueState::Failing
    } else if v.ttl_ms.is_some_and(|t| t <= margin.ms(v.expires_in)) {
        ValueState::Due
    } else {
        ValueState::Ok
    }
}

/// Counts of the selected credentials: how many, how many unhealthy, and
/// each shown value by kind and state.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    credentials: usize,
    unhealthy: usize,
    /// Per kind (in [`KINDS`] order): values shown, then counts in
    /// [`STATES`] order.
    kinds: [(usize, [usize; STATES.len()]); KINDS.len()],
}

impl Summary {
    fn of(report: &[CredentialStatus], margin: &Margin) -> Summary {
        let mut s = Summary {
            credentials: report.len(),
            unhealthy: report.iter().filter(|c| !c.healthy).count(),
            ..Summary::default()
        };
        for c in report {
            for v in &c.kinds {
                let (Some(k), Some(col)) = (
                    KINDS.iter().position(|k| *k == v.kind),
                    STATES
                        .iter()
                        .position(|(st, _)| *st == value_state(c, v, margin)),
                ) else {
                    continue;
                };
                s.kinds[k].0 += 1;
                s.kinds[k].1[col] += 1;
            }
        }
        s
    }

    fn render(&self, selected_of: Option<usize>) -> String {
        let of = match selected_of {
            Some(n) => format!(" selected (of {n})"),
            None => String::new(),
        };
        let mut out = format!(
            "{} credentials{of}: {} healthy, {} unhealthy\n",
            self.credentials,
            self.credentials - self.unhealthy,
            self.unhealthy
        );
        let mut rows = vec![std::iter::once("KIND")
            .chain(std::iter::once("TOTAL"))
            .chain(STATES.iter().map(|(_, name)| *name))
            .map(String::from)
            .collect::<Vec<_>>()];
        for (kind, (total, counts)) in KINDS.iter().zip(&self.kinds) {
            if *total == 0 && *kind != Kind::AccessToken {
                continue;
            }
            rows.push(
                [kind.to_string(), total.to_string()]
                    .into_iter()
                    .chain(counts.iter().map(usize::to_string))
                    .collect(),
            );
        }
        out.push_str(&table(&rows));
        out
    }
}

/// The summary, the table (unhealthy credentials first, at most `--limit`),
/// a line about what the limit left out, then details of the shown ones.
fn render_all(
    report: &[CredentialStatus],
    now_ms: u64,
    margin: &Margin,
    args: &Args,
    selection: &Selection,
    in_namespace: usize,
) -> String {
    let summary = Summary::of(report, margin);
    let mut out = summary.render((!selection.is_all()).then_some(in_namespace));
    out.push('\n');
    // Unhealthy first; `report` is sorted by id, and the sort is stable.
    let mut shown: Vec<&CredentialStatus> = report
        .iter()
        .filter(|c| !args.problems || !c.healthy)
        .collect();
    shown.sort_by_key(|c| c.healthy);
    if shown.is_empty() {
        out.push_str("no unhealthy credentials\n");
        return out;
    }
    let matching = shown.len();
    if args.limit > 0 {
        shown.truncate(args.limit);
    }
    let left_out = matching - shown.len();
    let footer = (left_out > 0).then(|| {
        let unhealthy_left = shown.last().is_some_and(|c| !c.healthy);
        format!(
            "… {left_out} more {}credentials not shown (--limit {}; --limit 0 shows all{})\n",
            if args.problems || unhealthy_left {
                ""
            } else {
                "healthy "
            },
            args.limit,
            if args.problems {
                ""
            } else {
                ", --problems only the unhealthy"
            },
        )
    });
    out.push_str(&render(&shown, now_ms, footer.as_deref()));
    out
}

/// The table, `footer` (if any), then one line per failing or paused
/// credential.
fn render(report: &[&CredentialStatus], now_ms: u64, footer: Option<&str>) -> String {
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
    for c in report.iter().copied() {
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
    if let Some(footer) = footer {
        out.push_str(footer);
    }
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
        let text = render(&[&c], 1_000, None);
        assert!(text.contains("missing") && text.contains("error"), "{text}");
        assert!(text.contains("oa: refreshes paused"), "{text}");
    }

    #[test]
    fn due_means_within_the_margin_clamped_to_the_lifetime() {
        let defaults = Margin(None);
        assert_eq!(defaults.ms(Some(7200)), 300_000);
        assert_eq!(defaults.ms(None), 300_000);
        assert_eq!(defaults.ms(Some(0)), 300_000);
        // A quarter of a short lifetime.
        assert_eq!(defaults.ms(Some(20)), 5_000);

        let c = judge(
            credential(vec![value(Kind::AccessToken, true)], Status::default()),
            true,
            None,
        );
        let at = |ttl_ms: u64| ValueStatus {
            ttl_ms: Some(ttl_ms),
            expires_in: Some(7200),
            ..value(Kind::AccessToken, true)
        };
        assert_eq!(value_state(&c, &at(300_000), &defaults), ValueState::Due);
        assert_eq!(value_state(&c, &at(300_001), &defaults), ValueState::Ok);
        assert_eq!(
            value_state(&c, &value(Kind::AccessToken, false), &defaults),
            ValueState::Missing
        );
        let paused_and_failing = CredentialStatus {
            status: Status {
                last_error: Some("x".into()),
                paused: true,
                ..Status::default()
            },
            ..c
        };
        assert_eq!(
            value_state(&paused_and_failing, &at(1), &defaults),
            ValueState::Paused
        );
    }
}
