//! The operator's view of the keys: one [`read`] of the registry, the Redis
//! clock and, for each credential asked about, its status hash and every
//! kind's value, expiry, info hash, pending refresh request and lock owner —
//! interpreted once, here, for `wxtoken status` and the replicas' status page.
//!
//! Plain data (serialized with the field names of `wxtoken status --json`)
//! and reads on the caller's connection: one MULTI/EXEC round trip per
//! [`READ_CHUNK`] credentials, so 100,000 credentials are read in 200
//! moderate transactions instead of one that would block Redis and buffer
//! millions of replies at once. It must not write to Redis or
//! own a connection, and must never hand out a whole token or a request's
//! reported value: a stored value leaves here only as an 8-character prefix
//! (not serialized; the caller decides whether to show it), a request only
//! as "forced or not".

use crate::keys::{ComponentKeys, CredentialKeys, Kind};
use crate::{info, registry_keys, status, Request};
use redis::aio::ConnectionLike;
use redis::{ErrorKind, FromRedisValue, RedisResult, Value};
use serde::Serialize;
use std::collections::HashMap;

/// Characters of a stored value kept in [`ValueStatus::token_prefix`].
pub const PREFIX_CHARS: usize = 8;

/// Credentials [`read`] asks about per MULTI/EXEC round trip (each costs 19
/// commands: the status hash, then six per kind).
pub const READ_CHUNK: usize = 500;

/// What Redis held: at one instant per [`READ_CHUNK`] credentials.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The Redis clock (which every stored time uses) when the read began,
    /// Unix ms. Later chunks judge `paused` by their own clock reading.
    pub now_ms: u64,
    /// The namespace's registry set of credential ids, sorted.
    pub registered: Vec<String>,
    /// The credentials asked about, in the order asked.
    pub credentials: Vec<Credential>,
}

/// One credential.
#[derive(Debug, Clone, Serialize)]
pub struct Credential {
    /// Credential id.
    pub id: String,
    /// Its status hash.
    #[serde(flatten)]
    pub status: Status,
    /// One entry per kind the subject can have ([`CredentialKeys::kinds`],
    /// in [`KINDS`](crate::KINDS) order), stored or not.
    pub kinds: Vec<ValueStatus>,
}

/// The credential's status hash (see [`crate::status`]); absent facts are
/// `None`. Times are Unix ms by the Redis clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// WeChat appid.
    pub appid: Option<String>,
    /// `classic` or `stable`.
    pub mode: Option<String>,
    /// Last successful WeChat fetch of any kind.
    pub last_ok_at_ms: Option<u64>,
    /// The last failure, in words (never holds a secret).
    pub last_error: Option<String>,
    /// WeChat's errcode of the last failure.
    pub last_errcode: Option<i64>,
    /// When the last failure happened.
    pub last_error_at_ms: Option<u64>,
    /// Refreshes are paused until then (daily quota exhausted).
    pub paused_until_ms: Option<u64>,
    /// `paused_until_ms` is later than the snapshot's `now_ms`.
    pub paused: bool,
    /// Replica that last wrote the status hash.
    #[serde(rename = "status_replica")]
    pub replica: Option<String>,
}

impl Status {
    /// Interprets a status hash seen at `now_ms`.
    pub fn from_hash(h: &HashMap<String, String>, now_ms: u64) -> Status {
        let paused_until_ms = num(h, status::PAUSED_UNTIL_MS);
        Status {
            appid: h.get(status::APPID).cloned(),
            mode: h.get(status::MODE).cloned(),
            last_ok_at_ms: num(h, status::LAST_OK_AT_MS),
            last_error: h.get(status::LAST_ERROR).cloned(),
            last_errcode: num(h, status::LAST_ERRCODE),
            last_error_at_ms: num(h, status::LAST_ERROR_AT_MS),
            paused_until_ms,
            paused: paused_until_ms.is_some_and(|until| until > now_ms),
            replica: h.get(status::REPLICA).cloned(),
        }
    }

    /// The recorded error still stands: it is newer than the last success
    /// (or there was none).
    pub fn failing(&self) -> bool {
        match (&self.last_error, self.last_error_at_ms, self.last_ok_at_ms) {
            (None, _, _) => false,
            (Some(_), Some(error), Some(ok)) => error > ok,
            (Some(_), _, None) => true,
            (Some(_), None, Some(_)) => false,
        }
    }
}

/// One kind of a credential (the access token or a ticket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueStatus {
    /// `access_token`, `jsapi_ticket` or `wx_card_ticket`.
    pub kind: Kind,
    /// A value is stored.
    pub stored: bool,
    /// Time left (PTTL of the stored value), ms.
    pub ttl_ms: Option<u64>,
    /// Absolute expiry, Unix ms.
    pub expires_at_ms: Option<u64>,
    /// Lifetime WeChat announced, seconds.
    pub expires_in: Option<u64>,
    /// When the value was written, Unix ms.
    pub refreshed_at_ms: Option<u64>,
    /// Replica that fetched it.
    pub replica: Option<String>,
    /// Fence number of the write.
    pub fence: Option<u64>,
    /// A refresh request the refreshers will serve, if any.
    pub refresh_request: Option<PendingRequest>,
    /// Replica holding the refresh lock (a refresh in flight), without the
    /// lock's nonce.
    pub locked_by: Option<String>,
    /// The first [`PREFIX_CHARS`] characters of the stored value. Not
    /// serialized: whoever shows it says so.
    #[serde(skip)]
    pub token_prefix: Option<String>,
}

