//! `wxtoken authorizers`: a third-party platform's authorizers, for
//! operators.
//!
//! - `list`: how many there are and one page of them (appid, when
//!   authorized, the access token's state, whether a refresh token is held
//!   or a code waits to be exchanged, the last error), oldest authorization
//!   first, as a table or JSON. Read in pipelined chunks: a platform with
//!   100,000 authorizers costs one page's worth of reads, not the whole.
//! - `add`: registers an authorizer by an authorization code (from the
//!   platform's authorization page), which the refreshers exchange at once.
//! - `remove`: deletes an authorizer and every key it has.
//! - `reconcile`: asks for a reconciliation with WeChat's list now.
//!
//! All changes go through the schema's scripts (`registry::authorize`,
//! `registry::remove_authorizer`, `force_refresh`); this module builds no
//! key name by hand. The authorization code and the refresh token are
//! secrets: never printed, not even in part, not even in errors. No token
//! is shown either (`wxtoken get authorizer/C/A` prints one).

use super::target::{Target, TargetArgs};
use super::{appid, Usage, EXIT_TIMEOUT};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wxtoken_refresher::human;
use wxtoken_schema::registry::{self, Authorization};
use wxtoken_schema::{
    component_id, force_refresh, info, is_printable_token, status, ComponentKeys, CredentialKeys,
    Kind, REQUEST_TTL_SECS,
};

/// Authorizers shown by `list` when `--limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// Authorizers read per pipelined round trip.
const CHUNK: usize = 500;

/// How often `reconcile --wait` looks at the stored summary.
const POLL: Duration = Duration::from_millis(100);

/// `wxtoken authorizers` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// How many authorizers a platform has, and one page of them (oldest
    /// authorization first): appid, when authorized, the access token's
    /// state, refresh token held, code pending, last error.
    List(ListArgs),
    /// Add an authorizer by the authorization code the platform's
    /// authorization page gave; the refreshers exchange it at once. The code
    /// is never printed.
    Add(AddArgs),
    /// Remove an authorizer and every key it has (its refresh token
    /// included). If WeChat still lists it, the next reconciliation adds it
    /// back.
    Remove(RemoveArgs),
    /// Ask the refreshers to reconcile the platform's authorizers with
    /// WeChat's list (api_get_authorizer_list) now.
    Reconcile(ReconcileArgs),
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    /// The platform's component appid.
    #[arg(long, value_name = "APPID", value_parser = appid)]
    component: String,
    /// Skip this many authorizers (oldest authorization first).
    #[arg(long, value_name = "N", default_value_t = 0)]
    offset: usize,
    /// Show at most N authorizers; 0 shows all (may be many).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    limit: usize,
    /// Print a JSON document (total and the page) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

/// A ticket an authorizer may keep.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum TicketArg {
    /// The JS-SDK jsapi_ticket.
    Jsapi,
}

#[derive(clap::Args, Debug)]
struct AddArgs {
    /// The platform's component appid.
    #[arg(long, value_name = "APPID", value_parser = appid)]
    component: String,
    /// The authorizer's appid.
    #[arg(long, value_name = "APPID", value_parser = appid)]
    authorizer: String,
    /// The authorization code (auth_code); `-` reads it from the first line
    /// of stdin, which keeps it out of the process list. A secret: never
    /// printed.
    #[arg(long, value_name = "CODE")]
    code: String,
    /// How long the code stays valid (WeChat's codes live about an hour;
    /// an unexchanged code is dropped after this).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    code_ttl: Duration,
    /// Tickets to keep for it besides the access token [default: the
    /// component's authorizer_tickets in --config, else none].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TICKET")]
    tickets: Option<Vec<TicketArg>>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
struct RemoveArgs {
    /// The platform's component appid.
    #[arg(long, value_name = "APPID", value_parser = appid)]
    component: String,
    /// The authorizer's appid.
    #[arg(long, value_name = "APPID", value_parser = appid)]
    authorizer: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
struct ReconcileArgs {
    /// The platform's component appid.
    #[arg(long, value_name = "APPID", value_parser = appid)]
    component: String,
    /// Wait this long for the reconciliation to finish (exit 4 if it does
    /// not); 0 = only file the request.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    wait: Duration,
    #[command(flatten)]
    target: TargetArgs,
}

/// Runs `wxtoken authorizers`.
pub async fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Sub::List(a) => list(a).await.map(|()| ExitCode::SUCCESS),
        Sub::Add(a) => add(a).await.map(|()| ExitCode::SUCCESS),
        Sub::Remove(a) => remove(a).await.map(|()| ExitCode::SUCCESS),
        Sub::Reconcile(a) => reconcile(a).await,
    }
}

