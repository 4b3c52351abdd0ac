//! The operator's commands: `status`, `refresh`, `get` and `authorizers`.
//! They look at a running deployment through Redis only, using the key
//! schema of `wxtoken_schema`.
//!
//! They must not call WeChat, write tokens or touch locks (only refreshers
//! do; `refresh` merely files a request through the schema's script, and
//! `authorizers` registers or removes a platform's authorizers through the
//! schema's registry scripts), build key names by hand, or print a secret
//! (an authorization code or a refresh token is never shown). `get` is the
//! one place a whole token is printed (for scripts); everywhere else tokens
//! appear as 8-character prefixes.

pub mod authorizers;
pub mod get;
pub mod refresh;
pub mod status;
mod target;

use wxtoken_schema::{validate_name, Kind, Subject};

/// Exit code of `status` when a credential is unhealthy.
pub const EXIT_UNHEALTHY: u8 = 3;
/// Exit code of `refresh` when no refresher replaced the value in time.
pub const EXIT_TIMEOUT: u8 = 4;
/// Exit code of a usage error (clap's, and [`Usage`]).
pub const EXIT_USAGE: u8 = 2;

/// A usage error found after the command line parsed (e.g. a kind the
/// credential does not keep): reported like clap's, with exit code
/// [`EXIT_USAGE`].
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A stored kind, as spelled on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KindArg {
    /// The access token (a credential's or an authorizer's).
    #[value(name = "access_token")]
    AccessToken,
    /// The JS-SDK ticket.
    #[value(name = "jsapi_ticket")]
    JsapiTicket,
    /// The card api_ticket.
    #[value(name = "wx_card_ticket")]
    WxCardTicket,
    /// A third-party platform's component_access_token.
    #[value(name = "component_access_token")]
    ComponentAccessToken,
    /// A third-party platform's last reconciliation of its authorizers.
    #[value(name = "authorizer_list")]
    AuthorizerList,
    /// A WeCom app's ticket for wx.agentConfig.
    #[value(name = "agent_config_ticket")]
    AgentConfigTicket,
    /// A WeCom third-party suite's suite_access_token.
    #[value(name = "suite_access_token")]
    SuiteAccessToken,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::AccessToken => Kind::AccessToken,
            KindArg::JsapiTicket => Kind::JsapiTicket,
            KindArg::WxCardTicket => Kind::WxCardTicket,
            KindArg::ComponentAccessToken => Kind::ComponentAccessToken,
            KindArg::AuthorizerList => Kind::AuthorizerList,
            KindArg::AgentConfigTicket => Kind::AgentConfigTicket,
            KindArg::SuiteAccessToken => Kind::SuiteAccessToken,
        }
    }
}

/// clap value parser for a credential id: a credential of the config
/// (`oa-main`), `component/<appid>`, `authorizer/<component>/<appid>`,
/// `suite/<suite id>` or `corp/<suite id>/<corpid>`.
/// The error names the part that is wrong.
pub fn subject_id(id: &str) -> Result<String, String> {
    if Subject::parse(id).is_some() {
        return Ok(id.to_owned());
    }
    let parts: Vec<&str> = id.split('/').collect();
    let appids: &[(&str, &str)] = match parts.as_slice() {
        ["component", appid] => &[("component appid", appid)],
        ["authorizer", component, appid] => {
            &[("component appid", component), ("authorizer appid", appid)]
        }
        ["suite", suite] => &[("suite id", suite)],
        ["corp", suite, corpid] => &[("suite id", suite), ("corpid", corpid)],
        _ => &[],
    };
    for (what, value) in appids {
        if validate_name("appid", value).is_err() {
            return Err(format!(
                "invalid {what} {value:?} in {id:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . -"
            ));
        }
    }
    Err(format!(
        "invalid credential id {id:?}: expected a credential name (1 to 64 characters from \
         A-Z a-z 0-9 _ . -), component/APPID, authorizer/COMPONENT_APPID/APPID, \
         suite/SUITE_ID or corp/SUITE_ID/CORPID"
    ))
}

/// clap value parser for an appid (`--component`, `--authorizer`).
pub fn appid(value: &str) -> Result<String, String> {
    validate_name("appid", value)
        .map(|()| value.to_owned())
        .map_err(|_| {
            format!("invalid appid {value:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . -")
        })
}

/// The kind to use for `id`: `kind` if given (refused with [`Usage`] when
/// the subject does not keep it), else the subject's primary value.
pub fn kind_for(id: &str, kind: Option<KindArg>) -> anyhow::Result<Kind> {
    let subject = Subject::parse(id).ok_or_else(|| Usage(format!("invalid id {id:?}")))?;
    let Some(kind) = kind.map(Kind::from) else {
        return Ok(subject.primary());
    };
    if subject.kinds().contains(&kind) {
        return Ok(kind);
    }
    let kept: Vec<&str> = subject.kinds().iter().map(|k| k.as_str()).collect();
    Err(Usage(format!(
        "{id} has no {kind}: refreshers keep only {} for it (--kind)",
        kept.join(", ")
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_kinds_are_checked_with_the_bad_part_named() {
        for ok in ["oa-main", "component/wx1", "authorizer/wx1/wx2"] {
            assert_eq!(subject_id(ok).as_deref(), Ok(ok));
        }
        let e = subject_id("authorizer/wx1/wx:2").unwrap_err();
        assert!(e.contains("authorizer appid \"wx:2\""), "{e}");
        let e = subject_id("authorizer/wx 1/wx2").unwrap_err();
        assert!(e.contains("component appid \"wx 1\""), "{e}");
        let e = subject_id("component/").unwrap_err();
        assert!(e.contains("component appid \"\""), "{e}");
        let e = subject_id("a/b").unwrap_err();
        assert!(e.contains("invalid credential id \"a/b\""), "{e}");
        assert!(appid("wx{1}").unwrap_err().contains("\"wx{1}\""));

        assert_eq!(
            kind_for("component/wx1", None).unwrap(),
            Kind::ComponentAccessToken
        );
        assert_eq!(
            kind_for("authorizer/wx1/wx2", None).unwrap(),
            Kind::AccessToken
        );
        assert_eq!(
            kind_for("authorizer/wx1/wx2", Some(KindArg::JsapiTicket)).unwrap(),
            Kind::JsapiTicket
        );
        let e = kind_for("component/wx1", Some(KindArg::AccessToken)).unwrap_err();
        assert!(e.is::<Usage>());
        assert!(e.to_string().contains("component_access_token"), "{e}");
        assert!(kind_for("oa", Some(KindArg::AuthorizerList)).is_err());
    }
}
