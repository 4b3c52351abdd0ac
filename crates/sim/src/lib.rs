//! # wxtoken-sim: a faithful, scriptable simulator of WeChat's access-token APIs
//!
//! wxtoken's tests, its demo and users' own integration tests run against this instead of
//! `https://api.weixin.qq.com`. It is deliberately *not* lenient: it encodes WeChat's real
//! rules (check order and errcodes, 7200 s lifetime, 300 s overlap after a replacement, daily
//! quotas, stable-token reuse and force-refresh limits, IP whitelist, frozen secrets), so a
//! client that passes against it has been tested against the rules that bite in production.
//! It must not be used as anything but a test double: it has no authentication of its own
//! (`wxtoken sim` warns loudly when it listens on a non-loopback address; `POST /_sim/apps`
//! never replaces an existing app's secret).
//!
//! Served paths (real WeChat paths):
//!
//! | path | what |
//! | --- | --- |
//! | `GET /cgi-bin/token` | classic access token |
//! | `POST /cgi-bin/stable_token` | stable access token (normal and `force_refresh`) |
//! | `GET /cgi-bin/ticket/getticket` | `jsapi` / `wx_card` tickets |
//! | `GET,POST /cgi-bin/get_api_domain_ip` | a business API that checks the token |
//! | `POST /cgi-bin/component/api_component_token` | component (第三方平台) access token for a pushed `component_verify_ticket` |
//! | `POST /cgi-bin/component/api_start_push_ticket` | pushes a `component_verify_ticket` at once |
//! | `POST /cgi-bin/component/api_query_auth` | exchanges an authorization code for an authorizer's tokens |
//! | `POST /cgi-bin/component/api_authorizer_token` | a new authorizer access token for a refresh token |
//! | `POST /cgi-bin/component/api_get_authorizer_list` | a component's authorizers with their refresh tokens |
//! | `/_sim/...` | the HTTP admin API mirroring [`Admin`] |
//! | `/qyapi/cgi-bin/...` | WeCom (企业微信): see [`wecom`]; WeCom base URL [`Simulator::wecom_base_url`] |
//!
//! Everything is scriptable at run time through [`Admin`] (in-process) or `/_sim/` (HTTP):
//! scripted [`Fault`]s, whitelist/frozen flags, quota counters, token revocation, and
//! [`Evidence`] of what happened (token prefixes only, never secrets or whole tokens).
//!
//! | HTTP admin API (JSON in and out) | [`Admin`] equivalent |
//! | --- | --- |
//! | `GET /_sim/healthz` | |
//! | `GET /_sim/evidence` | [`Admin::evidence`] (every fetch record of every app: large) |
//! | `GET /_sim/counts` | [`Admin::counts`]: app count and fetch counts of all apps ([`SimCounts`], O(1)) |
//! | `GET /_sim/counts?per_app=true` | [`Admin::counts_per_app`]: the same plus appid → [`FetchCounts`] |
//! | `GET /_sim/apps/{appid}/evidence` | [`Admin::app_evidence`] |
//! | `GET /_sim/apps/{appid}/counts` | [`Admin::app_counts`] |
//! | `POST /_sim/apps` `{"appid","secret"}` (201; 409 for an existing appid) | [`Admin::try_create_app`] |
//! | `POST /_sim/apps/{appid}/faults` (a [`Fault`]) | [`Admin::inject`] |
//! | `GET /_sim/apps/{appid}/faults` | [`Admin::faults`] |
//! | `DELETE /_sim/apps/{appid}/faults` | [`Admin::clear_faults`] |
//! | `PUT /_sim/apps/{appid}/flags` ([`Flags`]) | [`Admin::set_ip_whitelisted`], [`Admin::set_secret_frozen`] |
//! | `PUT /_sim/apps/{appid}/quota` ([`QuotaUsed`]) | [`Admin::set_quota_used`] |
//! | `POST /_sim/apps/{appid}/quota/reset` | [`Admin::reset_quota`] |
//! | `POST /_sim/apps/{appid}/revoke` | [`Admin::revoke_tokens`] |
//! | `GET /_sim/clock` | [`Admin::clock`] ([`ClockState`]) |
//! | `POST /_sim/clock/advance` `{"by":"30s"}` ([`Advance`]) | [`Admin::try_advance`] |
//! | `POST /_sim/clock/pause` | [`Admin::pause_clock`] |
//! | `POST /_sim/clock/resume` | [`Admin::resume_clock`] |
//! | `GET /_sim/components/{appid}/authorizers/evidence` | [`Admin::authorizer_evidence`] |
//! | `GET /_sim/components/{appid}/authorizers/issue_counts` | [`Admin::authorizer_issue_counts`] |
//! | `POST /_sim/components/{appid}/authorizers/bulk` `{"count":N}` → `{"appids":[...]}` | [`Admin::bulk_authorize`] |
//! | `POST /_sim/components/{appid}/authorizers/fail` ([`FailAuthorizerEndpoint`]) | [`Admin::fail_authorizer_endpoint`] |
//! | `GET /_sim/components/{appid}/authorizers/{authorizer}/counts` | [`Admin::authorizer_counts`] |
//! | `POST /_sim/components/{appid}/authorizers/{authorizer}/authorize[?push=false]` | [`Admin::authorize`], [`Admin::authorize_without_push`] |
//! | `POST /_sim/components/{appid}/authorizers/{authorizer}/reauthorize[?push=false]` | [`Admin::reauthorize`], [`Admin::reauthorize_without_push`] |
//! | `POST /_sim/components/{appid}/authorizers/{authorizer}/unauthorize[?push=false]` | [`Admin::unauthorize`], [`Admin::unauthorize_without_push`] |
//! | `POST /_sim/components/{appid}/authorizers/{authorizer}/rotate_refresh_token` | [`Admin::rotate_refresh_token`] |
//! | `POST /_sim/components/{appid}/authorizers/{authorizer}/revoke` | [`Admin::revoke_authorizer_token`] |
//!
//! Third-party platforms ([`ComponentConfig`], `[[component]]` in TOML) with a `push_url` get
//! an encrypted `component_verify_ticket` POSTed there at start and every
//! [`Timing::ticket_push_interval`] of simulator time; [`Admin::push_ticket`],
//! [`Admin::push_tampered`], [`Admin::component_evidence`] and
//! [`Admin::check_component_token`] script and inspect them (in-process only so far).
//!
//! Their authorizers (授权方) are created by [`Admin::authorize`] (an encrypted `authorized`
//! push with a single-use authorization code), [`Admin::bulk_authorize`] (many at once, no
//! push; in TOML `[[authorizers]]`, [`BulkAuthorizers`]), changed by [`Admin::reauthorize`] /
//! [`Admin::unauthorize`] (`updateauthorized` / `unauthorized` pushes) and the test faults
//! [`Admin::rotate_refresh_token`] / [`Admin::revoke_authorizer_token`]. Authorizer access
//! tokens are accepted by the business API and `getticket` like app tokens; see
//! [`Admin::check_authorizer_token`] and [`Admin::authorizer_evidence`] ([`AuthorizerEvidence`]).
//! Errcodes: `api_query_auth` 61009 (code unknown, used or superseded) and 61010 (expired);
//! `api_authorizer_token` 41002, 61003 (not authorized), 61023 (refresh token), 45009; the
//! list 40170 (`count` > 500) and 40097; all three first 41001, 61014 (not a component
//! token), 40001, 42001, 47001, 41018 (no `component_appid`) and 61011 (another component's).
//!
//! WeCom (企业微信, `[[wecom_corp]]` / `[[wecom_suite]]` in TOML, [`WecomCorpConfig`],
//! [`WecomSuiteConfig`]) is served under `/qyapi` (its paths overlap WeChat's); its rules,
//! errcodes ([`wecom::errcode`]), admin methods (`Admin::*wecom*`) and the `/_sim/wecom/...`
//! admin routes are described in [`wecom`].
//!
//! Unknown appids are 404, malformed bodies 400, an existing appid in `POST /_sim/apps` 409
//! (and an authorization change that does not fit the authorizer's state 409);
//! all answer `{"error": "..."}`.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use wxtoken_sim::{Endpoint, Fault, FaultKind, SimConfig, Simulator, Timing};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! const APPID: &str = "wx0000000000000001";
//! const SECRET: &str = "0123456789abcdef0123456789abcdef";
//!
//! // Short lifetimes so tests run in seconds.
//! let timing = Timing {
//!     expires_in: Duration::from_secs(4),
//!     overlap: Duration::from_secs(1),
//!     ..Timing::default()
//! };
//! let config = SimConfig::default().with_app(APPID, SECRET).with_timing(timing);
//! let sim = Simulator::start(config, "127.0.0.1:0".parse()?).await?;
//! let admin = sim.admin();
//!
//! // The next classic fetch fails with "system error", the one after works.
//! let fault = Fault::new(FaultKind::Errcode { errcode: -1 }).on(Endpoint::Token).times(1);
//! admin.inject(APPID, fault);
//!
//! let url = format!(
//!     "{}/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}",
//!     sim.base_url()
//! );
//! let first: serde_json::Value = reqwest::get(&url).await?.json().await?;
//! assert_eq!(first["errcode"], -1);
//! let second: serde_json::Value = reqwest::get(&url).await?.json().await?;
//! let token = second["access_token"].as_str().unwrap_or_default();
//! assert_eq!(admin.check_token(token), Ok(()));
//!
//! // Evidence: one faulted fetch, then one issued token (8-character prefix only).
//! let evidence = admin.app_evidence(APPID).unwrap_or_default();
//! assert_eq!(evidence.fetches.len(), 2);
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Many apps
//!
//! For benchmarks, [`SimConfig::with_generated_apps`] (in TOML a `[generate]` table with
//! `count`, `secret_seed` and optionally `appid_prefix`) adds apps whose credentials follow a
//! formula ([`GeneratedApps`]): app `i` has appid `format!("{prefix}{i:016}")` (prefix `wx` by
//! default, e.g. `wx0000000000099999`) and secret `format!("{secret_seed:016x}{i:016x}")`
//! (32 lowercase hex characters, like a real AppSecret). Every request costs hash lookups
//! only, whatever the number of apps; a start with 100,000 generated apps takes well under a
//! second. For "how many fetches in total / per app", read [`Admin::counts`] /
//! `GET /_sim/counts` (counters, O(1)) or [`Admin::app_counts`] rather than the full evidence.
//!
//! ```
//! use wxtoken_sim::{GeneratedApps, SimConfig};
//!
//! let config = SimConfig::default().with_generated_apps(100_000, 0x5eed);
//! assert_eq!(config.app_count(), 100_000);
//! let generated = GeneratedApps::new(100_000, 0x5eed);
//! assert_eq!(generated.appid(99_999), "wx0000000000099999");
//! assert_eq!(generated.secret(255), "0000000000005eed00000000000000ff");
//! ```
//!
//! ## Time
//!
//! Every rule that depends on time (expiry, overlap, the stable force-refresh interval, the
//! quota day, evidence times, `delay` and `hang` faults) reads one simulator clock. Left
//! alone it is real time. [`Admin::pause_clock`] freezes it and [`Admin::advance`] moves it
//! forward at once (HTTP: `/_sim/clock/...`), so a test can check WeChat's real 7200 s / 300 s
//! / 30 s / one-day rules exactly, to the nanosecond, without sleeping, while requests still
//! go over real TCP. A paused clock does not move on its own: a `delay` or `hang` fault then
//! holds its request until the clock is advanced past it.
//!
//! ```
//! use std::time::Duration;
//! use wxtoken_sim::{Admin, SimConfig, Simulator};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! const APPID: &str = "wx0000000000000001";
//! const SECRET: &str = "0123456789abcdef0123456789abcdef";
//! let sim = Simulator::start(SimConfig::default().with_app(APPID, SECRET), "127.0.0.1:0".parse()?)
//!     .await?;
//! let admin: Admin = sim.admin();
//! admin.pause_clock();
//! let url = format!(
//!     "{}/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}",
//!     sim.base_url()
//! );
//! let answer: serde_json::Value = reqwest::get(&url).await?.json().await?;
//! let token = answer["access_token"].as_str().unwrap_or_default();
//! assert_eq!(answer["expires_in"], 7200);
//!
//! admin.advance(Duration::from_secs(7200) - Duration::from_nanos(1));
//! assert_eq!(admin.check_token(token), Ok(()));
//! admin.advance(Duration::from_nanos(1));
//! assert_eq!(admin.check_token(token), Err(42001));
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Validity rule
//!
//! A token is valid until it expires or, if it was replaced, until `overlap` after the
//! replacement, whichever is sooner. A revoked token, or one whose overlap ended before its
//! natural expiry, answers 40001 (forever); a token that lived its full life answers 42001.
//!
//! ## Choices where WeChat's documentation leaves room
//!
//! - Scripted faults are applied before every check and never charge quota. A `delay` fault
//!   then answers normally and is recorded as the normal outcome.
//! - Classic and ticket quotas count successful fetches; the stable quota counts every call
//!   that passes the credential checks (reused answers too); business calls are counted but
//!   not limited.
//! - A `force_refresh` inside the minimum interval returns the current token and does not
//!   count towards the daily force-refresh limit.
//! - `getticket` without `type` is 40097, like an unknown type.
//! - [`Admin::revoke_tokens`] revokes access tokens (classic and stable), not tickets.
//! - Issued tokens and fetch records are kept for the simulator's lifetime (bounded by the
//!   daily quotas), so an old token keeps answering 42001/40001 rather than becoming
//!   "unknown". That costs roughly 300 bytes per issued token and 100 per fetch record:
//!   100,000 apps refreshing every two hours add about 0.5 GB a day.

