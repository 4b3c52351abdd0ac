//! The lease protocol's Lua scripts and typed calls to run them on a
//! caller's connection: claim a due value (lock + fence + read, atomically),
//! renew the lease, write under the fence (and release), finish without a
//! write (and release), and the compare-and-request of passive refresh.
//!
//! Every script touches the keys of one subject only (one hash tag, one
//! slot: they run unchanged on Redis Cluster) and decides by the subject's
//! schedule hash; each call then updates the due-queue index in its own
//! step (see [`crate::index`] for the order and what it guarantees), and a
//! claim takes a permit of the shared call rate before its script
//! ([`crate::rate`]). Scripts take their times from Redis `TIME`, so
//! replicas' clocks never matter. This module owns no connection.

use crate::index;
use crate::keys::{ComponentKeys, CredentialKeys, Kind};
use crate::{events_channel, requests_channel, FORCE_REQUEST, STATUS_TTL_SECS};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script, Value};
use std::sync::LazyLock;
use std::time::Duration;

/// The claim of one due value.
///
/// In order: the value must still be registered (a field of the subject's
/// schedule hash; else `-1`: unregistered) and
/// due — its scheduled time has come (a forced refresh moves it to now),
/// or a refresh request that would be served is pending (a plain `SET` of
/// the request key from any language) and `min_interval` has passed since
/// the last write (before that, the schedule is moved to when it will have),
/// so that requests cannot make claims happen in a loop —
/// (else `-2, due_at`); its lock must be free (else `-3, lock expiry`,
/// and the schedule moves to the lock's expiry); the credential must not
/// be paused or backing off (else `-4, until`, schedule moved there). Then:
/// `SET lock owner PX ttl`, `INCR fence` (raised past
/// a stored value's fence should the counter have been lost), the schedule
/// is moved to the lock's expiry (so nobody else finds it due while it is
/// held), and everything the holder needs to decide is returned. Every
/// answer carries the schedule's new time for the index.
///
/// Values of the wrong type (hostile or corrupt data) read as absent; a
/// fence counter that is not a number is started again (and raised past the
/// stored value's fence).
///
/// KEYS: lock, fence, info, schedule, value, status, request, input (the
/// value this one is fetched with, see [`CredentialKeys::input`]), force
/// request, authorization code. ARGV: owner, ttl_ms, kind, whether the
/// input is read (1/0), min_interval ms, longest hold ms (a pause or
/// backoff further ahead is cut to it), the status-field suffix of the kind
/// ('' for the subject's primary kind, else `:<kind>`).
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local function get(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then return v end
  return false
end
local function hmget(key, ...)
  local v = redis.pcall('HMGET', key, ...)
  if type(v) == 'table' and not v.err then return v end
  return {}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.pcall('HGET', KEYS[4], ARGV[3])
if type(score) ~= 'string' then return {-1} end
score = tonumber(score) or 0
local forced = redis.call('EXISTS', KEYS[9]) == 1
if score > now then
  local req = get(KEYS[7])
  local cur = get(KEYS[5])
  if not (req and ((not cur) or cur == req)) then return {-2, score} end
  if cur then
    local at = tonumber(hmget(KEYS[3], 'refreshed_at_ms')[1] or '0') or 0
    local ready = at + (tonumber(ARGV[5]) or 0)
    if ready > now then
      -- Served once min_interval has passed since the last write.
      if ready < score then
        redis.call('HSET', KEYS[4], ARGV[3], string.format('%d', ready))
        score = ready
      end
      return {-2, score}
    end
  end
end
local ttl = tonumber(ARGV[2])
local lpttl = redis.call('PTTL', KEYS[1])
if lpttl == -1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  lpttl = ttl
end
if lpttl > 0 then
  redis.call('HSET', KEYS[4], ARGV[3], string.format('%d', now + lpttl))
  return {-3, now + lpttl}
end
-- Holds of the primary kind (unsuffixed fields) hold every kind; another
-- kind's own holds (fields suffixed ':<kind>') hold only that kind.
local sfx = ARGV[7]
local names = {'paused_until_ms', 'retry_after_ms', 'paused_until_ms' .. sfx,
  'retry_after_ms' .. sfx}
local st = hmget(KEYS[6], names[1], names[2], names[3], names[4], 'failures' .. sfx)
local hold = 0
for i = 1, 4 do hold = math.max(hold, tonumber(st[i]) or 0) end
local cut = 0
local longest = now + (tonumber(ARGV[6]) or 0)
if hold > longest then
  -- Corrupt or hostile: cut to the longest hold the rules allow, for good.
  for i = 1, 4 do
    if (tonumber(st[i]) or 0) > longest then
      redis.pcall('HSET', KEYS[6], names[i], string.format('%d', longest))
    end
  end
  hold = longest
  cut = 1
end
if hold > now then
  redis.call('HSET', KEYS[4], ARGV[3], string.format('%d', hold))
  if cut == 1 then return {-6, hold} end
  return {-4, hold}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
local fence = redis.pcall('INCR', KEYS[2])
if type(fence) ~= 'number' then
  redis.call('DEL', KEYS[2])
  fence = redis.call('INCR', KEYS[2])
end
local info = hmget(KEYS[3], 'fence', 'expires_in', 'refreshed_at_ms')
local stored = tonumber(info[1] or '0') or 0
if fence <= stored then
  fence = stored + 1
  redis.call('SET', KEYS[2], fence)
end
redis.call('HSET', KEYS[4], ARGV[3], string.format('%d', now + ttl))
local value = get(KEYS[5])
local pttl = -2
if value then pttl = redis.call('PTTL', KEYS[5]) end
local access = false
if ARGV[4] == '1' then access = get(KEYS[8]) end
local f = 0
if forced then f = 1 end
return {fence, now, value, pttl, info[2] or false, info[3] or false,
  get(KEYS[7]), st[5] or false, access, score, f, get(KEYS[10])}
",
    )
});

