//! The due-queue and the registry: the two structures read across
//! subjects, kept as an **index** of the subjects' schedules.
//!
//! The truth about a value's due time is its subject's schedule hash
//! ([`CredentialKeys::schedule`]), in the subject's own slot, where the
//! lease scripts read and move it atomically with the lock and the fence.
//! The due-queue shards (`{due/SS}:queue`) and registry shards
//! (`{due/SS}:credentials`) live in other slots (on Redis Cluster, other
//! nodes), so no script can change both: every change of a schedule is
//! followed by a separate index update, from the same caller, in this order:
//!
//! - **registering**: the schedule first, then the index (`Batch::add`): the
//!   scheduler never finds an index entry for a value that has no schedule
//!   yet;
//! - **removing**: the schedule first (the script decides whether the
//!   subject goes: another replica may still hold it, a newer authorization
//!   may have arrived); then, only if it went, the index entries, and the
//!   schedule is read once more to put back what a registration that raced
//!   the removal scheduled ([`remove_deleted`]);
//! - **moving** (claims, writes, failures, requests): the schedule, then the
//!   index entry ([`follow`], [`pull`]) — only an entry that exists, so an
//!   update that crosses a removal never brings an entry back; a *refused* claim never moves a
//!   future entry later ([`follow_if_due`]), so that it cannot overwrite
//!   the next due time a lease that just ended (within the refused claim's
//!   round trip) put there.
//!
//! Consequences, written down as invariants in ARCHITECTURE.md: the index
//! can only be *wrong for a while* — an entry earlier than the schedule
//! costs one refused claim, which puts it right (the claim answers the
//! truth); one later than the schedule (a caller died between the two
//! steps, or two updates crossed) delays the value at most until the
//! entry's time, and requests, periodic re-registration and reconciliation
//! repair entries that are missing. Exactly-once never depends on the
//! index: the lock and the fence decide.

use crate::keys::{ComponentKeys, CredentialKeys, Kind};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;

/// KEYS: registry shard, queue shard. ARGV: id, then pairs of member and
/// due time (Unix ms). Lists the id and indexes each member at its due
/// time, unless it is indexed earlier already (an earlier entry costs a
/// refused claim; a later one could delay the value).
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'set' then redis.call('DEL', KEYS[1]) end
if redis.call('TYPE', KEYS[2])['ok'] ~= 'zset' then redis.call('DEL', KEYS[2]) end
redis.call('SADD', KEYS[1], ARGV[1])
local added = 0
for i = 2, #ARGV, 2 do
  added = added + redis.call('ZADD', KEYS[2], 'LT', 'CH', ARGV[i + 1], ARGV[i])
end
return added
",
    )
});

/// KEYS: registry shard, queue shard. ARGV: id, then members.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] == 'set' then redis.call('SREM', KEYS[1], ARGV[1]) end
if redis.call('TYPE', KEYS[2])['ok'] == 'zset' then
  for i = 2, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
end
return 1
",
    )
});

/// KEYS: a platform's authorizer index. ARGV: appid, authorized at (Unix
/// ms; '' = take it out). An index of the wrong type is replaced.
static AUTHORIZERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '' then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
",
    )
});

/// KEYS: queue shard. ARGV: due time (Unix ms), member. Moves the entry
/// to the due time if it is missing, due already (by the Redis clock), or
/// later than the due time; an entry in the future and earlier than the
/// due time was put there since, by whoever holds the truth of it (and
/// an earlier entry costs one refused claim at most).
const FOLLOW_IF_DUE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.pcall('ZSCORE', KEYS[1], ARGV[2])
if type(s) == 'table' then return 0 end
s = tonumber(s or '')
if not s then return 0 end
if s > now and s <= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return 1
";

static FOLLOW_IF_DUE: LazyLock<Script> = LazyLock::new(|| Script::new(FOLLOW_IF_DUE_LUA));

