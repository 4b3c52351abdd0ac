//! The registry of credentials and the due-queue: which credentials the
//! refreshers in a namespace keep, which replicas hold each one's secret,
//! which replicas are alive, and when each value is due.
//!
//! - [`register`] adds a credential (to the registry set, with its public
//!   facts in the status hash) and queues each of its values, due now if
//!   it was not queued yet; the calling replica becomes one of its holders.
//! - [`unregister`] takes the calling replica off a credential's holders;
//!   when no live holder is left, the credential's keys and queue entries
//!   are deleted.
//! - [`heartbeat`] marks a replica alive and tells it when it was last seen:
//!   never (first start, or Redis lost its data) or too long ago means it
//!   must register its credentials again.
//! - [`scan`] reads the earliest entries of every due-queue shard.
//! - [`authorize`] / [`remove_authorizer`]: a third-party platform's
//!   authorizers, registered at run time by authorization pushes,
//!   operators and reconciliations (they have no holders: any replica that
//!   holds the platform refreshes them); [`authorizers`] pages the index.
//!
//! Each script touches one subject's keys (one slot); the registry and
//! due-queue shards are updated after it, in the order [`crate::index`]
//! describes, and the live replicas are read from the replica set first
//! and passed in (the set is a key of its own).

use crate::index;
use crate::keys::{
    due_key, replicas_key, validate_name, ComponentKeys, CredentialKeys, Kind, SuiteKeys,
    DUE_SHARDS,
};
use crate::STATUS_TTL_SECS;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

/// Registers a subject in its own slot. KEYS: status, holders, schedule.
/// ARGV: appid, mode, replica, status ttl s, number of live replicas `L`,
/// the `L` live replicas, then pairs of kind and delay ms (when a newly
/// scheduled value is first due). Holders that are not live are dropped.
/// Returns `{values newly scheduled, due time of each kind…}`.
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'appid', ARGV[1], 'mode', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if redis.call('TYPE', KEYS[2])['ok'] ~= 'set' then redis.call('DEL', KEYS[2]) end
if redis.call('TYPE', KEYS[3])['ok'] ~= 'hash' then redis.call('DEL', KEYS[3]) end
local n = tonumber(ARGV[5])
local live = {}
for i = 6, 5 + n do live[ARGV[i]] = true end
for _, h in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not live[h] then redis.call('SREM', KEYS[2], h) end
end
redis.call('SADD', KEYS[2], ARGV[3])
local out = {0}
for i = 6 + n, #ARGV, 2 do
  local due = now + tonumber(ARGV[i + 1])
  if redis.call('HSETNX', KEYS[3], ARGV[i], string.format('%d', due)) == 1 then
    out[1] = out[1] + 1
  else
    due = tonumber(redis.call('HGET', KEYS[3], ARGV[i])) or now
  end
  table.insert(out, due)
end
return out
",
    )
});

/// Drops a holder, and the subject with it when no live holder is left.
/// KEYS: holders, schedule, then every other key of the subject. ARGV:
/// replica, number of live replicas `L`, the `L` live replicas. Returns
/// `{1}` when deleted, `{0}` when another live replica holds it.
static UNREGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] == 'set' then
  redis.call('SREM', KEYS[1], ARGV[1])
  local n = tonumber(ARGV[2])
  local live = {}
  for i = 3, 2 + n do live[ARGV[i]] = true end
  for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if not live[h] then redis.call('SREM', KEYS[1], h) end
  end
  if redis.call('SCARD', KEYS[1]) > 0 then return {0} end
end
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
return {1}
",
    )
});

/// KEYS: replicas. ARGV: liveness window ms. Returns the replicas seen
/// within the window.
static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
",
    )
});

/// KEYS: replicas. ARGV: replica. Returns {now, previous heartbeat or -1}.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then redis.call('DEL', KEYS[1]) end
local prev = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '-1') or -1
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
return {now, prev}
",
    )
});

/// A credential's public facts, as registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration<'a> {
    /// The WeChat appid (public).
    pub appid: &'a str,
    /// `classic` or `stable`.
    pub mode: &'a str,
    /// The values refreshers keep for it (the access token first).
    pub kinds: &'a [Kind],
    /// When a newly queued dependent (ticket, reconciliation) is first due.
    /// The primary value is due at once, and writing it brings missing
    /// dependents forward, so this only matters if it cannot be had.
    pub ticket_delay: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The replicas of `namespace` seen within `liveness` (by the Redis clock).