// ---- list ----

/// One authorizer, as `list --json` prints it.
#[derive(Debug, Serialize)]
struct Row {
    /// The authorizer's appid.
    appid: String,
    /// When it was (last) authorized or found, Unix ms (Redis clock).
    authorized_at_ms: u64,
    /// The access token: `stored`, `expired` (was stored once, is gone) or
    /// `missing` (never stored: the code is not exchanged yet, or failed).
    token: &'static str,
    /// Time the stored token has left, ms (`null` when not stored, or
    /// stored without a TTL).
    token_ttl_ms: Option<u64>,
    /// A refresh token is held (its value is never shown).
    refresh_token: bool,
    /// An authorization code waits to be exchanged.
    code_pending: bool,
    /// Unix ms of the last successful fetch.
    last_ok_at_ms: Option<u64>,
    /// The last failure, in words (never contains secrets).
    last_error: Option<String>,
    /// WeChat's errcode of the last failure.
    last_errcode: Option<i64>,
    /// Unix ms of the last failure.
    last_error_at_ms: Option<u64>,
}

/// `list --json`.
#[derive(Debug, Serialize)]
struct Page {
    namespace: String,
    component: String,
    /// Authorizers in the platform's index.
    total: u64,
    offset: usize,
    /// As asked (0: all).
    limit: usize,
    /// The Redis clock, Unix ms.
    now_ms: u64,
    authorizers: Vec<Row>,
}

/// PTTL value, HMGET status (last ok, error, errcode, error at), EXISTS
/// refresh token, EXISTS code.
type RowReply = (
    i64,
    (Option<u64>, Option<String>, Option<i64>, Option<u64>),
    bool,
    bool,
);

async fn read_page(
    con: &mut wxtoken_connect::Con,
    namespace: &str,
    component: &ComponentKeys,
    offset: usize,
    limit: usize,
) -> Result<(u64, u64, Vec<Row>)> {
    let total = registry::count_authorizers(con, component)
        .await
        .context("counting the authorizers")?;
    let mut now_ms = 0;
    let mut rows = Vec::new();
    let wanted = if limit == 0 { usize::MAX } else { limit };
    let mut next = offset;
    while rows.len() < wanted {
        let n = CHUNK.min(wanted - rows.len());
        let (covered, listed) = registry::authorizers_page(con, component, next, n)
            .await
            .context("reading the authorizer index")?;
        if covered == 0 {
            break;
        }
        // Members that are not appids (hostile or corrupt) are skipped,
        // never the end of the index.
        next += covered;
        if listed.is_empty() {
            continue;
        }
        let keys: Vec<CredentialKeys> = listed
            .iter()
            .map(|(a, _)| CredentialKeys::authorizer(namespace, component.appid(), a))
            .collect::<Result<_, _>>()?;
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for k in &keys {
            pipe.pttl(k.value(Kind::AccessToken))
                .cmd("HMGET")
                .arg(k.status())
                .arg(status::LAST_OK_AT_MS)
                .arg(status::LAST_ERROR)
                .arg(status::LAST_ERRCODE)
                .arg(status::LAST_ERROR_AT_MS)
                .exists(k.refresh_token())
                .exists(k.authorization_code());
        }
        let mut replies: Vec<redis::Value> = pipe
            .query_async(con)
            .await
            .context("reading the authorizers' state")?;
        if replies.len() != 1 + 4 * keys.len() {
            anyhow::bail!("unexpected answer reading the authorizers' state");
        }
        let rest = replies.split_off(1);
        let (secs, micros): (u64, u64) = redis::from_redis_value(replies.remove(0))?;
        now_ms = secs * 1000 + micros / 1000;
        let mut rest = rest.into_iter();
        for (appid, authorized_at_ms) in listed {
            let quad: Vec<redis::Value> = rest.by_ref().take(4).collect();
            let (pttl, (last_ok_at_ms, last_error, last_errcode, last_error_at_ms), rt, code): RowReply =
                redis::from_redis_value(redis::Value::Array(quad))
                    .with_context(|| format!("reading the state of authorizer {appid}"))?;
            let (token, token_ttl_ms) = match pttl {
                ms if ms > 0 => ("stored", u64::try_from(ms).ok()),
                -1 => ("stored", None),
                _ if last_ok_at_ms.is_some() => ("expired", None),
                _ => ("missing", None),
            };
            rows.push(Row {
                appid,
                authorized_at_ms,
                token,
                token_ttl_ms,
                refresh_token: rt,
                code_pending: code,
                last_ok_at_ms,
                last_error,
                last_errcode,
                last_error_at_ms,
            });
        }
    }
    if now_ms == 0 {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(con).await?;
        now_ms = secs * 1000 + micros / 1000;
    }
    Ok((total, now_ms, rows))
}

