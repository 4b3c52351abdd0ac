//! [`Client`]: connects, serves reads from the in-process cache and, when a
//! value is missing or not fresh, reads it with one pipelined Redis round
//! trip — waiting for a refresher to store it when there is none yet.
//!
//! Its only write is a passive-refresh request, through the schema crate's
//! compare-and-request script. It must not build key names itself (the schema
//! crate does), must never hold a lock across an await, and must never log a
//! whole token.

use crate::cache::{Cache, Entry};
use crate::events::{self, Subscriber};
use crate::reader::{timed_out, Reader};
use crate::{token_prefix, Error, Options};
use redis::aio::ConnectionManagerConfig;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;
use wxtoken_schema::{
    authorizer_id, component_id, corp_id, events_channel, request_refresh, validate_name,
    CredentialKeys, InvalidName, Kind, RequestOutcome, Subject, REQUEST_TTL_SECS,
};

/// While waiting for a value that is not stored yet, Redis is asked again at
/// least this often (an update event naming it makes it ask at once).
const MISS_RECHECK: Duration = Duration::from_millis(100);

/// A token or ticket as read, with its fence number and time left.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token or ticket itself.
    pub value: String,
    /// Fence number of the write that stored it (larger = newer; 0 when the
    /// value carries no bookkeeping). Starts over if Redis loses its data.
    pub fence: u64,
    /// Time left until it expires, from the moment of the read;
    /// [`Duration::MAX`] if its key has no TTL (not written by wxtoken).
    pub expires_in: Duration,
}

impl Token {
    fn from_entry(entry: &Entry, now: Instant) -> Token {
        Token {
            value: entry.value.to_string(),
            fence: entry.fence,
            expires_in: entry.expires_in(now),
        }
    }
}

/// Shows only a prefix of the value, so a logged `Token` leaks nothing usable.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &token_prefix(&self.value))
            .field("fence", &self.fence)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Reads WeChat tokens and tickets that wxtoken refreshers keep in Redis.