pub async fn live_replicas<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    liveness: Duration,
) -> RedisResult<Vec<String>> {
    let live: Vec<Vec<u8>> = LIVE
        .key(replicas_key(namespace))
        .arg(millis(liveness))
        .invoke_async(con)
        .await?;
    Ok(live
        .into_iter()
        .filter_map(|r| String::from_utf8(r).ok())
        .collect())
}

/// Registers credentials held by `replica` (see the module docs): the live
/// replicas are read, each subject is registered in its slot (one
/// pipelined round trip), then listed and indexed (another). Returns how
/// many values were newly scheduled.
pub async fn register<C: ConnectionLike>(
    con: &mut C,
    credentials: &[(CredentialKeys, Registration<'_>)],
    replica: &str,
    liveness: Duration,
) -> RedisResult<u32> {
    let Some((first, _)) = credentials.first() else {
        return Ok(0);
    };
    let live = live_replicas(con, first.namespace(), liveness).await?;
    let invocations: Vec<_> = credentials
        .iter()
        .map(|(keys, facts)| {
            let mut inv = REGISTER.prepare_invoke();
            inv.key(keys.status())
                .key(keys.holders())
                .key(keys.schedule())
                .arg(facts.appid)
                .arg(facts.mode)
                .arg(replica)
                .arg(STATUS_TTL_SECS)
                .arg(live.len())
                .arg(&live);
            for kind in facts.kinds {
                let delay = if *kind == keys.subject().primary() {
                    Duration::ZERO
                } else {
                    facts.ticket_delay
                };
                inv.arg(kind.as_str()).arg(millis(delay));
            }
            inv
        })
        .collect();
    let mut pipe = redis::pipe();
    pipe.load_script(&REGISTER).ignore();
    for inv in &invocations {
        pipe.invoke_script(inv);
    }
    let answers: Vec<Vec<u64>> = pipe.query_async(con).await?;
    let mut batch = index::Batch::new();
    let mut added = 0u32;
    for ((keys, facts), answer) in credentials.iter().zip(&answers) {
        let Some((n, dues)) = answer.split_first() else {
            continue;
        };
        added += u32::try_from(*n).unwrap_or(0);
        let dues: Vec<(Kind, u64)> = facts
            .kinds
            .iter()
            .copied()
            .zip(dues.iter().copied())
            .collect();
        batch.add(keys, &dues);
    }
    batch.run(con).await?;
    Ok(added)
}

/// Drops `replica` from the credential's holders; when no live holder is
/// left, deletes the credential (every key, then its registry and index
/// entries: see `index::remove_deleted`). Returns whether it was deleted.
pub async fn unregister<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    replica: &str,
    liveness: Duration,
) -> RedisResult<bool> {
    let live = live_replicas(con, keys.namespace(), liveness).await?;
    let mut inv = UNREGISTER.prepare_invoke();
    inv.key(keys.holders()).key(keys.schedule());
    // Locks are left to lapse by their TTL: deleting a held one would let
    // another replica call WeChat while the holder's call is in flight
    // (its write then finds no schedule and stores nothing).
    for &kind in keys.kinds() {
        inv.key(keys.value(kind))
            .key(keys.info(kind))
            .key(keys.refresh_request(kind))
            .key(keys.force_request(kind));
    }
    inv.key(keys.fence()).key(keys.status());
    inv.arg(replica).arg(live.len()).arg(&live);
    let answer: Vec<u64> = inv.invoke_async(con).await?;
    match answer.first() {
        Some(1) => {
            index::remove_deleted(con, keys, keys.kinds(), None).await?;
            Ok(true)
        }
        Some(_) => Ok(false),
        None => Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected unregister answer",
        ))),
    }
}

/// Marks `replica` alive. Returns the Redis clock and when the replica was
/// last seen (`None`: never, e.g. Redis lost its data), both Unix ms.
pub async fn heartbeat<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    replica: &str,
) -> RedisResult<(u64, Option<u64>)> {
    let (now, prev): (i64, i64) = HEARTBEAT
        .key(replicas_key(namespace))
        .arg(replica)
        .invoke_async(con)
        .await?;
    Ok((u64::try_from(now).unwrap_or(0), u64::try_from(prev).ok()))
}