async fn list(args: ListArgs) -> Result<()> {
    let target = args.target.resolve()?;
    let component = ComponentKeys::new(&target.namespace, &args.component)?;
    let mut con = target.connect().await?;
    let (total, now_ms, rows) = read_page(
        &mut con,
        &target.namespace,
        &component,
        args.offset,
        args.limit,
    )
    .await
    .map_err(|e| {
        target.failed(
            &format!("listing the authorizers of component {}", args.component),
            &e,
        )
    })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let page = Page {
            namespace: target.namespace.clone(),
            component: args.component.clone(),
            total,
            offset: args.offset,
            limit: args.limit,
            now_ms,
            authorizers: rows,
        };
        serde_json::to_writer_pretty(&mut out, &page).context("writing JSON to stdout")?;
        out.write_all(b"\n").context("writing to stdout")?;
    } else {
        out.write_all(render(&args, &target, total, now_ms, &rows).as_bytes())
            .context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    if total == 0 {
        eprintln!(
            "component {} has no authorizers in namespace {} at {} (not authorized yet, or the wrong --namespace?)",
            args.component,
            target.namespace,
            target.redacted_url()
        );
    }
    Ok(())
}

/// Printable ASCII only (stored text is not trusted to be).
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn render(args: &ListArgs, target: &Target, total: u64, now_ms: u64, rows: &[Row]) -> String {
    let mut s = String::new();
    let shown = if rows.is_empty() {
        String::new()
    } else {
        format!(
            ", showing {}-{} (oldest authorization first)",
            args.offset + 1,
            args.offset + rows.len()
        )
    };
    s.push_str(&format!(
        "component {} (namespace {}): {total} authorizer{}{shown}\n",
        args.component,
        target.namespace,
        if total == 1 { "" } else { "s" },
    ));
    if rows.is_empty() {
        if total > 0 {
            s.push_str(&format!(
                "--offset {} is past the last authorizer\n",
                args.offset
            ));
        }
        return s;
    }
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let token = match (r.token, r.token_ttl_ms) {
                ("stored", Some(ms)) => format!("stored, {} left", human::duration(ms)),
                ("stored", None) => "stored, no TTL".to_owned(),
                (state, _) => state.to_owned(),
            };
            let secret = match (r.refresh_token, r.code_pending) {
                (true, true) => "refresh token, code pending",
                (true, false) => "refresh token",
                (false, true) => "code pending",
                (false, false) => "none",
            };
            let error = match (&r.last_error, r.last_errcode) {
                (None, None) => "-".to_owned(),
                (e, code) => {
                    let mut t = String::new();
                    if let Some(c) = code {
                        t.push_str(&format!("[{c}] "));
                    }
                    t.push_str(&clean(e.as_deref().unwrap_or("")));
                    if let Some(at) = r.last_error_at_ms {
                        t.push_str(&format!(" ({})", human::relative(at, now_ms)));
                    }
                    t
                }
            };
            [
                r.appid.clone(),
                human::clock(r.authorized_at_ms),
                token,
                secret.to_owned(),
                error,
            ]
        })
        .collect();
    let header = ["APPID", "AUTHORIZED", "ACCESS TOKEN", "HELD", "LAST ERROR"];
    let mut widths = header.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        l.push('\n');
        l
    };
    s.push_str(&line(header));
    for row in &table {
        s.push_str(&line(row.each_ref().map(String::as_str)));
    }
    let after = args.offset as u64 + rows.len() as u64;
    if after < total {
        s.push_str(&format!(
            "{} more: --offset {after} (--limit 0 shows all)\n",
            total - after
        ));
    }
    s
}