/// Compare-and-extend: `PEXPIRE lock ttl` only while `GET lock == owner`.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// The fenced write, which also ends the lease. Stores the value and its
/// info hash, both expiring at the token's real expiry, answers a pending
/// refresh request, records the success in the status hash, schedules the
/// value's next refresh, releases the lock and publishes the update event —
/// only if the lock is still held by `owner`, no write with a newer
/// fence has landed and the value is still registered (it has a schedule:
/// a credential removed during the lease is not brought back).
///
/// The status hash's error, pause and backoff are cleared when the recorded
/// error is this kind's (errors are recorded as `"<kind>: …"`) or there is
/// none: a ticket success must not hide a failing access token.
///
/// A new primary value (access token, component token) also brings the
/// subject's scheduled dependents that are not stored (tickets, the
/// reconciliation) forward to now (they were waiting for it).
///
/// An authorizer's refresh token, when given, is stored without a TTL
/// (durable state). A pending authorization code is deleted if it is the
/// one this lease exchanged; one that arrived during the lease makes the
/// value due at once instead of at its next refresh. A stored "code" that
/// cannot be one (not 1 to 2048 printable ASCII characters: corrupt or
/// hostile, and never handed out by a claim) is deleted, never due at once.
///
/// KEYS: value, info, lock, request, status, schedule, force request,
/// refresh token, authorization code, then (for a primary kind) the
/// dependents' values. ARGV: owner, fence, token, ttl_ms, expires_in,
/// replica, channel, id, kind, (unused), next due in ms, status ttl s,
/// refresh token ('' = none), the code exchanged ('' = none), status-field
/// suffix ('' for the primary kind), then the dependents' kinds. Answers
/// `{1, expires_at, next due, dependents brought forward…}`.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return {0, 'lock_lost'}
end
local fence = tonumber(ARGV[2])
local stored = redis.pcall('HGET', KEYS[2], 'fence')
if type(stored) ~= 'string' then stored = '0' end
stored = tonumber(stored) or 0
if stored > fence then
  redis.call('DEL', KEYS[3])
  return {0, 'stale_fence'}
end
local ttl = tonumber(ARGV[4])
if ttl <= 0 then
  redis.call('DEL', KEYS[3])
  return {0, 'expired'}
end
if redis.pcall('HEXISTS', KEYS[6], ARGV[9]) ~= 1 then
  redis.call('DEL', KEYS[3])
  return {0, 'unregistered'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = string.format('%d', now + ttl)
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2],
  'expires_at_ms', exp,
  'refreshed_at_ms', string.format('%d', now),
  'expires_in', ARGV[5],
  'fence', ARGV[2],
  'replica', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[4], KEYS[7])
local last = redis.pcall('HGET', KEYS[5], 'last_error')
if type(last) == 'table' and last.err then
  redis.call('DEL', KEYS[5])
  last = false
end
local sfx = ARGV[15]
redis.call('HDEL', KEYS[5], 'paused_until_ms' .. sfx, 'retry_after_ms' .. sfx,
  'failures' .. sfx)
if (not last) or string.sub(last, 1, #ARGV[9] + 1) == ARGV[9] .. ':' then
  redis.call('HDEL', KEYS[5], 'last_error', 'last_errcode', 'last_error_at_ms')
end
redis.call('HSET', KEYS[5], 'replica', ARGV[6])
if sfx == '' then
  redis.call('HSET', KEYS[5], 'last_ok_at_ms', string.format('%d', now))
end
redis.call('EXPIRE', KEYS[5], ARGV[12])
if ARGV[13] ~= '' then redis.call('SET', KEYS[8], ARGV[13]) end
local due = now + tonumber(ARGV[11])
local code = redis.pcall('GET', KEYS[9])
if type(code) == 'string' then
  if code == ARGV[14] then
    redis.call('DEL', KEYS[9])
  elseif #code > 2048 or not string.find(code, '^[!-~]+$') then
    -- Not a code (corrupt or hostile): no claim hands it out, so it
    -- must not make the value due at once (a loop of WeChat calls).
    redis.call('DEL', KEYS[9])
  else
    due = now
  end
end
redis.call('HSET', KEYS[6], ARGV[9], string.format('%d', due))
local pulled = {}
for i = 10, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local at = redis.call('HGET', KEYS[6], ARGV[i + 6])
    if at and (tonumber(at) or 0) > now then
      redis.call('HSET', KEYS[6], ARGV[i + 6], string.format('%d', now))
      table.insert(pulled, ARGV[i + 6])
    end
  end
end
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[7], string.format(
  '{"v":1,"id":%s,"kind":%s,"token":%s,"expires_at_ms":%s,"fence":%s,"replica":%s}',
  cjson.encode(ARGV[8]), cjson.encode(ARGV[9]), cjson.encode(ARGV[3]),
  exp, ARGV[2], cjson.encode(ARGV[6])))
