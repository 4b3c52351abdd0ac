//! The Lua scripts that change wxtoken's keys, and typed calls to run them on
//! a caller's connection. Each script touches the keys of one credential only
//! (one hash tag, one cluster slot). This module owns no connection.

use crate::keys::{CredentialKeys, Kind};
use crate::{events_channel, requests_channel};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

/// `SET lock owner NX PX ttl`; on success `INCR fence` and return the new
/// fence number, else 0. Atomic, so every grant gets a unique, larger fence.
/// Should the counter have been lost (evicted, deleted) while a value written
/// under a higher fence is still stored, the counter is first raised past
/// that fence: otherwise every later write would be refused as stale.
///
/// KEYS: lock, fence counter, info of the locked kind. ARGV: owner, ttl_ms.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  local stored = tonumber(redis.call('HGET', KEYS[3], 'fence') or '0')
  if fence <= stored then
    fence = stored + 1
    redis.call('SET', KEYS[2], fence)
  end
  return fence
end
return 0
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

/// Compare-and-delete: `DEL lock` only while `GET lock == owner`.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// The fenced write. Stores the value and its info hash, both expiring at the
/// token's real expiry, and publishes the update event — only if the lock is
/// still held by `owner` and no write with a newer fence has landed. Times
/// come from the Redis clock so replicas' clocks do not matter.
///
/// A pending refresh request for the value is answered by the write, so it
/// is deleted in the same step.
///
/// KEYS: value, info, lock, refresh request.
/// ARGV: owner, fence, token, ttl_ms, expires_in, replica, channel, id, kind.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return {0, 'lock_lost'}
end
local fence = tonumber(ARGV[2])
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if stored > fence then
  return {0, 'stale_fence'}
end
local ttl = tonumber(ARGV[4])
if ttl <= 0 then
  return {0, 'expired'}
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
redis.call('DEL', KEYS[4])
redis.call('PUBLISH', ARGV[7], string.format(
  '{"v":1,"id":%s,"kind":%s,"token":%s,"expires_at_ms":%s,"fence":%s,"replica":%s}',
  cjson.encode(ARGV[8]), cjson.encode(ARGV[9]), cjson.encode(ARGV[3]),
  exp, ARGV[2], cjson.encode(ARGV[6])))
return {1, exp}
"#,
    )
});

/// Compare-and-request: records a passive refresh request for the value
/// only if the stored value is still the reported one (or is gone), and wakes
/// the refreshers. A report about an already replaced value changes nothing,
/// so a storm of reports about one bad token leads to one refresh.
///
/// KEYS: value, refresh request. ARGV: reported, ttl_ms, channel, id, kind.
static REQUEST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[1] ~= '*' and cur ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. ARGV[5])
return 1
",
    )
});

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Tries to take the refresh lock of `kind`. Returns the fence number of the
/// grant, or `None` when another owner holds the lock.
pub async fn acquire_lock<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
    ttl: Duration,
) -> RedisResult<Option<u64>> {
    let fence: u64 = ACQUIRE
        .key(keys.lock(kind))
        .key(keys.fence())
        .key(keys.info(kind))
        .arg(owner)
        .arg(millis(ttl))
        .invoke_async(con)
        .await?;
    Ok((fence > 0).then_some(fence))
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
    let n: i64 = RENEW
        .key(keys.lock(kind))
        .arg(owner)
        .arg(millis(ttl))
        .invoke_async(con)
        .await?;
    Ok(n == 1)
}

/// Deletes the lock if `owner` still holds it; `false` means it had already
/// expired or passed to someone else.
pub async fn release_lock<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    owner: &str,
) -> RedisResult<bool> {
    let n: i64 = RELEASE
        .key(keys.lock(kind))
        .arg(owner)
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
    /// The lock owner string used to acquire the lock.
    pub owner: &'a str,
    /// The fence number the lock grant returned.
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
            .finish()
    }
}

/// What [`write_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored and published; expires at this Unix ms (Redis clock).
    Written {
        /// Absolute expiry, Unix ms.
        expires_at_ms: u64,
    },
    /// Rejected: the lock is no longer held by this owner.
    LockLost,
    /// Rejected: a write with a newer fence is already stored.
    StaleFence,
    /// Rejected: the value had no time left.
    Expired,
}

/// Runs the fenced write (see the script's comment for the rules).
pub async fn write_token<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    w: &TokenWrite<'_>,
) -> RedisResult<WriteOutcome> {
    let ttl_ms = u64::try_from(w.ttl.as_millis()).unwrap_or(u64::MAX);
    let (ok, detail): (i64, String) = WRITE
        .key(keys.value(w.kind))
        .key(keys.info(w.kind))
        .key(keys.lock(w.kind))
        .key(keys.refresh_request(w.kind))
        .arg(w.owner)
        .arg(w.fence)
        .arg(w.token)
        .arg(ttl_ms)
        .arg(w.expires_in)
        .arg(w.replica)
        .arg(events_channel(keys.namespace()))
        .arg(keys.id())
        .arg(w.kind.as_str())
        .invoke_async(con)
        .await?;
    Ok(match (ok, detail.as_str()) {
        (1, exp) => WriteOutcome::Written {
            expires_at_ms: exp.parse().unwrap_or(0),
        },
        (_, "stale_fence") => WriteOutcome::StaleFence,
        (_, "expired") => WriteOutcome::Expired,
        _ => WriteOutcome::LockLost,
    })
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
/// was refused by WeChat (40001, 40014, 42001). `reported` may be
/// [`FORCE_REQUEST`](crate::FORCE_REQUEST) to replace whatever is stored (operators only). The
/// request is durable for `ttl`: it is served even if no refresher is running
/// right now.
pub async fn request_refresh<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    reported: &str,
    ttl: Duration,
) -> RedisResult<RequestOutcome> {
    let n: i64 = REQUEST
        .key(keys.value(kind))
        .key(keys.refresh_request(kind))
        .arg(reported)
        .arg(millis(ttl))
        .arg(requests_channel(keys.namespace()))
        .arg(keys.id())
        .arg(kind.as_str())
        .invoke_async(con)
        .await?;
    Ok(if n == 1 {
        RequestOutcome::Requested
    } else {
        RequestOutcome::AlreadyReplaced
    })
}
