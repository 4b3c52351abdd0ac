//! Key names. Every key of one credential carries the credential id as a Redis
//! Cluster hash tag (`wxtoken:{oa-main}:access_token`), so all of them live in
//! one slot and every Lua script touches one slot only. Keys read across
//! credentials (the due-queue index and the registry) are split into
//! [`DUE_SHARDS`] shards with their own tags (`{due/07}`), and the shared
//! keys without a tag (the replica set, the rate keys) are single keys.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a stored value is. Every kind shares the same lock, fence, queue
/// and write machinery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `access_token` from `/cgi-bin/token` or `/cgi-bin/stable_token`.
    AccessToken,
    /// `jsapi_ticket` from `/cgi-bin/ticket/getticket?type=jsapi`.
    JsapiTicket,
    /// `wx_card` api_ticket from `/cgi-bin/ticket/getticket?type=wx_card`.
    WxCardTicket,
    /// A third-party platform's `component_access_token`, from
    /// `/cgi-bin/component/api_component_token` with the newest verify ticket.
    ComponentAccessToken,
    /// A third-party platform's last reconciliation with
    /// `api_get_authorizer_list` (a summary such as
    /// `listed=1000,added=0,updated=1,removed=2`; its TTL is when the next
    /// one is due at the latest). Scheduled, locked and fenced like a token.
    AuthorizerList,
    /// A WeCom app's JS-SDK ticket for `wx.agentConfig`, from
    /// `/cgi-bin/ticket/get?type=agent_config` (the corp ticket for
    /// `wx.config`, `/cgi-bin/get_jsapi_ticket`, is stored as
    /// [`Kind::JsapiTicket`]).
    AgentConfigTicket,
    /// A WeCom third-party suite's `suite_access_token`, from
    /// `/cgi-bin/service/get_suite_token` with the newest pushed
    /// `suite_ticket`.
    SuiteAccessToken,
}

/// All kinds, in a stable order.
pub const KINDS: [Kind; 7] = [
    Kind::AccessToken,
    Kind::JsapiTicket,
    Kind::WxCardTicket,
    Kind::ComponentAccessToken,
    Kind::AuthorizerList,
    Kind::AgentConfigTicket,
    Kind::SuiteAccessToken,
];

impl Kind {
    /// The name used in key names, events and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AccessToken => "access_token",
            Kind::JsapiTicket => "jsapi_ticket",
            Kind::WxCardTicket => "wx_card_ticket",
            Kind::ComponentAccessToken => "component_access_token",
            Kind::AuthorizerList => "authorizer_list",
            Kind::AgentConfigTicket => "agent_config_ticket",
            Kind::SuiteAccessToken => "suite_access_token",
        }
    }

    /// Whether this is a JS-SDK ticket (fetched with an access token;
    /// WeChat's or WeCom's).
    pub fn is_ticket(self) -> bool {
        matches!(
            self,
            Kind::JsapiTicket | Kind::WxCardTicket | Kind::AgentConfigTicket
        )
    }
}

