//! The status page's tests: what it shows, and that nothing from Redis,
//! the config or the request can add markup to it.

mod hostile;

use super::super::snapshot::{CredentialCounts, Page, RedisHealth, Summary};
use super::*;
use wxtoken_schema::snapshot::{PendingRequest, Status, ValueStatus};
use wxtoken_schema::Kind;

fn kind(kind: Kind, ttl_ms: Option<u64>, health: Health) -> KindStatus {
    KindStatus {
        value: ValueStatus {
            kind,
            stored: ttl_ms.is_some(),
            ttl_ms,
            expires_at_ms: None,
            expires_in: Some(7200),
            refreshed_at_ms: Some(1_700_000_000_000),
            replica: Some("r<1>".into()),
            fence: Some(3),
            refresh_request: Some(PendingRequest {
                force: false,
                ttl_ms: Some(60_000),
            }),
            locked_by: Some("r\"2".into()),
            token_prefix: None,
        },
        health,
        token_prefix: ttl_ms.map(|_| "86_<b>x&".into()),
        refresh_margin_ms: 300_000,
        refreshes: Refreshes {
            ok: 2,
            same: 0,
            failed: 1,
            fenced: 0,
        },
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        replica: "replica-<script>".into(),
        namespace: "wxtoken".into(),
        started_at_ms: 1_700_000_000_000,
        uptime_ms: 200_000,
        now_ms: 1_700_000_200_000,
        redis: RedisHealth {
            up: true,
            latency_ms: Some(0.4),
            error: None,
        },
        refreshes: Refreshes {
            ok: 2,
            same: 0,
            failed: 1,
            fenced: 0,
        },
        summary: Summary {
            credentials: CredentialCounts {
                total: 1,
                with_problems: 1,
                failing: 1,
                paused: 1,
            },
            ..Summary::default()
        },
        page: Page {
            offset: 0,
            limit: 500,
            total_matching: 1,
        },
        credentials: vec![CredentialStatus {
            id: "oa-main".into(),
            problem: true,
            status: Status {
                appid: Some("wx0000000000000001".into()),
                mode: Some("classic".into()),
                last_ok_at_ms: Some(1_700_000_000_000),
                last_error: Some("access_token: <script>alert('x')</script> & more".into()),
                last_errcode: Some(40164),
                last_error_at_ms: Some(1_700_000_100_000),
                paused_until_ms: Some(1_700_000_500_000),
                paused: true,
                replica: Some("<img src=x>".into()),
            },
            kinds: vec![
                kind(Kind::AccessToken, Some(3_600_000), Health::Fresh),
                kind(Kind::JsapiTicket, None, Health::Missing),
            ],
        }],
        other_credentials: vec!["elsewhere".into()],
        other_credentials_total: 1,
        platforms: Vec::new(),
    }
}

fn view() -> View {
    View {
        limit: 500,
        ..View::default()
    }
}

#[test]
fn everything_from_redis_is_escaped() {
    let html = render(&snapshot(), &view());
    for raw in ["<script>", "<img", "<b>x", "r<1>", "r\"2", "& more"] {
        assert!(!html.contains(raw), "{raw:?} unescaped in\n{html}");
    }
    // `'` needs no escaping: every attribute value is in double quotes.
    assert!(html.contains("&lt;script&gt;alert('x')&lt;/script&gt; &amp; more"));
    assert!(html.contains("<td>r&lt;1&gt;</td>"));
    assert!(html.contains("refreshing · r&quot;2</span>"));
    assert!(html.contains("<code class=\"tok\">86_&lt;b&gt;x&amp;…</code>"));
    assert!(html.contains("replica-&lt;script&gt;"));
    assert!(!html.contains("<script"), "no scripts at all");
}

#[test]
fn page_has_rows_bars_and_states() {
    let html = render(&snapshot(), &view());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(html.contains("id=\"cred-oa-main\""));
    assert!(html.contains("class=\"bar fresh\""));
    assert!(html.contains("style=\"width:50.0%\""), "1h of 2h");
    assert!(html.contains("class=\"bar missing\""));
    assert!(html.contains("errcode 40164"));
    assert!(html.contains("badge warn\">paused until "));
    assert!(html.contains("it lapses in 1m 0s\">refresh requested</span>"));
    assert!(html.contains("1h 0m</b> <span>of 2h 0m"));
    assert!(html.contains("elsewhere"));
    assert!(!html.contains("http://") && !html.contains("https://"));
}

#[test]
fn redis_down_is_shown() {
    let mut s = snapshot();
    s.redis = RedisHealth {
        up: false,
        latency_ms: None,
        error: Some("redis: no answer within 1s".into()),
    };
    for v in &mut s.credentials[0].kinds {
        *v = kind(v.value.kind, None, Health::Unknown);
    }
    s.summary.values.unknown = 2;
    let html = render(&s, &view());
    assert!(html.contains("Redis is not answering"));
    assert!(html.contains("2 unknown (Redis down)"), "{html}");
    assert!(!html.contains("all fine"));
    assert!(html.contains("class=\"bar unknown\""));
}

