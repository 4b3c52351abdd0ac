//! The thin Rust reader of WeChat tokens that wxtoken refreshers keep in
//! Redis. Business servers use it to get an access token or JS-SDK ticket,
//! and to report one WeChat refused; it never calls WeChat and never writes
//! tokens.
//!
//! ```no_run
//! use std::time::Duration;
//! use wxtoken_client::{Client, Kind, Options};
//!
//! # async fn example() -> Result<(), wxtoken_client::Error> {
//! let client = Client::connect(
//!     "redis://127.0.0.1:6379",
//!     Options::default().wait_for_token(Duration::from_secs(3)),
//! )
//! .await?;
//! let token = client.access_token("oa-main").await?; // from memory in steady state
//! let ticket = client.ticket("oa-main", Kind::JsapiTicket).await?;
//! let detail = client.get("oa-main", Kind::AccessToken).await?;
//! println!("fence {} expires in {:?}", detail.fence, detail.expires_in);
//! # let _ = (token, ticket);
//! # Ok(())
//! # }
//! ```
//!
//! # How values stay fresh
//!
//! - Values are cached in process by (credential id, kind). In steady state a
//!   read makes **no Redis round trip**: a cached value is served while it is
//!   more than [`Options::expiry_margin`] from expiry and the update-event
//!   subscription is live (or, while it is down, the value was read less than
//!   [`Options::poll_interval`] ago).
//! - A background task subscribes to the namespace's update events
//!   (`<namespace>:events`). Every write by a refresher publishes one; the
//!   client treats it as a **hint**, never as a value: if it names a value
//!   this client has cached, that value is read again from Redis at once
//!   (one pipelined round trip; at most one such read in flight per value,
//!   and a burst of events during it causes just one more), and what Redis
//!   holds is cached — so the switch to a new token still happens right
//!   after the write. The token, fence and expiry an event claims are never
//!   stored or served: whoever can publish on the channel can cost clients
//!   reads, but cannot make them serve a forged token or keep one past the
//!   expiry Redis gives it. Events for values the client neither caches nor
//!   is waiting for, malformed events and events over 16 KiB are dropped
//!   (debug log) and create nothing; applying an event is O(1) in the number
//!   of cached values.
//! - When the subscription drops, reads fall back to polling; the task
//!   reconnects with capped backoff (100 ms → 5 s) and, once back, every
//!   cached value is read again once, since events may have been missed.
//! - A value that is not cached (or not fresh) is read with one pipelined
//!   round trip. If Redis fails, or has nothing stored (it may have restarted
//!   empty), a cached value that has not expired yet is served rather than
//!   the error — and read again on every call until Redis has a value; an
//!   expired value is never served. With nothing usable cached, a read of a
//!   value that is not stored waits up to [`Options::wait_for_token`] for one,
//!   then fails with [`Error::NotAvailable`].
//!
//! # Passive refresh
//!
//! When a WeChat API answers 40001, 40014 or 42001, report the token with
//! [`Client::report_invalid`] and wait for its replacement with
//! [`Client::replaced`]. The refreshers replace it only if it is still the
//! stored one, so a storm of reports costs one WeChat call.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use wxtoken_client::{Client, Kind};
//! # async fn example(client: Client, bad: String) -> Result<(), wxtoken_client::Error> {
//! client.report_invalid("oa-main", &bad).await?;
//! let fresh = client.replaced("oa-main", Kind::AccessToken, &bad, Duration::from_secs(5)).await?;
//! # let _ = fresh;
//! # Ok(())
//! # }
//! ```
//!
//! # Third-party platforms
//!
//! Besides the credentials of the refreshers' config (`oa-main`), every id
//! takes the run-time subjects of a third-party platform (第三方平台):
//! `component/<component appid>` keeps the platform's
//! [`Kind::ComponentAccessToken`], and
//! `authorizer/<component appid>/<authorizer appid>` an authorizer's
//! [`Kind::AccessToken`] (and [`Kind::JsapiTicket`] if the platform keeps
//! it). [`Client::component_token`] and [`Client::authorizer_token`] build
//! the id from appids; [`Client::report_authorizer_invalid`] reports a
//! refused authorizer token. The same account authorized by two platforms
//! has two separate tokens. Ids and appids are checked before Redis is
//! touched ([`Error::InvalidName`] names the bad part), and so is the kind:
//! a platform has no `access_token` ([`Error::KindNotKept`]).
//!
//! ```no_run
//! # use wxtoken_client::{authorizer_id, Client, Kind};
//! # async fn example(client: Client) -> Result<(), wxtoken_client::Error> {
//! let token = client.authorizer_token("wxcomponent1", "wxauthorizer9").await?;
//! let ticket = client
//!     .ticket(&authorizer_id("wxcomponent1", "wxauthorizer9"), Kind::JsapiTicket)
//!     .await?;
//! // WeChat answered 40001 to a call made with `token`:
//! client
//!     .report_authorizer_invalid("wxcomponent1", "wxauthorizer9", &token)
//!     .await?;
//! # let _ = ticket;
//! # Ok(())
//! # }
//! ```
//!
//! Tokens are logged only as 8-character prefixes, and [`Token`]'s `Debug`
//! shows only that prefix.
//!
//! This crate must stay thin: no HTTP stack, no configuration parser, no key
//! layout or event format of its own (both come from `wxtoken_schema`).

mod cache;
mod client;
mod error;
mod events;
mod options;
mod reader;

#[doc(hidden)]
pub use client::DebugStats;
pub use client::{Client, Token};
pub use error::Error;
pub use options::Options;
pub use wxtoken_connect::TlsFiles;
pub use wxtoken_schema::{
    authorizer_id, component_id, corp_id, suite_id, InvalidName, Kind, RequestOutcome,
};

pub(crate) use wxtoken_schema::token_prefix;