/// A refresh request that is still to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PendingRequest {
    /// Replace whatever is stored ([`FORCE_REQUEST`](crate::FORCE_REQUEST)), rather than a
    /// reported refused value.
    pub force: bool,
    /// Time until the request lapses, ms.
    pub ttl_ms: Option<u64>,
}

impl ValueStatus {
    /// Nothing known about `kind`.
    pub fn unknown(kind: Kind) -> ValueStatus {
        ValueStatus {
            kind,
            stored: false,
            ttl_ms: None,
            expires_at_ms: None,
            expires_in: None,
            refreshed_at_ms: None,
            replica: None,
            fence: None,
            refresh_request: None,
            locked_by: None,
            token_prefix: None,
        }
    }
}

/// The replies about one kind, as Redis gave them.
struct RawValue {
    value: Option<String>,
    pttl: i64,
    info: HashMap<String, String>,
    request: Option<String>,
    request_pttl: i64,
    /// PTTL of the force-request key (−2: none).
    force_pttl: i64,
    lock: Option<String>,
}

impl RawValue {
    fn interpret(self, kind: Kind) -> ValueStatus {
        let info = &self.info;
        // Served by the refreshers: a force, or a report about what is
        // stored (or about anything, while nothing is stored). A report
        // about a value already replaced waits for nothing.
        let forced = self.force_pttl != -2;
        let refresh_request =
            match Request::interpret(self.request.as_deref(), forced, self.value.as_deref()) {
                Request::None => None,
                Request::Forced => Some(PendingRequest {
                    force: true,
                    ttl_ms: ttl(self.force_pttl),
                }),
                Request::Reported => Some(PendingRequest {
                    force: false,
                    ttl_ms: ttl(self.request_pttl),
                }),
            };
        ValueStatus {
            kind,
            stored: self.value.is_some(),
            ttl_ms: self.value.as_ref().and(ttl(self.pttl)),
            expires_at_ms: num(info, info::EXPIRES_AT_MS),
            expires_in: num(info, info::EXPIRES_IN),
            refreshed_at_ms: num(info, info::REFRESHED_AT_MS),
            replica: info.get(info::REPLICA).cloned(),
            fence: num(info, info::FENCE),
            refresh_request,
            // The owner is `replica#nonce`; the nonce means nothing to people.
            locked_by: self
                .lock
                .as_deref()
                .map(|o| o.split_once('#').map_or(o, |(r, _)| r).to_owned()),
            token_prefix: self
                .value
                .as_deref()
                .map(|v| v.chars().take(PREFIX_CHARS).collect()),
        }
    }
}

fn num<T: std::str::FromStr>(h: &HashMap<String, String>, field: &str) -> Option<T> {
    h.get(field).and_then(|v| v.trim().parse().ok())
}

/// A PTTL reply as time left: `None` for a missing key or one without TTL.
fn ttl(pttl: i64) -> Option<u64> {
    u64::try_from(pttl).ok()
}

/// The registry of `namespace` (every shard), sorted: the ids to ask
/// [`read`] about.
pub async fn registered<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
) -> RedisResult<Vec<String>> {
    crate::index::registered(con, namespace).await
}

/// Reads the Redis clock, the registry of `namespace` and every credential
/// in `creds` (keys of that namespace), [`READ_CHUNK`] credentials per
/// MULTI/EXEC round trip: each credential is read at one instant (on a
/// single Redis, each chunk too; on Redis Cluster, each slot's part). Credentials come back in the order given. Read-only.
pub async fn read<'a, C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    creds: impl IntoIterator<Item = &'a CredentialKeys>,
) -> RedisResult<Snapshot> {
    read_chunked(con, namespace, creds, READ_CHUNK).await
}

/// [`read`] with `chunk` credentials per round trip (at least 1).
pub async fn read_chunked<'a, C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    creds: impl IntoIterator<Item = &'a CredentialKeys>,
    chunk: usize,
) -> RedisResult<Snapshot> {
    let creds: Vec<&CredentialKeys> = creds.into_iter().collect();
    let chunk = chunk.max(1);
    let mut chunks = creds.chunks(chunk);
    // The first round trip also reads the registry.
    let first = chunks.next().unwrap_or_default();
    let mut pipe = redis::pipe();
    pipe.atomic().ignore_errors().cmd("TIME");
    let shards = registry_keys(namespace);
    for key in &shards {
        pipe.smembers(key);
    }
    ask_about(&mut pipe, first);
    let replies: Vec<Value> = pipe.query_async(con).await?;
    let mut r = Replies(replies.into_iter());
    let now_ms = r.now_ms()?;
    let mut lists = Vec::with_capacity(shards.len());
    for _ in &shards {
        lists.push(r.next_value()?);
    }
    let registered = crate::index::ids_of(lists);
    let mut credentials = Vec::with_capacity(creds.len());
    take_answers(&mut r, first, now_ms, &mut credentials)?;
    for keys in chunks {
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors().cmd("TIME");
        ask_about(&mut pipe, keys);
        let replies: Vec<Value> = pipe.query_async(con).await?;
        let mut r = Replies(replies.into_iter());
        let chunk_now_ms = r.now_ms()?;
        take_answers(&mut r, keys, chunk_now_ms, &mut credentials)?;
    }
    Ok(Snapshot {
        now_ms,
        registered,
        credentials,
    })
}