/// Takes `replica` off the live set (on a clean shutdown).
pub async fn retire<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    replica: &str,
) -> RedisResult<()> {
    redis::cmd("ZREM")
        .arg(replicas_key(namespace))
        .arg(replica)
        .query_async(con)
        .await
}

/// One due-queue entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Due {
    /// When it is due, Unix ms (Redis clock).
    pub at_ms: u64,
    /// `"<id> <kind>"` (see [`crate::parse_member`]).
    pub member: String,
}

/// Reads entries of the due-queue shards `shards` in one round trip: for
/// each, the `limit` earliest entries after skipping `offset` of them, and
/// the Redis clock (Unix ms). Entries whose member is not valid UTF-8 are
/// left out.
pub async fn scan<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    shards: &[(u32, usize)],
    limit: usize,
) -> RedisResult<(u64, Vec<Vec<Due>>)> {
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for (shard, offset) in shards {
        pipe.cmd("ZRANGEBYSCORE")
            .arg(due_key(namespace, *shard % DUE_SHARDS))
            .arg("-inf")
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(*offset)
            .arg(limit);
    }
    let mut answers: Vec<redis::Value> = pipe.query_async(con).await?;
    if answers.len() != shards.len() + 1 {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected scan answer",
        )));
    }
    let rest = answers.split_off(1);
    let (secs, micros): (u64, u64) = redis::from_redis_value(answers.remove(0))?;
    let mut out = Vec::with_capacity(rest.len());
    for v in rest {
        let pairs: Vec<(Vec<u8>, f64)> = redis::from_redis_value(v)?;
        out.push(
            pairs
                .into_iter()
                .filter_map(|(m, s)| {
                    Some(Due {
                        member: String::from_utf8(m).ok()?,
                        at_ms: if s.is_finite() && s > 0.0 {
                            s as u64
                        } else {
                            0
                        },
                    })
                })
                .collect(),
        );
    }
    Ok((secs * 1000 + micros / 1000, out))
}

/// One page of a sweep for pending refresh requests (plain `SET`s by
/// business servers, which cannot move a value in the due-queue): `SCAN`
/// from `cursor` over request keys of `namespace`. Returns the next cursor
/// (0: done) and the due-queue members whose request keys were found.
pub async fn pending_requests<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    cursor: u64,
    count: usize,
) -> RedisResult<(u64, Vec<String>)> {
    let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(format!("{namespace}:{{*}}:refresh_request:*"))
        .arg("COUNT")
        .arg(count)
        .arg("TYPE")
        .arg("string")
        .query_async(con)
        .await?;
    let prefix = format!("{namespace}:{{");
    let members = keys
        .iter()
        .filter_map(|k| {
            let k = std::str::from_utf8(k).ok()?;
            let (id, rest) = k.strip_prefix(&prefix)?.split_once('}')?;
            let kind = rest.strip_prefix(":refresh_request:")?;
            let member = format!("{id} {kind}");
            crate::parse_member(&member).is_some().then_some(member)
        })
        .collect();
    Ok((next, members))
}

/// Registers an authorizer of a third-party platform in its own slot (see
/// [`authorize`]).
///
/// KEYS: status, schedule, authorization code, refresh token, the removal
/// mark. ARGV: authorizer appid, component appid, code ('' = none), code
/// ttl ms, refresh token ('' = none), requests channel, status ttl s,
/// whether this is a new authorization (1: the authorized time is now; 0:
/// found by a reconciliation, an earlier time is kept), when the
/// authorization happened at WeChat (Unix ms; '' = unknown), id, the
/// status hash's `mode` (`authorizer`, `suite_corp`), the name of the
/// status field holding the parent's id (`component`, `suite`), then the
/// kinds of the values kept for it (the access token first). For a suite
/// corp, "refresh token" is its permanent code (KEYS[4] is
/// [`CredentialKeys::grant`]). Returns
/// `{values newly scheduled, refresh token replaced (0/1), stale (0/1),
/// authorized at, due time of each kind…}`: an authorization older than
/// the one registered (a replayed or late push) changes nothing when a
/// refresh token is kept, and neither does one a reconciliation found of
/// an authorizer removed in the last hour (its listing may predate the
/// removal).
static AUTHORIZE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('TYPE', KEYS[2])['ok'] ~= 'hash' then redis.call('DEL', KEYS[2]) end
local authorized = tonumber(redis.call('HGET', KEYS[2], 'authorized_at') or '')
if ARGV[9] ~= '' and authorized and authorized > tonumber(ARGV[9])
  and redis.call('TYPE', KEYS[4])['ok'] == 'string' then
  return {0, 0, 1}