impl Kind {
    /// The kind named `name` (as in [`Kind::as_str`]).
    pub fn parse(name: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A namespace or credential id that cannot be used in key names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . -")]
pub struct InvalidName {
    /// "namespace" or "credential id".
    pub what: &'static str,
    /// The rejected value (ids and namespaces are not secrets).
    pub value: String,
}

/// Checks that `value` is usable as a namespace or credential id: 1–64
/// characters of `[A-Za-z0-9_.-]`, so it can never break a key apart (`:`),
/// change the hash tag (`{`/`}`) or need quoting in `redis-cli`.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// What a credential id names. Operators name the credentials of their
/// config (`oa-main`: [`validate_name`], no `/`); third-party platforms and
/// their authorizers get ids built from appids, which hold a `/` so they can
/// never clash with an operator's name:
///
/// - `component/<component appid>`: a platform's component token and its
///   reconciliation;
/// - `authorizer/<component appid>/<authorizer appid>`: an account that
///   authorized the platform (one account may authorize several platforms);
/// - `suite/<suite id>`: a WeCom third-party suite's (服务商) suite token;
/// - `corp/<suite id>/<corpid>`: a corp that installed the suite's app: its
///   access token (from `get_corp_token`) and JS-SDK tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject<'a> {
    /// A credential of the config (Official Account, Mini Program).
    Credential(&'a str),
    /// A third-party platform, by its component appid.
    Component(&'a str),
    /// An authorizer of a platform.
    Authorizer {
        /// The platform's component appid.
        component: &'a str,
        /// The authorizer's appid.
        appid: &'a str,
    },
    /// A WeCom third-party suite, by its suite id.
    Suite(&'a str),
    /// A corp that authorized a suite.
    Corp {
        /// The suite's id.
        suite: &'a str,
        /// The corp's corpid.
        corpid: &'a str,
    },
}

impl<'a> Subject<'a> {
    /// The subject named by `id`, if `id` is well formed.
    pub fn parse(id: &'a str) -> Option<Subject<'a>> {
        let ok = |part: &str| validate_name("appid", part).is_ok();
        match id.split('/').collect::<Vec<_>>().as_slice() {
            [name] if validate_name("credential id", name).is_ok() => {
                Some(Subject::Credential(name))
            }
            ["component", appid] if ok(appid) => Some(Subject::Component(appid)),
            ["authorizer", component, appid] if ok(component) && ok(appid) => {
                Some(Subject::Authorizer { component, appid })
            }
            ["suite", suite] if ok(suite) => Some(Subject::Suite(suite)),
            ["corp", suite, corpid] if ok(suite) && ok(corpid) => {
                Some(Subject::Corp { suite, corpid })
            }
            _ => None,
        }
    }

    /// The kinds of value refreshers keep for it, at most: a credential's
    /// access token and tickets (a WeCom app's: the corp ticket as
    /// `jsapi_ticket`, and `agent_config_ticket`); a platform's component
    /// token and reconciliation; an authorizer's access token and JS-SDK
    /// ticket; a suite's suite token; a suite corp's access token and its
    /// WeCom tickets.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Subject::Credential(_) => &[
                Kind::AccessToken,
                Kind::JsapiTicket,
                Kind::WxCardTicket,
                Kind::AgentConfigTicket,
            ],
            Subject::Component(_) => &[Kind::ComponentAccessToken, Kind::AuthorizerList],
            Subject::Authorizer { .. } => &[Kind::AccessToken, Kind::JsapiTicket],
            Subject::Suite(_) => &[Kind::SuiteAccessToken],
            Subject::Corp { .. } => &[
                Kind::AccessToken,
                Kind::JsapiTicket,
                Kind::AgentConfigTicket,
            ],
        }
    }

    /// The kind every other kind of the subject is fetched with.
    pub fn primary(self) -> Kind {
        match self {
            Subject::Component(_) => Kind::ComponentAccessToken,
            Subject::Suite(_) => Kind::SuiteAccessToken,
            _ => Kind::AccessToken,
        }
    }
}

/// The id of a WeCom suite's subject: `suite/<suite id>`.
pub fn suite_id(suite: &str) -> String {
    format!("suite/{suite}")
}

/// The id of a corp that authorized a suite: `corp/<suite id>/<corpid>`.
pub fn corp_id(suite: &str, corpid: &str) -> String {
    format!("corp/{suite}/{corpid}")
}

/// The id of a platform's component subject: `component/<appid>`.
pub fn component_id(component_appid: &str) -> String {
    format!("component/{component_appid}")
}

/// The id of an authorizer: `authorizer/<component appid>/<appid>`.
pub fn authorizer_id(component_appid: &str, appid: &str) -> String {
    format!("authorizer/{component_appid}/{appid}")
}

/// The key names of one credential in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialKeys {
    namespace: String,
    id: String,
    /// `namespace:{id}` — the common prefix, hash tag included.
    prefix: String,
}

impl CredentialKeys {
    /// Keys for credential `id` of the config under `namespace`; both must
    /// pass [`validate_name`].
    pub fn new(namespace: &str, id: &str) -> Result<CredentialKeys, InvalidName> {
        validate_name("credential id", id)?;
        CredentialKeys::for_id(namespace, id)
    }

