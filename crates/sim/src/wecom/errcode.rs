//! WeCom (企业微信) error codes the simulator answers with, and the `errmsg` texts it uses.
//!
//! WeCom shares some numbers with WeChat but not their meaning or text (40001 is "invalid
//! secret" here, an invalid access token is 40014), so they live apart from
//! [`crate::errcode`]. Texts follow the ones WeCom is seen answering where known; WeCom
//! appends `, hint: [...], from ip: ..., more info at https://open.work.weixin.qq.com/devtool/query?e=N`
//! (see [`errmsg_with_hint`]). Must not: invent codes for situations WeCom has a code for.

use std::net::IpAddr;

/// Success (`gettoken`, tickets and the business API carry it explicitly).
pub const OK: i64 = 0;
/// System busy: retry (only ever scripted).
pub const SYSTEM_BUSY: i64 = -1;
/// `gettoken`: wrong secret of the right shape (43 characters of `A-Z a-z 0-9 _ -`); also a
/// wrong `suite_secret`.
pub const INVALID_SECRET: i64 = 40001;
/// Unknown corpid.
pub const INVALID_CORPID: i64 = 40013;
/// An access token that is unknown, revoked (early invalidation, `cancel_auth`) or a ticket.
pub const INVALID_ACCESS_TOKEN: i64 = 40014;
/// An invalid parameter (an unknown `type` of `ticket/get`).
pub const INVALID_PARAMETER: i64 = 40058;
/// A temporary authorization code that is unknown, used already or expired.
pub const INVALID_AUTH_CODE: i64 = 40078;
/// A `suite_access_token` that is unknown or revoked.
pub const INVALID_SUITE_TOKEN: i64 = 40082;
/// Unknown `suite_id`.
pub const INVALID_SUITE_ID: i64 = 40083;
/// A permanent code that is not the current one of the corp's authorization of the suite
/// (never issued, rotated, or the authorization was cancelled).
pub const INVALID_PERMANENT_CODE: i64 = 40084;
/// A `suite_ticket` that was never pushed to the suite, or is past its lifetime.
pub const INVALID_SUITE_TICKET: i64 = 40085;
/// `gettoken`: a wrong secret that does not even look like a WeCom secret.
pub const SECRET_MALFORMED: i64 = 40091;
/// `access_token` missing.
pub const ACCESS_TOKEN_MISSING: i64 = 41001;
/// `corpid` (or `auth_corpid`) missing.
pub const CORPID_MISSING: i64 = 41002;
/// `corpsecret` missing.
pub const CORPSECRET_MISSING: i64 = 41004;
/// `auth_code` missing.
pub const AUTH_CODE_MISSING: i64 = 41008;
/// `userid` missing.
pub const USERID_MISSING: i64 = 41009;
/// `suite_id` missing.
pub const SUITE_ID_MISSING: i64 = 41021;
/// `suite_access_token` missing.
pub const SUITE_TOKEN_MISSING: i64 = 41022;
/// `suite_ticket` missing.
pub const SUITE_TICKET_MISSING: i64 = 41023;
/// `suite_secret` missing.
pub const SUITE_SECRET_MISSING: i64 = 41024;
/// `permanent_code` missing.
pub const PERMANENT_CODE_MISSING: i64 = 41025;
/// The access token lived its full life.
pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
/// The suite access token lived its full life.
pub const SUITE_TOKEN_EXPIRED: i64 = 42009;
/// Frequency limit: an hourly ticket limit, an app set rate limited, or an IP blocked after
/// too many failed `gettoken` calls.
pub const FREQ_LIMIT: i64 = 45009;
/// Too many concurrent calls (only ever scripted).
pub const CONCURRENCY_LIMIT: i64 = 45033;
/// A request body that is not a JSON object.
pub const DATA_FORMAT_ERROR: i64 = 47001;
/// The caller's IP is not a trusted IP of the corp (企业可信IP).
pub const IP_NOT_TRUSTED: i64 = 60020;

/// The `errmsg` text for a code, without WeCom's hint suffix. Unknown (scripted) codes get a
/// generic text.
pub fn errmsg(code: i64) -> &'static str {
    match code {
        OK => "ok",
        SYSTEM_BUSY => "system busy",
        INVALID_SECRET => "invalid secret",
        INVALID_CORPID => "invalid corpid",
        INVALID_ACCESS_TOKEN => "invalid access_token",
        INVALID_PARAMETER => "invalid parameter",
        INVALID_AUTH_CODE => "invalid auth_code",
        // WeCom's own spelling.
        INVALID_SUITE_TOKEN => "invalid suite_acccess_token or provider_access_token",
        INVALID_SUITE_ID => "invalid suite_id",
        INVALID_PERMANENT_CODE => "invalid permanent_code",
        INVALID_SUITE_TICKET => "invalid suite ticket",
        SECRET_MALFORMED => "secret is invalid",
        ACCESS_TOKEN_MISSING => "access_token missing",
        CORPID_MISSING => "corpid missing",
        CORPSECRET_MISSING => "corpsecret missing",
        AUTH_CODE_MISSING => "auth_code missing",
        USERID_MISSING => "userid missing",
        SUITE_ID_MISSING => "suite_id missing",
        SUITE_TOKEN_MISSING => "suite_access_token missing",
        SUITE_TICKET_MISSING => "suite_ticket missing",
        SUITE_SECRET_MISSING => "suite_secret missing",
        PERMANENT_CODE_MISSING => "permanent_code missing",
        ACCESS_TOKEN_EXPIRED => "access_token expired",
        SUITE_TOKEN_EXPIRED => "suite_access_token expired",
        FREQ_LIMIT => "api freq out of limit",
        CONCURRENCY_LIMIT => "api concurrent out of limit",
        DATA_FORMAT_ERROR => "data format error",
        IP_NOT_TRUSTED => "not allow to access from your ip",
        _ => "simulated error",
    }
}

/// WeCom's whole `errmsg`: the text, a random hint, the caller's IP and the look-up link.
pub fn errmsg_with_hint(code: i64, ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!(
        "{}, hint: [{}], from ip: {ip}, more info at https://open.work.weixin.qq.com/devtool/query?e={code}",
        errmsg(code),
        hint()
    )
}

/// A hint in one of WeCom's shapes: 25 decimal digits.
fn hint() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..25)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errmsg_has_wecom_shape() {
        let msg = errmsg_with_hint(IP_NOT_TRUSTED, IpAddr::from([127, 0, 0, 1]));
        assert!(msg.starts_with("not allow to access from your ip, hint: ["));
        assert!(msg.contains("], from ip: 127.0.0.1, more info at "));
        assert!(msg.ends_with("query?e=60020"));
    }
}