/// Adds the reads of `creds` to `pipe`: per credential, 1 + 7 per kind.
fn ask_about(pipe: &mut redis::Pipeline, creds: &[&CredentialKeys]) {
    for keys in creds {
        pipe.hgetall(keys.status());
        for &kind in keys.kinds() {
            pipe.get(keys.value(kind))
                .pttl(keys.value(kind))
                .hgetall(keys.info(kind))
                .get(keys.refresh_request(kind))
                .pttl(keys.refresh_request(kind))
                .pttl(keys.force_request(kind))
                .get(keys.lock(kind));
        }
    }
}

/// Interprets the replies [`ask_about`] asked for, seen at `now_ms`.
fn take_answers(
    r: &mut Replies,
    creds: &[&CredentialKeys],
    now_ms: u64,
    out: &mut Vec<Credential>,
) -> RedisResult<()> {
    for keys in creds {
        let status = Status::from_hash(&r.lenient(HashMap::new())?, now_ms);
        let mut kinds = Vec::with_capacity(keys.kinds().len());
        for &kind in keys.kinds() {
            let raw = RawValue {
                value: r.lenient(None)?,
                pttl: r.lenient(-2)?,
                info: r.lenient(HashMap::new())?,
                request: r.lenient(None)?,
                request_pttl: r.lenient(-2)?,
                force_pttl: r.lenient(-2)?,
                lock: r.lenient(None)?,
            };
            kinds.push(raw.interpret(kind));
        }
        out.push(Credential {
            id: keys.id().to_owned(),
            status,
            kinds,
        });
    }
    Ok(())
}

/// The replies of a pipeline, taken one typed reply at a time.
struct Replies(std::vec::IntoIter<Value>);

impl Replies {
    fn next<T: FromRedisValue>(&mut self) -> RedisResult<T> {
        let v = self.0.next().ok_or((
            ErrorKind::UnexpectedReturnType,
            "Redis answered fewer replies than asked",
        ))?;
        Ok(redis::from_redis_value(v)?)
    }

    /// The next reply, or `absent` when it is an error or of another type
    /// (a key holding something hostile or corrupt reads as missing: one
    /// bad key never hides the rest of the snapshot).
    fn lenient<T: FromRedisValue>(&mut self, absent: T) -> RedisResult<T> {
        let v = self.0.next().ok_or((
            ErrorKind::UnexpectedReturnType,
            "Redis answered fewer replies than asked",
        ))?;
        Ok(redis::from_redis_value(v).unwrap_or(absent))
    }

    /// The next reply as it came.
    fn next_value(&mut self) -> RedisResult<Value> {
        Ok(self.0.next().ok_or((
            ErrorKind::UnexpectedReturnType,
            "Redis answered fewer replies than asked",
        ))?)
    }

    /// A `TIME` reply as Unix ms.
    fn now_ms(&mut self) -> RedisResult<u64> {
        let (secs, micros): (u64, u64) = self.next()?;
        Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
    }
}

// ---- third-party platforms ------------------------------------------------

/// Authorizers [`read_component`] asks about per MULTI/EXEC round trip
/// (each costs 4 commands).
pub const AUTHORIZER_CHUNK: usize = 1_000;

/// The status fields [`read_component`] reads of each authorizer, in the
/// order it expects them.
const AUTHORIZER_FIELDS: [&str; 6] = [
    status::LAST_OK_AT_MS,
    status::LAST_ERROR,
    status::LAST_ERRCODE,
    status::LAST_ERROR_AT_MS,
    status::PAUSED_UNTIL_MS,
    status::FAILURES,
];

/// How [`read_component`] reads and judges a platform.
pub struct ComponentRead<'a> {
    /// Authorizers per round trip (at least 1; [`AUTHORIZER_CHUNK`]).
    pub chunk: usize,
    /// Authorizers with a problem kept in [`ComponentView::problems`], at
    /// most.
    pub problems: usize,
    /// The refresh margin, ms, of a value WeChat announced to live
    /// `expires_in` seconds (`None`: not known): an access token with less
    /// than this left is `expiring`.
    pub margin_ms: &'a (dyn Fn(Option<u64>) -> u64 + Sync),
}

