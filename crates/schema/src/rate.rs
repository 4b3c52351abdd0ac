//! The shared WeChat call rate: one key per WeChat host (or per
//! third-party platform), read and written by every replica, kept apart
//! from any credential's keys (on Redis Cluster it lives in its own slot).
//!
//! A generic cell rate: the key holds the *theoretical arrival time* (TAT,
//! Unix µs, Redis clock); a call may start when the TAT is no further ahead
//! than `burst − 1` intervals, and each call moves it one interval on. A
//! claim takes a permit first ([`take`]) and gives it back ([`refund_in`]) when
//! the claim is refused, so refused claims (another replica won the race)
//! do not eat the rate.

use crate::scripts::RateLimit;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

/// KEYS: rate. ARGV: interval µs, burst, mode (`take` / `refund`).
/// `take`: 0 when a permit was taken, else the µs to wait for one (nothing
/// taken). `refund`: moves the TAT one interval back, never before now.
/// A value that is not a number (corrupt or hostile) counts as none.
static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1]) or 1
local cur = redis.pcall('GET', KEYS[1])
local tat = 0
if type(cur) == 'string' then tat = tonumber(cur) or 0 end
if tat < now then tat = now end
local allowance = interval * math.max((tonumber(ARGV[2]) or 1) - 1, 0)
local ttl = math.floor((allowance + interval) / 1000) + 1000
if ARGV[3] == 'refund' then
  redis.call('SET', KEYS[1], string.format('%d', math.max(tat - interval, now)), 'PX', ttl)
  return 0
end
if tat - now > allowance then return tat - now - allowance end
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', ttl)
return 0
",
    )
});

fn invoke(rate: &RateLimit, mode: &str) -> redis::ScriptInvocation<'static> {
    let mut inv = RATE.prepare_invoke();
    inv.key(rate.key.clone())
        .arg(
            u64::try_from(rate.interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        )
        .arg(rate.burst.max(1))
        .arg(mode);
    inv
}

/// Takes a permit for one WeChat call. `None`: taken; `Some(wait)`: none
/// free for that long (nothing taken).
pub async fn take<C: ConnectionLike>(
    con: &mut C,
    rate: &RateLimit,
) -> RedisResult<Option<Duration>> {
    let wait: i64 = invoke(rate, "take").invoke_async(con).await?;
    Ok((wait > 0).then(|| Duration::from_micros(wait.unsigned_abs())))
}

/// Adds to a caller's pipeline the refund of a permit taken with [`take`]
/// that was not used (its reply ignored).
pub(crate) fn refund_in(pipe: &mut redis::Pipeline, rate: &RateLimit) {
    pipe.load_script(&RATE).ignore();
    pipe.invoke_script(&invoke(rate, "refund")).ignore();
}