end
if ARGV[8] == '1' then
  redis.call('DEL', KEYS[5])
elseif redis.call('EXISTS', KEYS[5]) == 1 then
  return {0, 0, 1}
end
if ARGV[8] == '1' or not authorized then
  authorized = now
  redis.call('HSET', KEYS[2], 'authorized_at', string.format('%d', now))
end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'appid', ARGV[1], 'mode', ARGV[11], ARGV[12], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[7])
local changed = 0
if ARGV[5] ~= '' then
  local cur = redis.pcall('GET', KEYS[4])
  if cur ~= ARGV[5] then
    redis.call('SET', KEYS[4], ARGV[5])
    changed = 1
  end
end
local queued = 0
for i = 13, #ARGV do
  -- The access token at once; the tickets when it is written (its write
  -- brings them forward), at the latest a minute later.
  local at = now
  if i > 13 then at = now + 60000 end
  queued = queued + redis.call('HSETNX', KEYS[2], ARGV[i], string.format('%d', at))
end
if ARGV[3] ~= '' or changed == 1 then
  -- A new authorization or refresh token: the old holds no longer apply,
  -- and the access token is due at once.
  redis.call('HDEL', KEYS[1], 'failures', 'retry_after_ms', 'paused_until_ms',
    'last_error', 'last_errcode', 'last_error_at_ms')
  if ARGV[3] ~= '' then
    redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  end
  local at = tonumber(redis.call('HGET', KEYS[2], ARGV[13])) or 0
  if at > now then redis.call('HSET', KEYS[2], ARGV[13], string.format('%d', now)) end
  if at > now or ARGV[3] ~= '' then
    redis.call('PUBLISH', ARGV[6], ARGV[10] .. ' ' .. ARGV[13])
  end
end
local out = {queued, changed, 0, authorized}
for i = 13, #ARGV do
  table.insert(out, tonumber(redis.call('HGET', KEYS[2], ARGV[i])) or now)
end
return out
",
    )
});

/// Removes an authorizer in its own slot (see [`remove_authorizer`]).
///
/// KEYS: schedule, the removal mark, then every other key of the
/// authorizer (its lock included: nobody may write for it any more).
/// ARGV: authorized before (Unix ms; '' = whenever). Returns `{1, was
/// registered (0/1)}`, or `{0}` when it was authorized since (kept). The
/// removal mark is set for an hour.
static REMOVE_AUTHORIZER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local authorized = redis.pcall('HGET', KEYS[1], 'authorized_at')
if ARGV[1] ~= '' and type(authorized) == 'string'
  and (tonumber(authorized) or 0) >= tonumber(ARGV[1]) then
  return {0}
end
local was = redis.call('EXISTS', KEYS[1])
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
local t = redis.call('TIME')
redis.call('SET', KEYS[2], string.format('%d', tonumber(t[1]) * 1000), 'PX', 3600000)
return {1, was}
",
    )
});

/// One authorization of a platform's authorizer, as [`authorize`] records it.
#[derive(Clone, Copy)]
pub struct Authorization<'a> {
    /// The authorization code to exchange (from a push or an operator), and
    /// how long it is valid.
    pub code: Option<(&'a str, Duration)>,
    /// The refresh token, when known (a reconciliation).
    pub refresh_token: Option<&'a str>,
    /// The values refreshers keep for it: the access token first, then the
    /// platform's configured tickets.
    pub kinds: &'a [Kind],
    /// A new authorization (now), rather than one a reconciliation found.
    pub new: bool,
}

/// When WeChat says an authorization event happened (a push's
/// `CreateTime`), Unix ms: an event older than the authorizer's
/// registration is a replay or a late push.
pub type PushedAtMs = Option<u64>;

