//! Scripted faults: per-app FIFO queues of misbehaviours (errcodes, 5xx, garbage, truncated
//! JSON, delays, hangs) that take precedence over WeChat's rules, switchable at run time.
//!
//! Each call to a matching endpoint (for the appid in the request; for ticket and business
//! calls, the app owning the access token) consumes one use of the first matching fault.
//! Must not: apply to calls it cannot attribute to an app, or charge quota for faulted calls
//! (a faulted call never reached "WeChat's" logic).

use std::fmt;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::evidence::{Endpoint, FetchOutcome};
use crate::state::{AppState, Shared};
use crate::wire::{self, WxReply};

/// A scripted fault queued for one app.
///
/// On the wire (HTTP admin API) it is flat:
/// `{"endpoint":"token","kind":"errcode","errcode":-1,"times":2}`; `endpoint` omitted means any
/// endpoint, `times` omitted means until cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FaultWire", into = "FaultWire")]
pub struct Fault {
    /// Which endpoint it applies to; `None` = any endpoint.
    pub endpoint: Option<Endpoint>,
    /// What happens.
    pub kind: FaultKind,
    /// How many calls it applies to; `None` = every call until cleared.
    pub times: Option<u32>,
}

impl Fault {
    /// A fault on every endpoint, until cleared.
    pub fn new(kind: FaultKind) -> Fault {
        Fault {
            endpoint: None,
            kind,
            times: None,
        }
    }

    /// Restricts the fault to one endpoint.
    pub fn on(mut self, endpoint: Endpoint) -> Fault {
        self.endpoint = Some(endpoint);
        self
    }

    /// Limits the fault to `n` calls.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }
}

/// What a fault does to a call.
///
/// Serde form is internally tagged: `{"kind":"errcode","errcode":-1}`,
/// `{"kind":"http_status","status":502}`, `{"kind":"garbage"}`, `{"kind":"truncated"}`,
/// `{"kind":"delay","delay":"500ms"}`, `{"kind":"hang"}`, `{"kind":"echo_url"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// HTTP 200 with `{"errcode":N,"errmsg":"..."}`.
    Errcode {
        /// The errcode to answer.
        errcode: i64,
    },
    /// This HTTP status with an HTML body, like a gateway in front of WeChat. A status that is
    /// not a valid HTTP status is answered as 500.
    HttpStatus {
        /// The status, e.g. 502.
        status: u16,
    },
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// HTTP 200, JSON content type, body cut off mid-JSON.
    Truncated,
    /// Answer normally after this delay (simulator time: real time, or sooner if
    /// [`crate::Admin::advance`] moves the clock past it).
    Delay {
        /// How long to wait first.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// Hold the request for [`crate::Timing::hang`] (simulator time, like `Delay`), then answer
    /// errcode -1.
    Hang,
    /// HTTP 200 with errcode -1 and an errmsg that echoes the request as received (method,
    /// path, query string; for `stable_token` the JSON body), secrets included, like a
    /// careless proxy or gateway. For testing that clients never log or store such texts.
    EchoUrl,
}

impl FaultKind {
    /// The label recorded in evidence: `errcode:-1`, `http_status:502`, `garbage`,
    /// `truncated`, `delay:500ms`, `hang`, `echo_url`.
    pub fn label(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Errcode { errcode } => write!(f, "errcode:{errcode}"),
            FaultKind::HttpStatus { status } => write!(f, "http_status:{status}"),
            FaultKind::Garbage => f.write_str("garbage"),
            FaultKind::Truncated => f.write_str("truncated"),
            FaultKind::Delay { delay } => {
                write!(
                    f,
                    "delay:{}",
                    humantime_serde::re::humantime::format_duration(*delay)
                )
            }
            FaultKind::Hang => f.write_str("hang"),
            FaultKind::EchoUrl => f.write_str("echo_url"),
        }
    }
}

/// The flat wire form of [`Fault`]; strict, so a typo (`"time": 2`) is an error rather than a
/// fault that silently never ends.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<Endpoint>,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    errcode: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    times: Option<u32>,
}

impl TryFrom<FaultWire> for Fault {
    type Error = String;