mod admin;
mod authorizer;
mod business;
mod clock;
mod component;
mod config;
pub mod errcode;
mod evidence;
mod fault;
mod server;
mod state;
mod ticket;
mod token;
pub mod wecom;
mod wire;

pub use admin::{Admin, AdminError, Flags, QuotaUsed};
pub use authorizer::{
    AuthEvent, AuthorizeRecord, AuthorizerCounts, AuthorizerEndpoint, AuthorizerEndpointCounts,
    AuthorizerError, AuthorizerEvidence, BulkAuthorize, EndpointCounts, EventCounts, EventPush,
    FailAuthorizerEndpoint,
};
pub use clock::{Advance, ClockState, MAX_CLOCK_ADVANCE};
pub use component::{
    ComponentCounts, ComponentEndpoint, ComponentError, ComponentEvidence, ComponentFetchRecord,
    PushRecord, PushTrigger, Tamper,
};
pub use config::{
    AppConfig, BulkAuthorizers, ComponentConfig, ConfigError, GeneratedApps, SimConfig, Timing,
    WecomAppConfig, WecomCorpConfig, WecomSuiteConfig, MAX_BULK_AUTHORIZERS, MAX_GENERATED_APPS,
};
pub use evidence::{
    AppEvidence, Counts, Endpoint, Evidence, FetchCounts, FetchOutcome, FetchRecord, LiveToken,
    SimCounts, UnknownEndpoint,
};
pub use fault::{Fault, FaultKind};
pub use server::{serve, Simulator};
pub use wecom::{
    FailWecomEndpoint, WecomAppEvidence, WecomAppFlags, WecomAuthEvent, WecomAuthRecord,
    WecomBulkCorp, WecomCorpEvidence, WecomCorpFlags, WecomEndpoint, WecomError, WecomFetchCounts,
    WecomPush, WecomSuiteEvidence, WecomSummary, WecomUrlVerification, MAX_WECOM_BULK_CORPS,
};
pub use wire::JSON_CONTENT_TYPE;
