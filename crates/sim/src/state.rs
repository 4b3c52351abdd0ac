//! The simulator's shared state: apps, every token and ticket ever issued with its validity,
//! quota counters, scripted faults and evidence, behind one `Mutex`.
//!
//! The product modules (`token.rs`, `ticket.rs`, `business.rs`) decide what WeChat answers;
//! this module only keeps the books they need (issue/replace/check tokens, count quota, record
//! fetches). Must not: hold the lock across an `.await`, store secrets anywhere but
//! `AppState::secret`, or log whole tokens (8-character prefixes only).
//!
//! Scale: every per-request operation is a hash lookup (apps by appid, tokens by value) plus
//! an append; nothing scans all apps or all tokens. Only the admin API's whole-simulator
//! reads ([`crate::Admin::evidence`], per-app counts) visit every app. Each issued token is
//! stored once (`Arc<str>`, shared by the token index and its app), and fetch counts are kept
//! as counters so totals are O(1).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::authorizer::Authorizers;
use crate::clock::SimClock;
use crate::component::Components;
use crate::config::{SimConfig, Timing};
use crate::evidence::{AppEvidence, Endpoint, FetchCounts, FetchOutcome, FetchRecord, LiveToken};
use crate::fault::Fault;
use crate::wecom::WeCom;
use crate::wire;

/// State shared by the HTTP handlers and every [`crate::Admin`] handle.
pub(crate) struct Shared {
    pub(crate) timing: Timing,
    /// The simulator's time; "now" is always read from here.
    pub(crate) clock: SimClock,
    started_unix_ms: u64,
    inner: Mutex<Inner>,
    /// Third-party platforms (their own lock; never held with `inner`'s).
    pub(crate) components: Components,
    /// Their authorizers (their own lock; never held with `inner`'s or `components`').
    pub(crate) authorizers: Authorizers,
    /// WeCom (企业微信) corps and suites (their own lock; never held with another).
    pub(crate) wecom: WeCom,
}

/// One reading of the simulator clock ([`SimClock`]), taken once per request so that every rule
/// in it agrees.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    /// Index of the quota window since start.
    pub(crate) day: u64,
    /// Wall-clock time at start plus simulator time since then (so advances move it too).
    pub(crate) unix_ms: u64,
    pub(crate) since_start_ms: u64,
}

pub(crate) struct Inner {
    pub(crate) apps: HashMap<Arc<str>, AppState>,
    /// Every token and ticket ever issued (they are never forgotten, so an old token keeps
    /// answering 42001/40001 rather than becoming "unknown"). Growth is bounded by the quotas.
    pub(crate) tokens: HashMap<Arc<str>, TokenEntry>,
    /// Fetch counts of all apps together (the sum of every app's `counts`).
    pub(crate) totals: FetchCounts,
}

pub(crate) struct AppState {
    pub(crate) secret: String,
    pub(crate) ip_whitelisted: bool,
    pub(crate) secret_frozen: bool,
    pub(crate) faults: VecDeque<Fault>,
    pub(crate) quota: Quota,
    /// When the last effective stable force refresh happened.
    pub(crate) last_force: Option<Instant>,
    /// The newest token of each kind, indexed by [`TokenKind::index`].
    current: [Option<Arc<str>>; TokenKind::COUNT],
    /// Every token and ticket of this app, in issue order.
    issued: Vec<Arc<str>>,
    pub(crate) fetches: Vec<FetchRecord>,
    /// `fetches` counted by endpoint and outcome.
    pub(crate) counts: FetchCounts,
    pub(crate) rejected_business_calls: BTreeMap<i64, u64>,
    pub(crate) business_ok: u64,
}

/// Per-app usage in the current quota window.
#[derive(Debug, Default)]
pub(crate) struct Quota {
    day: u64,
    /// Indexed by [`Endpoint::index`].
    used: [u32; Endpoint::ALL.len()],
    pub(crate) force_refreshes: u32,
}

impl Quota {
    fn roll(&mut self, day: u64) {
        if day != self.day {
            *self = Quota {
                day,
                ..Quota::default()
            };
        }
    }

    pub(crate) fn used(&self, endpoint: Endpoint) -> u32 {
        self.used[endpoint.index()]
    }

    pub(crate) fn add(&mut self, endpoint: Endpoint) {
        let used = &mut self.used[endpoint.index()];
        *used = used.saturating_add(1);
    }

    pub(crate) fn set(&mut self, endpoint: Endpoint, used: u32) {
        self.used[endpoint.index()] = used;
    }

    pub(crate) fn reset(&mut self) {
        self.used = [0; Endpoint::ALL.len()];
        self.force_refreshes = 0;
    }
}