// ---- add ----

/// The code from `--code`, or from stdin for `-`. Never shown in errors.
fn read_code(arg: &str) -> Result<String> {
    let code = if arg == "-" {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the authorization code from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        arg.to_owned()
    };
    if !is_printable_token(&code) {
        return Err(Usage(
            "--code: not an authorization code (expected 1 to 2048 printable ASCII characters, no spaces; the value is not shown)".to_owned(),
        )
        .into());
    }
    Ok(code)
}

async fn add(args: AddArgs) -> Result<()> {
    if args.code_ttl.is_zero() {
        return Err(Usage("--code-ttl must be longer than 0s".to_owned()).into());
    }
    let code = read_code(&args.code)?;
    let target = args.target.resolve()?;
    let component = ComponentKeys::new(&target.namespace, &args.component)?;
    let keys = CredentialKeys::authorizer(&target.namespace, &args.component, &args.authorizer)?;
    let configured = target.components.iter().find(|c| c.appid == args.component);
    let kinds: Vec<Kind> = match (&args.tickets, configured) {
        (Some(tickets), _) => std::iter::once(Kind::AccessToken)
            .chain(tickets.iter().map(|t| match t {
                TicketArg::Jsapi => Kind::JsapiTicket,
            }))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        (None, Some(c)) => c.authorizer_kinds.clone(),
        (None, None) => {
            if target.has_config {
                eprintln!(
                    "warning: component {} is not in --config; keeping only the access token (--tickets jsapi adds the ticket)",
                    args.component
                );
            }
            vec![Kind::AccessToken]
        }
    };
    let mut con = target.connect().await?;
    let doing = format!(
        "adding authorizer {} of component {}",
        args.authorizer, args.component
    );
    let platform = CredentialKeys::component(&target.namespace, &args.component)?;
    let held = wxtoken_schema::index::is_registered(&mut con, &platform)
        .await
        .map_err(|e| target.failed(&doing, &e.into()))?;
    let a = Authorization {
        code: Some((&code, args.code_ttl)),
        refresh_token: None,
        kinds: &kinds,
        new: true,
    };
    let done = registry::authorize(&mut con, &keys, &component, &a)
        .await
        .map_err(|e| target.failed(&doing, &e.into()))?;
    drop(code);
    let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    println!(
        "authorizer {} of component {} added ({}): the authorization code is kept for {} and the refreshers were woken to exchange it",
        args.authorizer,
        args.component,
        names.join(", "),
        humantime::format_duration(args.code_ttl),
    );
    if done.queued == 0 {
        eprintln!(
            "note: {} was already registered; its code replaced any pending one",
            keys.id()
        );
    }
    if !held && !target.is_configured(&component_id(&args.component)) {
        eprintln!(
            "warning: no refresher has registered component/{} in namespace {}; the code is exchanged only if one does within {}",
            args.component,
            target.namespace,
            humantime::format_duration(args.code_ttl),
        );
    }
    eprintln!(
        "check with: wxtoken authorizers list --component {}, or wxtoken get {}",
        args.component,
        keys.id()
    );
    Ok(())
}

