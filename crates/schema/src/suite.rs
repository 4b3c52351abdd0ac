//! A WeCom third-party suite's (服务商套件) pushed state, in the suite's own
//! slot (`{suite/<suite id>}`): its newest `suite_ticket`, the temporary
//! auth codes of `create_auth` pushes waiting to be exchanged, the lock
//! that makes each exchange happen exactly once, and the index of the
//! corps that authorized it.
//!
//! Why the exchange is not under the corp's lease, as an authorizer's is:
//! WeCom's `create_auth` push carries the auth code but not the corp, which
//! only `get_permanent_code` names. So the code is recorded with the suite
//! ([`record_auth_code`]), and a replica that takes the suite's exchange
//! lock ([`lock_exchange`]) exchanges the pending codes one at a time,
//! registers each corp in the corp's own slot
//! ([`crate::registry::authorize_corp`], a separate step: never two
//! subjects in one script) and marks the code exchanged
//! ([`auth_code_exchanged`]). An exchanged code is remembered (without the
//! code) for [`AUTH_CODE_MEMORY`], so a replayed push changes nothing.
//!
//! Every script here touches the suite's keys only.

use crate::keys::{SuiteKeys, SUITE_TICKET_TTL_MS};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

/// How long an exchanged (or refused) auth code is remembered, so that a
/// replay of its push is recognised; pending codes older than this are
/// dropped (WeCom's live 10 minutes).
pub const AUTH_CODE_MEMORY: Duration = Duration::from_secs(3600);

/// Records a pushed auth code. KEYS: auth codes. ARGV: code, memory ms.
/// Entries older than the memory are dropped first. Returns 1 when the
/// code is new (pending now), 0 when it was known (a replay).
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then redis.call('DEL', KEYS[1]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local at = tonumber(string.match(all[i + 1], '^[pd] (%d+)') or '0') or 0
  if at < now - tonumber(ARGV[2]) then redis.call('HDEL', KEYS[1], all[i]) end
end
local field = redis.sha1hex(ARGV[1])
if redis.call('HEXISTS', KEYS[1], field) == 1 then return 0 end
redis.call('HSET', KEYS[1], field, string.format('p %d %s', now, ARGV[1]))
return 1
",
    )
});

/// Marks a code exchanged (or refused: spent either way). KEYS: auth
/// codes. ARGV: sha1 of the code. The code itself is dropped.
static EXCHANGED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.pcall('HGET', KEYS[1], ARGV[1])
if type(v) ~= 'string' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('d %d', now))
return 1
",
    )
});

/// Compare-and-delete of the exchange lock. KEYS: lock. ARGV: owner.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Stores a pushed `suite_ticket` (with the push's `TimeStamp`, Unix s) for
/// [`SUITE_TICKET_TTL_MS`], unless a ticket from a later push is stored
/// (the rules of [`crate::store_verify_ticket`]); `true` when stored.
pub async fn store_suite_ticket<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
    ticket: &str,
    create_time: u64,
) -> RedisResult<bool> {
    crate::scripts::store_pushed_ticket(
        con,
        &suite.suite_ticket(),
        &suite.suite_ticket_info(),
        ticket,
        create_time,
        Duration::from_millis(SUITE_TICKET_TTL_MS),
    )
    .await
}

/// Records the auth code of a `create_auth` push for exchange. `true` when
/// it is new, `false` when it is known already (a replayed push: nothing to
/// do).
pub async fn record_auth_code<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
    code: &str,
) -> RedisResult<bool> {
    let n: i64 = RECORD
        .key(suite.auth_codes())
        .arg(code)
        .arg(millis(AUTH_CODE_MEMORY))
        .invoke_async(con)
        .await?;
    Ok(n == 1)
}

/// An auth code waiting to be exchanged. Its `Debug` hides the code.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingCode {
    /// `sha1(code)`, its field in [`SuiteKeys::auth_codes`].
    pub digest: String,
    /// The code (a secret).
    pub code: String,
    /// When it was recorded, Unix ms (Redis clock).
    pub received_ms: u64,
}

impl std::fmt::Debug for PendingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCode")
            .field("digest", &self.digest)
            .field("code", &"***")
            .field("received_ms", &self.received_ms)
            .finish()
    }
}

/// The suite's pending auth codes, oldest first (entries that are not
/// well formed are left out; a key of the wrong type reads as none).
pub async fn pending_auth_codes<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
) -> RedisResult<Vec<PendingCode>> {
    let all: Vec<(Vec<u8>, Vec<u8>)> = crate::or_absent(
        redis::cmd("HGETALL")
            .arg(suite.auth_codes())
            .query_async(con)
            .await,
        Vec::new(),
    )?;
    let mut pending: Vec<PendingCode> = all
        .into_iter()
        .filter_map(|(field, value)| {
            let digest = String::from_utf8(field).ok()?;
            let value = String::from_utf8(value).ok()?;
            let rest = value.strip_prefix("p ")?;
            let (at, code) = rest.split_once(' ')?;
            crate::is_printable_token(code).then(|| PendingCode {
                digest,
                code: code.to_owned(),
                received_ms: at.parse().unwrap_or(0),
            })
        })
        .collect();
    pending.sort_by_key(|p| p.received_ms);
    Ok(pending)
}