/// What a string handed out by the simulator is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TokenKind {
    AccessToken,
    StableAccessToken,
    JsapiTicket,
    WxCardTicket,
}

impl TokenKind {
    const COUNT: usize = 4;

    /// Position in `AppState::current`.
    fn index(self) -> usize {
        match self {
            TokenKind::AccessToken => 0,
            TokenKind::StableAccessToken => 1,
            TokenKind::JsapiTicket => 2,
            TokenKind::WxCardTicket => 3,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TokenKind::AccessToken => "access_token",
            TokenKind::StableAccessToken => "stable_access_token",
            TokenKind::JsapiTicket => "jsapi_ticket",
            TokenKind::WxCardTicket => "wx_card_ticket",
        }
    }

    fn is_access_token(self) -> bool {
        matches!(self, TokenKind::AccessToken | TokenKind::StableAccessToken)
    }

    fn len(self) -> usize {
        if self.is_access_token() {
            wire::ACCESS_TOKEN_LEN
        } else {
            wire::TICKET_LEN
        }
    }
}

/// One issued token or ticket.
///
/// The validity rule, used everywhere: a revoked token answers 40001; a token cut short by a
/// replacement (its overlap ended before its natural expiry) answers 40001 from the end of the
/// overlap on, forever; a token that lived its full natural life answers 42001 after it.
pub(crate) struct TokenEntry {
    pub(crate) appid: Arc<str>,
    pub(crate) kind: TokenKind,
    expires_at: Instant,
    /// End of the overlap after a replacement; only set when earlier than `expires_at`.
    killed_at: Option<Instant>,
    replaced: bool,
    revoked: bool,
}

impl TokenEntry {
    /// A fresh token of `appid` (also used by `authorizer.rs` for authorizer tokens).
    pub(crate) fn new(appid: Arc<str>, kind: TokenKind, expires_at: Instant) -> TokenEntry {
        TokenEntry {
            appid,
            kind,
            expires_at,
            killed_at: None,
            replaced: false,
            revoked: false,
        }
    }

    /// `Ok(())` while valid, else 40001 or 42001 (see the type's docs).
    pub(crate) fn check(&self, now: Instant) -> Result<(), i64> {
        if self.revoked {
            return Err(crate::errcode::INVALID_CREDENTIAL);
        }
        if self.killed_at.is_some_and(|k| now >= k) {
            return Err(crate::errcode::INVALID_CREDENTIAL);
        }
        if now >= self.expires_at {
            return Err(crate::errcode::ACCESS_TOKEN_EXPIRED);
        }
        Ok(())
    }

    fn dies_at(&self) -> Instant {
        self.killed_at.unwrap_or(self.expires_at)
    }

    /// Marks the token replaced; it stays valid until `dies` (or its expiry, if sooner).
    pub(crate) fn replace(&mut self, dies: Instant) {
        self.replaced = true;
        if dies < self.expires_at && self.killed_at.is_none_or(|k| dies < k) {
            self.killed_at = Some(dies);
        }
    }
}

/// What happens to the previous token of the same kind when a new one is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Previous {
    /// Stays valid for `overlap` more (or until its own expiry, if sooner).
    DiesAfterOverlap,
    /// Stays valid until its own expiry (stable normal mode renews only when ≤ overlap is left).
    DiesAtOwnExpiry,
}

/// A token just handed out.
pub(crate) struct Issued {
    pub(crate) token: String,
    /// `expires_in` for the wire.
    pub(crate) expires_in: u64,
}

impl Shared {
    pub(crate) fn new(config: &SimConfig) -> Shared {
        let started_unix_ms = unix_ms(SystemTime::now());
        let mut apps = HashMap::with_capacity(config.app_count());
        for app in config.all_apps() {
            apps.insert(Arc::from(app.appid), AppState::new(&app.secret));
        }
        let clock = SimClock::new();
        let components = Components::new(config, clock.now());
        let authorizers = Authorizers::new(config, started_unix_ms / 1000);
        let wecom = WeCom::new(config, clock.now());
        Shared {
            timing: config.timing.clone(),
            clock,
            components,
            authorizers,
            wecom,
            started_unix_ms,
            inner: Mutex::new(Inner {
                apps,
                tokens: HashMap::new(),
                totals: FetchCounts::default(),
            }),
        }
    }

    pub(crate) fn now(&self) -> Now {
        let at = self.clock.now();
        let since = self.clock.since_start(at);
        let day_ms = self.timing.day.as_millis().max(1);
        let since_start_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        Now {
            at,
            day: u64::try_from(since.as_millis() / day_ms).unwrap_or(u64::MAX),
            unix_ms: self.started_unix_ms.saturating_add(since_start_ms),
            since_start_ms,
        }
    }