    fn try_from(w: FaultWire) -> Result<Fault, String> {
        let kind_name = w.kind.as_str();
        let allowed: &[&str] = match kind_name {
            "errcode" => &["errcode"],
            "http_status" => &["status"],
            "delay" => &["delay"],
            "garbage" | "truncated" | "hang" | "echo_url" => &[],
            other => {
                return Err(format!(
                    "unknown fault kind `{other}`, expected one of errcode, http_status, \
                     garbage, truncated, delay, hang, echo_url"
                ))
            }
        };
        let present = [
            ("errcode", w.errcode.is_some()),
            ("status", w.status.is_some()),
            ("delay", w.delay.is_some()),
        ];
        for (field, is_present) in present {
            if is_present && !allowed.contains(&field) {
                return Err(format!(
                    "field `{field}` does not apply to fault kind `{kind_name}`"
                ));
            }
        }
        let missing = |field: &str| format!("fault kind `{kind_name}` needs field `{field}`");
        let kind = match kind_name {
            "errcode" => FaultKind::Errcode {
                errcode: w.errcode.ok_or_else(|| missing("errcode"))?,
            },
            "http_status" => {
                let status = w.status.ok_or_else(|| missing("status"))?;
                if StatusCode::from_u16(status).is_err() {
                    return Err(format!("`status` {status} is not an HTTP status code"));
                }
                FaultKind::HttpStatus { status }
            }
            "delay" => FaultKind::Delay {
                delay: w.delay.ok_or_else(|| missing("delay"))?,
            },
            "garbage" => FaultKind::Garbage,
            "truncated" => FaultKind::Truncated,
            "echo_url" => FaultKind::EchoUrl,
            _ => FaultKind::Hang,
        };
        if w.times == Some(0) {
            return Err("`times` must be at least 1 (omit it for \"until cleared\")".into());
        }
        Ok(Fault {
            endpoint: w.endpoint,
            kind,
            times: w.times,
        })
    }
}

impl From<Fault> for FaultWire {
    fn from(f: Fault) -> FaultWire {
        let mut w = FaultWire {
            endpoint: f.endpoint,
            kind: String::new(),
            errcode: None,
            status: None,
            delay: None,
            times: f.times,
        };
        w.kind = match f.kind {
            FaultKind::Errcode { errcode } => {
                w.errcode = Some(errcode);
                "errcode"
            }
            FaultKind::HttpStatus { status } => {
                w.status = Some(status);
                "http_status"
            }
            FaultKind::Garbage => "garbage",
            FaultKind::Truncated => "truncated",
            FaultKind::Delay { delay } => {
                w.delay = Some(delay);
                "delay"
            }
            FaultKind::Hang => "hang",
            FaultKind::EchoUrl => "echo_url",
        }
        .to_string();
        w
    }
}

/// Consumes one use of the first fault matching `endpoint`, if any.
pub(crate) fn take(app: &mut AppState, endpoint: Endpoint) -> Option<FaultKind> {
    let idx = app
        .faults
        .iter()
        .position(|f| f.endpoint.is_none_or(|e| e == endpoint) && f.times != Some(0))?;
    let fault = app.faults.get_mut(idx)?;
    let kind = fault.kind.clone();
    if let Some(n) = fault.times.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            app.faults.remove(idx);
        }
    }
    Some(kind)
}

/// Applies the next scripted fault for this app and endpoint, if there is one.
///
/// Returns the response to send instead of the normal answer, or `None` to answer normally
/// (no fault, or a delay that has now been waited out). Records the fault in the evidence.
/// `request` is the request as received (e.g. `GET /cgi-bin/token?...`), for `echo_url`.
pub(crate) async fn intercept(
    shared: &Shared,
    appid: Option<&str>,
    endpoint: Endpoint,
    force_refresh: bool,
    request: impl FnOnce() -> String,
) -> Option<Response> {
    let appid = appid?;
    let now = shared.now();
    let kind = {
        let mut inner = shared.lock();
        let app = inner.app_mut(appid, &now)?;
        let kind = take(app, endpoint)?;
        match (&kind, endpoint) {
            (FaultKind::Delay { .. }, _) => {}
            (FaultKind::Errcode { errcode }, Endpoint::Business) => {
                *app.rejected_business_calls.entry(*errcode).or_insert(0) += 1;
            }
            (_, Endpoint::Business) => {}
            _ => inner.record(
                appid,
                endpoint,
                force_refresh,
                FetchOutcome::Fault { kind: kind.label() },
                &now,
            ),
        }
        kind
    };
    tracing::debug!(appid, %endpoint, fault = %kind, "injecting fault");
    match kind {
        FaultKind::Errcode { errcode } => Some(WxReply::err(errcode).into_response()),
        FaultKind::HttpStatus { status } => Some(html_error(status)),
        FaultKind::Garbage => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
                "<html>upstream error</html>",
            )
                .into_response(),
        ),
        FaultKind::Truncated => Some(wire::json_response(
            StatusCode::OK,
            truncated_body(endpoint),
        )),
        FaultKind::Delay { delay } => {
            // Counted from the request's own reading of the clock, so an advance made once
            // the fault was taken always counts in full.
            shared.clock.sleep_until(now.at.checked_add(delay)).await;
            None
        }
        FaultKind::Hang => {
            shared
                .clock
                .sleep_until(now.at.checked_add(shared.timing.hang))
                .await;
            Some(WxReply::err(crate::errcode::SYSTEM_ERROR).into_response())
        }
        FaultKind::EchoUrl => Some(
            WxReply::Err {
                code: crate::errcode::SYSTEM_ERROR,
                msg: format!("system error, request: {}", request()),
            }
            .into_response(),
        ),
    }
}