/// Marks the code with `digest` exchanged (or refused by WeCom): it is
/// never exchanged again, and the code itself is dropped.
pub async fn auth_code_exchanged<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
    digest: &str,
) -> RedisResult<()> {
    EXCHANGED
        .key(suite.auth_codes())
        .arg(digest)
        .invoke_async::<i64>(con)
        .await
        .map(drop)
}

/// Takes the suite's exchange lock for `ttl` (`SET NX PX`); `true` when
/// taken.
pub async fn lock_exchange<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
    owner: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    let r: Option<String> = redis::cmd("SET")
        .arg(suite.exchange_lock())
        .arg(owner)
        .arg("NX")
        .arg("PX")
        .arg(millis(ttl))
        .query_async(con)
        .await?;
    Ok(r.is_some())
}

/// Extends the exchange lock while `owner` holds it; `false` when it is
/// no longer `owner`'s.
pub async fn renew_exchange<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
    owner: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    crate::scripts::renew(con, &suite.exchange_lock(), owner, ttl).await
}

/// Releases the exchange lock if `owner` still holds it.
pub async fn release_exchange<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
    owner: &str,
) -> RedisResult<()> {
    RELEASE
        .key(suite.exchange_lock())
        .arg(owner)
        .invoke_async::<i64>(con)
        .await
        .map(drop)
}

/// One page of a suite's corps, in the order they were registered:
/// `(corpid, registered at Unix ms)`, from `offset`. Members that are not
/// corpids are left out.
pub async fn corps<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<(String, u64)>> {
    let pairs: Vec<(Vec<u8>, f64)> = crate::or_absent(
        redis::cmd("ZRANGE")
            .arg(suite.corps())
            .arg(offset)
            .arg(offset.saturating_add(count.max(1)) - 1)
            .arg("WITHSCORES")
            .query_async(con)
            .await,
        Vec::new(),
    )?;
    Ok(pairs
        .into_iter()
        .filter_map(|(m, s)| {
            let corpid = String::from_utf8(m).ok()?;
            crate::validate_name("corpid", &corpid).ok()?;
            Some((
                corpid,
                if s.is_finite() && s > 0.0 {
                    s as u64
                } else {
                    0
                },
            ))
        })
        .collect())
}

/// How many corps authorized the suite.
pub async fn count_corps<C: ConnectionLike>(con: &mut C, suite: &SuiteKeys) -> RedisResult<u64> {
    crate::or_absent(
        redis::cmd("ZCARD")
            .arg(suite.corps())
            .query_async(con)
            .await,
        0,
    )
}

/// Repairs the due-queue index of one page of the suite's corps (from
/// `offset`, at most `count`): each corp's schedule is read and its
/// entries added where missing (an entry indexed earlier stays; see
/// `crate::index`). Registration writes the schedule, then the index: a
/// caller that died in between leaves a corp scheduled but not indexed,
/// which nothing else would find. Returns how many corps the page held
/// (fewer than `count`: the end).
pub async fn reindex_corps<C: ConnectionLike>(
    con: &mut C,
    suite: &SuiteKeys,
    namespace: &str,
    offset: usize,
    count: usize,
) -> RedisResult<usize> {
    let page = corps(con, suite, offset, count).await?;
    if page.is_empty() {
        return Ok(0);
    }
    let keys: Vec<crate::CredentialKeys> = page
        .iter()
        .filter_map(|(corpid, _)| {
            crate::CredentialKeys::corp(namespace, suite.suite_id(), corpid).ok()
        })
        .collect();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for k in &keys {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(k.schedule());
        for kind in k.kinds() {
            cmd.arg(kind.as_str());
        }
        pipe.add_command(cmd);
    }
    let replies: Vec<redis::Value> = pipe.query_async(con).await?;
    let mut batch = crate::index::Batch::new();
    for (k, reply) in keys.iter().zip(replies) {
        let Ok(fields) = redis::from_redis_value::<Vec<Option<String>>>(reply) else {
            continue;
        };
        let dues: Vec<(crate::Kind, u64)> = k
            .kinds()
            .iter()
            .copied()
            .zip(fields)
            .filter_map(|(kind, at)| Some((kind, crate::index::parse_ms(&at?)?)))
            .collect();
        if !dues.is_empty() {
            batch.add(k, &dues);
        }
    }
    batch.run(con).await?;
    Ok(page.len())
}