impl std::fmt::Debug for Authorization<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorization")
            .field("code", &self.code.map(|(_, ttl)| ("***", ttl)))
            .field("refresh_token", &self.refresh_token.map(|_| "***"))
            .field("kinds", &self.kinds)
            .field("new", &self.new)
            .finish()
    }
}

/// What [`authorize`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorized {
    /// Values of the authorizer newly queued (0 when it was known).
    pub queued: u32,
    /// The stored refresh token was missing or different and was replaced.
    pub refresh_token_replaced: bool,
    /// Nothing changed: the authorization is older than the registered one
    /// ([`authorize_pushed`]).
    pub stale: bool,
}

/// What a run-time subject belongs to: a third-party platform (its
/// authorizers) or a WeCom suite (its corps). Each keeps an index of its
/// children in its own slot.
#[derive(Debug, Clone, Copy)]
enum Parent<'a> {
    Component(&'a ComponentKeys),
    Suite(&'a SuiteKeys),
}

impl Parent<'_> {
    /// The parent's id as the status hash shows it.
    fn id(&self) -> &str {
        match self {
            Parent::Component(c) => c.appid(),
            Parent::Suite(s) => s.suite_id(),
        }
    }

    /// The index of its children.
    fn index(&self) -> String {
        match self {
            Parent::Component(c) => c.authorizers(),
            Parent::Suite(s) => s.corps(),
        }
    }

    /// The child's status `mode` and the status field naming the parent.
    fn status(&self) -> (&'static str, &'static str) {
        match self {
            Parent::Component(_) => ("authorizer", "component"),
            Parent::Suite(_) => ("suite_corp", "suite"),
        }
    }
}

/// The child's own id in its parent's index (an authorizer's appid, a
/// corp's corpid); '' for other subjects.
fn child_of(keys: &CredentialKeys) -> &str {
    match keys.subject() {
        crate::Subject::Authorizer { appid, .. } => appid,
        crate::Subject::Corp { corpid, .. } => corpid,
        _ => "",
    }
}

/// Registers the authorizer `keys` (built with
/// [`CredentialKeys::authorizer`]) of the platform `component`: in the
/// registry, in the platform's authorizer index, its public facts in the
/// status hash, its values queued if they were not (the access token due
/// now, tickets when it is written, at the latest a minute later). With a code,
/// the code is kept for its lifetime, the access token is due at once and
/// the refreshers are woken (the exchange is single use: the refresher that
/// claims the value exchanges it). With a refresh token that differs from
/// the stored one, it is stored (durable) and the access token is due at
/// once. Either clears the authorizer's failures and holds.
pub async fn authorize<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    component: &ComponentKeys,
    a: &Authorization<'_>,
) -> RedisResult<Authorized> {
    authorize_pushed(con, keys, component, a, None).await
}

/// [`authorize`] for an authorization event WeChat says happened at
/// `pushed_at` (Unix ms): when the authorizer was registered later and a
/// refresh token is kept, the event is a replay or a late push, and
/// nothing changes (`stale`).
pub async fn authorize_pushed<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    component: &ComponentKeys,
    a: &Authorization<'_>,
    pushed_at: PushedAtMs,
) -> RedisResult<Authorized> {
    authorize_child(con, keys, Parent::Component(component), a, pushed_at).await
}

/// Registers the corp `keys` (built with [`CredentialKeys::corp`]) of the
/// WeCom suite `suite`, as [`authorize_pushed`] does an authorizer: its
/// `permanent_code` is stored (durable, in the corp's slot: see
/// [`CredentialKeys::permanent_code`]), it is listed in the suite's corp
/// index, its public facts go in the status hash, and its access token is
/// due at once (its `kinds`, the access token first; tickets when it is
/// written). A new permanent code clears the corp's failures and holds.
/// `pushed_at` (Unix ms): when WeCom says the authorization happened; an
/// authorization older than the registered one changes nothing (`stale`).
pub async fn authorize_corp<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    suite: &SuiteKeys,
    permanent_code: &str,
    kinds: &[Kind],
    pushed_at: PushedAtMs,
) -> RedisResult<Authorized> {
    let a = Authorization {
        code: None,
        refresh_token: Some(permanent_code),
        kinds,
        new: true,
    };
    authorize_child(con, keys, Parent::Suite(suite), &a, pushed_at).await
}

