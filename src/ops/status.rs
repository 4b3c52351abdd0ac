//! `wxtoken status`: what Redis says about every credential — time left,
//! last refresh and who made it, fence, last error, pause, pending refresh
//! requests — as an aligned table or a stable JSON document, with an exit
//! code for monitoring (0 healthy, 3 unhealthy).
//!
//! Read-only: it must not change any key, and never shows a token (not even
//! a prefix) or a pending request's reported token.

use super::human;
use super::target::{Target, TargetArgs};
use super::EXIT_UNHEALTHY;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use wxtoken_schema::{info, registry_key, status, CredentialKeys, Kind, FORCE_REQUEST, KINDS};

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

/// One credential, as printed by `status --json`. Field names are part of
/// the CLI's contract (README); absent facts are `null`. Times are Unix ms.
#[derive(Debug, Serialize)]
pub struct CredentialStatus {
    /// Credential id.
    pub id: String,
    /// WeChat appid, from the status hash.
    pub appid: Option<String>,
    /// `classic` or `stable`, from the status hash.
    pub mode: Option<String>,
    /// Listed in the namespace's registry set (a refresher has run it).
    pub registered: bool,
    /// Listed in the `--config` file.
    pub configured: bool,
    /// No problems.
    pub healthy: bool,
    /// Why it is unhealthy, in words (not for matching).
    pub problems: Vec<String>,
    /// Last successful WeChat fetch.
    pub last_ok_at_ms: Option<u64>,
    /// Description of the last failure.
    pub last_error: Option<String>,
    /// WeChat errcode of the last failure.
    pub last_errcode: Option<i64>,
    /// When the last failure happened.
    pub last_error_at_ms: Option<u64>,
    /// Refreshes are paused until then (daily quota exhausted).
    pub paused_until_ms: Option<u64>,
    /// `paused_until_ms` is in the future.
    pub paused: bool,
    /// Replica that last wrote the status hash.
    pub status_replica: Option<String>,
    /// The access token, then each stored or configured ticket.
    pub kinds: Vec<KindStatus>,
}

/// One stored value of a credential.
#[derive(Debug, Serialize)]
pub struct KindStatus {
    /// `access_token`, `jsapi_ticket` or `wx_card_ticket`.
    pub kind: Kind,
    /// A value is stored.
    pub stored: bool,
    /// Time left (PTTL of the value key).
    pub ttl_ms: Option<u64>,
    /// Absolute expiry.
    pub expires_at_ms: Option<u64>,
    /// Lifetime WeChat announced, seconds.
    pub expires_in: Option<u64>,
    /// When the value was written.
    pub refreshed_at_ms: Option<u64>,
    /// Replica that fetched it.
    pub replica: Option<String>,
    /// Fence number of the write.
    pub fence: Option<u64>,
    /// A refresh request waiting for a refresher, if any.
    pub refresh_request: Option<RequestStatus>,
}

/// A pending refresh request.
#[derive(Debug, Serialize)]
pub struct RequestStatus {
    /// Asked with `--force` (replace whatever is stored).
    pub force: bool,
    /// Time until the request lapses.
    pub ttl_ms: Option<u64>,
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

/// Reads the Redis clock and every credential's keys.
async fn gather(
    target: &Target,
    con: &mut redis::aio::MultiplexedConnection,
) -> Result<(u64, Vec<CredentialStatus>)> {
    let ((secs, micros), registered): ((u64, u64), Vec<String>) = redis::pipe()
        .cmd("TIME")
        .smembers(registry_key(&target.namespace))
        .query_async(con)
        .await
        .context("reading the registry")?;
    let now_ms = secs * 1000 + micros / 1000;

    // id → (registered, configured kinds)
    let mut ids: BTreeMap<String, (bool, Option<Vec<Kind>>)> = BTreeMap::new();
    for id in registered {
        ids.entry(id).or_default().0 = true;
    }
    for c in &target.configured {
        ids.entry(c.id.clone()).or_default().1 = Some(c.kinds.clone());
    }

    let mut report = Vec::with_capacity(ids.len());
    for (id, (registered, configured)) in ids {
        let keys = match CredentialKeys::new(&target.namespace, &id) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("warning: skipping registry entry: {e}");
                continue;
            }
        };
        let c = read_credential(con, &keys, now_ms, registered, configured.as_deref())
            .await
            .with_context(|| format!("reading credential {id:?}"))?;
        report.push(c);
    }
    Ok((now_ms, report))
}

fn field<T: std::str::FromStr>(h: &HashMap<String, String>, name: &str) -> Option<T> {
    h.get(name).and_then(|v| v.trim().parse().ok())
}

/// A PTTL reply as time left: `None` for a missing key or one without TTL.
fn ttl(pttl: i64) -> Option<u64> {
    u64::try_from(pttl).ok()
}