/// Index updates for many subjects, sent in one pipeline (on Redis
/// Cluster, one per shard's slot).
pub(crate) struct Batch {
    pipe: redis::Pipeline,
    len: usize,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        let mut pipe = redis::pipe();
        pipe.load_script(&ADD)
            .ignore()
            .load_script(&REMOVE)
            .ignore()
            .load_script(&AUTHORIZERS)
            .ignore();
        Batch { pipe, len: 0 }
    }

    /// Lists `keys`' subject and indexes `dues` (kind, due at Unix ms):
    /// see [`ADD`].
    pub(crate) fn add(&mut self, keys: &CredentialKeys, dues: &[(Kind, u64)]) {
        let mut inv = ADD.prepare_invoke();
        inv.key(keys.registry()).key(keys.due()).arg(keys.id());
        for (kind, at) in dues {
            inv.arg(keys.member(*kind)).arg(*at);
        }
        self.pipe.invoke_script(&inv);
        self.len += 1;
    }

    /// Takes `keys`' subject out of its registry shard and `kinds` out of
    /// its queue shard.
    pub(crate) fn remove(&mut self, keys: &CredentialKeys, kinds: &[Kind]) {
        let mut inv = REMOVE.prepare_invoke();
        inv.key(keys.registry()).key(keys.due()).arg(keys.id());
        for kind in kinds {
            inv.arg(keys.member(*kind));
        }
        self.pipe.invoke_script(&inv);
        self.len += 1;
    }

    /// Puts `member` (an authorizer's appid, a suite corp's corpid) in the
    /// run-time index `index` (a platform's authorizers, a suite's corps),
    /// registered at `at_ms`, or (`None`) takes it out.
    pub(crate) fn child(&mut self, index: &str, member: &str, at_ms: Option<u64>) {
        let mut inv = AUTHORIZERS.prepare_invoke();
        inv.key(index)
            .arg(member)
            .arg(at_ms.map(|ms| ms.to_string()).unwrap_or_default());
        self.pipe.invoke_script(&inv);
        self.len += 1;
    }

    pub(crate) async fn run<C: ConnectionLike>(self, con: &mut C) -> RedisResult<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.pipe
            .query_async::<Vec<redis::Value>>(con)
            .await
            .map(drop)
    }
}

/// After a subject was deleted (its schedule with it): takes its entries
/// out of the registry and due-queue shards (and, for an authorizer or a
/// corp, out of its parent's `index` as `child`), then reads its schedule
/// again and puts back what it finds — a registration that raced the
/// deletion (its schedule written after the deletion, its entries before
/// this removal) keeps its entries. Only the caller that deleted the
/// subject removes its entries: one that kept it (another holder, a newer
/// authorization) changes nothing, so two removals that cross cannot leave
/// an entry behind that nobody would claim.
pub(crate) async fn remove_deleted<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kinds: &[Kind],
    child: Option<(&str, &str)>,
) -> RedisResult<()> {
    let mut batch = Batch::new();
    batch.remove(keys, kinds);
    if let Some((index, member)) = child {
        batch.child(index, member, None);
    }
    batch.run(con).await?;
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(keys.schedule());
    for kind in kinds {
        cmd.arg(kind.as_str());
    }
    cmd.arg("authorized_at");
    let found: Vec<Option<String>> = crate::or_absent(cmd.query_async(con).await, Vec::new())?;
    let at = |i: usize| found.get(i).cloned().flatten().and_then(|v| parse_ms(&v));
    let dues: Vec<(Kind, u64)> = kinds
        .iter()
        .enumerate()
        .filter_map(|(i, kind)| Some((*kind, at(i)?)))
        .collect();
    if dues.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new();
    batch.add(keys, &dues);
    if let (Some((index, member)), Some(authorized)) = (child, at(kinds.len())) {
        batch.child(index, member, Some(authorized));
    }
    batch.run(con).await
}

/// Moves the index entry of `kind` to `at_ms` (where its schedule now
/// says). Only an entry that exists (`XX`): one a removal took out between
/// the script and this update must stay out (nobody would ever claim it
/// again), and one lost otherwise is put back by re-registration.
pub async fn follow<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    at_ms: u64,
) -> RedisResult<()> {
    crate::or_absent(
        follow_cmd(keys, kind, at_ms)
            .query_async::<i64>(con)
            .await
            .map(drop),
        (),
    )
}

/// The command of [`follow`], for a caller's pipeline.
pub(crate) fn follow_cmd(keys: &CredentialKeys, kind: Kind, at_ms: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(keys.due())
        .arg("XX")
        .arg(at_ms)
        .arg(keys.member(kind));
    cmd
}

/// [`follow_if_due`] as one command for a caller's pipeline: `EVAL` with
/// the script's text (no script to load first, on whichever node holds
/// the shard).
pub(crate) fn follow_if_due_cmd(keys: &CredentialKeys, kind: Kind, at_ms: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(FOLLOW_IF_DUE_LUA)
        .arg(1)
        .arg(keys.due())
        .arg(at_ms)
        .arg(keys.member(kind));
    cmd
}