#[test]
fn summary_comes_first_and_more_links_to_the_rest() {
    let mut s = snapshot();
    s.summary.credentials.total = 20_000;
    s.summary.credentials.with_problems = 20_000;
    s.summary.values.total = 20_000;
    s.summary.values.missing = 20_000;
    s.page = Page {
        offset: 0,
        limit: 1,
        total_matching: 20_000,
    };
    s.other_credentials_total = 1_500;
    let v = View {
        limit: 1,
        prefix: Some("oa".into()),
        ..View::default()
    };
    let html = render(&s, &v);
    let summary = html.find("<section class=\"summary\">").unwrap();
    let table = html.find("<table class=\"creds\">").unwrap();
    assert!(summary < table, "summary first");
    assert!(html.contains("20,000 with problems"), "{html}");
    assert!(html.contains("20,000 missing"), "{html}");
    assert!(html.contains("Needs attention"));
    assert!(
        html.contains("1–1 of 20,000 matching (id starting with “oa”)"),
        "{html}"
    );
    assert!(
        html.contains("<b>19,999 more</b> — use <a href=\"status.json?prefix=oa&amp;offset=1&amp;limit=5000\">"),
        "{html}"
    );
    assert!(html.contains("<a href=\"?prefix=oa&amp;offset=1\">the next page</a>"));
    assert!(
        html.contains("(1,500): <code>elsewhere</code> and 1,499 more"),
        "{html}"
    );

    // The last page links back, not on.
    s.page.offset = 19_999;
    let html = render(&s, &v);
    assert!(!html.contains("more</b>"));
    assert!(html.contains("<a href=\"?prefix=oa&amp;offset=19998\">previous page</a>"));
}

fn platform_view() -> ComponentView {
    use wxtoken_schema::snapshot::{
        AuthorizerCounts, AuthorizerProblem, Backlog, ComponentTokenView, Reconciliation,
        VerifyTicketView,
    };
    let now = 1_700_000_200_000;
    ComponentView {
        platform: wxtoken_schema::snapshot::PlatformKind::Component,
        appid: "wxcomp".into(),
        id: "component/wxcomp".into(),
        now_ms: now,
        verify_ticket: VerifyTicketView {
            stored: true,
            ttl_ms: Some(40_000_000),
            received_at_ms: Some(now - 180_000),
            age_ms: Some(180_000),
            create_time: Some(1_700_000_000),
        },
        component_token: ComponentTokenView {
            stored: false,
            failing: true,
            status: Status {
                last_error: Some("component_access_token: <img src=x> & co".into()),
                last_errcode: Some(61006),
                ..Status::default()
            },
            ..ComponentTokenView::default()
        },
        reconciliation: Some(Reconciliation {
            at_ms: Some(now - 3_600_000),
            ..Reconciliation::parse("listed=100000,added=3,updated=1,removed=2")
        }),
        authorizers: AuthorizerCounts {
            total: 100_000,
            counted: 100_000,
            ok: 99_000,
            expiring: 400,
            missing: 300,
            failing: 250,
            paused: 50,
        },
        backlog: Backlog {
            due_now: 12,
            oldest_due_at_ms: Some(now - 5_000),
            queued: 200_002,
        },
        problems: (0..50)
            .map(|i| AuthorizerProblem {
                id: format!("authorizer/wxcomp/wxa{i:05}"),
                appid: format!("wxa{i:05}"),
                state: AuthorizerState::Failing,
                ttl_ms: None,
                last_error: Some(format!("access_token: <script>x{i}</script>")),
                last_errcode: Some(61023),
                last_error_at_ms: Some(now),
                failures: Some(2),
                paused_until_ms: None,
            })
            .collect(),
        round_trips: 101,
    }
}

#[test]
fn a_platform_is_a_block_of_counts_and_its_first_problems() {
    let mut s = snapshot();
    s.platforms = vec![platform_view()];
    let html = render(&s, &view());
    assert!(!html.contains("<script"), "escaped");
    assert!(!html.contains("<img"), "escaped");
    assert!(html.contains("&lt;img src=x&gt; &amp; co"), "{html}");
    let block = html.find("id=\"platform-wxcomp\"").unwrap();
    let table = html.find("<table class=\"creds\">").unwrap();
    assert!(block < table, "platforms before the credentials");
    assert!(
        html.contains("100,000 authorizers · <b class=\"bad\">1,000 not ok</b>"),
        "{html}"
    );
    assert!(html.contains("99,000 <small>/ 100,000</small>"), "{html}");
    assert!(html.contains("400 expiring") && html.contains("250 failing"));
    assert!(html.contains("listed 100,000 · added 3 · updated 1 · removed 2"));
    assert!(html.contains(">12</span> <small>due now"), "{html}");
    assert!(html.contains("errcode 61006"));
    // Ten problem rows, linking to their own rows; the rest by link.
    assert_eq!(html.matches("href=\"?id=authorizer/wxcomp/").count(), 10);
    assert!(html.contains("<a href=\"?id=authorizer/wxcomp/wxa00000\">"));
    assert!(!html.contains("wxa00010"));
    assert!(html.contains("<b>990 more</b> not ok"), "{html}");
    assert!(html.contains("href=\"?prefix=authorizer/wxcomp/&amp;problems=true\""));
}

#[test]
fn a_wecom_suite_is_a_block_of_its_corps() {
    let mut s = snapshot();
    let mut suite = platform_view();
    suite.platform = wxtoken_schema::snapshot::PlatformKind::WecomSuite;
    suite.appid = "wwsuite".into();
    suite.id = "suite/wwsuite".into();
    s.platforms = vec![suite];
    let html = render(&s, &view());
    assert!(html.contains("WeCom suite <code>wwsuite</code>"), "{html}");
    assert!(html.contains("100,000 corps · "), "{html}");
    for label in ["Suite ticket", "Suite token", "Corps ok"] {
        assert!(html.contains(label), "{label}");
    }
    for platform_only in [
        "Verify ticket",
        "Component token",
        "Last reconciliation",
        "authorizers: ",
    ] {
        assert!(!html.contains(platform_only), "{platform_only}");
    }
    assert!(
        html.contains("href=\"?prefix=corp/wwsuite/&amp;problems=true\""),
        "{html}"
    );
}

#[test]
fn thousands_are_separated() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1_000), "1,000");
    assert_eq!(thousands(100_000), "100,000");
    assert_eq!(thousands(1_234_567), "1,234,567");
}