return {1, exp, string.format('%d', due), unpack(pulled)}
"#,
    )
});

/// Ends a lease without a write: schedules the value's next look `delay`
/// from now and releases the lock — only while `owner` still holds it (a
/// lapsed lease has left the schedule at the lock's expiry, where it is
/// looked at again). With a failure, it is recorded in the status hash first: one
/// more consecutive failure, the error, and `retry_after_ms` (and with
/// `paused`, `paused_until_ms`) at the same instant as the queue entry.
///
/// A primary kind's failure holds every kind of the credential; another
/// kind's holds only that kind (status fields suffixed `:<kind>`).
///
/// An authorizer's pending authorization code that this lease did not
/// exchange (it arrived during the lease) makes the value due at once, with
/// no hold; the one it exchanged is deleted when `drop_code` (WeChat said
/// it is used up or expired). One that cannot be a code is deleted.
///
/// KEYS: lock, schedule, status, authorization code. ARGV: owner, kind,
/// delay_ms, failure (0/1), message, errcode ('' = none), paused (0/1),
/// replica, status ttl s, status-field suffix, code exchanged ('' = none),
/// drop code (0/1). Answers `{0}` (lapsed), or `{1, due}` (`due` 0 when the
/// value is no longer registered).
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[3])
local fresh = false
local code = redis.pcall('GET', KEYS[4])
if type(code) == 'string' then
  if code == ARGV[11] then
    if ARGV[12] == '1' then redis.call('DEL', KEYS[4]) end
  elseif #code > 2048 or not string.find(code, '^[!-~]+$') then
    -- Not a code (corrupt or hostile): no claim hands it out; dropped,
    -- and the failure holds as usual.
    redis.call('DEL', KEYS[4])
  else
    fresh = true
    due = now
  end
end
if ARGV[4] == '1' then
  -- A primary kind's failure holds every kind (unsuffixed fields); another
  -- kind's only that kind (fields suffixed ':<kind>').
  local sfx = ARGV[10]
  if type(redis.pcall('HINCRBY', KEYS[3], 'failures' .. sfx, 1)) ~= 'number' then
    local f = redis.pcall('HGET', KEYS[3], 'failures' .. sfx)
    if type(f) == 'table' then redis.call('DEL', KEYS[3]) end
    redis.call('HSET', KEYS[3], 'failures' .. sfx, 1)
  end
  redis.call('HSET', KEYS[3], 'last_error', ARGV[5],
    'last_error_at_ms', string.format('%d', now), 'replica', ARGV[8])
  if not fresh then
    redis.call('HSET', KEYS[3], 'retry_after_ms' .. sfx, string.format('%d', due))
  end
  if ARGV[6] == '' then
    redis.call('HDEL', KEYS[3], 'last_errcode')
  else
    redis.call('HSET', KEYS[3], 'last_errcode', ARGV[6])
  end
  if ARGV[7] == '1' and not fresh then
    redis.call('HSET', KEYS[3], 'paused_until_ms' .. sfx, string.format('%d', due))
  end
  redis.call('EXPIRE', KEYS[3], ARGV[9])
end
redis.call('DEL', KEYS[1])
if redis.pcall('HEXISTS', KEYS[2], ARGV[2]) ~= 1 then return {1, 0} end
redis.call('HSET', KEYS[2], ARGV[2], string.format('%d', due))
return {1, due}
",
    )
});

/// A forced refresh (operators): records the force request, brings the
/// value's schedule forward to now and wakes the refreshers. Only the
/// refreshers' and operators' Redis users may run it (it writes the force
/// key and the schedule). Answers the Redis clock (Unix ms).
///
/// KEYS: force request, schedule. ARGV: ttl_ms, channel, member, kind.
static FORCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = redis.pcall('HGET', KEYS[2], ARGV[4])
if type(at) == 'string' and (tonumber(at) or 0) > now then
  redis.call('HSET', KEYS[2], ARGV[4], string.format('%d', now))
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return now
",
    )
});

/// Takes one of today's stable-mode `force_refresh`es from the credential's
/// budget (days by the Redis clock, UTC). Returns 1 if one was left.
///
/// KEYS: status. ARGV: per-day limit, status ttl s.
static TAKE_FORCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local day = string.format('%d', math.floor(tonumber(t[1]) / 86400))
local h = redis.pcall('HMGET', KEYS[1], 'force_day', 'force_used')
if type(h) == 'table' and h.err then
  redis.call('DEL', KEYS[1])
  h = {false, false}
end
local used = 0
if h[1] == day then used = tonumber(h[2]) or 0 end
if used >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'force_day', day, 'force_used', used + 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
",
    )
});