/// Moves the index entry of `kind` to `at_ms` after a refused claim — if
/// it exists (as [`follow`]), and unless it is in the future and no later
/// than `at_ms`: then it
/// was moved there since by the value's holder (whose write or finish
/// knows better than a refused claim that read the schedule before it).
/// An earlier time (a refresh request served once `min_interval` has
/// passed) is always taken.
pub async fn follow_if_due<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    at_ms: u64,
) -> RedisResult<()> {
    FOLLOW_IF_DUE
        .key(keys.due())
        .arg(at_ms)
        .arg(keys.member(kind))
        .invoke_async::<i64>(con)
        .await
        .map(drop)
}

/// Brings the index entries of `kinds` forward to `at_ms` (their schedule
/// was brought forward): entries that are earlier already stay.
pub async fn pull<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kinds: &[Kind],
    at_ms: u64,
) -> RedisResult<()> {
    match pull_cmd(keys, kinds, at_ms) {
        Some(cmd) => crate::or_absent(cmd.query_async::<i64>(con).await.map(drop), ()),
        None => Ok(()),
    }
}

/// The command of [`pull`] (`None` for no kinds), for a caller's pipeline.
pub(crate) fn pull_cmd(keys: &CredentialKeys, kinds: &[Kind], at_ms: u64) -> Option<redis::Cmd> {
    if kinds.is_empty() {
        return None;
    }
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(keys.due()).arg("XX").arg("LT");
    for kind in kinds {
        cmd.arg(at_ms).arg(keys.member(*kind));
    }
    Some(cmd)
}

/// Removes the index entry of a value that has no schedule (a claim found
/// it unregistered): then, in case a registration raced the removal (its
/// schedule written after the claim looked, its entry added before this
/// removal), reads the schedule again and indexes what it finds. Returns
/// the due time found, if the value is registered after all.
pub async fn drop_orphan<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
) -> RedisResult<Option<u64>> {
    crate::or_absent(
        redis::cmd("ZREM")
            .arg(keys.due())
            .arg(keys.member(kind))
            .query_async::<i64>(con)
            .await
            .map(drop),
        (),
    )?;
    let Some(at) = due_at(con, keys, kind).await? else {
        return Ok(None);
    };
    // Put back (not `follow`: the entry is gone).
    crate::or_absent(
        redis::cmd("ZADD")
            .arg(keys.due())
            .arg(at)
            .arg(keys.member(kind))
            .query_async::<i64>(con)
            .await
            .map(drop),
        (),
    )?;
    Ok(Some(at))
}

/// When `kind` of `keys`' subject is due, by its schedule (Unix ms, Redis
/// clock); `None` when it is not registered.
pub async fn due_at<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
) -> RedisResult<Option<u64>> {
    let v: Option<String> = crate::or_absent(
        redis::cmd("HGET")
            .arg(keys.schedule())
            .arg(kind.as_str())
            .query_async(con)
            .await,
        None,
    )?;
    Ok(v.and_then(|s| parse_ms(&s)))
}

/// A due time as stored (an integer or a float, as `ZADD` scores print):
/// Unix ms, `None` when it is not a number.
pub(crate) fn parse_ms(s: &str) -> Option<u64> {
    let f: f64 = s.trim().parse().ok()?;
    f.is_finite().then_some(if f > 0.0 { f as u64 } else { 0 })
}

/// Every id listed in the registry shards of `namespace`, sorted (ids that
/// are not valid UTF-8 are left out).
pub async fn registered<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
) -> RedisResult<Vec<String>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in crate::registry_keys(namespace) {
        pipe.smembers(key);
    }
    let replies: Vec<redis::Value> = pipe.query_async(con).await?;
    Ok(ids_of(replies))
}

/// The ids in `SMEMBERS` replies of registry shards (a shard of the wrong
/// type counts as empty), sorted and deduplicated.
pub(crate) fn ids_of(replies: impl IntoIterator<Item = redis::Value>) -> Vec<String> {
    let mut ids: Vec<String> = replies
        .into_iter()
        .filter_map(|v| redis::from_redis_value::<Vec<Vec<u8>>>(v).ok())
        .flatten()
        .filter_map(|b| String::from_utf8(b).ok())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Whether `keys`' subject is listed in its registry shard.
pub async fn is_registered<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
) -> RedisResult<bool> {
    crate::or_absent(
        redis::cmd("SISMEMBER")
            .arg(keys.registry())
            .arg(keys.id())
            .query_async(con)
            .await,
        false,
    )
}