/// One third-party platform at a glance: what its component token depends
/// on, how its authorizers are doing (counted, never listed whole) and how
/// much of its work is waiting. No secret and no token: the verify
/// ticket, the component token and refresh tokens are never read, only
/// their time left and bookkeeping.
/// What a [`ComponentView`] summarises: a WeChat third-party platform
/// (its authorizers) or a WeCom third-party suite (its corps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformKind {
    /// `component/<appid>`: verify ticket, component token,
    /// reconciliation, authorizers.
    #[default]
    Component,
    /// `suite/<suite id>`: suite ticket, suite token, corps.
    WecomSuite,
}

impl PlatformKind {
    /// The id prefix of its children: `authorizer/<appid>/` or
    /// `corp/<suite id>/`.
    pub fn child_prefix(self, appid: &str) -> String {
        match self {
            PlatformKind::Component => format!("authorizer/{appid}/"),
            PlatformKind::WecomSuite => format!("corp/{appid}/"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentView {
    /// A third-party platform's or a WeCom suite's (the fields below are
    /// named after the platform's: for a suite, `verify_ticket` is its
    /// suite ticket, `component_token` its suite token, `authorizers` its
    /// corps, and there is no reconciliation).
    pub platform: PlatformKind,
    /// The component appid (a suite's id).
    pub appid: String,
    /// Its subject id, `component/<appid>`.
    pub id: String,
    /// The Redis clock when the read began, Unix ms.
    pub now_ms: u64,
    /// The newest verify ticket WeChat pushed.
    pub verify_ticket: VerifyTicketView,
    /// The component token and the platform subject's status hash.
    pub component_token: ComponentTokenView,
    /// The last reconciliation with `api_get_authorizer_list`, if one is
    /// stored.
    pub reconciliation: Option<Reconciliation>,
    /// The platform's authorizers by state.
    pub authorizers: AuthorizerCounts,
    /// Due-queue entries of the platform and its authorizers that are due.
    pub backlog: Backlog,
    /// Authorizers with a problem: the first [`ComponentRead::problems`]
    /// in the order paused, failing, missing, expiring (each in the order
    /// they were authorized).
    pub problems: Vec<AuthorizerProblem>,
    /// Round trips the read took (1 + one per chunk of authorizers).
    pub round_trips: usize,
}

/// `wxtoken:{component/C}:verify_ticket` and its info hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyTicketView {
    /// A ticket is stored.
    pub stored: bool,
    /// Time until it lapses, ms.
    pub ttl_ms: Option<u64>,
    /// When it was received, Unix ms (Redis clock).
    pub received_at_ms: Option<u64>,
    /// Time since it was received, ms.
    pub age_ms: Option<u64>,
    /// The push's `CreateTime`, Unix s as WeChat sent it.
    pub create_time: Option<u64>,
}

/// The component token and the platform subject's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ComponentTokenView {
    /// A token is stored.
    pub stored: bool,
    /// Time left, ms.
    pub ttl_ms: Option<u64>,
    /// Absolute expiry, Unix ms.
    pub expires_at_ms: Option<u64>,
    /// Lifetime WeChat announced, s.
    pub expires_in: Option<u64>,
    /// When it was written, Unix ms.
    pub refreshed_at_ms: Option<u64>,
    /// The last error is newer than the last success.
    pub failing: bool,
    /// The platform subject's status hash (`mode` = `component`).
    pub status: Status,
}

/// The last reconciliation, from the `authorizer_list` value
/// (`listed=N,added=A,updated=U,removed=R`) and its info hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    /// The stored summary as written (one line, at most 200 characters).
    pub summary: String,
    /// Authorizers WeChat listed.
    pub listed: Option<u64>,
    /// Authorizers added by it.
    pub added: Option<u64>,
    /// Authorizers whose refresh token it replaced.
    pub updated: Option<u64>,
    /// Authorizers it removed.
    pub removed: Option<u64>,
    /// When it finished, Unix ms.
    pub at_ms: Option<u64>,
    /// Time until the next one is due at the latest, ms.
    pub ttl_ms: Option<u64>,
}

impl Reconciliation {
    /// Interprets a stored summary: `key=value` pairs separated by `,`;
    /// unknown keys and unparsable numbers are ignored.
    pub fn parse(summary: &str) -> Reconciliation {
        let mut r = Reconciliation {
            summary: summary
                .chars()
                .take(200)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
            ..Reconciliation::default()
        };
        for part in summary.split(',') {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let v = v.trim().parse().ok();
            match k.trim() {
                "listed" => r.listed = v,
                "added" => r.added = v,
                "updated" => r.updated = v,
                "removed" => r.removed = v,
                _ => {}
            }
        }
        r
    }
}

/// A platform's authorizers by state. Each authorizer is counted once,
/// under the first state that applies: `paused`, `failing`, `missing`
/// (no access token stored), `expiring` (less than the refresh margin
/// left), `ok`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuthorizerCounts {
    /// Authorizers in the platform's index (`ZCARD`) when the read began.
    pub total: u64,
    /// Authorizers read and counted below (differs from `total` only if
    /// the index changed during the read, or holds malformed appids).
    pub counted: u64,
    pub ok: u64,
    pub expiring: u64,
    pub missing: u64,
    pub failing: u64,
    pub paused: u64,
}