/// The status-field suffix of `kind`: none for the subject's primary kind
/// (whose holds hold every kind), `:<kind>` for the others.
fn suffix(keys: &CredentialKeys, kind: Kind) -> String {
    if kind == keys.subject().primary() {
        String::new()
    } else {
        format!(":{kind}")
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The rules a [`claim`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules<'a> {
    /// The lease granted.
    pub lock_ttl: Duration,
    /// The shared WeChat call rate, if limited.
    pub rate: Option<&'a RateLimit>,
    /// A pending refresh request makes a value due no sooner than this
    /// after its last write.
    pub min_interval: Duration,
    /// The longest pause or backoff honoured: a stored `paused_until_ms` or
    /// `retry_after_ms` further ahead (corrupt or hostile) is cut to this.
    pub max_hold: Duration,
}

impl ClaimRules<'_> {
    /// A lease of `lock_ttl`, no rate, no minimum interval, holds of at
    /// most a week.
    pub fn new(lock_ttl: Duration) -> ClaimRules<'static> {
        ClaimRules {
            lock_ttl,
            rate: None,
            min_interval: Duration::ZERO,
            max_hold: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The shared limit on WeChat calls a claim must fit in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The rate key ([`crate::rate_key`]).
    pub key: String,
    /// Time between two calls at the sustained rate.
    pub interval: Duration,
    /// Calls that may start at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// A pending passive-refresh request, compared with what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// None pending, or one about a value that was already replaced.
    None,
    /// A report that the stored value is refused by WeChat.
    Reported,
    /// An operator's request to replace whatever is stored.
    Forced,
}

impl Request {
    /// Interprets the request keys against the stored value: a pending force
    /// wins; a report counts only while it names what is stored (or nothing
    /// is stored: then any report, `*` included, asks for a value).
    pub fn interpret(request: Option<&str>, forced: bool, stored: Option<&str>) -> Request {
        match request {
            _ if forced => Request::Forced,
            Some(r) if stored.is_none_or(|v| v == r) => Request::Reported,
            _ => Request::None,
        }
    }
}

/// What Redis held for one value at the instant its lease was granted.
/// Its `Debug` shows tokens only as prefixes.
#[derive(Clone, PartialEq, Eq)]
pub struct ValueState {
    /// The value itself (`None` when missing or not a valid string).
    pub value: Option<String>,
    /// Time left; `None` when the value is missing or has no TTL (which
    /// wxtoken never writes, and treats as missing).
    pub remaining: Option<Duration>,
    /// The lifetime WeChat announced for it, seconds.
    pub expires_in: Option<u64>,
    /// When it was written, Unix ms (Redis clock).
    pub refreshed_at_ms: Option<u64>,
    /// A pending refresh request.
    pub request: Request,
    /// Consecutive WeChat failures of the credential (shared backoff).
    pub failures: u32,
    /// The stored value this one is fetched with
    /// ([`CredentialKeys::input`]): the access token of a ticket, the verify
    /// ticket of a component token, the component token of a
    /// reconciliation, the refresh token of an authorizer's access token.
    pub input: Option<String>,
    /// An authorizer's pending authorization code (to exchange with
    /// `api_query_auth` instead of refreshing).
    pub authorization_code: Option<String>,
    /// The Redis clock at the claim, Unix ms.
    pub now_ms: u64,
    /// When the value was due (its queue score at the claim), Unix ms.
    pub due_at_ms: u64,
}

impl std::fmt::Debug for ValueState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueState")
            .field("value", &self.value.as_deref().map(crate::token_prefix))
            .field("remaining", &self.remaining)
            .field("expires_in", &self.expires_in)
            .field("refreshed_at_ms", &self.refreshed_at_ms)
            .field("request", &self.request)
            .field("failures", &self.failures)
            .field("input", &self.input.as_deref().map(crate::token_prefix))
            .field(
                "authorization_code",
                &self.authorization_code.as_ref().map(|_| "***"),
            )
            .field("now_ms", &self.now_ms)
            .field("due_at_ms", &self.due_at_ms)
            .finish()
    }
}

/// What [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours, under this fence; the value as it was then.
    Granted {
        /// The fence number of the grant.
        fence: u64,
        /// What Redis held.
        state: ValueState,
    },
    /// The value is not queued (its credential was removed).
    Unregistered,
    /// Not due until this Unix ms (someone refreshed or rescheduled it).
    NotDue(u64),
    /// Another owner holds the lease until this Unix ms.
    Busy(u64),
    /// The credential is paused or backing off until this Unix ms.
    Held(u64),
    /// Like [`Claim::Held`], but the stored pause or backoff reached
    /// further ahead than the rules allow (corrupt or hostile data) and was
    /// cut to this Unix ms.
    HoldCut(u64),
    /// The shared call rate allows the next claim in this long.
    RateLimited(Duration),
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::SimpleString(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn unexpected(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected script answer",
        what.to_owned(),
    ))
}

