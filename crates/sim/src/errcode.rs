//! WeChat error codes the simulator answers with, and their real `errmsg` texts.
//!
//! Only codes and messages live here; how they are put on the wire is in `wire.rs`. Must not
//! invent codes WeChat does not use for the situation being simulated.

/// Success (only tickets carry it explicitly; token answers have no errcode key at all).
pub const OK: i64 = 0;
/// "system error": WeChat is busy or broken; retry.
pub const SYSTEM_ERROR: i64 = -1;
/// Invalid credential: wrong (32-hex) secret, or an access token that is unknown, revoked, or
/// replaced and past its overlap.
pub const INVALID_CREDENTIAL: i64 = 40001;
/// `grant_type` missing or not `client_credential`.
pub const INVALID_GRANT_TYPE: i64 = 40002;
/// Unknown appid.
pub const INVALID_APPID: i64 = 40013;
/// Invalid arguments (e.g. unknown ticket type).
pub const INVALID_ARGS: i64 = 40097;
/// Wrong secret that does not even look like a secret (not 32 hex characters).
pub const INVALID_APPSECRET: i64 = 40125;
/// Caller IP not in the app's whitelist.
pub const INVALID_IP: i64 = 40164;
/// The AppSecret is frozen.
pub const SECRET_FROZEN: i64 = 40243;
/// `access_token` parameter missing.
pub const ACCESS_TOKEN_MISSING: i64 = 41001;
/// `appid` parameter missing.
pub const APPID_MISSING: i64 = 41002;
/// `secret` parameter missing.
pub const APPSECRET_MISSING: i64 = 41004;
/// The access token lived its full life and expired.
pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
/// The endpoint requires POST.
pub const REQUIRE_POST: i64 = 43002;
/// Daily quota (or the daily force-refresh limit) used up.
pub const DAILY_QUOTA: i64 = 45009;
/// Per-minute quota used up (not produced by the rules; available for fault injection).
pub const MINUTE_QUOTA: i64 = 45011;
/// `component_verify_ticket` expired (pushed more than 12 h ago).
pub const COMPONENT_TICKET_EXPIRED: i64 = 61005;
/// `component_verify_ticket` unknown (never pushed to this component, or missing).
pub const COMPONENT_TICKET_INVALID: i64 = 61006;
/// The authorizer has not authorized this component (never, or no longer).
pub const COMPONENT_NOT_AUTHORIZED: i64 = 61003;
/// An authorization code that is unknown, used already, or superseded.
pub const AUTHORIZATION_CODE_INVALID: i64 = 61009;
/// An authorization code past its lifetime.
pub const AUTHORIZATION_CODE_EXPIRED: i64 = 61010;
/// `component_appid` is not the component the component access token belongs to.
pub const INVALID_COMPONENT: i64 = 61011;
/// A component API called with something other than a component access token (an app's or
/// an authorizer's access token).
pub const COMPONENT_TOKEN_REQUIRED: i64 = 61014;
/// `authorizer_refresh_token` missing, wrong, or replaced (by a re-authorization).
pub const REFRESH_TOKEN_INVALID: i64 = 61023;
/// `component_appid` missing from a component API's body.
pub const COMPONENT_APPID_MISSING: i64 = 41018;
/// `count` of `api_get_authorizer_list` above 500.
pub const ARGS_COUNT_EXCEEDED: i64 = 40170;
/// The request body is not valid JSON of the expected shape.
pub const DATA_FORMAT_ERROR: i64 = 47001;

/// WeChat's `errmsg` for a code, without the trailing ` rid: ...`. Codes without a known text
/// (e.g. arbitrary injected ones) get a generic text.
pub fn errmsg(code: i64) -> &'static str {
    match code {
        OK => "ok",
        SYSTEM_ERROR => "system error",
        INVALID_CREDENTIAL => "invalid credential, access_token is invalid or not latest",
        INVALID_GRANT_TYPE => "invalid grant_type",
        INVALID_APPID => "invalid appid",
        INVALID_ARGS => "invalid args",
        INVALID_APPSECRET => "invalid appsecret",
        INVALID_IP => "invalid ip, not in whitelist",
        SECRET_FROZEN => "AppSecret已被冻结，请登录MP解冻后再次调用。",
        ACCESS_TOKEN_MISSING => "access_token missing",
        APPID_MISSING => "appid missing",
        APPSECRET_MISSING => "appsecret missing",
        ACCESS_TOKEN_EXPIRED => "access_token expired",
        REQUIRE_POST => "require POST method",
        DAILY_QUOTA => "reach max api daily quota limit",
        MINUTE_QUOTA => "api minute-quota reach limit  mustslower  retry next minute",
        DATA_FORMAT_ERROR => "data format error",
        COMPONENT_TICKET_EXPIRED => "verify ticket timeout",
        COMPONENT_TICKET_INVALID => "verify ticket invalid",
        COMPONENT_NOT_AUTHORIZED => "component is not authorized by this account",
        AUTHORIZATION_CODE_INVALID => "code is invalid",
        AUTHORIZATION_CODE_EXPIRED => "code is expired",
        INVALID_COMPONENT => "invalid component",
        COMPONENT_TOKEN_REQUIRED => "must use component token for component api",
        REFRESH_TOKEN_INVALID => "refresh_token is invalid",
        COMPONENT_APPID_MISSING => "missing component_appid",
        ARGS_COUNT_EXCEEDED => "args count exceed count limit",
        _ => "simulated error",
    }
}