impl AuthorizerCounts {
    /// Authorizers in state `s`.
    pub fn of(&self, s: AuthorizerState) -> u64 {
        match s {
            AuthorizerState::Ok => self.ok,
            AuthorizerState::Expiring => self.expiring,
            AuthorizerState::Missing => self.missing,
            AuthorizerState::Failing => self.failing,
            AuthorizerState::Paused => self.paused,
        }
    }

    /// Authorizers that are not `ok`.
    pub fn with_problems(&self) -> u64 {
        self.expiring + self.missing + self.failing + self.paused
    }

    fn add(&mut self, s: AuthorizerState) {
        self.counted += 1;
        match s {
            AuthorizerState::Ok => self.ok += 1,
            AuthorizerState::Expiring => self.expiring += 1,
            AuthorizerState::Missing => self.missing += 1,
            AuthorizerState::Failing => self.failing += 1,
            AuthorizerState::Paused => self.paused += 1,
        }
    }
}

/// How one authorizer is doing (see [`AuthorizerCounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizerState {
    /// Refreshes paused (daily quota exhausted).
    Paused,
    /// The last refresh attempt failed (and nothing succeeded since).
    Failing,
    /// No access token stored.
    Missing,
    /// Less than the refresh margin left.
    Expiring,
    /// Fine.
    Ok,
}

impl AuthorizerState {
    /// Problem states, in the order problems are listed.
    pub const PROBLEMS: [AuthorizerState; 4] = [
        AuthorizerState::Paused,
        AuthorizerState::Failing,
        AuthorizerState::Missing,
        AuthorizerState::Expiring,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizerState::Paused => "paused",
            AuthorizerState::Failing => "failing",
            AuthorizerState::Missing => "missing",
            AuthorizerState::Expiring => "expiring",
            AuthorizerState::Ok => "ok",
        }
    }
}

/// Values of the platform's subjects (its own and every authorizer's)
/// whose scheduled time has come: work waiting for a refresher. Read from
/// each subject's schedule while the authorizers are read, so it costs no
/// extra round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// Entries due now (each chunk judged by its own clock reading).
    pub due_now: u64,
    /// The earliest due time among them, Unix ms.
    pub oldest_due_at_ms: Option<u64>,
    /// Entries queued in all (due or not).
    pub queued: u64,
}

impl Backlog {
    fn add(&mut self, score: Option<f64>, now_ms: u64) {
        let Some(s) = score.filter(|s| s.is_finite()) else {
            return;
        };
        self.queued += 1;
        let at = if s > 0.0 { s as u64 } else { 0 };
        if at <= now_ms {
            self.due_now += 1;
            self.oldest_due_at_ms = Some(self.oldest_due_at_ms.map_or(at, |o| o.min(at)));
        }
    }
}

/// An authorizer that is not `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizerProblem {
    /// Its subject id, `authorizer/<component>/<appid>`.
    pub id: String,
    /// The authorizer appid.
    pub appid: String,
    /// Why it is listed.
    pub state: AuthorizerState,
    /// Time its access token has left, ms (`None`: none stored, or no TTL).
    pub ttl_ms: Option<u64>,
    /// The last failure, in words (never a secret; untrusted text).
    pub last_error: Option<String>,
    /// WeChat's errcode of the last failure.
    pub last_errcode: Option<i64>,
    /// When the last failure happened, Unix ms.
    pub last_error_at_ms: Option<u64>,
    /// Consecutive failures.
    pub failures: Option<u64>,
    /// Paused until then, Unix ms.
    pub paused_until_ms: Option<u64>,
}

/// Reads platform `component_appid` of `namespace` for operators: the
/// verify ticket, the component token and status, the last
/// reconciliation, the size of the authorizer index, then every authorizer
/// in index order, [`ComponentRead::chunk`] per MULTI/EXEC round trip
/// (the next page of the index is asked for in the same round trip), each
/// judged and counted and then dropped: memory stays bounded by the chunk
/// and [`ComponentRead::problems`], whatever the number of authorizers.
///
/// The index is paged by rank, so an authorizer added or removed while
/// the read runs may shift a page: counts are then off by the few that
/// moved (`counted` vs `total` shows it). Read-only; never reads a token,
/// the verify ticket, a refresh token or an authorization code.
pub async fn read_component<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    component_appid: &str,
    opts: &ComponentRead<'_>,
) -> RedisResult<ComponentView> {
    let bad = |e: crate::InvalidName| {
        redis::RedisError::from((ErrorKind::Client, "bad name", e.to_string()))
    };
    let ck = ComponentKeys::new(namespace, component_appid).map_err(bad)?;
    let parent = Parent {
        kind: PlatformKind::Component,
        subject: CredentialKeys::component(namespace, component_appid).map_err(bad)?,
        token: Kind::ComponentAccessToken,
        ticket: ck.verify_ticket(),
        ticket_info: ck.verify_ticket_info(),
        index: ck.authorizers(),
    };
    read_parent(con, namespace, component_appid, &parent, opts).await
}