/// An nginx-style error page with the given status.
fn html_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1>\
         </center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        body,
    )
        .into_response()
}

/// The beginning of a plausible success body for the endpoint, cut off mid-string.
fn truncated_body(endpoint: Endpoint) -> String {
    let start = wire::random_token(6);
    match endpoint {
        Endpoint::Token | Endpoint::StableToken => format!("{{\"access_token\":\"{start}"),
        Endpoint::Ticket => format!("{{\"errcode\":0,\"errmsg\":\"ok\",\"ticket\":\"{start}"),
        Endpoint::Business => "{\"ip_list\":[\"101.226.10".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_wire_form_round_trips() {
        let f = Fault::new(FaultKind::Errcode { errcode: -1 })
            .on(Endpoint::Token)
            .times(2);
        let json = serde_json::to_value(&f).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"endpoint":"token","kind":"errcode","errcode":-1,"times":2})
        );
        let back: Fault = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, f);

        let d: Fault = serde_json::from_str(r#"{"kind":"delay","delay":"250ms"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            d.kind,
            FaultKind::Delay {
                delay: Duration::from_millis(250)
            }
        );
        assert_eq!(d.endpoint, None);
        assert_eq!(d.times, None);
    }

    #[test]
    fn wire_form_is_strict() {
        let err = |s: &str| match serde_json::from_str::<Fault>(s) {
            Ok(f) => panic!("accepted {s}: {f:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err(r#"{"kind":"errcode","errcode":-1,"time":2}"#).contains("time"));
        assert!(err(r#"{"kind":"errcode"}"#).contains("needs field `errcode`"));
        assert!(err(r#"{"kind":"hang","status":502}"#).contains("does not apply"));
        assert!(err(r#"{"kind":"boom"}"#).contains("unknown fault kind `boom`"));
        assert!(err(r#"{"kind":"http_status","status":42}"#).contains("not an HTTP status"));
        assert!(err(r#"{"kind":"hang","times":0}"#).contains("at least 1"));
        assert!(err(r#"{"kind":"hang","endpoint":"tokens"}"#).contains("unknown variant"));
        assert!(err(r#"{"kind":"echo_url","errcode":-1}"#).contains("does not apply"));
        let echo: Fault = serde_json::from_str(r#"{"kind":"echo_url","times":1}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(echo, Fault::new(FaultKind::EchoUrl).times(1));
    }

    #[test]
    fn fault_kind_is_internally_tagged() {
        let k: FaultKind = serde_json::from_str(r#"{"kind":"errcode","errcode":-1}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k, FaultKind::Errcode { errcode: -1 });
        let h: FaultKind =
            serde_json::from_str(r#"{"kind":"hang"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h, FaultKind::Hang);
        assert!(
            serde_json::from_str::<FaultKind>(r#"{"kind":"errcode","errcode":1,"x":2}"#).is_err()
        );
    }

    #[test]
    fn take_consumes_first_matching_fault_in_order() {
        let mut app = AppState::new("s");
        app.faults
            .push_back(Fault::new(FaultKind::Garbage).on(Endpoint::Ticket).times(1));
        app.faults
            .push_back(Fault::new(FaultKind::Errcode { errcode: -1 }).times(2));
        app.faults.push_back(Fault::new(FaultKind::Hang));
        assert_eq!(
            take(&mut app, Endpoint::Token),
            Some(FaultKind::Errcode { errcode: -1 })
        );
        assert_eq!(take(&mut app, Endpoint::Ticket), Some(FaultKind::Garbage));
        assert_eq!(
            take(&mut app, Endpoint::Ticket),
            Some(FaultKind::Errcode { errcode: -1 })
        );
        // Both limited faults are used up; the persistent one stays.
        assert_eq!(take(&mut app, Endpoint::Token), Some(FaultKind::Hang));
        assert_eq!(take(&mut app, Endpoint::Token), Some(FaultKind::Hang));
        assert_eq!(app.faults.len(), 1);
    }
}