/// Claims `kind` of a credential if it is due: takes a permit of the
/// shared call rate (if limited; [`Claim::RateLimited`] when none is free),
/// runs the claim script (see its comment), gives the permit back if the
/// claim is refused, and moves the value's due-queue index entry to where
/// its schedule now says (an entry whose value has no schedule is dropped).
pub async fn claim<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    rules: &ClaimRules<'_>,
) -> RedisResult<Claim> {
    if let Some(rate) = rules.rate {
        if let Some(wait) = crate::rate::take(con, rate).await? {
            return Ok(Claim::RateLimited(wait));
        }
    }
    let claimed = claim_script(con, keys, kind, owner, rules).await;
    // One round trip after the script: the permit back if the claim was
    // refused, and the index entry to where the schedule now says. Both
    // are best effort: a lost refund only slows the rate, and the index is
    // a hint (a failed update must never hide a granted lease).
    let refund = rules
        .rate
        .filter(|_| !matches!(claimed, Ok(Claim::Granted { .. })));
    // Refused: the schedule says `at`, but a future entry is never moved
    // later: a holder whose lease ended within a millisecond (a value
    // waiting for its input, a local WeCom) may already have moved it to
    // its next due time, which a late move to the lock's expiry would
    // overwrite (delaying the value that long).
    let follow = match &claimed {
        Ok(Claim::Granted { state, .. }) => Some(index::follow_cmd(
            keys,
            kind,
            state.now_ms.saturating_add(millis(rules.lock_ttl)),
        )),
        Ok(Claim::NotDue(at) | Claim::Busy(at) | Claim::Held(at) | Claim::HoldCut(at)) => {
            Some(index::follow_if_due_cmd(keys, kind, *at))
        }
        _ => None,
    };
    if refund.is_some() || follow.is_some() {
        let mut pipe = redis::pipe();
        if let Some(rate) = refund {
            crate::rate::refund_in(&mut pipe, rate);
        }
        if let Some(cmd) = follow {
            pipe.add_command(cmd).ignore();
        }
        let _ = pipe.query_async::<()>(con).await;
    }
    let claimed = claimed?;
    if claimed == Claim::Unregistered {
        if let Some(at) = index::drop_orphan(con, keys, kind).await? {
            return Ok(Claim::NotDue(at));
        }
    }
    Ok(claimed)
}

/// The claim script alone (see its comment).
async fn claim_script<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    rules: &ClaimRules<'_>,
) -> RedisResult<Claim> {
    let ttl = rules.lock_ttl;
    let input = keys.input(kind);
    let answer: Vec<Value> = CLAIM
        .key(keys.lock(kind))
        .key(keys.fence())
        .key(keys.info(kind))
        .key(keys.schedule())
        .key(keys.value(kind))
        .key(keys.status())
        .key(keys.refresh_request(kind))
        .key(input.clone().unwrap_or_else(|| keys.value(kind)))
        .key(keys.force_request(kind))
        .key(keys.authorization_code())
        .arg(owner)
        .arg(millis(ttl))
        .arg(kind.as_str())
        .arg(if input.is_some() { "1" } else { "0" })
        .arg(u64::try_from(rules.min_interval.as_millis()).unwrap_or(u64::MAX))
        .arg(u64::try_from(rules.max_hold.as_millis()).unwrap_or(u64::MAX))
        .arg(suffix(keys, kind))
        .invoke_async(con)
        .await?;
    let first = answer
        .first()
        .and_then(int)
        .ok_or_else(|| unexpected("claim"))?;
    let at = || {
        answer
            .get(1)
            .and_then(int)
            .map(|n| u64::try_from(n).unwrap_or(0))
            .ok_or_else(|| unexpected("claim time"))
    };
    Ok(match first {
        -1 => Claim::Unregistered,
        -2 => Claim::NotDue(at()?),
        -3 => Claim::Busy(at()?),
        -4 => Claim::Held(at()?),
        -6 => Claim::HoldCut(at()?),
        fence if fence > 0 && answer.len() == 12 => {
            let opt_u64 = |i: usize| {
                answer
                    .get(i)
                    .and_then(int)
                    .and_then(|n| u64::try_from(n).ok())
            };
            let value = text(&answer[2]);
            let request = text(&answer[6]);
            let pttl = answer.get(3).and_then(int).unwrap_or(-2);
            Claim::Granted {
                fence: fence as u64,
                state: ValueState {
                    request: Request::interpret(
                        request.as_deref(),
                        opt_u64(10) == Some(1),
                        value.as_deref(),
                    ),
                    remaining: value
                        .as_ref()
                        .and_then(|_| u64::try_from(pttl).ok())
                        .filter(|ms| *ms > 0)
                        .map(Duration::from_millis),
                    value,
                    expires_in: opt_u64(4),
                    refreshed_at_ms: opt_u64(5),
                    failures: opt_u64(7).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                    input: text(&answer[8]),
                    // Only a code that can be one (see `is_printable_token`):
                    // WRITE and FINISH drop any other.
                    authorization_code: text(&answer[11]).filter(|c| crate::is_printable_token(c)),
                    now_ms: opt_u64(1).unwrap_or(0),
                    due_at_ms: opt_u64(9).unwrap_or(0),
                },
            }
        }
        _ => return Err(unexpected("claim")),
    })
}

/// Extends the lock to `ttl` from now if `owner` still holds it; `false`
/// means the lock was lost.
pub async fn renew_lock<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    renew(con, &keys.lock(kind), owner, ttl).await
}

