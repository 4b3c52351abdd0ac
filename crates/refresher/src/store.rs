//! The refresher's Redis reads and status writes, on top of the key schema.
//!
//! Reads what the schedule needs to decide (time left, announced lifetime,
//! pause) and records outcomes in the operator-facing status hash. Every
//! operation is bounded by the configured Redis timeout. Lock and write
//! semantics live in `wxtoken_schema`, not here.

use std::future::Future;
use std::time::Duration;
use wxtoken_schema::{
    info, registry_key, status, CredentialKeys, Kind, FORCE_REQUEST, STATUS_TTL_SECS,
};

/// A Redis failure (connection, timeout, or command error). Its text comes
/// from the Redis client and never holds a secret: URLs are not included.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(pub String);

impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        RedisError(e.to_string())
    }
}

impl From<deadpool_redis::PoolError> for RedisError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        RedisError(format!("no connection: {e}"))
    }
}

/// Runs `fut` with the Redis timeout.
pub async fn bounded<T, E: Into<RedisError>>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(RedisError(format!("no answer within {limit:?}"))),
    }
}

/// A pending passive-refresh request, compared with what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// None pending, or one about a value that was already replaced.
    None,
    /// A report that the stored value is refused by WeChat.
    Reported,
    /// An operator's request to replace whatever is stored.
    Forced,
}

/// What Redis says about one stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The value itself.
    pub value: Option<String>,
    /// Time left; `None` when the value is missing (or has no TTL, which
    /// wxtoken never writes and treats as missing).
    pub remaining: Option<Duration>,
    /// The lifetime WeChat announced for it, seconds.
    pub expires_in: Option<u64>,
    /// When it was written, Unix ms (Redis clock).
    pub refreshed_at_ms: Option<u64>,
    /// Unix ms until which the credential is paused, if it is.
    pub paused_until_ms: Option<u64>,
    /// Unix ms before which no replica may call WeChat (shared backoff).
    pub retry_after_ms: Option<u64>,
    /// A pending refresh request.
    pub request: Request,
    /// The Redis server's clock, Unix ms.
    pub now_ms: u64,
}

/// Reads the value, its time left, lifetime, pause and any pending refresh
/// request in one round trip.
pub async fn read(
    con: &mut impl redis::aio::ConnectionLike,
    keys: &CredentialKeys,
    kind: Kind,
) -> Result<Stored, redis::RedisError> {
    #[allow(clippy::type_complexity)]
    let (value, pttl, (expires_in, refreshed_at_ms), (paused, retry_after), request, time): (
        Option<String>,
        i64,
        (Option<u64>, Option<u64>),
        (Option<u64>, Option<u64>),
        Option<String>,
        (u64, u64),
    ) = redis::pipe()
        .get(keys.value(kind))
        .pttl(keys.value(kind))
        .cmd("HMGET")
        .arg(keys.info(kind))
        .arg(&[info::EXPIRES_IN, info::REFRESHED_AT_MS])
        .cmd("HMGET")
        .arg(keys.status())
        .arg(&[status::PAUSED_UNTIL_MS, status::RETRY_AFTER_MS])
        .get(keys.refresh_request(kind))
        .cmd("TIME")
        .query_async(con)
        .await?;
    let request = match request {
        Some(r) if r == FORCE_REQUEST => Request::Forced,
        Some(r) if value.as_deref().is_none_or(|v| v == r) => Request::Reported,
        _ => Request::None,
    };
    Ok(Stored {
        value,
        remaining: u64::try_from(pttl)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
        expires_in,
        refreshed_at_ms,
        paused_until_ms: paused,
        retry_after_ms: retry_after,
        request,
        now_ms: time.0 * 1000 + time.1 / 1000,
    })
}

/// Reads the stored access token (the input of ticket fetches).
pub async fn access_token(
    con: &mut impl redis::aio::ConnectionLike,
    keys: &CredentialKeys,
) -> Result<Option<String>, redis::RedisError> {
    redis::cmd("GET")
        .arg(keys.value(Kind::AccessToken))
        .query_async(con)
        .await
}