    /// Keys for any [`Subject`] id (a credential of the config, a
    /// `component/…` or an `authorizer/…/…`).
    pub fn for_id(namespace: &str, id: &str) -> Result<CredentialKeys, InvalidName> {
        validate_name("namespace", namespace)?;
        if Subject::parse(id).is_none() {
            return Err(InvalidName {
                what: "credential id",
                value: id.to_owned(),
            });
        }
        Ok(CredentialKeys {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            prefix: format!("{namespace}:{{{id}}}"),
        })
    }

    /// Keys of a third-party platform's component token and reconciliation
    /// (id `component/<appid>`; same hash tag as [`ComponentKeys`]).
    pub fn component(
        namespace: &str,
        component_appid: &str,
    ) -> Result<CredentialKeys, InvalidName> {
        validate_name("component appid", component_appid)?;
        CredentialKeys::for_id(namespace, &component_id(component_appid))
    }

    /// Keys of an authorizer of a platform (id
    /// `authorizer/<component appid>/<appid>`).
    pub fn authorizer(
        namespace: &str,
        component_appid: &str,
        appid: &str,
    ) -> Result<CredentialKeys, InvalidName> {
        validate_name("component appid", component_appid)?;
        validate_name("authorizer appid", appid)?;
        CredentialKeys::for_id(namespace, &authorizer_id(component_appid, appid))
    }

    /// Keys of a WeCom suite's suite token (id `suite/<suite id>`; same
    /// hash tag as [`SuiteKeys`]).
    pub fn suite(namespace: &str, suite: &str) -> Result<CredentialKeys, InvalidName> {
        validate_name("suite id", suite)?;
        CredentialKeys::for_id(namespace, &suite_id(suite))
    }

    /// Keys of a corp that authorized a suite (id
    /// `corp/<suite id>/<corpid>`).
    pub fn corp(namespace: &str, suite: &str, corpid: &str) -> Result<CredentialKeys, InvalidName> {
        validate_name("suite id", suite)?;
        validate_name("corpid", corpid)?;
        CredentialKeys::for_id(namespace, &corp_id(suite, corpid))
    }

    /// What the id names.
    pub fn subject(&self) -> Subject<'_> {
        // `for_id` checked it; a credential name is the fallback.
        Subject::parse(&self.id).unwrap_or(Subject::Credential(&self.id))
    }