async fn authorize_child<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    parent: Parent<'_>,
    a: &Authorization<'_>,
    pushed_at: PushedAtMs,
) -> RedisResult<Authorized> {
    let inv = authorize_invocation(keys, parent, a, pushed_at);
    let answer: Vec<u64> = inv.invoke_async(con).await?;
    let mut batch = index::Batch::new();
    let done = authorized(&mut batch, keys, parent, a, &answer)?;
    batch.run(con).await?;
    Ok(done)
}

/// Interprets an answer of [`AUTHORIZE`] and adds the index updates it
/// calls for to `batch` (the schedule was written first).
fn authorized(
    batch: &mut index::Batch,
    keys: &CredentialKeys,
    parent: Parent<'_>,
    a: &Authorization<'_>,
    answer: &[u64],
) -> RedisResult<Authorized> {
    let (head, dues) = match answer {
        [queued, replaced, stale] => {
            return Ok(Authorized {
                queued: u32::try_from(*queued).unwrap_or(0),
                refresh_token_replaced: *replaced == 1,
                stale: *stale == 1,
            })
        }
        [queued, replaced, stale, at, dues @ ..] => ((*queued, *replaced, *stale, *at), dues),
        _ => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected authorize answer",
            )))
        }
    };
    let (queued, replaced, stale, authorized_at) = head;
    let dues: Vec<(Kind, u64)> = a.kinds.iter().copied().zip(dues.iter().copied()).collect();
    batch.add(keys, &dues);
    let child = child_of(keys);
    if !child.is_empty() {
        batch.child(&parent.index(), child, Some(authorized_at));
    }
    Ok(Authorized {
        queued: u32::try_from(queued).unwrap_or(0),
        refresh_token_replaced: replaced == 1,
        stale: stale == 1,
    })
}

fn authorize_invocation<'s>(
    keys: &CredentialKeys,
    parent: Parent<'_>,
    a: &Authorization<'_>,
    pushed_at: PushedAtMs,
) -> redis::ScriptInvocation<'s> {
    let (mode, field) = parent.status();
    let mut inv = AUTHORIZE.prepare_invoke();
    inv.key(keys.status())
        .key(keys.schedule())
        .key(keys.authorization_code())
        .key(keys.grant())
        .key(keys.removed())
        .arg(child_of(keys))
        .arg(parent.id())
        .arg(a.code.map_or("", |(c, _)| c))
        .arg(a.code.map_or(1, |(_, ttl)| millis(ttl).max(1)))
        .arg(a.refresh_token.unwrap_or(""))
        .arg(crate::requests_channel(keys.namespace()))
        .arg(STATUS_TTL_SECS)
        .arg(if a.new { "1" } else { "0" })
        .arg(pushed_at.map(|ms| ms.to_string()).unwrap_or_default())
        .arg(keys.id())
        .arg(mode)
        .arg(field);
    for kind in a.kinds {
        inv.arg(kind.as_str());
    }
    inv
}

/// [`authorize`] for many authorizers in two round trips (a
/// reconciliation's page). Returns one answer per item, in order.
pub async fn authorize_many<C: ConnectionLike>(
    con: &mut C,
    component: &ComponentKeys,
    items: &[(CredentialKeys, Authorization<'_>)],
) -> RedisResult<Vec<Authorized>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let parent = Parent::Component(component);
    let invocations: Vec<_> = items
        .iter()
        .map(|(keys, a)| authorize_invocation(keys, parent, a, None))
        .collect();
    let mut pipe = redis::pipe();
    pipe.load_script(&AUTHORIZE).ignore();
    for inv in &invocations {
        pipe.invoke_script(inv);
    }
    let answers: Vec<Vec<u64>> = pipe.query_async(con).await?;
    let mut batch = index::Batch::new();
    let mut out = Vec::with_capacity(items.len());
    for ((keys, a), answer) in items.iter().zip(&answers) {
        out.push(authorized(&mut batch, keys, parent, a, answer)?);
    }
    batch.run(con).await?;
    Ok(out)
}

/// Removes the authorizer `keys` of the platform `component`: its registry
/// and index entries, its queue entries and every key it has (durable
/// refresh token and lock included). With `authorized_before` (Unix ms,
/// Redis clock), only if it was authorized before then (a reconciliation
/// never removes an authorizer that arrived while it ran). Returns whether
/// it was removed (and had been registered).
///
/// The authorizer's keys go first; only then its index entries (see
/// `index::remove_deleted`); one that stays (authorized since) keeps them.
pub async fn remove_authorizer<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    component: &ComponentKeys,
    authorized_before: Option<u64>,
) -> RedisResult<bool> {
    remove_child(con, keys, Parent::Component(component), authorized_before).await
}