/// The registry of schema version 1 (one set for the namespace, before
/// the registry was sharded and schedules were kept per subject).
fn v1_registry_key(namespace: &str) -> String {
    format!("{namespace}:credentials")
}

/// Entries read per round trip while migrating.
const MIGRATE_PAGE: usize = 1_000;

/// Upgrades data written by wxtoken with key schema 1 (one registry set,
/// due times only in the due-queue): every queued value gets its schedule
/// field from its queue entry, every authorizer its `authorized_at` from
/// its platform's index, and every registered id moves to its registry
/// shard; then the old registry set is deleted. Idempotent (fields are set
/// only where missing), so replicas starting together may all run it; a
/// no-op (one `EXISTS`) once done. Returns how many schedule fields it set.
pub async fn migrate_v1<C: ConnectionLike>(con: &mut C, namespace: &str) -> RedisResult<u64> {
    let old = v1_registry_key(namespace);
    let exists: bool = redis::cmd("EXISTS").arg(&old).query_async(con).await?;
    if !exists {
        return Ok(0);
    }
    let mut set = 0u64;
    for shard in 0..crate::DUE_SHARDS {
        let queue = crate::due_key(namespace, shard);
        let mut offset = 0usize;
        loop {
            let page: Vec<(Vec<u8>, f64)> = crate::or_absent(
                redis::cmd("ZRANGE")
                    .arg(&queue)
                    .arg(offset)
                    .arg(offset + MIGRATE_PAGE - 1)
                    .arg("WITHSCORES")
                    .query_async(con)
                    .await,
                Vec::new(),
            )?;
            offset += page.len();
            let mut pipe = redis::pipe();
            for (member, score) in &page {
                let Some((id, kind)) = std::str::from_utf8(member)
                    .ok()
                    .and_then(crate::parse_member)
                else {
                    continue;
                };
                let Ok(keys) = CredentialKeys::for_id(namespace, id) else {
                    continue;
                };
                let at = if score.is_finite() && *score > 0.0 {
                    *score as u64
                } else {
                    0
                };
                pipe.cmd("HSETNX")
                    .arg(keys.schedule())
                    .arg(kind.as_str())
                    .arg(at);
            }
            if pipe.cmd_iter().next().is_some() {
                let added: Vec<redis::Value> = pipe.query_async(con).await?;
                set += added
                    .iter()
                    .filter(|v| matches!(v, redis::Value::Int(1)))
                    .count() as u64;
            }
            if page.len() < MIGRATE_PAGE {
                break;
            }
        }
    }
    let ids: Vec<Vec<u8>> = crate::or_absent(
        redis::cmd("SMEMBERS").arg(&old).query_async(con).await,
        Vec::new(),
    )?;
    let ids: Vec<String> = ids
        .into_iter()
        .filter_map(|b| String::from_utf8(b).ok())
        .collect();
    for chunk in ids.chunks(MIGRATE_PAGE) {
        let mut pipe = redis::pipe();
        for id in chunk {
            if let Ok(keys) = CredentialKeys::for_id(namespace, id) {
                pipe.sadd(keys.registry(), id).ignore();
            }
        }
        if pipe.cmd_iter().next().is_some() {
            pipe.query_async::<()>(con).await?;
        }
    }
    for id in &ids {
        let Some(crate::Subject::Component(appid)) = crate::Subject::parse(id) else {
            continue;
        };
        let Ok(component) = ComponentKeys::new(namespace, appid) else {
            continue;
        };
        let mut offset = 0usize;
        loop {
            let (covered, page) =
                crate::registry::authorizers_page(con, &component, offset, MIGRATE_PAGE).await?;
            offset += covered;
            let mut pipe = redis::pipe();
            for (authorizer, at) in &page {
                if let Ok(keys) = CredentialKeys::authorizer(namespace, appid, authorizer) {
                    pipe.cmd("HSETNX")
                        .arg(keys.schedule())
                        .arg("authorized_at")
                        .arg(*at)
                        .ignore();
                }
            }
            if pipe.cmd_iter().next().is_some() {
                pipe.query_async::<()>(con).await?;
            }
            if covered < MIGRATE_PAGE {
                break;
            }
        }
    }
    redis::cmd("DEL").arg(&old).query_async::<i64>(con).await?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_parse_leniently() {
        assert_eq!(parse_ms("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_ms("1.7e12"), Some(1_700_000_000_000));
        assert_eq!(parse_ms("-5"), Some(0));
        for bad in ["", "x", "inf", "nan"] {
            assert_eq!(parse_ms(bad), None, "{bad:?}");
        }
    }
}
