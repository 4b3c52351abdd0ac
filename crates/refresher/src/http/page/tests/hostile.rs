//! Hostile text in every field the page shows that Redis, the config or
//! the request can set: it must come out as text, never as markup. The
//! page is read back with a small strict tokenizer: every tag and
//! attribute must be one the page writes itself, every `&` must start an
//! entity, no `<` or `>` may stand in text or in an attribute value, and
//! links may hold only URL characters (query values percent-encoded).

use super::super::super::snapshot::{Snapshot, View};
use super::super::render;
use super::{platform_view, snapshot};
use std::collections::BTreeSet;
use wxtoken_schema::snapshot::Reconciliation;

/// Each hostile text, as the page must show it in text and attribute
/// values, and as a link's query value must hold it.
const HOSTILE: [(&str, &str, &str); 3] = [
    (
        "<script>alert(1)</script>",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "%3Cscript%3Ealert%281%29%3C/script%3E",
    ),
    (
        "\"'><img src=x onerror=alert(1)>",
        "&quot;'&gt;&lt;img src=x onerror=alert(1)&gt;",
        "%22%27%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E",
    ),
    ("&amp;", "&amp;amp;", "%26amp%3B"),
];

/// Tags the page writes.
const TAGS: &[&str] = &[
    "html", "head", "meta", "title", "style", "body", "header", "main", "footer", "section", "div",
    "span", "b", "small", "i", "h2", "p", "a", "code", "table", "thead", "tbody", "tr", "th", "td",
];
/// Attributes the page writes.
const ATTRIBUTES: &[&str] = &[
    "lang",
    "charset",
    "http-equiv",
    "content",
    "name",
    "class",
    "id",
    "href",
    "title",
    "style",
    "colspan",
    "rowspan",
];

/// A marker per field (letters and `_` only: the same escaped and
/// percent-encoded), so the test can tell each field was shown.
fn field(name: &str, hostile: &str) -> String {
    format!("F_{name}_{hostile}")
}

/// A snapshot and view with `hostile` (after a marker) in every text field.
fn hostile_page(hostile: &str) -> (Snapshot, View) {
    let f = |name: &str| field(name, hostile);
    let mut s = snapshot();
    s.replica = f("replica");
    s.namespace = f("namespace");
    s.other_credentials = vec![f("other")];
    s.page.offset = 1;
    s.page.limit = 1;
    s.page.total_matching = 5;
    let c = &mut s.credentials[0];
    c.id = f("cred");
    c.status.appid = Some(f("appid"));
    c.status.mode = Some(f("mode"));
    c.status.last_error = Some(f("lasterror"));
    c.status.replica = Some(f("statusreplica"));
    for (i, k) in c.kinds.iter_mut().enumerate() {
        k.token_prefix = Some(f(&format!("prefix{i}")));
        k.value.replica = Some(f(&format!("valuereplica{i}")));
        k.value.locked_by = Some(f(&format!("lockedby{i}")));
    }
    let mut p = platform_view();
    p.appid = f("component");
    p.component_token.status.last_error = Some(f("componenterror"));
    p.reconciliation = Some(Reconciliation {
        summary: f("reconciliation"),
        ..Reconciliation::default()
    });
    p.problems.truncate(1);
    p.problems[0].id = f("authorizerid");
    p.problems[0].appid = f("authorizerappid");
    p.problems[0].last_error = Some(f("authorizererror"));
    s.platforms = vec![p];
    let view = View {
        limit: 1,
        prefix: Some(f("viewprefix")),
        ids: Some([f("viewid")].into()),
        ..View::default()
    };
    (s, view)
}

/// What the tokenizer saw.
#[derive(Default)]
struct Seen {
    tags: BTreeSet<String>,
    attributes: BTreeSet<String>,
    /// `(attribute, value as written)`.
    values: Vec<(String, String)>,
}

/// Reads `html` strictly as the page writes it; panics at anything else.
fn tokenize(html: &str) -> Seen {
    let mut seen = Seen::default();
    let rest = html
        .strip_prefix("<!DOCTYPE html>")
        .expect("starts with the doctype");
    let mut rest = rest;
    while !rest.is_empty() {
        let Some(open) = rest.find('<') else {
            text(rest);
            break;
        };
        text(&rest[..open]);
        rest = &rest[open + 1..];
        if let Some(after) = rest.strip_prefix('/') {
            let end = after.find('>').expect("an end tag ends");
            let name = &after[..end];
            assert!(TAGS.contains(&name), "end tag {name:?}");
            rest = &after[end + 1..];
            continue;
        }
        let name_len = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .expect("a tag ends");
        let name = &rest[..name_len];
        assert!(TAGS.contains(&name), "tag {name:?}");
        seen.tags.insert(name.to_owned());
        rest = &rest[name_len..];
        loop {
            if let Some(after) = rest.strip_prefix('>') {
                rest = after;
                break;
            }
            rest = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("after <{name}: {:?}", &rest[..40.min(rest.len())]));
            let eq = rest.find('=').expect("attribute=value");
            let attribute = &rest[..eq];
            assert!(ATTRIBUTES.contains(&attribute), "attribute {attribute:?}");
            let value = rest[eq + 1..]
                .strip_prefix('"')
                .expect("values are double-quoted");
            let close = value.find('"').expect("a value ends");
            let v = &value[..close];
            assert!(!v.contains(['<', '>']), "{attribute}={v:?}");
            entities(v);
            seen.attributes.insert(attribute.to_owned());
            seen.values.push((attribute.to_owned(), v.to_owned()));
            rest = &value[close + 1..];
        }
        if name == "style" {
            // The constant style sheet (no `<`, checked at compile time).
            let end = rest.find("</style>").expect("the style sheet ends");
            rest = &rest[end..];
        }
    }
    seen
}

