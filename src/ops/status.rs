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
//! Third-party platforms get a section each (from the registry's
//! `component/…` ids): verify ticket, component token, last
//! reconciliation, backlog and their authorizers counted by state, never
//! listed one per row (up to 100,000 of them): only those with a problem,
//! at most `--limit`. Authorizers become rows only when asked for by
//! `--id authorizer/C/A` or `--prefix authorizer/…`; in `--json` the
//! platform is the `platform` object of its `component/…` credential.
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
use wxtoken_schema::snapshot::{
    self, AuthorizerState, ComponentRead, ComponentView, PlatformKind, Status, ValueStatus,
};
use wxtoken_schema::{CredentialKeys, Kind, Subject, KINDS};

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

    /// Whether the authorizer `id` is asked for as a row: by `--id`, or by
    /// a `--prefix` that starts with `authorizer/` (a platform may have
    /// 100,000: they are never rows by default, only counted).
    fn lists_authorizer(&self, id: &str) -> bool {
        self.ids.contains(id)
            || self
                .prefix
                .as_deref()
                .is_some_and(|p| p.starts_with("authorizer/") && id.starts_with(p))
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
    /// A third-party platform's summary (`component/…` ids only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<ComponentView>,
}

/// Runs `wxtoken status`.
pub async fn run(args: Args) -> Result<ExitCode> {
    let target = args.target.resolve()?;
    let selection = Selection {
        ids: args.ids.iter().cloned().collect(),
        prefix: args.prefix.clone(),
    };
    for id in &selection.ids {
        CredentialKeys::for_id(&target.namespace, id).map_err(|e| anyhow!("--id {id:?}: {e}"))?;
    }
    let mut con = target.connect().await?;
    let gathered = gather(&target, &mut con, &selection, args.limit)
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
/// or configured credential (and every `--id`, known or not), in chunks;
/// then each selected platform (at most `limit` of its problem authorizers
/// kept; 0: all).
async fn gather(
    target: &Target,
    con: &mut wxtoken_connect::Con,
    selection: &Selection,
    limit: usize,
) -> Result<Gathered> {
    let registered = snapshot::registered(con, &target.namespace)
        .await
        .context("reading the registry")?;
    // id → (registered, configured kinds)
    let mut ids: BTreeMap<String, (bool, Option<Vec<Kind>>)> = BTreeMap::new();
    // Authorizers not asked for as rows (counted by their platform).
    let mut authorizers = 0;
    let mut malformed: Vec<String> = Vec::new();
    for id in registered {
        match Subject::parse(&id) {
            Some(Subject::Authorizer { .. }) if !selection.lists_authorizer(&id) => {
                authorizers += 1;
            }
            Some(_) => ids.entry(id).or_default().0 = true,
            None => malformed.push(id),
        }
    }
    if let Some(first) = malformed.first() {
        eprintln!(
            "warning: skipping {} malformed registry entr{} (first: {:?})",
            malformed.len(),
            if malformed.len() == 1 { "y" } else { "ies" },
            one_line(&first.chars().take(80).collect::<String>())
        );
    }
    for c in &target.configured {
        ids.entry(c.id.clone()).or_default().1 = Some(c.kinds.clone());
    }
    let in_namespace = ids.len() + authorizers;
    // Asked about by name: shown even if nothing knows it (then unhealthy).
    for id in &selection.ids {
        ids.entry(id.clone()).or_default();
    }
    ids.retain(|id, _| selection.matches(id));
    let mut keys = Vec::with_capacity(ids.len());
    let mut found = Vec::with_capacity(ids.len());
    for (id, found_as) in ids {
        match CredentialKeys::for_id(&target.namespace, &id) {
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
    let mut report: Vec<CredentialStatus> = snap
        .credentials
        .into_iter()
        .zip(found)
        .map(|(c, (registered, configured))| judge(c, registered, configured.as_deref()))
        .collect();
    let margin = Margin(target.refresh.clone());
    let margin_ms = |expires_in: Option<u64>| margin.ms(expires_in);
    let opts = ComponentRead {
        chunk: snapshot::AUTHORIZER_CHUNK,
        problems: if limit == 0 { usize::MAX } else { limit },
        margin_ms: &margin_ms,
    };
    for c in &mut report {
        let view = match Subject::parse(&c.id) {
            Some(Subject::Component(appid)) => {
                snapshot::read_component(con, &target.namespace, appid, &opts)
                    .await
                    .with_context(|| format!("reading platform {appid}"))?
            }
            Some(Subject::Suite(suite)) => {
                snapshot::read_suite(con, &target.namespace, suite, &opts)
                    .await
                    .with_context(|| format!("reading WeCom suite {suite}"))?
            }
            _ => continue,
        };
        judge_platform(c, view);
    }
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
    let primary = primary(&c.id);
    let kinds: Vec<ValueStatus> = c
        .kinds
        .into_iter()
        .filter(|v| {
            v.kind == primary
                || configured.is_some_and(|k| k.contains(&v.kind))
                || v.stored
                || v.refresh_request.is_some()
                || v.refreshed_at_ms.is_some()
                || v.fence.is_some()
        })
        .collect();
    let mut problems: Vec<String> = kinds
        .iter()
        .filter(|v| missing(v, primary, configured.is_some()))
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
        platform: None,
    }
}

/// The kind every other kind of the subject `id` is fetched with: the
/// access token, or a platform's component token.
fn primary(id: &str) -> Kind {
    Subject::parse(id).map_or(Kind::AccessToken, Subject::primary)
}

/// Adds a platform's summary to its `component/…` credential, and what is
/// wrong with it: no verify ticket (no component token can be fetched),
/// authorizers failing, paused or without an access token. (Expiring ones
/// are due, not unhealthy, as for credentials.)
fn judge_platform(c: &mut CredentialStatus, view: ComponentView) {
    let suite = view.platform == PlatformKind::WecomSuite;
    if !view.verify_ticket.stored {
        c.problems.push(
            if suite {
                "no suite ticket stored (WeCom pushes one every 10 minutes)"
            } else {
                "no verify ticket stored (WeChat pushes one every 10 minutes)"
            }
            .to_owned(),
        );
    }
    let a = &view.authorizers;
    for (n, what) in [
        (a.paused, "paused (daily quota exhausted)"),
        (a.failing, "failing"),
        (a.missing, "without an access token"),
    ] {
        if n > 0 {
            c.problems.push(format!(
                "{n} {}{} {what}",
                if suite { "corp" } else { "authorizer" },
                if n == 1 { "" } else { "s" }
            ));
        }
    }
    c.healthy = c.problems.is_empty();
    c.platform = Some(view);
}

/// Nothing is stored where something should be: the subject's `primary`
/// kind, or any kind shown for a credential listed in `--config`.
fn missing(v: &ValueStatus, primary: Kind, configured: bool) -> bool {
    !v.stored && (v.kind == primary || configured)
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
    for view in report.iter().filter_map(|c| c.platform.as_ref()) {
        out.push_str(&render_platform(view, args.limit));
        out.push('\n');
    }
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
        if c.kinds
            .iter()
            .any(|k| missing(k, primary(&c.id), c.configured))
        {
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

/// A platform's section: the facts its component token depends on, its
/// authorizers by state, its backlog, then at most `limit` (0: all)
/// authorizers with a problem (as many as were read).
fn render_platform(v: &ComponentView, limit: usize) -> String {
    let now = v.now_ms;
    let a = &v.authorizers;
    let suite = v.platform == PlatformKind::WecomSuite;
    let (what, child, ticket_label, token_label) = if suite {
        ("WeCom suite", "corp", "  suite ticket", "  suite token")
    } else {
        (
            "platform",
            "authorizer",
            "  verify ticket",
            "  component token",
        )
    };
    let mut out = format!(
        "{what} {} ({}): {} {child}{}: {}\n",
        v.appid,
        v.id,
        a.total,
        if a.total == 1 { "" } else { "s" },
        [
            AuthorizerState::Ok,
            AuthorizerState::Expiring,
            AuthorizerState::Missing,
            AuthorizerState::Failing,
            AuthorizerState::Paused,
        ]
        .iter()
        .map(|s| format!("{} {}", a.of(*s), s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
    );
    let t = &v.verify_ticket;
    let ticket = if t.stored {
        let mut parts = vec!["stored".to_owned()];
        if let Some(at) = t.received_at_ms {
            parts.push(format!("received {}", human::relative(at, now)));
        }
        if let Some(ms) = t.ttl_ms {
            parts.push(format!("{} left", human::duration(ms)));
        }
        if let Some(ct) = t.create_time {
            parts.push(format!(
                "CreateTime {}",
                human::clock(ct.saturating_mul(1000))
            ));
        }
        parts.join(", ")
    } else if suite {
        "MISSING: no suite token can be fetched until WeCom pushes one".to_owned()
    } else {
        "MISSING: no component token can be fetched until WeChat pushes one".to_owned()
    };
    let ct = &v.component_token;
    let mut token = match (ct.stored, ct.ttl_ms) {
        (false, _) => "MISSING".to_owned(),
        (true, Some(ms)) => format!("{} left", human::duration(ms)),
        (true, None) => "stored, no expiry".to_owned(),
    };
    if let Some(at) = ct.refreshed_at_ms {
        token.push_str(&format!(", refreshed {}", human::relative(at, now)));
    }
    if let Some(err) = &ct.status.last_error {
        token.push_str(&format!(
            ", last error{}{}{}: {}",
            ct.status
                .last_error_at_ms
                .map(|at| format!(" {}", human::relative(at, now)))
                .unwrap_or_default(),
            ct.status
                .last_errcode
                .map(|c| format!(" (errcode {c})"))
                .unwrap_or_default(),
            if ct.failing { "" } else { " (recovered since)" },
            one_line(&shorten(err, 200))
        ));
    }
    if ct.status.paused {
        token.push_str(", PAUSED");
    }
    let reconciliation = match &v.reconciliation {
        None => "none stored yet".to_owned(),
        Some(r) => {
            let n = |x: Option<u64>| or_dash(x);
            let mut s = format!(
                "listed {}, added {}, updated {}, removed {}",
                n(r.listed),
                n(r.added),
                n(r.updated),
                n(r.removed)
            );
            if r.listed.is_none() {
                s = format!("{:?}", r.summary);
            }
            if let Some(at) = r.at_ms {
                s.push_str(&format!(", {}", human::relative(at, now)));
            }
            if let Some(ms) = r.ttl_ms {
                s.push_str(&format!(" (next within {})", human::duration(ms)));
            }
            s
        }
    };
    let b = &v.backlog;
    let mut backlog = format!("{} due now", b.due_now);
    if let Some(at) = b.oldest_due_at_ms {
        backlog.push_str(&format!(", oldest due {}", human::relative(at, now)));
    }
    backlog.push_str(&format!(" ({} queued)", b.queued));
    let mut facts = vec![
        vec![ticket_label.to_owned(), ticket],
        vec![token_label.to_owned(), token],
    ];
    if !suite {
        facts.push(vec!["  reconciliation".to_owned(), reconciliation]);
    }
    facts.push(vec!["  backlog".to_owned(), backlog]);
    out.push_str(&table(&facts));
    if a.counted != a.total {
        out.push_str(&format!(
            "  ({} authorizers counted: the index changed while it was read)\n",
            a.counted
        ));
    }
    let problems = a.with_problems();
    if problems == 0 {
        return out;
    }
    let shown: Vec<_> = if limit == 0 {
        v.problems.iter().collect()
    } else {
        v.problems.iter().take(limit).collect()
    };
    let mut rows = vec![[
        if suite { "  CORP" } else { "  AUTHORIZER" },
        "STATE",
        "LEFT",
        "LAST ERROR",
    ]
    .map(String::from)
    .to_vec()];
    for p in &shown {
        let left = match p.ttl_ms {
            Some(ms) => format!("{} left", human::duration(ms)),
            None if p.state == AuthorizerState::Missing => "missing".to_owned(),
            None => "-".to_owned(),
        };
        let mut state = p.state.as_str().to_owned();
        if let (AuthorizerState::Paused, Some(until)) = (p.state, p.paused_until_ms) {
            state = format!("paused {}", human::duration(until.saturating_sub(now)));
        }
        let error = match &p.last_error {
            None => "-".to_owned(),
            Some(e) => format!(
                "{}{}{}: {}",
                p.last_error_at_ms
                    .map(|at| human::relative(at, now))
                    .unwrap_or_default(),
                p.last_errcode
                    .map(|c| format!(", errcode {c}"))
                    .unwrap_or_default(),
                p.failures
                    .map(|f| format!(", {f} failures"))
                    .unwrap_or_default(),
                one_line(&shorten(e, 160))
            ),
        };
        rows.push(vec![format!("  {}", one_line(&p.id)), state, left, error]);
    }
    out.push_str(&table(&rows));
    let left_out = problems.saturating_sub(shown.len() as u64);
    if left_out > 0 {
        out.push_str(&format!(
            "  … {left_out} more authorizers not ok (--limit {limit}; `wxtoken status --prefix authorizer/{}/ --problems` lists them as rows)\n",
            v.appid
        ));
    }
    out
}

/// At most `max` characters of `s`, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max).chain(std::iter::once('…')).collect()
    }
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