/// Compare-and-extend of any lock key (a value's lease, a suite's exchange
/// lock): `PEXPIRE key ttl` while `GET key == owner`; `false` when it is
/// no longer `owner`'s.
pub(crate) async fn renew<C: ConnectionLike>(
    con: &mut C,
    key: &str,
    owner: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    let n: i64 = RENEW
        .key(key)
        .arg(owner)
        .arg(millis(ttl))
        .invoke_async(con)
        .await?;
    Ok(n == 1)
}

/// Stores a pushed `component_verify_ticket` unless a newer one is stored:
/// when the stored ticket's `create_time` is greater than this push's, it
/// is kept (a replayed old push cannot bring back an older ticket) — unless
/// the stored one is no ticket (not 1 to 2048 printable ASCII characters)
/// or its `create_time` is more than a day ahead of the Redis clock
/// (corrupt or hostile data must not keep every push out). Otherwise `SET ticket PX ttl` and the info hash (`create_time`,
/// `received_at_ms`) with the same TTL. Values of the wrong type are
/// replaced.
///
/// KEYS: ticket, info. ARGV: ticket, create_time (Unix s), ttl_ms.
/// Returns 1 when stored, 0 when a newer ticket was kept.
static STORE_VERIFY_TICKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stored = redis.pcall('HGET', KEYS[2], 'create_time')
local ticket = redis.pcall('GET', KEYS[1])
if type(stored) == 'string' and type(ticket) == 'string'
  and #ticket <= 2048 and string.find(ticket, '^[!-~]+$') then
  -- A create_time more than a day ahead of the Redis clock is no
  -- push's (corrupt or hostile): it keeps nothing out.
  local at = tonumber(stored) or 0
  if at > tonumber(ARGV[2]) and at <= tonumber(t[1]) + 86400 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'create_time', ARGV[2], 'received_at_ms', now)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
",
    )
});

/// Stores `ticket`, pushed with `create_time` (Unix s), for `ttl`, unless a
/// ticket from a later push is stored; `true` when stored.
pub async fn store_verify_ticket<C: ConnectionLike>(
    con: &mut C,
    keys: &ComponentKeys,
    ticket: &str,
    create_time: u64,
    ttl: Duration,
) -> RedisResult<bool> {
    store_pushed_ticket(
        con,
        &keys.verify_ticket(),
        &keys.verify_ticket_info(),
        ticket,
        create_time,
        ttl,
    )
    .await
}

/// The rules of [`store_verify_ticket`] for any pushed ticket (a WeCom
/// suite's `suite_ticket` too): `ticket` and `info` are keys of one slot.
pub(crate) async fn store_pushed_ticket<C: ConnectionLike>(
    con: &mut C,
    ticket_key: &str,
    info_key: &str,
    ticket: &str,
    create_time: u64,
    ttl: Duration,
) -> RedisResult<bool> {
    let n: i64 = STORE_VERIFY_TICKET
        .key(ticket_key)
        .key(info_key)
        .arg(ticket)
        .arg(create_time)
        .arg(millis(ttl))
        .invoke_async(con)
        .await?;
    Ok(n == 1)
}

/// A value to store with [`write_token`]. Its `Debug` shows only a prefix of
/// the token.
#[derive(Clone)]
pub struct TokenWrite<'a> {
    /// What is being written.
    pub kind: Kind,
    /// The lock owner string used to claim the lease.
    pub owner: &'a str,
    /// The fence number the claim returned.
    pub fence: u64,
    /// The token or ticket.
    pub token: &'a str,
    /// Time left until the real expiry (WeChat's `expires_in` less the time
    /// since the request was sent).
    pub ttl: Duration,
    /// WeChat's `expires_in` as announced, in seconds.
    pub expires_in: u64,
    /// Id of the writing replica.
    pub replica: &'a str,
    /// When the value is due for its next refresh, from now.
    pub next_due: Duration,
    /// For a primary kind: the subject's dependents held (tickets, the
    /// reconciliation), brought forward if they are not stored (they wait
    /// for it).
    pub tickets: &'a [Kind],
    /// An authorizer's refresh token to store (durable, no TTL).
    pub refresh_token: Option<&'a str>,
    /// The authorization code this lease exchanged, deleted with the write.
    pub code_used: Option<&'a str>,
}

impl std::fmt::Debug for TokenWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenWrite")
            .field("kind", &self.kind)
            .field("owner", &self.owner)
            .field("fence", &self.fence)
            .field("token", &crate::token_prefix(self.token))
            .field("ttl", &self.ttl)
            .field("expires_in", &self.expires_in)
            .field("replica", &self.replica)
            .field("next_due", &self.next_due)
            .field("tickets", &self.tickets)
            .field("refresh_token", &self.refresh_token.map(|_| "***"))
            .field("code_used", &self.code_used.map(|_| "***"))
            .finish()
    }
}