    /// Locks the state. A panic in another holder does not make the simulator unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl AppState {
    pub(crate) fn new(secret: &str) -> AppState {
        AppState {
            secret: secret.to_string(),
            ip_whitelisted: true,
            secret_frozen: false,
            faults: VecDeque::new(),
            quota: Quota::default(),
            last_force: None,
            current: Default::default(),
            issued: Vec::new(),
            fetches: Vec::new(),
            counts: FetchCounts::default(),
            rejected_business_calls: BTreeMap::new(),
            business_ok: 0,
        }
    }
}

impl Inner {
    /// The app, with its quota window rolled forward to `now`.
    pub(crate) fn app_mut(&mut self, appid: &str, now: &Now) -> Option<&mut AppState> {
        let app = self.apps.get_mut(appid)?;
        app.quota.roll(now.day);
        Some(app)
    }

    /// Adds an app, or replaces the secret of an existing one (keeping its tokens and
    /// evidence). Returns true when the app is new.
    pub(crate) fn add_app(&mut self, appid: &str, secret: &str) -> bool {
        match self.apps.get_mut(appid) {
            Some(app) => {
                app.secret = secret.to_string();
                false
            }
            None => {
                self.apps.insert(Arc::from(appid), AppState::new(secret));
                true
            }
        }
    }

    /// Adds an app if there is none with this appid; returns false (and changes nothing)
    /// if there is.
    pub(crate) fn add_new_app(&mut self, appid: &str, secret: &str) -> bool {
        if self.apps.contains_key(appid) {
            return false;
        }
        self.apps.insert(Arc::from(appid), AppState::new(secret));
        true
    }

    /// Issues a new token of `kind` for `appid`, replacing the current one as `previous` says.
    /// Returns `None` only for an unknown app.
    pub(crate) fn issue(
        &mut self,
        appid: &str,
        kind: TokenKind,
        previous: Previous,
        timing: &Timing,
        now: &Now,
    ) -> Option<Issued> {
        let (owner, _) = self.apps.get_key_value(appid)?;
        let owner = Arc::clone(owner);
        let app = self.apps.get_mut(appid)?;
        let token: Arc<str> = loop {
            let t = wire::random_token(kind.len());
            if !self.tokens.contains_key(t.as_str()) {
                break Arc::from(t);
            }
        };
        if let Some(old) = app.current[kind.index()]
            .as_deref()
            .and_then(|t| self.tokens.get_mut(t))
        {
            let dies = match previous {
                Previous::DiesAfterOverlap => now.at + timing.overlap,
                Previous::DiesAtOwnExpiry => old.expires_at,
            };
            old.replace(dies);
        }
        self.tokens.insert(
            Arc::clone(&token),
            TokenEntry::new(owner, kind, now.at + timing.expires_in),
        );
        app.current[kind.index()] = Some(Arc::clone(&token));
        app.issued.push(Arc::clone(&token));
        let expires_in = wire::wire_secs(timing.expires_in);
        tracing::debug!(
            appid,
            kind = kind.as_str(),
            token_prefix = %wire::prefix(&token),
            expires_in,
            "issued"
        );
        Some(Issued {
            token: token.to_string(),
            expires_in,
        })
    }

    /// The app's current token of `kind` and its remaining life, if it is still valid.
    pub(crate) fn current_valid(
        &self,
        appid: &str,
        kind: TokenKind,
        now: &Now,
    ) -> Option<(String, Duration)> {
        let token = self.apps.get(appid)?.current[kind.index()].as_deref()?;
        let entry = self.tokens.get(token)?;
        entry.check(now.at).ok()?;
        Some((
            token.to_string(),
            entry.dies_at().saturating_duration_since(now.at),
        ))
    }

    /// The app owning a token or ticket, if the simulator ever issued it.
    pub(crate) fn owner_of(&self, token: &str) -> Option<Arc<str>> {
        self.tokens.get(token).map(|e| Arc::clone(&e.appid))
    }

    /// Whether the simulator issued this string as an app's access token (classic or
    /// stable; valid or not).
    pub(crate) fn is_access_token(&self, token: &str) -> bool {
        self.tokens
            .get(token)
            .is_some_and(|e| e.kind.is_access_token())
    }

    /// The business API's check of an access token (classic or stable). Tickets and unknown
    /// strings are 40001.
    pub(crate) fn check_access_token(&self, token: &str, now: &Now) -> Result<(), i64> {
        match self.tokens.get(token) {
            Some(entry) if entry.kind.is_access_token() => entry.check(now.at),
            _ => Err(crate::errcode::INVALID_CREDENTIAL),
        }
    }

