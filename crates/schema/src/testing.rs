//! For tests and benchmarks of other crates (feature `testing`): store a
//! value the way a refresher does — queue it, claim it, write it under the
//! fence — without running a refresher.

use crate::registry::{self, Registration};
use crate::{
    claim, write_token, Claim, ClaimRules, CredentialKeys, Kind, TokenWrite, WriteOutcome,
};
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::time::Duration;

/// Stores `token` as `kind` of `keys`' credential with `ttl` left, as
/// replica `replica`; returns the outcome and the fence it was written
/// under. The value is queued (if it was not) and made due first.
pub async fn store<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    token: &str,
    ttl: Duration,
    replica: &str,
) -> RedisResult<(WriteOutcome, u64)> {
    let facts = Registration {
        appid: "wxtesting",
        mode: "classic",
        kinds: &[kind],
        ticket_delay: Duration::ZERO,
    };
    registry::register(
        con,
        &[(keys.clone(), facts)],
        replica,
        Duration::from_secs(15),
    )
    .await?;
    set_due(con, keys, kind, 0).await?;
    let owner = format!("{replica}#{:016x}", rand_u64());
    let fence = match claim(
        con,
        keys,
        kind,
        &owner,
        &ClaimRules::new(Duration::from_secs(30)),
    )
    .await?
    {
        Claim::Granted { fence, .. } => fence,
        other => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "value not claimable",
                format!("{other:?}"),
            )))
        }
    };
    let w = TokenWrite {
        kind,
        owner: &owner,
        fence,
        token,
        ttl,
        expires_in: ttl.as_secs(),
        replica,
        next_due: ttl / 2,
        tickets: &[],
        refresh_token: None,
        code_used: None,
    };
    Ok((write_token(con, keys, &w).await?, fence))
}

/// Moves a registered value's schedule and its due-queue entry to `at_ms`
/// (Unix ms; 0: due at once), as a refresher's claim or write would.
pub async fn set_due<C: ConnectionLike>(
    con: &mut C,
    keys: &CredentialKeys,
    kind: Kind,
    at_ms: u64,
) -> RedisResult<()> {
    redis::pipe()
        .hset(keys.schedule(), kind.as_str(), at_ms)
        .ignore()
        .query_async::<()>(con)
        .await?;
    crate::index::follow(con, keys, kind, at_ms).await
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