/// Registers the credential for `wxtoken status` and records its public facts.
pub async fn register(
    con: &mut deadpool_redis::Connection,
    namespace: &str,
    keys: &CredentialKeys,
    appid: &str,
    mode: &str,
) -> Result<(), redis::RedisError> {
    redis::pipe()
        .sadd(registry_key(namespace), keys.id())
        .ignore()
        .hset_multiple(
            keys.status(),
            &[(status::APPID, appid), (status::MODE, mode)],
        )
        .ignore()
        .expire(keys.status(), STATUS_TTL_SECS as i64)
        .ignore()
        .query_async(con)
        .await
}

/// The Redis server's clock, Unix ms.
async fn redis_now(con: &mut deadpool_redis::Connection) -> Result<u64, redis::RedisError> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(con).await?;
    Ok(secs * 1000 + micros / 1000)
}

/// Records a successful fetch of `kind` and re-registers the credential
/// (Redis may have restarted empty since start-up). An access-token success
/// sets `last_ok_at_ms`. The error, pause and shared backoff are cleared when
/// the recorded error is this kind's (errors are recorded as `"<kind>: …"`)
/// or there is none: a ticket success must not hide a failing access token.
pub async fn record_ok(
    con: &mut deadpool_redis::Connection,
    keys: &CredentialKeys,
    kind: Kind,
    appid: &str,
    mode: &str,
    replica: &str,
) -> Result<(), redis::RedisError> {
    let now_ms = redis_now(con).await?;
    let last_error: Option<String> = redis::cmd("HGET")
        .arg(keys.status())
        .arg(status::LAST_ERROR)
        .query_async(con)
        .await?;
    let clears = last_error.is_none_or(|e| e.starts_with(&format!("{kind}:")));
    let mut fields = vec![
        (status::APPID, appid.to_owned()),
        (status::MODE, mode.to_owned()),
        (status::REPLICA, replica.to_owned()),
    ];
    if kind == Kind::AccessToken {
        fields.push((status::LAST_OK_AT_MS, now_ms.to_string()));
    }
    let mut pipe = redis::pipe();
    pipe.sadd(registry_key(keys.namespace()), keys.id())
        .ignore()
        .hset_multiple(keys.status(), &fields)
        .ignore();
    if clears {
        pipe.hdel(
            keys.status(),
            &[
                status::LAST_ERROR,
                status::LAST_ERRCODE,
                status::LAST_ERROR_AT_MS,
                status::PAUSED_UNTIL_MS,
                status::RETRY_AFTER_MS,
                status::FAILURES,
            ],
        )
        .ignore();
    }
    pipe.expire(keys.status(), STATUS_TTL_SECS as i64)
        .ignore()
        .query_async(con)
        .await
}

/// Counts one more consecutive WeChat failure of the credential (shared by
/// all replicas); returns the new count.
pub async fn count_failure(
    con: &mut deadpool_redis::Connection,
    keys: &CredentialKeys,
) -> Result<u32, redis::RedisError> {
    let (n,): (u32,) = redis::pipe()
        .hincr(keys.status(), status::FAILURES, 1)
        .expire(keys.status(), STATUS_TTL_SECS as i64)
        .ignore()
        .query_async(con)
        .await?;
    Ok(n)
}

/// Records a failure and the time before which no replica calls WeChat
/// again (`wait` from now); with `paused`, that is also shown as a pause.
pub async fn record_error(
    con: &mut deadpool_redis::Connection,
    keys: &CredentialKeys,
    replica: &str,
    message: &str,
    errcode: Option<i64>,
    wait: Duration,
    paused: bool,
) -> Result<(), redis::RedisError> {
    let now_ms = redis_now(con).await?;
    let until = (now_ms + wait.as_millis() as u64).to_string();
    let mut fields = vec![
        (status::LAST_ERROR, message.to_owned()),
        (status::LAST_ERROR_AT_MS, now_ms.to_string()),
        (status::REPLICA, replica.to_owned()),
        (status::RETRY_AFTER_MS, until.clone()),
    ];
    if let Some(code) = errcode {
        fields.push((status::LAST_ERRCODE, code.to_string()));
    }
    if paused {
        fields.push((status::PAUSED_UNTIL_MS, until));
    }
    let mut pipe = redis::pipe();
    pipe.hset_multiple(keys.status(), &fields).ignore();
    if errcode.is_none() {
        pipe.hdel(keys.status(), status::LAST_ERRCODE).ignore();
    }
    pipe.expire(keys.status(), STATUS_TTL_SECS as i64).ignore();
    pipe.query_async(con).await
}