    /// The kinds of value refreshers keep for it, at most.
    pub fn kinds(&self) -> &'static [Kind] {
        self.subject().kinds()
    }

    /// The credential id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// STRING: the token or ticket itself, plain UTF-8; its TTL is the real expiry.
    /// `wxtoken:{id}:access_token`, `…:jsapi_ticket`, `…:wx_card_ticket`.
    pub fn value(&self, kind: Kind) -> String {
        format!("{}:{}", self.prefix, kind.as_str())
    }

    /// HASH: bookkeeping for the value (see [`crate::info`]), same TTL.
    pub fn info(&self, kind: Kind) -> String {
        format!("{}:{}:info", self.prefix, kind.as_str())
    }

    /// STRING: the refresh lock for one kind; value = owner, set with NX PX.
    pub fn lock(&self, kind: Kind) -> String {
        format!("{}:lock:{}", self.prefix, kind.as_str())
    }

    /// STRING (integer): the fence counter, incremented on every lock grant.
    pub fn fence(&self) -> String {
        format!("{}:fence", self.prefix)
    }

    /// HASH: operator-facing status of the credential (see [`crate::status`]).
    pub fn status(&self) -> String {
        format!("{}:status", self.prefix)
    }

    /// STRING: a pending passive-refresh request; value = the token reported
    /// invalid. Durable, so no refresher needs to be listening when it is made.
    pub fn refresh_request(&self, kind: Kind) -> String {
        format!("{}:refresh_request:{}", self.prefix, kind.as_str())
    }

    /// STRING: a pending forced refresh (operators: `wxtoken refresh
    /// --force`, the HTTP endpoint's `?force=true`): replace whatever is
    /// stored. Its value means nothing. A separate key from
    /// [`CredentialKeys::refresh_request`] so that business servers, which
    /// may write requests, can be denied forcing (Redis ACL).
    pub fn force_request(&self, kind: Kind) -> String {
        format!("{}:force_request:{}", self.prefix, kind.as_str())
    }

    /// STRING, **durable** (no TTL): an authorizer's
    /// `authorizer_refresh_token`. A secret: never logged, never in a key
    /// name, not readable by the business-reader ACL user. Recovered from
    /// `api_get_authorizer_list` when lost.
    pub fn refresh_token(&self) -> String {
        format!("{}:refresh_token", self.prefix)
    }

    /// STRING, **durable** (no TTL): a suite corp's `permanent_code` (from
    /// `get_permanent_code`). A secret: never logged, never in a key name,
    /// not readable by the business-reader ACL user. Lost, it comes back
    /// only with a new authorization (WeCom has no list of codes).
    pub fn permanent_code(&self) -> String {
        format!("{}:permanent_code", self.prefix)
    }

    /// The subject's durable grant, stored with its access token: an
    /// authorizer's refresh token, a suite corp's permanent code (the same
    /// key name as [`CredentialKeys::refresh_token`] for every other
    /// subject, which has none).
    pub fn grant(&self) -> String {
        match self.subject() {
            Subject::Corp { .. } => self.permanent_code(),
            _ => self.refresh_token(),
        }
    }

    /// STRING: when an authorizer was removed (Unix ms, Redis clock), `PX`
    /// one hour: a reconciliation that listed it just before does not
    /// bring it back; a new authorization deletes it.
    pub fn removed(&self) -> String {
        format!("{}:removed", self.prefix)
    }

    /// STRING: an authorizer's pending authorization code (from an
    /// `authorized`/`updateauthorized` push or an operator), `PX` until it
    /// expires. Single use: the refresher that exchanges it deletes it.
    pub fn authorization_code(&self) -> String {
        format!("{}:authorization_code", self.prefix)
    }

    /// The key of the stored value `kind` is fetched with: the access token
    /// for a ticket, the verify ticket for a component token, the component
    /// token for a reconciliation, the refresh token for an authorizer's
    /// access token. `None` for a config credential's access token.
    pub fn input(&self, kind: Kind) -> Option<String> {
        match (self.subject(), kind) {
            (Subject::Component(appid), Kind::ComponentAccessToken) => Some(format!(
                "{}:{{component/{appid}}}:verify_ticket",
                self.namespace
            )),
            (Subject::Component(_), Kind::AuthorizerList) => {
                Some(self.value(Kind::ComponentAccessToken))
            }
            (Subject::Authorizer { .. }, Kind::AccessToken) => Some(self.refresh_token()),
            (Subject::Suite(suite), Kind::SuiteAccessToken) => {
                Some(format!("{}:{{suite/{suite}}}:suite_ticket", self.namespace))
            }
            (Subject::Corp { .. }, Kind::AccessToken) => Some(self.permanent_code()),
            (_, Kind::AccessToken) => None,
            (_, _) => Some(self.value(Kind::AccessToken)),
        }
    }

    /// SET: ids of the refresher replicas whose config lists this
    /// credential (its secret's holders). The credential's keys are deleted
    /// when the last live holder drops it.
    pub fn holders(&self) -> String {
        format!("{}:holders", self.prefix)
    }

    /// HASH, durable (no TTL): the **schedule** of the subject's values, the
    /// truth the lease scripts decide by: field `<kind>` = when the value is
    /// due, Unix ms (Redis clock); the field exists exactly while the value
    /// is registered. An authorizer's `authorized_at` (Unix ms) is kept here
    /// too. The due-queue ([`CredentialKeys::due`]) is an index of it.
    pub fn schedule(&self) -> String {
        format!("{}:schedule", self.prefix)
    }

    /// ZSET: the due-queue shard this credential's values are indexed in
    /// (an index of the schedules, in another slot: see
    /// `wxtoken_schema::index`).
    pub fn due(&self) -> String {
        due_key(&self.namespace, shard_of(&self.id))
    }

    /// SET: the registry shard this credential's id is listed in (same
    /// slot as [`CredentialKeys::due`]).
    pub fn registry(&self) -> String {
        registry_shard_key(&self.namespace, shard_of(&self.id))
    }

    /// The due-queue member of one value: `"<id> <kind>"`, the same text as
    /// a message on the requests channel.
    pub fn member(&self, kind: Kind) -> String {
        format!("{} {}", self.id, kind.as_str())
    }
}