///
/// Cheap to clone (all clones share one cache, one Redis connection and one
/// event subscription); the background subscriber stops when the last clone
/// is dropped. See the [crate docs](crate) for how freshness is kept.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Arc<Cache>,
    reader: Reader,
    options: Options,
    subscriber: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("namespace", &self.inner.options.namespace)
            .field("subscribed", &self.subscribed())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to Redis, measures the Redis clock, subscribes to the
    /// namespace's update events and starts the background subscriber.
    ///
    /// Fails when the namespace is invalid, the URL or the TLS files of
    /// [`Options::tls`] cannot be used ([`Error::Settings`]), the TLS
    /// handshake fails ([`Error::Tls`], naming the file to look at) or Redis
    /// cannot be reached; once
    /// connected, the client rides out Redis outages and restarts on its own.
    /// Must be called inside a Tokio runtime, which the subscriber runs on.
    pub async fn connect(redis_url: &str, options: Options) -> Result<Client, Error> {
        validate_name("namespace", &options.namespace)?;
        let target = wxtoken_connect::Target::parse(redis_url, &options.tls)?;
        // A TLS failure names the file to look at.
        let failed = |e: redis::RedisError| match wxtoken_connect::explain(&e, &options.tls) {
            Some(hint) => Error::Tls { hint, source: e },
            None => Error::Connect(e),
        };
        let timeout = options.redis_timeout;
        // Few, short reconnection attempts per failed command: while Redis is
        // down a read should fail (or fall back to the cache) quickly; the
        // next read starts a new attempt.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        // Behind Sentinel, the primary the sentinels name (followed after
        // a failover).
        if let wxtoken_connect::Target::Sentinel(s) = &target {
            s.primary(timeout).await?;
        }
        let redis = wxtoken_connect::Managed::new(target, &options.tls, config, timeout).await?;
        let () = redis::cmd("PING")
            .query_async(&mut redis.con())
            .await
            .map_err(failed)?;
        let cache = Arc::new(Cache::new(options.poll_interval, options.expiry_margin));
        let reader = Reader {
            redis,
            cache: Arc::clone(&cache),
            namespace: options.namespace.clone(),
            timeout,
        };

        let subscriber = Subscriber {
            channel: events_channel(&options.namespace),
            timeout,
            ping_every: options
                .poll_interval
                .clamp(Duration::from_secs(1), Duration::from_secs(30)),
            reader: reader.clone(),
        };
        let first = subscriber.subscribe().await.map_err(failed)?;
        cache.set_subscribed(true);
        let task = tokio::spawn(events::run(subscriber, first));

        Ok(Client {
            inner: Arc::new(Inner {
                cache,
                reader,
                options,
                subscriber: task.abort_handle(),
            }),
        })
    }

    /// The access token of credential `id` (any id [`Client::get`] takes).
    pub async fn access_token(&self, id: &str) -> Result<String, Error> {
        self.get(id, Kind::AccessToken).await.map(|t| t.value)
    }

    /// A ticket of credential `id`: [`Kind::JsapiTicket`] or
    /// [`Kind::WxCardTicket`] (any kind works; [`Kind::AccessToken`] is the
    /// same as [`Client::access_token`]).
    pub async fn ticket(&self, id: &str, kind: Kind) -> Result<String, Error> {
        self.get(id, kind).await.map(|t| t.value)
    }

    /// The value of `kind` for credential `id`, with its fence and time left.
    ///
    /// `id` is a credential of the refreshers' config (`oa-main`), a
    /// third-party platform (`component/<component appid>`, see
    /// [`Client::component_token`]) or one of its authorizers
    /// (`authorizer/<component appid>/<authorizer appid>`, see
    /// [`Client::authorizer_token`]). A malformed id fails with
    /// [`Error::InvalidName`] naming the part that is wrong, and a kind the
    /// subject does not keep (a platform has no `access_token`) with
    /// [`Error::KindNotKept`], both without touching Redis.
    ///
    /// Served from memory while fresh; otherwise read from Redis in one round
    /// trip. When Redis fails, or has nothing stored (e.g. it restarted
    /// empty), a cached value that has not expired yet is served instead —
    /// and read again from Redis on every call until Redis has a value. When
    /// nothing usable is cached either, a Redis failure is returned as
    /// [`Error::Redis`], and a value that is not stored is waited for up to
    /// [`Options::wait_for_token`], then fails with [`Error::NotAvailable`].
    /// An expired value is never served.
    pub async fn get(&self, id: &str, kind: Kind) -> Result<Token, Error> {
        check_id(id, kind)?;
        let now = Instant::now();
        if let Some(entry) = self.inner.cache.fresh(id, kind, now) {
            return Ok(Token::from_entry(&entry, now));
        }
        self.read_or_wait(id, kind).await
    }

    /// Reports that WeChat refused `refused`, the access token of `id`
    /// (errcode 40001, 40014 or 42001). The refreshers replace it only if it
    /// is still the stored token, so any number of reports about one bad
    /// token cost one WeChat call; a report about a token that was already
    /// replaced changes nothing ([`RequestOutcome::AlreadyReplaced`]). The
    /// request is durable: it is served even if no refresher runs right now.
    /// This client stops serving `refused` from its cache at once; use
    /// [`Client::replaced`] to wait for the new token.
    pub async fn report_invalid(&self, id: &str, refused: &str) -> Result<RequestOutcome, Error> {
        self.report(id, Kind::AccessToken, refused).await
    }

    /// [`Client::report_invalid`] for any kind (e.g. a refused ticket).
    pub async fn report(
        &self,
        id: &str,
        kind: Kind,
        refused: &str,
    ) -> Result<RequestOutcome, Error> {
        let keys = self.keys(id, kind)?;
        self.inner.cache.distrust(id, kind, refused);
        let mut con = self.inner.reader.redis.con();
        let request = request_refresh(
            &mut con,
            &keys,
            kind,
            refused,
            Duration::from_secs(REQUEST_TTL_SECS),
        );
        let outcome = tokio::time::timeout(self.inner.options.redis_timeout, request)
            .await
            .map_err(|_| timed_out("requesting a refresh"))
            .and_then(|r| r)
            .map_err(|source| Error::Report {
                id: id.to_owned(),
                kind,
                source,
            })?;
        tracing::debug!(%id, %kind, refused = %token_prefix(refused), ?outcome, "reported a refused value");
        Ok(outcome)
    }

    /// Waits up to `timeout` for a value of `kind` for `id` other than
    /// `refused`, and returns it: the answer to a [`Client::report`]. Wakes on
    /// update events (as re-read from Redis) and asks Redis at least every
    /// 100 ms.
    pub async fn replaced(
        &self,
        id: &str,
        kind: Kind,
        refused: &str,
        timeout: Duration,
    ) -> Result<Token, Error> {
        let keys = self.keys(id, kind)?;
        let cache = &self.inner.cache;
        let started = Instant::now();
        // Too far ahead to represent: wait for as long as it takes.
        let give_up = started.checked_add(timeout);
        let mut changes = cache.changes();
        let mut interest = cache.want(id, kind);
        loop {
            changes.borrow_and_update();
            interest.wake.borrow_and_update();
            let entry = match cache.fresh(id, kind, Instant::now()) {
                Some(e) if &*e.value != refused => Some(e),
                _ => self.read(&keys, kind).await.ok().flatten(),
            };
            if let Some(entry) = entry.filter(|e| &*e.value != refused) {
                return Ok(Token::from_entry(&entry, Instant::now()));
            }
            let now = Instant::now();
            if give_up.is_some_and(|give_up| now >= give_up) {
                return Err(Error::NotReplaced {
                    id: id.to_owned(),
                    kind,
                    waited: started.elapsed(),
                });
            }
            let next_read = now + MISS_RECHECK;
            let next_read = give_up.map_or(next_read, |give_up| next_read.min(give_up));
            tokio::select! {
                _ = changes.changed() => {}
                Ok(()) = interest.wake.changed() => {}
                _ = tokio::time::sleep_until(next_read.into()) => {}
            }
        }
    }

    /// The `component_access_token` of the third-party platform
    /// `component_appid`: [`Client::get`] of `component/<component_appid>`,
    /// [`Kind::ComponentAccessToken`]. A malformed appid fails with
    /// [`Error::InvalidName`] naming it.
    pub async fn component_token(&self, component_appid: &str) -> Result<String, Error> {
        validate_name("component appid", component_appid)?;
        self.get(&component_id(component_appid), Kind::ComponentAccessToken)
            .await
            .map(|t| t.value)
    }

    /// The `authorizer_access_token` of `authorizer_appid`, an account that
    /// authorized the platform `component_appid`: [`Client::get`] of
    /// `authorizer/<component_appid>/<authorizer_appid>`,
    /// [`Kind::AccessToken`]. One account that authorized two platforms has
    /// two separate tokens. A malformed appid fails with
    /// [`Error::InvalidName`] naming it. For the authorizer's JS-SDK ticket,
    /// call [`Client::get`] with [`authorizer_id`](crate::authorizer_id) and
    /// [`Kind::JsapiTicket`].
    pub async fn authorizer_token(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<String, Error> {
        let id = checked_authorizer_id(component_appid, authorizer_appid)?;
        self.access_token(&id).await
    }

    /// The access token of the corp `corpid` for the WeCom third-party
    /// suite `suite_id` (服务商: the corp installed the suite's app), as
    /// `get_corp_token` issued it: [`Client::get`] of
    /// `corp/<suite_id>/<corpid>`, [`Kind::AccessToken`]. Its tickets:
    /// [`Client::get`] with [`corp_id`](crate::corp_id) and
    /// [`Kind::JsapiTicket`] (the corp ticket) or
    /// [`Kind::AgentConfigTicket`]. A refused one is reported with
    /// [`Client::report`] under the same id. A malformed suite id or corpid
    /// fails with [`Error::InvalidName`] naming it.
    ///
    /// A WeCom app of the refreshers' config (`platform = "wecom"`) is read
    /// by its credential id like any other: [`Client::access_token`]`("corp-hr")`.
    pub async fn suite_corp_token(&self, suite_id: &str, corpid: &str) -> Result<String, Error> {
        validate_name("suite id", suite_id)?;
        validate_name("corpid", corpid)?;
        self.access_token(&corp_id(suite_id, corpid)).await
    }

    /// [`Client::report_invalid`] for an authorizer's access token (as read
    /// with [`Client::authorizer_token`]): files the request under the
    /// authorizer's keys. For a refused ticket or the component token, call
    /// [`Client::report`] with the subject's id.
    pub async fn report_authorizer_invalid(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        refused: &str,
    ) -> Result<RequestOutcome, Error> {
        let id = checked_authorizer_id(component_appid, authorizer_appid)?;
        self.report(&id, Kind::AccessToken, refused).await
    }

    /// The keys of `id` in this client's namespace, after [`check_id`].
    fn keys(&self, id: &str, kind: Kind) -> Result<CredentialKeys, Error> {
        check_id(id, kind)?;
        Ok(CredentialKeys::for_id(&self.inner.options.namespace, id)?)
    }

    /// Whether the update-event subscription is live. While it is not, cached
    /// values are re-read after [`Options::poll_interval`]; for health checks.
    pub fn subscribed(&self) -> bool {
        self.inner.cache.subscribed()
    }

    /// The options this client was connected with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// Files a request for a value that is not stored (best effort).
    async fn ask_for_missing(&self, keys: &CredentialKeys, kind: Kind) {
        let mut con = self.inner.reader.redis.con();
        let request = request_refresh(
            &mut con,
            keys,
            kind,
            wxtoken_schema::MISSING_REPORT,
            Duration::from_secs(REQUEST_TTL_SECS),
        );
        match tokio::time::timeout(self.inner.options.redis_timeout, request).await {
            Ok(Ok(outcome)) => {
                tracing::debug!(id = keys.id(), %kind, ?outcome, "nothing stored; asked the refreshers")
            }
            Ok(Err(e)) => {
                tracing::debug!(id = keys.id(), %kind, error = %e, "nothing stored; could not ask the refreshers")
            }
            Err(_) => {
                tracing::debug!(id = keys.id(), %kind, "nothing stored; asking the refreshers timed out")
            }
        }
    }

    async fn read_or_wait(&self, id: &str, kind: Kind) -> Result<Token, Error> {
        let keys = self.keys(id, kind)?;
        let cache = &self.inner.cache;
        let started = Instant::now();
        let give_up = started.checked_add(self.inner.options.wait_for_token);
        let mut changes = cache.changes();
        // An update event for a value that is not cached is ignored unless a
        // read waits for it: this one might.
        let mut interest = cache.want(id, kind);
        let mut asked = false;
        loop {
            changes.borrow_and_update();
            interest.wake.borrow_and_update();
            match self.read(&keys, kind).await {
                Ok(Some(entry)) => return Ok(Token::from_entry(&entry, Instant::now())),
                Ok(None) => {
                    // Redis may have lost its data (restarted empty) while the
                    // cached value is still valid at WeChat: serve it rather
                    // than wait. It stays stale, so the next call asks again.
                    let now = Instant::now();
                    if let Some(entry) = cache.unexpired(id, kind, now) {
                        tracing::debug!(
                            %id, %kind,
                            "nothing stored in Redis; serving the cached value, which has not expired"
                        );
                        return Ok(Token::from_entry(&entry, now));
                    }
                    // Nothing stored (a lost or deleted value is otherwise
                    // only noticed at its next scheduled refresh): ask the
                    // refreshers once, with the reader's own rights.
                    if !asked {
                        asked = true;
                        self.ask_for_missing(&keys, kind).await;
                    }
                }
                Err(source) => {
                    let now = Instant::now();
                    if let Some(entry) = cache.unexpired(id, kind, now) {
                        tracing::debug!(
                            %id, %kind, error = %source,
                            "Redis read failed; serving the cached value, which has not expired"
                        );
                        return Ok(Token::from_entry(&entry, now));
                    }
                    return Err(Error::Redis {
                        id: id.to_owned(),
                        kind,
                        source,
                    });
                }
            }

            let now = Instant::now();
            if give_up.is_some_and(|give_up| now >= give_up) {
                return Err(Error::NotAvailable {
                    id: id.to_owned(),
                    kind,
                    waited: started.elapsed(),
                });
            }
            let next_read = now + MISS_RECHECK;
            let next_read = give_up.map_or(next_read, |give_up| next_read.min(give_up));
            // Until the next read, every value stored re-checks the cache, and
            // an update event naming this value makes the next read now.
            loop {
                tokio::select! {
                    Ok(()) = interest.wake.changed() => break,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep_until(next_read.into()).await;
                            break;
                        }
                        if let Some(entry) = cache.fresh(id, kind, Instant::now()) {
                            return Ok(Token::from_entry(&entry, Instant::now()));
                        }
                    }
                    _ = tokio::time::sleep_until(next_read.into()) => break,
                }
            }
        }
    }

    /// One pipelined round trip; see [`Reader::read`].
    async fn read(
        &self,
        keys: &CredentialKeys,
        kind: Kind,
    ) -> redis::RedisResult<Option<Arc<Entry>>> {
        self.inner.reader.read(keys, kind).await
    }

    /// Sizes and event counters of this client's cache. For tests and
    /// benchmarks only: not part of the stable API, may change or go away.
    #[doc(hidden)]
    pub fn debug_stats(&self) -> DebugStats {
        self.inner.cache.stats()
    }
}