    /// Invalidates every access token of the app (tickets are left alone). The next stable
    /// normal-mode call issues a fresh token.
    pub(crate) fn revoke_access_tokens(&mut self, appid: &str) -> bool {
        let Some(app) = self.apps.get_mut(appid) else {
            return false;
        };
        for token in &app.issued {
            if let Some(entry) = self.tokens.get_mut(token.as_ref()) {
                if entry.kind.is_access_token() {
                    entry.revoked = true;
                }
            }
        }
        for kind in [TokenKind::AccessToken, TokenKind::StableAccessToken] {
            app.current[kind.index()] = None;
        }
        tracing::debug!(appid, "revoked all access tokens");
        true
    }

    /// Records a fetch in the app's evidence (no-op for unknown apps).
    pub(crate) fn record(
        &mut self,
        appid: &str,
        endpoint: Endpoint,
        force_refresh: bool,
        outcome: FetchOutcome,
        now: &Now,
    ) {
        if let Some(app) = self.apps.get_mut(appid) {
            app.counts.add(endpoint, &outcome);
            self.totals.add(endpoint, &outcome);
            app.fetches.push(FetchRecord {
                endpoint,
                at_unix_ms: now.unix_ms,
                since_start_ms: now.since_start_ms,
                force_refresh,
                outcome,
            });
        }
    }

    /// The app's evidence as of `now`.
    pub(crate) fn app_evidence(&mut self, appid: &str, now: &Now) -> Option<AppEvidence> {
        self.app_mut(appid, now)?;
        let app = self.apps.get(appid)?;
        let live_tokens = app
            .issued
            .iter()
            .filter_map(|t| {
                let entry = self.tokens.get(t.as_ref())?;
                entry.check(now.at).ok()?;
                let left = entry.dies_at().saturating_duration_since(now.at);
                Some(LiveToken {
                    kind: entry.kind.as_str().to_string(),
                    token_prefix: wire::prefix(t),
                    expires_in_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                    replaced: entry.replaced,
                })
            })
            .collect();
        Some(AppEvidence {
            fetches: app.fetches.clone(),
            live_tokens,
            rejected_business_calls: app.rejected_business_calls.clone(),
            business_ok: app.business_ok,
            quota_used: Endpoint::ALL
                .into_iter()
                .map(|e| (e.as_str().to_string(), app.quota.used(e)))
                .collect(),
            force_refreshes_today: app.quota.force_refreshes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_at: Instant) -> TokenEntry {
        TokenEntry {
            appid: Arc::from("wx"),
            kind: TokenKind::AccessToken,
            expires_at,
            killed_at: None,
            replaced: false,
            revoked: false,
        }
    }

    #[test]
    fn natural_expiry_is_42001_replacement_is_40001() {
        let t0 = Instant::now();
        let e = entry(t0 + Duration::from_secs(10));
        assert_eq!(e.check(t0), Ok(()));
        assert_eq!(e.check(t0 + Duration::from_secs(10)), Err(42001));

        let mut r = entry(t0 + Duration::from_secs(10));
        r.replace(t0 + Duration::from_secs(3));
        assert_eq!(r.check(t0 + Duration::from_secs(2)), Ok(()));
        assert_eq!(r.check(t0 + Duration::from_secs(3)), Err(40001));
        // Cut short by the replacement: stays 40001 even after its natural expiry.
        assert_eq!(r.check(t0 + Duration::from_secs(11)), Err(40001));
    }

    #[test]
    fn replacement_after_expiry_keeps_natural_expiry() {
        let t0 = Instant::now();
        let mut e = entry(t0 + Duration::from_secs(2));
        e.replace(t0 + Duration::from_secs(5));
        assert!(e.replaced);
        assert_eq!(e.check(t0 + Duration::from_secs(3)), Err(42001));
    }

    #[test]
    fn second_replacement_never_extends_life() {
        let t0 = Instant::now();
        let mut e = entry(t0 + Duration::from_secs(10));
        e.replace(t0 + Duration::from_secs(3));
        e.replace(t0 + Duration::from_secs(6));
        assert_eq!(e.check(t0 + Duration::from_secs(4)), Err(40001));
    }

    #[test]
    fn quota_rolls_over_with_the_day() {
        let mut q = Quota::default();
        q.add(Endpoint::Token);
        q.force_refreshes = 3;
        q.roll(0);
        assert_eq!(q.used(Endpoint::Token), 1);
        q.roll(1);
        assert_eq!(q.used(Endpoint::Token), 0);
        assert_eq!(q.force_refreshes, 0);
    }
}