/// How long a stored `component_verify_ticket` lives: WeChat's tickets are
/// valid for 12 hours after they are pushed.
pub const VERIFY_TICKET_TTL_MS: u64 = 12 * 3600 * 1000;

/// The key names of one third-party platform (component), by its appid.
/// Their hash tag (`{component/wx123}`) holds a `/`, which no credential
/// id may contain, so a component never shares a tag with a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentKeys {
    appid: String,
    /// `namespace:{component/appid}`.
    prefix: String,
}

impl ComponentKeys {
    /// Keys for the component `component_appid` under `namespace`; both
    /// must pass [`validate_name`].
    pub fn new(namespace: &str, component_appid: &str) -> Result<ComponentKeys, InvalidName> {
        validate_name("namespace", namespace)?;
        validate_name("component appid", component_appid)?;
        Ok(ComponentKeys {
            appid: component_appid.to_owned(),
            prefix: format!("{namespace}:{{component/{component_appid}}}"),
        })
    }

    /// The component appid.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// ZSET, **durable**: the platform's authorizer appids, scored by when
    /// each was (last) authorized or found, Unix ms (Redis clock). The
    /// index behind listing, summaries and reconciliation.
    pub fn authorizers(&self) -> String {
        format!("{}:authorizers", self.prefix)
    }

    /// STRING: the newest `component_verify_ticket` WeChat pushed, as is;
    /// `PX` [`VERIFY_TICKET_TTL_MS`] from when it was received.
    /// `wxtoken:{component/wx123}:verify_ticket`.
    pub fn verify_ticket(&self) -> String {
        format!("{}:verify_ticket", self.prefix)
    }

    /// HASH beside the ticket, same TTL: `create_time` (the push's
    /// `CreateTime`, Unix s as WeChat sent it) and `received_at_ms` (Redis
    /// clock). An older push never replaces a newer ticket.
    pub fn verify_ticket_info(&self) -> String {
        format!("{}:verify_ticket:info", self.prefix)
    }
}

/// How long a stored `suite_ticket` lives: WeCom's tickets are valid for
/// 30 minutes after they are pushed (a new one every 10 minutes).
pub const SUITE_TICKET_TTL_MS: u64 = 30 * 60 * 1000;

/// The key names of one WeCom third-party suite (服务商套件), by its suite
/// id. Their hash tag (`{suite/ww123}`) is the suite subject's; it holds a
/// `/`, so it never clashes with a credential's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteKeys {
    suite_id: String,
    /// `namespace:{suite/suite_id}`.
    prefix: String,
}

impl SuiteKeys {
    /// Keys for the suite `suite_id` under `namespace`; both must pass
    /// [`validate_name`].
    pub fn new(namespace: &str, suite_id: &str) -> Result<SuiteKeys, InvalidName> {
        validate_name("namespace", namespace)?;
        validate_name("suite id", suite_id)?;
        Ok(SuiteKeys {
            suite_id: suite_id.to_owned(),
            prefix: format!("{namespace}:{{suite/{suite_id}}}"),
        })
    }

    /// The suite id.
    pub fn suite_id(&self) -> &str {
        &self.suite_id
    }

    /// STRING: the newest `suite_ticket` WeCom pushed, as is; `PX`
    /// [`SUITE_TICKET_TTL_MS`] from when it was received.
    /// `wxtoken:{suite/ww123}:suite_ticket`.
    pub fn suite_ticket(&self) -> String {
        format!("{}:suite_ticket", self.prefix)
    }