/// Reads WeCom suite `suite_id` of `namespace` for operators, as
/// [`read_component`] reads a platform: its suite ticket, its suite token
/// and status, then every corp in index order (counted by state, the first
/// few with a problem kept). Read-only; never reads a token, a ticket, an
/// auth code or a permanent code.
pub async fn read_suite<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    suite_id: &str,
    opts: &ComponentRead<'_>,
) -> RedisResult<ComponentView> {
    let bad = |e: crate::InvalidName| {
        redis::RedisError::from((ErrorKind::Client, "bad name", e.to_string()))
    };
    let sk = crate::SuiteKeys::new(namespace, suite_id).map_err(bad)?;
    let parent = Parent {
        kind: PlatformKind::WecomSuite,
        subject: CredentialKeys::suite(namespace, suite_id).map_err(bad)?,
        token: Kind::SuiteAccessToken,
        ticket: sk.suite_ticket(),
        ticket_info: sk.suite_ticket_info(),
        index: sk.corps(),
    };
    read_parent(con, namespace, suite_id, &parent, opts).await
}

/// The keys [`read_parent`] reads of a platform or a suite.
struct Parent {
    kind: PlatformKind,
    subject: CredentialKeys,
    token: Kind,
    ticket: String,
    ticket_info: String,
    index: String,
}

impl Parent {
    /// The keys of child `member` (an authorizer appid, a corpid).
    fn child(&self, namespace: &str, appid: &str, member: &str) -> Option<CredentialKeys> {
        match self.kind {
            PlatformKind::Component => CredentialKeys::authorizer(namespace, appid, member).ok(),
            PlatformKind::WecomSuite => CredentialKeys::corp(namespace, appid, member).ok(),
        }
    }
}

async fn read_parent<C: ConnectionLike>(
    con: &mut C,
    namespace: &str,
    component_appid: &str,
    parent: &Parent,
    opts: &ComponentRead<'_>,
) -> RedisResult<ComponentView> {
    let subject = &parent.subject;
    let chunk = opts.chunk.max(1);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .ignore_errors()
        .cmd("TIME")
        .pttl(&parent.ticket)
        .hgetall(&parent.ticket_info)
        .hgetall(subject.status())
        .pttl(subject.value(parent.token))
        .hgetall(subject.info(parent.token))
        .get(subject.value(Kind::AuthorizerList))
        .pttl(subject.value(Kind::AuthorizerList))
        .hgetall(subject.info(Kind::AuthorizerList))
        .zcard(&parent.index);
    ask_due(&mut pipe, [subject]);
    pipe.cmd("ZRANGE").arg(&parent.index).arg(0).arg(chunk - 1);
    let replies: Vec<Value> = pipe.query_async(con).await?;
    let mut r = Replies(replies.into_iter());
    let now_ms = r.now_ms()?;
    let ticket_pttl: i64 = r.lenient(-2)?;
    let ticket_info: HashMap<String, String> = r.lenient(HashMap::new())?;
    let status = Status::from_hash(&r.lenient(HashMap::new())?, now_ms);
    let token_pttl: i64 = r.lenient(-2)?;
    let token_info: HashMap<String, String> = r.lenient(HashMap::new())?;
    let list: Option<String> = r.lenient(None)?;
    let list_pttl: i64 = r.lenient(-2)?;
    let list_info: HashMap<String, String> = r.lenient(HashMap::new())?;
    let total: u64 = r.lenient(0)?;
    let mut backlog = Backlog::default();
    take_due(&mut r, [subject], now_ms, &mut backlog)?;
    let mut page: Vec<String> = r.lenient(Vec::new())?;

    let received_at_ms = num(&ticket_info, "received_at_ms");
    let ticket_stored = ticket_pttl != -2;
    let mut view = ComponentView {
        platform: parent.kind,
        appid: component_appid.to_owned(),
        id: subject.id().to_owned(),
        now_ms,
        verify_ticket: VerifyTicketView {
            stored: ticket_stored,
            ttl_ms: ttl(ticket_pttl),
            received_at_ms: received_at_ms.filter(|_| ticket_stored),
            age_ms: received_at_ms
                .filter(|_| ticket_stored)
                .map(|at| now_ms.saturating_sub(at)),
            create_time: num(&ticket_info, "create_time").filter(|_| ticket_stored),
        },
        component_token: ComponentTokenView {
            stored: token_pttl != -2,
            ttl_ms: ttl(token_pttl),
            expires_at_ms: num(&token_info, info::EXPIRES_AT_MS),
            expires_in: num(&token_info, info::EXPIRES_IN),
            refreshed_at_ms: num(&token_info, info::REFRESHED_AT_MS),
            failing: status.failing(),
            status,
        },
        reconciliation: list.map(|summary| Reconciliation {
            at_ms: num(&list_info, info::REFRESHED_AT_MS),
            ttl_ms: ttl(list_pttl),
            ..Reconciliation::parse(&summary)
        }),
        authorizers: AuthorizerCounts {
            total,
            ..AuthorizerCounts::default()
        },
        backlog,
        problems: Vec::new(),
        round_trips: 1,
    };
    // Problems kept per state (each at most `opts.problems`), merged in
    // state order at the end.
    let mut kept: [Vec<AuthorizerProblem>; 4] = Default::default();
    let mut offset = 0usize;
    while !page.is_empty() {
        let full = page.len() >= chunk;
        let keys: Vec<CredentialKeys> = page
            .iter()
            .filter_map(|member| parent.child(namespace, component_appid, member))
            .collect();
        offset += page.len();
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors().cmd("TIME");
        for k in &keys {
            pipe.cmd("HMGET").arg(k.status()).arg(&AUTHORIZER_FIELDS);
            pipe.pttl(k.value(Kind::AccessToken))
                .hget(k.info(Kind::AccessToken), info::EXPIRES_IN);
        }
        ask_due(&mut pipe, &keys);
        if full {
            pipe.cmd("ZRANGE")
                .arg(&parent.index)
                .arg(offset)
                .arg(offset + chunk - 1);
        }
        let replies: Vec<Value> = pipe.query_async(con).await?;
        view.round_trips += 1;
        let mut r = Replies(replies.into_iter());
        let now_ms = r.now_ms()?;
        for k in &keys {
            let fields: Vec<Option<String>> = r.lenient(Vec::new())?;
            let field = |i: usize| fields.get(i).cloned().flatten();
            let h: HashMap<String, String> = AUTHORIZER_FIELDS
                .iter()
                .enumerate()
                .filter_map(|(i, name)| Some(((*name).to_owned(), field(i)?)))
                .collect();
            let st = Status::from_hash(&h, now_ms);
            let pttl: i64 = r.lenient(-2)?;
            let expires_in: Option<String> = r.lenient(None)?;
            let expires_in = expires_in.and_then(|v| v.trim().parse().ok());
            let state = if st.paused {
                AuthorizerState::Paused
            } else if st.failing() {
                AuthorizerState::Failing
            } else if pttl == -2 {
                AuthorizerState::Missing
            } else if ttl(pttl).is_some_and(|left| left <= (opts.margin_ms)(expires_in)) {
                AuthorizerState::Expiring
            } else {
                AuthorizerState::Ok
            };
            view.authorizers.add(state);
            if let Some(slot) = AuthorizerState::PROBLEMS.iter().position(|s| *s == state) {
                if kept[slot].len() < opts.problems {
                    let appid = match k.subject() {
                        crate::Subject::Authorizer { appid, .. } => appid.to_owned(),
                        crate::Subject::Corp { corpid, .. } => corpid.to_owned(),
                        _ => String::new(),
                    };
                    kept[slot].push(AuthorizerProblem {
                        id: k.id().to_owned(),
                        appid,
                        state,
                        ttl_ms: ttl(pttl),
                        last_error: st.last_error,
                        last_errcode: st.last_errcode,
                        last_error_at_ms: st.last_error_at_ms,
                        failures: num(&h, status::FAILURES),
                        paused_until_ms: st.paused_until_ms,
                    });
                }
            }
        }
        take_due(&mut r, &keys, now_ms, &mut view.backlog)?;
        page = if full {
            r.lenient(Vec::new())?
        } else {
            Vec::new()
        };
    }
    view.problems = kept.into_iter().flatten().take(opts.problems).collect();
    Ok(view)
}