// ---- remove ----

async fn remove(args: RemoveArgs) -> Result<()> {
    let target = args.target.resolve()?;
    let component = ComponentKeys::new(&target.namespace, &args.component)?;
    let keys = CredentialKeys::authorizer(&target.namespace, &args.component, &args.authorizer)?;
    let mut con = target.connect().await?;
    let doing = format!(
        "removing authorizer {} of component {}",
        args.authorizer, args.component
    );
    let listed: Option<f64> = redis::cmd("ZSCORE")
        .arg(component.authorizers())
        .arg(&args.authorizer)
        .query_async(&mut con)
        .await
        .or_else(|e| match e.code() {
            Some("WRONGTYPE") => Ok(None),
            _ => Err(e),
        })
        .map_err(|e| target.failed(&doing, &e.into()))?;
    registry::remove_authorizer(&mut con, &keys, &component, None)
        .await
        .map_err(|e| target.failed(&doing, &e.into()))?;
    if listed.is_some() {
        println!(
            "authorizer {} of component {} removed, with every key it had (refresh token included)",
            args.authorizer, args.component
        );
    } else {
        println!(
            "authorizer {} was not listed for component {}; deleted whatever keys it had",
            args.authorizer, args.component
        );
    }
    eprintln!(
        "note: if WeChat still lists it, the next reconciliation adds it back (wxtoken authorizers reconcile --component {})",
        args.component
    );
    Ok(())
}

// ---- reconcile ----

/// The stored summary and the fence of its write.
async fn summary(
    con: &mut wxtoken_connect::Con,
    keys: &CredentialKeys,
) -> redis::RedisResult<(Option<String>, Option<u64>)> {
    redis::pipe()
        .get(keys.value(Kind::AuthorizerList))
        .hget(keys.info(Kind::AuthorizerList), info::FENCE)
        .query_async(con)
        .await
}

async fn reconcile(args: ReconcileArgs) -> Result<ExitCode> {
    let target = args.target.resolve()?;
    let keys = CredentialKeys::component(&target.namespace, &args.component)?;
    let mut con = target.connect().await?;
    let doing = format!("reconciling component {}", args.component);
    let fail = |e: redis::RedisError| target.failed(&doing, &e.into());
    let held = wxtoken_schema::index::is_registered(&mut con, &keys)
        .await
        .map_err(fail)?;
    if !held && !target.is_configured(keys.id()) {
        eprintln!(
            "warning: no refresher has registered {} in namespace {}; the request waits for one",
            keys.id(),
            target.namespace
        );
    }
    let before = summary(&mut con, &keys).await.map_err(fail)?;
    let ttl = Duration::from_secs(REQUEST_TTL_SECS);
    force_refresh(&mut con, &keys, Kind::AuthorizerList, ttl)
        .await
        .map_err(fail)?;
    let wait = args.wait.min(ttl);
    let pending = format!(
        "the request stays pending for {} minutes and is served when a refresher holding component {} runs",
        REQUEST_TTL_SECS / 60,
        args.component
    );
    if wait.is_zero() {
        println!(
            "reconciliation of component {} requested; {pending}",
            args.component
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "reconciliation of component {} requested; waiting up to {}",
        args.component,
        humantime::format_duration(wait)
    );
    let deadline = Instant::now() + wait;
    loop {
        let now = summary(&mut con, &keys).await.map_err(fail)?;
        if now.0.is_some() && now != before {
            println!(
                "component {} reconciled: {}",
                args.component,
                clean(now.0.as_deref().unwrap_or_default())
            );
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    eprintln!(
        "component {} was not reconciled within {}; {pending}",
        args.component,
        humantime::format_duration(wait)
    );
    Ok(ExitCode::from(EXIT_TIMEOUT))
}