    /// HASH beside the ticket, same TTL: `create_time` (the push's
    /// `TimeStamp`, Unix s) and `received_at_ms`. An older push never
    /// replaces a newer ticket.
    pub fn suite_ticket_info(&self) -> String {
        format!("{}:suite_ticket:info", self.prefix)
    }

    /// ZSET, **durable**: the corpids that authorized the suite, scored by
    /// when each was registered, Unix ms (Redis clock). The index behind
    /// listing and summaries.
    pub fn corps(&self) -> String {
        format!("{}:corps", self.prefix)
    }

    /// HASH of the temporary auth codes of `create_auth` pushes (secrets,
    /// like the refresh tokens: not readable by the reader ACL user):
    /// field `sha1(code)`, value `p <received ms> <code>` while pending,
    /// `d <exchanged ms>` once exchanged (kept an hour, so a replayed push
    /// is recognised; the code itself is gone).
    pub fn auth_codes(&self) -> String {
        format!("{}:auth_codes", self.prefix)
    }

    /// STRING: the lock of the suite's code exchanges (value = owner, `PX`):
    /// one replica at a time calls `get_permanent_code`, so a code is
    /// exchanged exactly once.
    pub fn exchange_lock(&self) -> String {
        format!("{}:lock:auth_codes", self.prefix)
    }
}

/// Number of due-queue shards. Part of the key contract: a value of
/// credential `id` is queued in shard [`shard_of`]`(id)`.
pub const DUE_SHARDS: u32 = 16;

/// The due-queue shard of credential `id`: 32-bit FNV-1a of the id's bytes,
/// modulo [`DUE_SHARDS`].
pub fn shard_of(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % DUE_SHARDS
}

/// ZSET: one shard of the due-queue. Members are `"<id> <kind>"`, scores
/// the Unix ms (Redis clock) at which the value is due for a refresh. Its
/// hash tag (`{due/07}`) holds a `/`, which no credential id may contain,
/// so shards and credentials never share a tag; Redis Cluster can spread
/// the shards over nodes.
pub fn due_key(namespace: &str, shard: u32) -> String {
    format!("{namespace}:{{due/{shard:02}}}:queue")
}

/// SET: one shard of the registry, the ids refreshers in the namespace keep
/// whose [`shard_of`] is `shard` (for listing; holds ids only). Same hash
/// tag as the due-queue shard.
pub fn registry_shard_key(namespace: &str, shard: u32) -> String {
    format!("{namespace}:{{due/{shard:02}}}:credentials")
}

/// Every registry shard of `namespace`, in shard order.
pub fn registry_keys(namespace: &str) -> Vec<String> {
    (0..DUE_SHARDS)
        .map(|s| registry_shard_key(namespace, s))
        .collect()
}

/// Splits a due-queue member (or a requests-channel message) into the
/// credential id and kind; `None` when it is not one.
pub fn parse_member(member: &str) -> Option<(&str, Kind)> {
    let (id, kind) = member.split_once(' ')?;
    let kind = Kind::parse(kind)?;
    Subject::parse(id)?
        .kinds()
        .contains(&kind)
        .then_some((id, kind))
}

/// ZSET: live refresher replicas, scored by their last heartbeat (Unix ms,
/// Redis clock). A replica whose entry is older than the liveness window is
/// taken for dead.
pub fn replicas_key(namespace: &str) -> String {
    format!("{namespace}:replicas")
}

