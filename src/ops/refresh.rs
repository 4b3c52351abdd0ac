//! `wxtoken refresh ID`: asks the refreshers to replace a stored value now
//! (the operator's passive refresh), then waits for the new one.
//!
//! The request goes through `wxtoken_schema::request_refresh`, the same
//! compare-and-request script business servers use: durable for
//! `REQUEST_TTL_SECS`, so it is served even if no refresher runs right now.
//! This module must not fetch from WeChat or write tokens itself, and prints
//! tokens only as 8-character prefixes.

use super::target::{Target, TargetArgs};
use super::{kind_for, subject_id, KindArg, EXIT_TIMEOUT};
use anyhow::{Context, Result};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wxtoken_refresher::{human, token_prefix};
use wxtoken_schema::{
    info, request_refresh, CredentialKeys, Kind, RequestOutcome, FORCE_REQUEST, REQUEST_TTL_SECS,
};

/// How often the stored value is looked at while waiting.
const POLL: Duration = Duration::from_millis(100);

/// `wxtoken refresh` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Credential id: a credential of the config (oa-main), a third-party
    /// platform (component/APPID) or one of its authorizers
    /// (authorizer/COMPONENT_APPID/APPID), a WeCom suite (suite/SUITE_ID)
    /// or a corp that authorized it (corp/SUITE_ID/CORPID).
    #[arg(value_parser = subject_id)]
    id: String,
    /// Replace whatever is stored, skipping the refreshers' minimum interval
    /// (stable mode uses force_refresh).
    #[arg(long)]
    force: bool,
    /// Which value to replace [default: access_token;
    /// component_access_token for a component/…].
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// How long to wait for the new value; 0 = only file the request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
    #[command(flatten)]
    target: TargetArgs,
}

/// What is stored for one value.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    value: Option<String>,
    fence: Option<u64>,
    replica: Option<String>,
    refreshed_at_ms: Option<u64>,
    pttl: i64,
    /// The Redis clock, Unix ms.
    now_ms: u64,
}

impl Snapshot {
    /// A value is stored and it is not the one seen at `before`.
    fn replaces(&self, before: &Snapshot) -> bool {
        self.value.is_some() && (self.value != before.value || self.fence != before.fence)
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "{} fence {}",
            self.value.as_deref().map_or_else(String::new, token_prefix),
            self.fence.map_or_else(|| "?".to_owned(), |f| f.to_string()),
        );
        if let Some(r) = &self.replica {
            s.push_str(&format!(", by {r}"));
        }
        if let Ok(ms) = u64::try_from(self.pttl) {
            s.push_str(&format!(", {} left", human::duration(ms)));
        }
        s
    }
}

/// GET value, HGET fence, replica, refreshed_at_ms, PTTL value, TIME.
type SnapshotReply = (
    Option<String>,
    Option<u64>,
    Option<String>,
    Option<u64>,
    i64,
    (u64, u64),
);

async fn snapshot(
    con: &mut wxtoken_connect::Con,
    keys: &CredentialKeys,
    kind: Kind,
) -> Result<Snapshot> {
    let (value, fence, replica, refreshed_at_ms, pttl, (secs, micros)): SnapshotReply =
        redis::pipe()
            .atomic()
            .get(keys.value(kind))
            .hget(keys.info(kind), info::FENCE)
            .hget(keys.info(kind), info::REPLICA)
            .hget(keys.info(kind), info::REFRESHED_AT_MS)
            .pttl(keys.value(kind))
            .cmd("TIME")
            .query_async(con)
            .await
            .with_context(|| format!("reading {}", keys.value(kind)))?;
    Ok(Snapshot {
        value,
        fence,
        replica,
        refreshed_at_ms,
        pttl,
        now_ms: secs * 1000 + micros / 1000,
    })
}

/// Runs `wxtoken refresh`.
pub async fn run(args: Args) -> Result<ExitCode> {
    let kind = kind_for(&args.id, args.kind)?;
    let target = args.target.resolve()?;
    let keys = CredentialKeys::for_id(&target.namespace, &args.id)?;
    let mut con = target.connect().await?;
    request_and_wait(&target, &mut con, &keys, kind, args.force, args.wait)
        .await
        .map_err(|e| target.failed(&format!("refreshing {} {kind}", args.id), &e))
}

async fn request_and_wait(
    target: &Target,
    con: &mut wxtoken_connect::Con,
    keys: &CredentialKeys,
    kind: Kind,
    force: bool,
    wait: Duration,
) -> Result<ExitCode> {
    // Waiting longer than the request lives is pointless.
    let wait = wait.min(Duration::from_secs(REQUEST_TTL_SECS));
    let id = keys.id();
    let registered = wxtoken_schema::index::is_registered(con, keys)
        .await
        .context("reading the registry")?;
    if !registered && !target.is_configured(id) {
        eprintln!(
            "warning: no refresher has registered {id} in namespace {}; the request waits for one",
            target.namespace
        );
    }

    let before = snapshot(con, keys, kind).await?;
    let reported = match (&before.value, force) {
        (Some(current), false) => current.as_str(),
        _ => FORCE_REQUEST,
    };
    let outcome = request_refresh(
        con,
        keys,
        kind,
        reported,
        Duration::from_secs(REQUEST_TTL_SECS),
    )
    .await
    .context("filing the refresh request")?;
    if outcome == RequestOutcome::AlreadyReplaced {
        let now = snapshot(con, keys, kind).await?;
        println!("{id} {kind} was replaced meanwhile: {}", now.describe());
        return Ok(ExitCode::SUCCESS);
    }
    let pending = format!(
        "the request stays pending for {} minutes and is served when a refresher for {id} runs",
        REQUEST_TTL_SECS / 60
    );
    let forced = if reported == FORCE_REQUEST {
        " (force)"
    } else {
        ""
    };
    if wait.is_zero() {
        println!("refresh of {id} {kind} requested{forced}; {pending}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "refresh of {id} {kind} requested{forced}; waiting up to {}",
        humantime::format_duration(wait)
    );

    let deadline = Instant::now() + wait;
    loop {
        let now = snapshot(con, keys, kind).await?;
        if now.replaces(&before) {
            println!("{id} {kind} replaced: {}", now.describe());
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }

    let left: i64 = redis::cmd("PTTL")
        .arg(keys.refresh_request(kind))
        .query_async(con)
        .await
        .context("reading the refresh request")?;
    let waited = humantime::format_duration(wait);
    match u64::try_from(left) {
        Ok(ms) => {
            eprintln!(
                "no refresher replaced {id} {kind} within {waited}; {pending} ({} left)",
                human::duration(ms)
            );
            if reported != FORCE_REQUEST && registered {
                let age = before
                    .refreshed_at_ms
                    .map(|at| format!(" ({})", human::relative(at, before.now_ms)))
                    .unwrap_or_default();
                eprintln!(
                    "note: refreshers serve a request no sooner than refresh.min_interval after the last refresh{age}, and not while the credential is paused (see `wxtoken status`); --force skips the interval"
                );
            }
        }
        Err(_) => eprintln!(
            "no refresher replaced {id} {kind} within {waited}, and the request is gone (declined or lapsed; see the refreshers' logs)"
        ),
    }
    Ok(ExitCode::from(EXIT_TIMEOUT))
}