/// `authorizer/<component>/<appid>`, both appids checked first so an
/// error names the one that is wrong.
fn checked_authorizer_id(component_appid: &str, authorizer_appid: &str) -> Result<String, Error> {
    validate_name("component appid", component_appid)?;
    validate_name("authorizer appid", authorizer_appid)?;
    Ok(authorizer_id(component_appid, authorizer_appid))
}

/// Checks that `id` names a subject (see [`Subject`]) that keeps `kind`.
/// The error names the part of the id that is wrong: the whole id for a
/// credential name, else the component or authorizer appid.
fn check_id(id: &str, kind: Kind) -> Result<(), Error> {
    let Some(subject) = Subject::parse(id) else {
        return Err(Error::InvalidName(invalid_part(id)));
    };
    if subject.kinds().contains(&kind) {
        Ok(())
    } else {
        Err(Error::KindNotKept {
            id: id.to_owned(),
            kind,
            kept: subject.kinds(),
        })
    }
}

/// Why [`Subject::parse`] refused `id`, as precisely as can be said.
fn invalid_part(id: &str) -> InvalidName {
    let parts: Vec<&str> = id.split('/').collect();
    let bad = |what: &'static str, value: &str| {
        validate_name(what, value).err().unwrap_or(InvalidName {
            what: "credential id",
            value: id.to_owned(),
        })
    };
    match parts.as_slice() {
        ["component", appid] => bad("component appid", appid),
        ["authorizer", component, appid] => validate_name("component appid", component)
            .err()
            .unwrap_or_else(|| bad("authorizer appid", appid)),
        ["suite", suite] => bad("suite id", suite),
        ["corp", suite, corpid] => validate_name("suite id", suite)
            .err()
            .unwrap_or_else(|| bad("corpid", corpid)),
        _ => InvalidName {
            what: "credential id",
            value: id.to_owned(),
        },
    }
}

/// What [`Client::debug_stats`] reports. For tests and benchmarks only.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DebugStats {
    /// Values (id, kind) cached.
    pub cached_values: usize,
    /// Credential ids with a cache cell (ids that ever had a value read).
    pub cached_ids: usize,
    /// Values that reads are waiting for right now.
    pub waited_for: usize,
    /// Update events received (including dropped ones).
    pub events: u64,
    /// Events for values neither cached nor waited for.
    pub ignored: u64,
    /// Redis reads of cached values made because of events (one per event
    /// that found no re-read in flight, plus one per burst folded into one).
    pub rereads: u64,
    /// Events folded into a re-read already in flight.
    pub coalesced: u64,
    /// Events that woke a waiting read.
    pub woke: u64,
    /// Malformed or oversized events.
    pub dropped: u64,
}