/// Removes the corp `keys` of the WeCom suite `suite` (a `cancel_auth`):
/// as [`remove_authorizer`], its durable permanent code included. With
/// `authorized_before`, only if it was registered before then (a replayed
/// old `cancel_auth` never removes a newer authorization). Returns whether
/// it was removed (and had been registered).
pub async fn remove_corp<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    suite: &SuiteKeys,
    authorized_before: Option<u64>,
) -> RedisResult<bool> {
    remove_child(con, keys, Parent::Suite(suite), authorized_before).await
}

async fn remove_child<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    parent: Parent<'_>,
    authorized_before: Option<u64>,
) -> RedisResult<bool> {
    let child = child_of(keys);
    let index_key = parent.index();
    let mut inv = REMOVE_AUTHORIZER.prepare_invoke();
    inv.key(keys.schedule()).key(keys.removed());
    for &kind in keys.kinds() {
        inv.key(keys.value(kind))
            .key(keys.info(kind))
            .key(keys.refresh_request(kind))
            .key(keys.force_request(kind))
            .key(keys.lock(kind));
    }
    inv.key(keys.fence())
        .key(keys.status())
        .key(keys.holders())
        .key(keys.grant())
        .key(keys.authorization_code());
    inv.arg(
        authorized_before
            .map(|ms| ms.to_string())
            .unwrap_or_default(),
    );
    let answer: Vec<u64> = inv.invoke_async(con).await?;
    match answer.as_slice() {
        [1, was] => {
            index::remove_deleted(con, keys, keys.kinds(), Some((&index_key, child))).await?;
            Ok(*was == 1)
        }
        [0, ..] => Ok(false),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected remove answer",
        ))),
    }
}

/// One page of a platform's authorizers, in the order they were authorized:
/// `(appid, authorized at Unix ms)`, starting at `offset`. Members that are
/// not appids (corrupt or hostile) are left out, so a page may be shorter
/// than `count` before the end of the index: to page through it, use
/// [`authorizers_page`].
pub async fn authorizers<C: ConnectionLike>(
    con: &mut C,
    component: &ComponentKeys,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<(String, u64)>> {
    Ok(authorizers_page(con, component, offset, count).await?.1)
}

/// [`authorizers`], with how many members of the index the page covered
/// (those left out included): fewer than `count` only at the end of the
/// index.
pub async fn authorizers_page<C: ConnectionLike>(
    con: &mut C,
    component: &ComponentKeys,
    offset: usize,
    count: usize,
) -> RedisResult<(usize, Vec<(String, u64)>)> {
    let pairs: Vec<(Vec<u8>, f64)> = crate::or_absent(
        redis::cmd("ZRANGE")
            .arg(component.authorizers())
            .arg(offset)
            .arg(offset.saturating_add(count.max(1)) - 1)
            .arg("WITHSCORES")
            .query_async(con)
            .await,
        Vec::new(),
    )?;
    let covered = pairs.len();
    let listed = pairs
        .into_iter()
        .filter_map(|(m, s)| {
            let appid = String::from_utf8(m).ok()?;
            validate_name("authorizer appid", &appid).ok()?;
            Some((
                appid,
                if s.is_finite() && s > 0.0 {
                    s as u64
                } else {
                    0
                },
            ))
        })
        .collect();
    Ok((covered, listed))
}

/// How many authorizers a platform has.
pub async fn count_authorizers<C: ConnectionLike>(
    con: &mut C,
    component: &ComponentKeys,
) -> RedisResult<u64> {
    crate::or_absent(
        redis::cmd("ZCARD")
            .arg(component.authorizers())
            .query_async(con)
            .await,
        0,
    )
}