/// Adds the schedule reads of `subjects` to `pipe` (see [`take_due`]):
/// one `HMGET` per subject.
fn ask_due<'a>(pipe: &mut redis::Pipeline, subjects: impl IntoIterator<Item = &'a CredentialKeys>) {
    for k in subjects {
        pipe.cmd("HMGET").arg(k.schedule()).arg(
            k.kinds()
                .iter()
                .map(|kind| kind.as_str())
                .collect::<Vec<_>>(),
        );
    }
}

/// Counts the answers of [`ask_due`] into `backlog`, seen at `now_ms`.
fn take_due<'a>(
    r: &mut Replies,
    subjects: impl IntoIterator<Item = &'a CredentialKeys>,
    now_ms: u64,
    backlog: &mut Backlog,
) -> RedisResult<()> {
    for _ in subjects {
        let dues: Vec<Option<String>> = r.lenient(Vec::new())?;
        for d in dues {
            backlog.add(d.and_then(|d| d.trim().parse::<f64>().ok()), now_ms);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FORCE_REQUEST;

    fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn raw(value: Option<&str>, request: Option<&str>) -> RawValue {
        RawValue {
            value: value.map(str::to_owned),
            pttl: if value.is_some() { 3_600_000 } else { -2 },
            info: hash(&[
                (info::EXPIRES_IN, "7200"),
                (info::EXPIRES_AT_MS, "1700007200000"),
                (info::REFRESHED_AT_MS, " 1700000000000 "),
                (info::FENCE, "17"),
                (info::REPLICA, "refresher-2"),
            ]),
            request: request.map(str::to_owned),
            request_pttl: 500_000,
            force_pttl: -2,
            lock: Some("refresher-3#00000000deadbeef".into()),
        }
    }

    #[test]
    fn values_keep_a_prefix_and_only_requests_that_will_be_served() {
        let token = "86_abcdefghijklmnopqrstuvwxyz";
        let v = raw(Some(token), Some(token)).interpret(Kind::AccessToken);
        assert!(v.stored);
        assert_eq!(v.ttl_ms, Some(3_600_000));
        assert_eq!(v.token_prefix.as_deref(), Some("86_abcde"));
        assert_eq!(v.expires_in, Some(7200));
        assert_eq!(v.expires_at_ms, Some(1_700_007_200_000));
        assert_eq!(v.refreshed_at_ms, Some(1_700_000_000_000));
        assert_eq!(v.fence, Some(17));
        assert_eq!(v.replica.as_deref(), Some("refresher-2"));
        assert_eq!(v.locked_by.as_deref(), Some("refresher-3"));
        assert_eq!(
            v.refresh_request,
            Some(PendingRequest {
                force: false,
                ttl_ms: Some(500_000)
            })
        );
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("86_abcde"), "{json}");
        assert!(json.contains(r#""locked_by":"refresher-3""#), "{json}");

        // A report about a value that was already replaced is not pending.
        let v = raw(Some(token), Some("old")).interpret(Kind::AccessToken);
        assert_eq!(v.refresh_request, None);
        // `*` in the request key (anyone may write it) forces nothing…
        let v = raw(Some(token), Some(FORCE_REQUEST)).interpret(Kind::AccessToken);
        assert_eq!(v.refresh_request, None);
        // …the force-request key (operators) does.
        let mut forced = raw(Some(token), None);
        forced.force_pttl = 42_000;
        let v = forced.interpret(Kind::AccessToken);
        assert_eq!(
            v.refresh_request,
            Some(PendingRequest {
                force: true,
                ttl_ms: Some(42_000)
            })
        );
        // While nothing is stored, any report is served.
        let v = raw(None, Some("old")).interpret(Kind::JsapiTicket);
        assert!(v.refresh_request.is_some_and(|r| !r.force));
        assert!(!v.stored && v.ttl_ms.is_none() && v.token_prefix.is_none());
    }

    #[test]
    fn a_value_without_ttl_or_info_is_stored_with_nothing_known() {
        let v = RawValue {
            value: Some("x".into()),
            pttl: -1,
            info: HashMap::new(),
            request: None,
            request_pttl: -2,
            force_pttl: -2,
            lock: Some("no-nonce".into()),
        }
        .interpret(Kind::WxCardTicket);
        assert!(v.stored);
        assert_eq!(v.ttl_ms, None);
        assert_eq!(v.fence, None);
        assert_eq!(v.locked_by.as_deref(), Some("no-nonce"));
        assert_eq!(
            ValueStatus {
                stored: false,
                locked_by: None,
                token_prefix: None,
                ..v
            },
            ValueStatus::unknown(Kind::WxCardTicket)
        );
    }

    #[test]
    fn status_hash_is_parsed_and_pauses_end() {
        let h = hash(&[
            (status::APPID, "wx1"),
            (status::MODE, "stable"),
            (status::LAST_OK_AT_MS, "100"),
            (status::LAST_ERROR, "access_token: errcode 40164"),
            (status::LAST_ERRCODE, "40164"),
            (status::LAST_ERROR_AT_MS, "200"),
            (status::PAUSED_UNTIL_MS, "1000"),
            (status::REPLICA, "r1"),
        ]);
        let s = Status::from_hash(&h, 999);
        assert_eq!(s.appid.as_deref(), Some("wx1"));
        assert_eq!(s.mode.as_deref(), Some("stable"));
        assert_eq!(s.last_errcode, Some(40164));
        assert_eq!(s.replica.as_deref(), Some("r1"));
        assert!(s.paused && s.failing());
        assert!(!Status::from_hash(&h, 1000).paused);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["status_replica"], "r1");
        assert_eq!(json["paused_until_ms"], 1000);

        let empty = Status::from_hash(&HashMap::new(), 0);
        assert_eq!(empty, Status::default());
        assert!(!empty.paused && !empty.failing());
        let garbage = Status::from_hash(&hash(&[(status::LAST_ERRCODE, "x")]), 0);
        assert_eq!(garbage.last_errcode, None);
    }

    #[test]
    fn an_error_counts_until_a_later_success() {
        let s = |error: Option<&str>, error_at: Option<u64>, ok_at: Option<u64>| Status {
            last_error: error.map(str::to_owned),
            last_error_at_ms: error_at,
            last_ok_at_ms: ok_at,
            ..Status::default()
        };
        assert!(!s(None, None, None).failing());
        assert!(!s(None, Some(5), Some(4)).failing());
        assert!(s(Some("x"), Some(5), Some(4)).failing());
        assert!(!s(Some("x"), Some(4), Some(5)).failing());
        assert!(!s(Some("x"), Some(5), Some(5)).failing());
        assert!(s(Some("x"), Some(4), None).failing());
        assert!(s(Some("x"), None, None).failing());
        assert!(!s(Some("x"), None, Some(5)).failing());
    }
}