/// What [`write_token`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored and published; expires at this Unix ms (Redis clock).
    Written {
        /// Absolute expiry, Unix ms.
        expires_at_ms: u64,
        /// Tickets of the credential that were waiting for this access
        /// token (not stored) and are due now.
        tickets_due: Vec<Kind>,
    },
    /// Rejected: the lock is no longer held by this owner.
    LockLost,
    /// Rejected: a write with a newer fence is already stored.
    StaleFence,
    /// Rejected: the value had no time left.
    Expired,
    /// Rejected: the value is no longer registered (its credential was
    /// removed during the lease).
    Unregistered,
}

/// Runs the fenced write (see the script's comment for the rules).
pub async fn write_token<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    w: &TokenWrite<'_>,
) -> RedisResult<WriteOutcome> {
    let ttl_ms = u64::try_from(w.ttl.as_millis()).unwrap_or(u64::MAX);
    let tickets: &[Kind] = if w.kind == keys.subject().primary() {
        w.tickets
    } else {
        &[]
    };
    let mut inv = WRITE.prepare_invoke();
    inv.key(keys.value(w.kind))
        .key(keys.info(w.kind))
        .key(keys.lock(w.kind))
        .key(keys.refresh_request(w.kind))
        .key(keys.status())
        .key(keys.schedule())
        .key(keys.force_request(w.kind))
        .key(keys.grant())
        .key(keys.authorization_code())
        .arg(w.owner)
        .arg(w.fence)
        .arg(w.token)
        .arg(ttl_ms)
        .arg(w.expires_in)
        .arg(w.replica)
        .arg(events_channel(keys.namespace()))
        .arg(keys.id())
        .arg(w.kind.as_str())
        .arg("")
        .arg(u64::try_from(w.next_due.as_millis()).unwrap_or(u64::MAX))
        .arg(STATUS_TTL_SECS)
        .arg(w.refresh_token.unwrap_or(""))
        .arg(w.code_used.unwrap_or(""))
        .arg(suffix(keys, w.kind));
    for t in tickets {
        inv.key(keys.value(*t)).arg(t.as_str());
    }
    let answer: Vec<String> = inv.invoke_async(con).await?;
    let (ok, detail) = match answer.as_slice() {
        [ok, detail, ..] => (ok.as_str(), detail.as_str()),
        _ => return Err(unexpected("write")),
    };
    Ok(match (ok, detail) {
        ("1", exp) => {
            let due = answer
                .get(2)
                .and_then(|d| index::parse_ms(d))
                .ok_or_else(|| unexpected("write due"))?;
            let tickets_due: Vec<Kind> =
                answer[3..].iter().filter_map(|k| Kind::parse(k)).collect();
            // The value is stored: a failed index update (a hint, see
            // `index`) must not make it look lost. One round trip.
            let now = exp
                .parse::<u64>()
                .unwrap_or(0)
                .saturating_sub(u64::try_from(w.ttl.as_millis()).unwrap_or(0));
            let mut pipe = redis::pipe();
            pipe.add_command(index::follow_cmd(keys, w.kind, due))
                .ignore();
            if let Some(pull) = index::pull_cmd(keys, &tickets_due, now) {
                pipe.add_command(pull).ignore();
            }
            let _ = pipe.query_async::<()>(con).await;
            WriteOutcome::Written {
                expires_at_ms: exp.parse().unwrap_or(0),
                tickets_due,
            }
        }
        (_, "stale_fence") => WriteOutcome::StaleFence,
        (_, "expired") => WriteOutcome::Expired,
        (_, "unregistered") => WriteOutcome::Unregistered,
        _ => WriteOutcome::LockLost,
    })
}

/// A failure to record with [`finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure<'a> {
    /// What went wrong, in words (`"<kind>: …"`, never a secret).
    pub message: &'a str,
    /// WeChat's errcode, when it gave one.
    pub errcode: Option<i64>,
    /// The daily quota is exhausted: also shown as a pause.
    pub paused: bool,
    /// The replica recording it.
    pub replica: &'a str,
}

/// The authorization code a lease tried to exchange (authorizers).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Exchanged<'a> {
    /// The code.
    pub code: &'a str,
    /// WeChat said it is used up or expired: delete it.
    pub spent: bool,
}

impl std::fmt::Debug for Exchanged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanged")
            .field("code", &"***")
            .field("spent", &self.spent)
            .finish()
    }
}

/// Ends a lease without a write, queueing the next look `delay` from now
/// and recording `failure` if any. `false` when the lease had already
/// lapsed (nothing changed).
pub async fn finish<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    delay: Duration,
    failure: Option<&Failure<'_>>,
    exchanged: Option<Exchanged<'_>>,
) -> RedisResult<bool> {
    let answer: Vec<i64> = FINISH
        .key(keys.lock(kind))
        .key(keys.schedule())
        .key(keys.status())
        .key(keys.authorization_code())
        .arg(owner)
        .arg(kind.as_str())
        .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
        .arg(if failure.is_some() { "1" } else { "0" })
        .arg(failure.map_or("", |f| f.message))
        .arg(
            failure
                .and_then(|f| f.errcode)
                .map(|c| c.to_string())
                .unwrap_or_default(),
        )
        .arg(if failure.is_some_and(|f| f.paused) {
            "1"
        } else {
            "0"
        })
        .arg(failure.map_or("", |f| f.replica))
        .arg(STATUS_TTL_SECS)
        .arg(suffix(keys, kind))
        .arg(exchanged.map_or("", |e| e.code))
        .arg(if exchanged.is_some_and(|e| e.spent) {
            "1"
        } else {
            "0"
        })
        .invoke_async(con)
        .await?;
    match answer.as_slice() {
        [1, due] if *due > 0 => {
            let _ = index::follow(con, keys, kind, u64::try_from(*due).unwrap_or(0)).await;
            Ok(true)
        }
        [1, ..] => Ok(true),
        _ => Ok(false),
    }
}