async fn read_credential(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &CredentialKeys,
    now_ms: u64,
    registered: bool,
    configured: Option<&[Kind]>,
) -> Result<CredentialStatus> {
    let mut pipe = redis::pipe();
    pipe.atomic().hgetall(keys.status());
    for kind in KINDS {
        pipe.pttl(keys.value(kind))
            .hgetall(keys.info(kind))
            .get(keys.refresh_request(kind))
            .pttl(keys.refresh_request(kind));
    }
    let replies: Vec<redis::Value> = pipe.query_async(con).await?;
    let mut replies = replies.into_iter();
    let mut next = || -> Result<redis::Value> {
        replies
            .next()
            .ok_or_else(|| anyhow!("Redis answered fewer replies than asked"))
    };
    let st: HashMap<String, String> = redis::from_redis_value(next()?)?;

    let mut kinds = Vec::new();
    for kind in KINDS {
        let pttl: i64 = redis::from_redis_value(next()?)?;
        let inf: HashMap<String, String> = redis::from_redis_value(next()?)?;
        let request: Option<String> = redis::from_redis_value(next()?)?;
        let request_pttl: i64 = redis::from_redis_value(next()?)?;
        let stored = pttl != -2;
        let wanted =
            kind == Kind::AccessToken || configured.is_some_and(|kinds| kinds.contains(&kind));
        if !(wanted || stored || !inf.is_empty() || request.is_some()) {
            continue;
        }
        kinds.push(KindStatus {
            kind,
            stored,
            ttl_ms: ttl(pttl),
            expires_at_ms: field(&inf, info::EXPIRES_AT_MS),
            expires_in: field(&inf, info::EXPIRES_IN),
            refreshed_at_ms: field(&inf, info::REFRESHED_AT_MS),
            replica: inf.get(info::REPLICA).cloned(),
            fence: field(&inf, info::FENCE),
            refresh_request: request.map(|r| RequestStatus {
                force: r == FORCE_REQUEST,
                ttl_ms: ttl(request_pttl),
            }),
        });
    }

    let last_ok_at_ms: Option<u64> = field(&st, status::LAST_OK_AT_MS);
    let last_error = st.get(status::LAST_ERROR).cloned();
    let last_error_at_ms: Option<u64> = field(&st, status::LAST_ERROR_AT_MS);
    let paused_until_ms: Option<u64> = field(&st, status::PAUSED_UNTIL_MS);
    let paused = paused_until_ms.is_some_and(|until| until > now_ms);

    let mut problems = Vec::new();
    for k in kinds.iter().filter(|k| !k.stored) {
        if k.kind == Kind::AccessToken || configured.is_some() {
            problems.push(format!("no {} stored", k.kind));
        }
    }
    if failing(last_error.as_deref(), last_error_at_ms, last_ok_at_ms) {
        problems.push("the last refresh attempt failed".to_owned());
    }
    if paused {
        problems.push("refreshes are paused (daily quota exhausted)".to_owned());
    }
    Ok(CredentialStatus {
        id: keys.id().to_owned(),
        appid: st.get(status::APPID).cloned(),
        mode: st.get(status::MODE).cloned(),
        registered,
        configured: configured.is_some(),
        healthy: problems.is_empty(),
        problems,
        last_ok_at_ms,
        last_error,
        last_errcode: field(&st, status::LAST_ERRCODE),
        last_error_at_ms,
        paused_until_ms,
        paused,
        status_replica: st.get(status::REPLICA).cloned(),
        kinds,
    })
}

/// A recorded error counts while it is newer than the last success.
fn failing(error: Option<&str>, error_at: Option<u64>, ok_at: Option<u64>) -> bool {
    match (error, error_at, ok_at) {
        (None, _, _) => false,
        (Some(_), Some(e), Some(o)) => e > o,
        (Some(_), _, None) => true,
        (Some(_), None, Some(_)) => false,
    }
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
        let failing = failing(c.last_error.as_deref(), c.last_error_at_ms, c.last_ok_at_ms);
        let mut state = Vec::new();
        if c.kinds
            .iter()
            .any(|k| !k.stored && (k.kind == Kind::AccessToken || c.configured))
        {
            state.push("missing".to_owned());
        }
        if failing {
            let when = c
                .last_error_at_ms
                .map(|at| format!(" {}", human::ago(at, now_ms)))
                .unwrap_or_default();
            state.push(match c.last_errcode {
                Some(code) => format!("error {code}{when}"),
                None => format!("error{when}"),
            });
            details.push(format!(
                "{}: last error{} ({}by {}): {}",
                c.id,
                when,
                c.last_errcode
                    .map(|code| format!("errcode {code}, "))
                    .unwrap_or_default(),
                c.status_replica.as_deref().unwrap_or("?"),
                one_line(c.last_error.as_deref().unwrap_or_default())
            ));
        }
        if let (true, Some(until)) = (c.paused, c.paused_until_ms) {
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
                cred_cell(or_dash(c.mode.as_deref())),
                cred_cell(or_dash(c.appid.as_deref())),
                left,
                or_dash(k.refreshed_at_ms.map(|at| human::ago(at, now_ms))),
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
        human::table(&rows)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_counts_until_a_later_success() {
        assert!(!failing(None, None, None));
        assert!(failing(Some("x"), Some(5), Some(4)));
        assert!(!failing(Some("x"), Some(4), Some(5)));
        assert!(failing(Some("x"), Some(4), None));
        assert!(failing(Some("x"), None, None));
    }
}