/// Text between tags: no `<` (the caller cut there), no `>`, entities only.
fn text(t: &str) {
    assert!(!t.contains('>'), "a raw > in text: {t:?}");
    entities(t);
}

/// Every `&` starts one of the entities maud writes.
fn entities(t: &str) {
    for (i, _) in t.match_indices('&') {
        let tail = &t[i..];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;"]
                .iter()
                .any(|e| tail.starts_with(e)),
            "a bare & in {t:?}"
        );
    }
}

#[test]
fn hostile_text_in_every_field_stays_text() {
    for (hostile, escaped, encoded) in HOSTILE {
        let (mut s, view) = hostile_page(hostile);
        let up = render(&s, &view);
        s.redis.up = false;
        s.redis.latency_ms = None;
        s.redis.error = Some(field("rediserror", hostile));
        let down = render(&s, &view);
        for html in [&up, &down] {
            // Every occurrence of every field: escaped, or in a link
            // percent-encoded. (`&amp;` escaped is `&amp;amp;`, so it is
            // found inside its own escaped form: look at each field.)
            for (at, _) in html.match_indices("F_") {
                let tail = &html[at + 2..];
                let after = tail.find('_').map_or("", |end| &tail[end + 1..]);
                assert!(
                    after.starts_with(escaped) || after.starts_with(encoded),
                    "{hostile:?} neither escaped nor encoded at {:?}",
                    &html[at..(at + 80).min(html.len())]
                );
            }
            if !escaped.contains(hostile) {
                assert!(!html.contains(hostile), "{hostile:?} raw in\n{html}");
            }
            assert!(!html.contains("<script") && !html.contains("<img"));
            let seen = tokenize(html);
            assert!(seen.tags.contains("a") && seen.attributes.contains("href"));
            for (attribute, value) in &seen.values {
                match attribute.as_str() {
                    // Links: relative, URL characters only, `&` as `&amp;`.
                    "href" => assert!(
                        value
                            .replace("&amp;", "&")
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~/?=&%,".contains(&b)),
                        "href={value:?}"
                    ),
                    "style" => assert!(
                        value.starts_with("width:") || value.starts_with("left:"),
                        "style={value:?}"
                    ),
                    "class" => assert!(
                        value
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b" -".contains(&b)),
                        "class={value:?}"
                    ),
                    _ => {}
                }
            }
        }

        // Each field is shown, escaped, in text or an attribute value.
        let shown = |html: &str, name: &str| {
            let want = format!("F_{name}_{escaped}");
            assert!(html.contains(&want), "{name}: {want:?} not in\n{html}");
        };
        for name in [
            "replica",
            "namespace",
            "other",
            "cred",
            "appid",
            "mode",
            "lasterror",
            "statusreplica",
            "prefix0",
            "prefix1",
            "valuereplica0",
            "valuereplica1",
            "lockedby0",
            "lockedby1",
            "component",
            "componenterror",
            "reconciliation",
            "authorizerappid",
            "authorizererror",
            "viewprefix",
        ] {
            shown(&up, name);
        }
        shown(&down, "rediserror");
        assert!(up.contains(&format!("id=\"cred-F_cred_{escaped}\"")));
        assert!(up.contains(&format!("id=\"platform-F_component_{escaped}\"")));

        // In links, percent-encoded (then attribute-escaped: `&` between
        // parameters as `&amp;`).
        for href in [
            format!("?prefix=authorizer/F_component_{encoded}/\""),
            format!("?prefix=authorizer/F_component_{encoded}/&amp;problems=true\""),
            format!("?id=F_authorizerid_{encoded}\""),
            format!(
                "status.json?id=F_viewid_{encoded}&amp;prefix=F_viewprefix_{encoded}&amp;offset=2&amp;limit=5000\""
            ),
            format!("?id=F_viewid_{encoded}&amp;prefix=F_viewprefix_{encoded}&amp;offset=2\""),
            format!("?id=F_viewid_{encoded}&amp;prefix=F_viewprefix_{encoded}&amp;offset=0\""),
        ] {
            assert!(
                up.contains(&format!("href=\"{href}")),
                "href={href:?} not in\n{up}"
            );
        }
    }
}

#[test]
fn the_tokenizer_catches_markup() {
    let page = |body: &str| format!("<!DOCTYPE html><html><body>{body}</body></html>");
    tokenize(&page("<p class=\"x\">a &amp; b</p>"));
    for bad in [
        "<img src=\"x\">",
        "<p onerror=\"x\">",
        "<p class=x>",
        "<p class=\"x\" title=\"a>b\">",
        "a & b",
        "a > b",
        "<p class=\"x\"'>",
    ] {
        let result = std::panic::catch_unwind(|| tokenize(&page(bad)));
        assert!(result.is_err(), "{bad:?} passed");
    }
}
