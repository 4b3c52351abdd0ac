//! The operator's commands: `status`, `refresh` and `get`. They look at a
//! running deployment through Redis only, using the key schema of
//! `wxtoken_schema`.
//!
//! They must not call WeChat, write tokens or touch locks (only refreshers
//! do; `refresh` merely files a request through the schema's script), build
//! key names by hand, or print a secret. `get` is the one place a whole token
//! is printed (for scripts); everywhere else tokens appear as 8-character
//! prefixes.

pub mod get;
pub mod refresh;
pub mod status;
mod target;

use wxtoken_schema::Kind;

/// Exit code of `status` when a credential is unhealthy.
pub const EXIT_UNHEALTHY: u8 = 3;
/// Exit code of `refresh` when no refresher replaced the value in time.
pub const EXIT_TIMEOUT: u8 = 4;

/// A stored kind, as spelled on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KindArg {
    /// The access token.
    #[value(name = "access_token")]
    AccessToken,
    /// The JS-SDK ticket.
    #[value(name = "jsapi_ticket")]
    JsapiTicket,
    /// The card api_ticket.
    #[value(name = "wx_card_ticket")]
    WxCardTicket,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::AccessToken => Kind::AccessToken,
            KindArg::JsapiTicket => Kind::JsapiTicket,
            KindArg::WxCardTicket => Kind::WxCardTicket,
        }
    }
}
