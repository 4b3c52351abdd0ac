//! Key names. Every key of one credential carries the credential id as a Redis
//! Cluster hash tag (`wxtoken:{oa-main}:access_token`), so all of them live in
//! one slot and every Lua script touches one slot only.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a stored value is. Access tokens and the two JS-SDK tickets share the
/// same lock, fence and write machinery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `access_token` from `/cgi-bin/token` or `/cgi-bin/stable_token`.
    AccessToken,
    /// `jsapi_ticket` from `/cgi-bin/ticket/getticket?type=jsapi`.
    JsapiTicket,
    /// `wx_card` api_ticket from `/cgi-bin/ticket/getticket?type=wx_card`.
    WxCardTicket,
}

/// All kinds, in a stable order.
pub const KINDS: [Kind; 3] = [Kind::AccessToken, Kind::JsapiTicket, Kind::WxCardTicket];

impl Kind {
    /// The name used in key names, events and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AccessToken => "access_token",
            Kind::JsapiTicket => "jsapi_ticket",
            Kind::WxCardTicket => "wx_card_ticket",
        }
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

/// The key names of one credential in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialKeys {
    namespace: String,
    id: String,
    /// `namespace:{id}` — the common prefix, hash tag included.
    prefix: String,
}

impl CredentialKeys {
    /// Keys for credential `id` under `namespace`; both must pass [`validate_name`].
    pub fn new(namespace: &str, id: &str) -> Result<CredentialKeys, InvalidName> {
        validate_name("namespace", namespace)?;
        validate_name("credential id", id)?;
        Ok(CredentialKeys {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            prefix: format!("{namespace}:{{{id}}}"),
        })
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