/// STRING: the shared WeChat call-rate state (GCRA's theoretical arrival
/// time, Unix µs) of one WeChat host, e.g. `api.weixin.qq.com`.
pub fn rate_key(namespace: &str, host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    format!("{namespace}:rate:{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = CredentialKeys::new("wxtoken", "oa-main").unwrap();
        assert_eq!(k.value(Kind::AccessToken), "wxtoken:{oa-main}:access_token");
        assert_eq!(
            k.info(Kind::JsapiTicket),
            "wxtoken:{oa-main}:jsapi_ticket:info"
        );
        assert_eq!(
            k.lock(Kind::AccessToken),
            "wxtoken:{oa-main}:lock:access_token"
        );
        assert_eq!(k.fence(), "wxtoken:{oa-main}:fence");
        assert_eq!(k.status(), "wxtoken:{oa-main}:status");
        for key in [
            k.value(Kind::WxCardTicket),
            k.info(Kind::AccessToken),
            k.lock(Kind::JsapiTicket),
            k.fence(),
            k.status(),
            k.refresh_request(Kind::AccessToken),
        ] {
            assert!(key.contains("{oa-main}"), "{key} must carry the hash tag");
        }
    }

    #[test]
    fn queue_members_and_shards() {
        let k = CredentialKeys::new("wxtoken", "oa-main").unwrap();
        assert_eq!(k.member(Kind::JsapiTicket), "oa-main jsapi_ticket");
        assert_eq!(
            parse_member("corp-app agent_config_ticket"),
            Some(("corp-app", Kind::AgentConfigTicket))
        );
        assert_eq!(parse_member("component/wx1 agent_config_ticket"), None);
        for kind in KINDS {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(
            parse_member("oa-main jsapi_ticket"),
            Some(("oa-main", Kind::JsapiTicket))
        );
        for bad in [
            "oa-main",
            "oa-main nope",
            "a:b access_token",
            " access_token",
        ] {
            assert_eq!(parse_member(bad), None, "{bad:?}");
        }
        assert_eq!(k.due(), due_key("wxtoken", shard_of("oa-main")));
        assert!(k.due().starts_with("wxtoken:{due/"));
        // The registry shard shares the queue shard's tag (one slot).
        let tag = |key: &str| key.split('}').next().map(str::to_owned);
        assert_eq!(tag(&k.registry()), tag(&k.due()));
        assert_eq!(k.schedule(), "wxtoken:{oa-main}:schedule");
        assert_eq!(registry_keys("wxtoken").len(), DUE_SHARDS as usize);
        // The shard function is part of the contract: fixed values.
        assert_eq!(shard_of(""), 0x811c_9dc5 % DUE_SHARDS);
        let spread: std::collections::HashSet<u32> =
            (0..1000).map(|i| shard_of(&format!("app-{i}"))).collect();
        assert_eq!(spread.len(), DUE_SHARDS as usize);
        assert_eq!(
            rate_key("wx", "api.weixin.qq.com:443"),
            "wx:rate:api.weixin.qq.com_443"
        );
    }

    #[test]
    fn component_keys_never_share_a_tag_with_credentials() {
        let k = ComponentKeys::new("wxtoken", "wx123").unwrap();
        assert_eq!(k.verify_ticket(), "wxtoken:{component/wx123}:verify_ticket");
        assert_eq!(
            k.verify_ticket_info(),
            "wxtoken:{component/wx123}:verify_ticket:info"
        );
        assert_eq!(k.appid(), "wx123");
        // No credential id can produce the tag `component/wx123`.
        assert!(validate_name("credential id", "component/wx123").is_err());
        for bad in ["", "wx:1", "wx{1", "wx}1", "wx 1", "wx/1"] {
            let e = ComponentKeys::new("wxtoken", bad).unwrap_err();
            assert_eq!(e.what, "component appid", "{bad:?}");
        }
        assert_eq!(VERIFY_TICKET_TTL_MS, 43_200_000);
    }

    #[test]
    fn names_that_would_break_keys_are_rejected() {
        for bad in [
            "",
            "a:b",
            "a{b",
            "a}b",
            "with space",
            "ümlaut",
            &"x".repeat(65),
        ] {
            assert!(
                CredentialKeys::new("wxtoken", bad).is_err(),
                "{bad:?} accepted"
            );
        }
        let err = CredentialKeys::new("wx token", "ok").unwrap_err();
        assert_eq!(err.what, "namespace");
        assert!(CredentialKeys::new("prod.wx-tokens_1", "mini.program-2").is_ok());
    }
}