/// What [`request_refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Recorded; a refresher will replace the value.
    Requested,
    /// The reported value was already replaced: nothing to do.
    AlreadyReplaced,
}

/// Asks the refreshers to replace `kind` of a credential because `reported`
/// was refused by WeChat (40001, 40014, 42001). Plain commands that a
/// business server's least-privilege Redis user may run (read the value,
/// write the request key, publish on the requests channel): if the value
/// stored is no longer `reported`, nothing is filed (`AlreadyReplaced`);
/// otherwise the request is recorded for `ttl` and the refreshers are woken.
///
/// `reported` may be [`FORCE_REQUEST`](crate::FORCE_REQUEST) to replace
/// whatever is stored: operators only (see [`force_refresh`]).
pub async fn request_refresh<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    reported: &str,
    ttl: Duration,
) -> RedisResult<RequestOutcome> {
    if reported == FORCE_REQUEST {
        force_refresh(con, keys, kind, ttl).await?;
        return Ok(RequestOutcome::Requested);
    }
    if !crate::is_printable_token(reported) {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the reported token is not a token",
            "expected 1 to 2048 printable ASCII characters".to_owned(),
        )));
    }
    // A value of the wrong type or not a token is no token: ask for one.
    let stored = read_value(con, keys, kind).await?;
    if stored.is_some_and(|v| v != reported) {
        return Ok(RequestOutcome::AlreadyReplaced);
    }
    redis::pipe()
        .cmd("SET")
        .arg(keys.refresh_request(kind))
        .arg(reported)
        .arg("PX")
        .arg(millis(ttl))
        .ignore()
        .cmd("PUBLISH")
        .arg(requests_channel(keys.namespace()))
        .arg(keys.member(kind))
        .ignore()
        .query_async::<()>(con)
        .await?;
    Ok(RequestOutcome::Requested)
}

/// Asks the refreshers to replace `kind` of a credential whatever is
/// stored (operators). Served no sooner than `refresh.force_min_interval`
/// after the last refresh; for stable tokens it may spend one of the day's
/// `force_refresh`es (`refresh.force_refresh_per_day`).
pub async fn force_refresh<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    ttl: Duration,
) -> RedisResult<()> {
    let now: i64 = FORCE
        .key(keys.force_request(kind))
        .key(keys.schedule())
        .arg(millis(ttl))
        .arg(requests_channel(keys.namespace()))
        .arg(keys.member(kind))
        .arg(kind.as_str())
        .invoke_async(con)
        .await?;
    index::pull(con, keys, &[kind], u64::try_from(now).unwrap_or(0)).await
}

/// Takes one of today's stable `force_refresh`es of the credential; `false`
/// when `per_day` are used up.
pub async fn take_force_budget<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    per_day: u32,
) -> RedisResult<bool> {
    let n: i64 = TAKE_FORCE
        .key(keys.status())
        .arg(per_day)
        .arg(STATUS_TTL_SECS)
        .invoke_async(con)
        .await?;
    Ok(n == 1)
}

/// The stored `kind` of a credential, as a refresher uses it: `None` when
/// missing, of the wrong type or not a printable token.
pub async fn read_value<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
) -> RedisResult<Option<String>> {
    let v: Value = crate::or_absent(
        redis::cmd("GET")
            .arg(keys.value(kind))
            .query_async(con)
            .await,
        Value::Nil,
    )?;
    Ok(text(&v).filter(|t| crate::is_printable_token(t)))
}

/// Brings a value that is not stored forward to now and wakes the
/// refreshers (a component token waiting for its first verify ticket).
/// Answers the Redis clock (Unix ms) when it was brought forward, else 0.
///
/// KEYS: value, schedule. ARGV: member, requests channel, kind.
static WAKE_IF_MISSING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = redis.pcall('HGET', KEYS[2], ARGV[3])
if type(at) == 'string' and (tonumber(at) or 0) > now then
  redis.call('HSET', KEYS[2], ARGV[3], string.format('%d', now))
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  return now
end
return 0
",
    )
});

/// Makes `kind` of a credential due now if it is not stored (refreshers
/// only: it moves the due-queue). `true` when it was moved.
pub async fn wake_if_missing<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
) -> RedisResult<bool> {
    let now: i64 = WAKE_IF_MISSING
        .key(keys.value(kind))
        .key(keys.schedule())
        .arg(keys.member(kind))
        .arg(requests_channel(keys.namespace()))
        .arg(kind.as_str())
        .invoke_async(con)
        .await?;
    if now <= 0 {
        return Ok(false);
    }
    index::pull(con, keys, &[kind], now.unsigned_abs()).await?;
    Ok(true)
}
