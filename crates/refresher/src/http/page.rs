//! The status page for people: a [`Snapshot`] as one self-contained HTML
//! document (inline CSS, no scripts, no external assets; it reloads itself
//! every few seconds): the summary of every credential first, then a block
//! per third-party platform (its authorizers counted by state, the first
//! few with a problem, links to page through the rest), then one page of
//! credentials (problems first) and links to the rest.
//!
//! Pure rendering: no I/O, no decisions about health (those come with the
//! snapshot). The templates are [`maud`]'s, checked at compile time: every
//! text spliced into them — element content and attribute values alike —
//! is HTML-escaped by maud, so nothing from Redis or the config can add
//! markup. The one text emitted as is, the style sheet `page.css`, is a
//! constant compiled in (and checked at compile time to hold no `<`).
//! Query values in links are percent-encoded ([`link`]). Nothing but the
//! snapshot is shown, so no secret and no whole token can appear.

mod link;
#[cfg(test)]
mod tests;

use super::snapshot::{CredentialStatus, Health, KindStatus, Snapshot, View, MAX_LIMIT};
use crate::human::{clock, duration, relative};
use crate::metrics::Refreshes;
use link::Query;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use wxtoken_schema::snapshot::{AuthorizerState, ComponentView, PlatformKind};

/// Seconds between reloads of the page.
const RELOAD_SECS: u32 = 5;
/// Columns of the credential table.
const COLUMNS: usize = 9;
/// Ids of other replicas' credentials listed in the footer.
const OTHERS_LISTED: usize = 100;
/// Authorizers with a problem listed in a platform's block.
const PLATFORM_PROBLEMS_LISTED: usize = 10;

/// The page's style sheet, emitted unescaped inside `<style>`: a file of
/// this crate, never data.
const CSS: &str = include_str!("page.css");
// Inside `<style>` only `</style` would end the element early; a style
// sheet without `<` cannot, so this is checked when compiling.
const _: () = assert!(
    no_less_than(CSS.as_bytes()),
    "page.css must not contain '<'"
);

/// Whether `bytes` holds no `<` (usable in a constant).
const fn no_less_than(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            return false;
        }
        i += 1;
    }
    true
}

/// Renders the whole page; `view` is what was asked for (for the links).
pub(crate) fn render(s: &Snapshot, view: &View) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(RELOAD_SECS);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "wxtoken · " (s.replica) }
                // The constant style sheet (see `CSS`): the only text of
                // the page that is not escaped.
                style { (PreEscaped(CSS)) }
            }
            body {
                (header(s))
                main {
                    @if !s.redis.up {
                        div.banner {
                            b { "Redis is not answering." } " " (redis_error(s))
                            " — showing this replica's configuration only; token state is unknown."
                        }
                    }
                    (cards(s))
                    (summary(s, view))
                    @for p in &s.platforms {
                        (platform(p))
                    }
                    (table(s, view))
                    (more(s, view))
                    (footer(s))
                }
            }
        }
    }
    .into_string()
}

fn redis_error(s: &Snapshot) -> &str {
    s.redis.error.as_deref().unwrap_or("no answer")
}

fn header(s: &Snapshot) -> Markup {
    let (class, text) = if s.redis.up {
        ("up", "Redis up")
    } else {
        ("down", "Redis down")
    };
    html! {
        header {
            div.brand { "wxtoken" span { "central token server" } }
            div.who { "replica " b { (s.replica) } " · namespace " b { (s.namespace) } }
            div class={ "pill " (class) } { (text) }
        }
    }
}

fn cards(s: &Snapshot) -> Markup {
    let values = &s.summary.values;
    let creds = &s.summary.credentials;
    let r = &s.refreshes;
    let mut detail = Vec::new();
    if values.due > 0 {
        detail.push(html! { span.warn { (thousands(values.due)) " due" } });
    }
    if values.critical > 0 {
        detail.push(html! { span.bad { (thousands(values.critical)) " critical" } });
    }
    if values.missing > 0 {
        detail.push(html! { span.bad { (thousands(values.missing)) " missing" } });
    }
    if creds.failing > 0 {
        detail.push(html! { span.bad { (creds.failing) " failing" } });
    }
    if creds.paused > 0 {
        detail.push(html! { span.warn { (creds.paused) " paused" } });
    }
    if values.unknown > 0 {
        detail.push(html! { (values.unknown) " unknown (Redis down)" });
    }
    if detail.is_empty() {
        detail.push(html! {
            (thousands(creds.total)) " credential" (plural(creds.total)) ", all fine"
        });
    }
    html! {
        section.cards {
            (card(
                "Up for",
                html! { (duration(s.uptime_ms)) },
                html! { "since " (clock(s.started_at_ms)) },
            ))
            (card(
                "Refreshes by this replica",
                html! {
                    span class=(if r.ok > 0 { "good" } else { "zero" }) { (r.ok) } " ok · "
                    span class=(if r.failed > 0 { "bad" } else { "zero" }) { (r.failed) } " failed"
                },
                html! {
                    @if r.fenced > 0 {
                        (r.fenced) " fetched but fenced off by a newer write"
                    } @else {
                        "WeChat calls that stored a value, or failed"
                    }
                },
            ))
            (card(
                "Values fresh",
                html! { (thousands(values.fresh)) " " small { "/ " (thousands(values.total)) } },
                joined(&detail),
            ))
            @if s.redis.up {
                div.card {
                    div.k { "Redis" }
                    div class="v good" { "up" }
                    div.s title={ "Redis clock " (clock(s.now_ms)) } {
                        @if let Some(l) = s.redis.latency_ms {
                            "answered in " (format!("{l:.1}")) " ms"
                        }
                    }
                }
            } @else {
                div.card {
                    div.k { "Redis" }
                    div class="v bad" { "down" }
                    div.s { (redis_error(s)) }
                }
            }
        }
    }
}

/// Counts by kind and health over every credential held, and the filters.
fn summary(s: &Snapshot, view: &View) -> Markup {
    let c = &s.summary.credentials;
    let problems_only = view.problems && view.ids.is_none() && view.prefix.is_none();
    html! {
        section.summary {
            div.section {
                h2 {
                    "Summary "
                    span {
                        (thousands(c.total)) " credential" (plural(c.total)) " on this replica · "
                        b class=(good_or_bad(c.with_problems > 0)) {
                            (thousands(c.with_problems)) " with problems"
                        }
                    }
                }
                div.filters {
                    "show "
                    @if view.filtered() {
                        a href=(Query::new().href("")) { "all" }
                    } @else {
                        b { "all" }
                    }
                    " · "
                    @if problems_only {
                        b { "problems only" }
                    } @else {
                        a href=(Query::new().with("problems", "true").href("")) { "problems only" }
                    }
                }
            }
            table.sum {
                thead {
                    tr {
                        th { "Values" }
                        th.num { "fresh" }
                        th.num { "due" }
                        th.num { "critical" }
                        th.num { "missing" }
                        th.num { "unknown" }
                        th.num { "total" }
                    }
                }
                tbody {
                    @for k in &s.summary.by_kind {
                        tr {
                            td.kind { (k.kind.as_str()) }
                            @for (h, class) in [
                                (Health::Fresh, "good"),
                                (Health::Due, "warn"),
                                (Health::Critical, "bad"),
                                (Health::Missing, "bad"),
                                (Health::Unknown, "muted"),
                            ] {
                                @let n = k.counts.of(h);
                                td class={ "num " (if n > 0 { class } else { "zero" }) } {
                                    (thousands(n))
                                }
                            }
                            td.num { (thousands(k.counts.total)) }
                        }
                    }
                }
            }
            div.sum-note {
                (thousands(c.failing)) " failing · " (thousands(c.paused)) " paused"
            }
        }
    }
}

/// One platform: its verify ticket, component token, authorizers by
/// state, last reconciliation and backlog as cards, then the first
/// authorizers with a problem, each linking to its row.
/// What a platform block calls things: a WeChat third-party platform's, or
/// a WeCom suite's.
struct Labels {
    title: &'static str,
    child: &'static str,
    ticket: &'static str,
    token: &'static str,
}

fn labels(kind: PlatformKind) -> Labels {
    match kind {
        PlatformKind::Component => Labels {
            title: "Platform",
            child: "authorizer",
            ticket: "Verify ticket",
            token: "Component token",
        },
        PlatformKind::WecomSuite => Labels {
            title: "WeCom suite",
            child: "corp",
            ticket: "Suite ticket",
            token: "Suite token",
        },
    }
}

fn platform(p: &ComponentView) -> Markup {
    let l = labels(p.platform);
    let a = &p.authorizers;
    let not_ok = a.with_problems();
    let base = Query::new().with("prefix", &p.platform.child_prefix(&p.appid));
    let with_problems = base.clone().with("problems", "true").href("");
    let listed = PLATFORM_PROBLEMS_LISTED.min(p.problems.len());
    let left = not_ok.saturating_sub(listed as u64);
    html! {
        section.platform id={ "platform-" (p.appid) } {
            div.section {
                h2 {
                    (l.title) " " code { (p.appid) } " "
                    span {
                        (thousands(a.total as usize)) " " (l.child) (plural(a.total as usize)) " · "
                        b class=(good_or_bad(not_ok > 0)) { (thousands(not_ok as usize)) " not ok" }
                    }
                }
                div.filters {
                    (l.child) "s: " a href=(base.href("")) { "all" }
                    " · " a href=(with_problems) { "with problems" }
                }
            }
            div class="cards pcards" {
                (verify_ticket_card(p))
                (component_token_card(p))
                (authorizers_card(p))
                @if p.platform == PlatformKind::Component {
                    (reconciliation_card(p))
                }
                (backlog_card(p))
            }
            @if !p.problems.is_empty() {
                table class="sum probs" {
                    thead {
                        tr { th { (capitalized(l.child)) } th { "State" } th { "Time left" } th { "Last error" } }
                    }
                    tbody {
                        @for x in p.problems.iter().take(PLATFORM_PROBLEMS_LISTED) {
                            tr {
                                td { a href=(Query::new().with("id", &x.id).href("")) { code { (x.appid) } } }
                                td { span class={ "badge " (state_class(x.state)) } { (x.state.as_str()) } }
                                td { (x.ttl_ms.map_or("—".to_owned(), duration)) }
                                td.msg {
                                    @if let Some(c) = x.last_errcode {
                                        span.errcode { "errcode " (c) }
                                    }
                                    (shorten(x.last_error.as_deref().unwrap_or(""), 160))
                                }
                            }
                        }
                    }
                }
                @if left > 0 {
                    p.more {
                        b { (thousands(left as usize)) " more" } " not ok — "
                        a href=(with_problems) { "page through them" }
                    }
                }
            }
        }
    }
}

fn verify_ticket_card(p: &ComponentView) -> Markup {
    let l = labels(p.platform);
    let t = &p.verify_ticket;
    if !t.stored {
        return card(
            l.ticket,
            html! { span.bad { "missing" } },
            html! { "no " (l.token.to_lowercase()) " until one is pushed" },
        );
    }
    card(
        l.ticket,
        html! {
            span.good { (t.ttl_ms.map_or("no expiry".to_owned(), duration)) } " " small { "left" }
        },
        html! {
            "received " (t.received_at_ms.map_or("?".to_owned(), |at| relative(at, p.now_ms)))
            @if let Some(ct) = t.create_time {
                " · CreateTime " (clock(ct.saturating_mul(1000)))
            }
        },
    )
}

fn component_token_card(p: &ComponentView) -> Markup {
    let ct = &p.component_token;
    let value = match (ct.stored, ct.ttl_ms) {
        (false, _) => html! { span.bad { "missing" } },
        (true, Some(ms)) => html! { span.good { (duration(ms)) } " " small { "left" } },
        (true, None) => html! { "stored " small { "no expiry" } },
    };
    let sub = match (&ct.status.last_error, ct.failing) {
        (Some(e), true) => html! {
            span.bad {
                @if let Some(c) = ct.status.last_errcode {
                    "errcode " (c) ": "
                }
                (shorten(e, 120))
            }
        },
        _ => match ct.refreshed_at_ms {
            Some(at) => html! { "refreshed " (relative(at, p.now_ms)) },
            None => html! { "never refreshed" },
        },
    };
    card(labels(p.platform).token, value, sub)
}

fn authorizers_card(p: &ComponentView) -> Markup {
    let a = &p.authorizers;
    let mut detail = Vec::new();
    for (st, class) in [
        (AuthorizerState::Expiring, "warn"),
        (AuthorizerState::Missing, "bad"),
        (AuthorizerState::Failing, "bad"),
        (AuthorizerState::Paused, "warn"),
    ] {
        let n = a.of(st) as usize;
        if n > 0 {
            detail.push(html! { span class=(class) { (thousands(n)) " " (st.as_str()) } });
        }
    }
    if detail.is_empty() {
        detail.push(html! { "all fine" });
    }
    card(
        &format!("{}s ok", capitalized(labels(p.platform).child)),
        html! { (thousands(a.ok as usize)) " " small { "/ " (thousands(a.total as usize)) } },
        joined(&detail),
    )
}

fn reconciliation_card(p: &ComponentView) -> Markup {
    let Some(r) = &p.reconciliation else {
        return card(
            "Last reconciliation",
            html! { span.zero { "none yet" } },
            html! {},
        );
    };
    card(
        "Last reconciliation",
        html! { (r.at_ms.map_or("?".to_owned(), |at| relative(at, p.now_ms))) },
        match r.listed {
            Some(listed) => html! {
                "listed " (thousands(listed as usize))
                " · added " (r.added.unwrap_or(0))
                " · updated " (r.updated.unwrap_or(0))
                " · removed " (r.removed.unwrap_or(0))
            },
            None => html! { (r.summary) },
        },
    )
}

fn backlog_card(p: &ComponentView) -> Markup {
    let b = &p.backlog;
    card(
        "Backlog",
        html! {
            span class=(if b.due_now > 0 { "warn" } else { "good" }) { (thousands(b.due_now as usize)) }
            " " small { "due now" }
        },
        html! {
            @if let Some(at) = b.oldest_due_at_ms {
                "oldest due " (relative(at, p.now_ms)) " · "
            }
            (thousands(b.queued as usize)) " queued"
        },
    )
}

/// `word` with its first letter in upper case (ASCII labels).
fn capitalized(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// One card: a label, a value and a line under it.
fn card(label: &str, value: Markup, sub: Markup) -> Markup {
    html! {
        div.card {
            div.k { (label) }
            div.v { (value) }
            div.s { (sub) }
        }
    }
}

/// What the credential table shows, in words.
fn showing(s: &Snapshot, view: &View) -> String {
    let p = &s.page;
    let mut text = if s.credentials.is_empty() {
        format!("none of {} matching", thousands(p.total_matching))
    } else {
        format!(
            "{}–{} of {} matching",
            thousands(p.offset + 1),
            thousands(p.offset + s.credentials.len()),
            thousands(p.total_matching)
        )
    };
    let mut filters = Vec::new();
    if view.problems {
        filters.push("with problems".to_owned());
    }
    if let Some(prefix) = &view.prefix {
        filters.push(format!("id starting with “{prefix}”"));
    }
    if let Some(ids) = &view.ids {
        filters.push(format!("{} id{} asked for", ids.len(), plural(ids.len())));
    }
    if !filters.is_empty() {
        text.push_str(&format!(" ({})", filters.join(", ")));
    }
    text
}

fn table(s: &Snapshot, view: &View) -> Markup {
    if s.summary.credentials.total == 0 && s.credentials.is_empty() {
        return html! { p.empty { "No credentials are configured on this replica." } };
    }
    html! {
        div.section {
            h2 { "Credentials " span { (showing(s, view)) " · problems first" } }
            div.legend {
                i.fresh {} "fresh "
                i.due {} "refresh due "
                i.critical {} "expiring "
                i.missing {} "nothing stored "
                i.tick {} "refresh margin"
            }
        }
        @if s.credentials.is_empty() {
            p.empty { "No credential matches on this page. " a href=(Query::new().href("")) { "Show all" } }
        } @else {
            table.creds {
                thead {
                    tr {
                        th { "Credential" }
                        th { "Kind" }
                        th.col-bar { "Time left" }
                        th { "Token" }
                        th { "Refreshed" }
                        th { "Fetched by" }
                        th.num { "Fence" }
                        th { "Runs here" }
                        th { "State" }
                    }
                }
                @for (i, c) in s.credentials.iter().enumerate() {
                    @if i == 0 || s.credentials[i - 1].problem != c.problem {
                        tbody.group {
                            tr {
                                td colspan=(COLUMNS) {
                                    (if c.problem { "Needs attention" } else { "Everything else" })
                                }
                            }
                        }
                    }
                    (credential(c, s.now_ms))
                }
            }
        }
    }
}

/// The line under the table when more credentials match than are shown:
/// links to the next page and to `/status.json` for the rest.
fn more(s: &Snapshot, view: &View) -> Markup {
    let p = &s.page;
    let next = p.offset.saturating_add(s.credentials.len());
    let filters = Query::filters(view);
    let previous = (p.offset > 0 && p.total_matching > 0).then(|| {
        let prev = p.offset.saturating_sub(p.limit.max(1));
        filters.clone().with("offset", &prev.to_string()).href("")
    });
    if next < p.total_matching {
        let json = filters
            .clone()
            .with("offset", &next.to_string())
            .with("limit", &MAX_LIMIT.to_string())
            .href("status.json");
        let page = filters.with("offset", &next.to_string()).href("");
        html! {
            p.more {
                b { (thousands(p.total_matching - next)) " more" }
                " — use " a href=(json) { code { "/" (json) } }
                " or " a href=(page) { "the next page" }
                @if let Some(href) = &previous {
                    " · " a href=(href) { "previous page" }
                }
            }
        }
    } else {
        html! {
            @if let Some(href) = &previous {
                p.more { a href=(href) { "previous page" } }
            }
        }
    }
}

fn credential(c: &CredentialStatus, now_ms: u64) -> Markup {
    let st = &c.status;
    let rows = c.kinds.len() + usize::from(st.last_error.is_some());
    html! {
        tbody.cred id={ "cred-" (c.id) } {
            @for (i, k) in c.kinds.iter().enumerate() {
                tr class={ "value h-" (k.health.as_str()) } {
                    @if i == 0 {
                        td.cred-id rowspan=(rows) {
                            div.id { (c.id) }
                            div.meta {
                                code { (st.appid.as_deref().unwrap_or_default()) } " "
                                span.tag { (st.mode.as_deref().unwrap_or_default()) }
                            }
                            @if let Some(until) = st.paused_until_ms.filter(|_| st.paused) {
                                div.paused title="WeChat reported the daily API quota exhausted (45009): every replica waits until then" {
                                    span class="badge warn" {
                                        "paused until " (clock(until).get(11..19).unwrap_or(""))
                                    }
                                    div { "daily quota · resumes " (relative(until, now_ms)) }
                                }
                            }
                        }
                    }
                    (kind_cells(k, now_ms))
                }
            }
            @if let Some(error) = &st.last_error {
                (error_row(c, error, now_ms))
            }
        }
    }
}

/// The row under a credential's kinds with its last error (current or
/// recovered from), when it has one.
fn error_row(c: &CredentialStatus, error: &str, now_ms: u64) -> Markup {
    let st = &c.status;
    let current = st.failing();
    let mut when = Vec::new();
    if let Some(at) = st.last_error_at_ms {
        when.push(relative(at, now_ms));
    }
    if let Some(r) = &st.replica {
        when.push(format!("seen by {r}"));
    }
    html! {
        tr class=(if current { "err" } else { "err old" }) {
            td colspan=(COLUMNS - 1) {
                span.err-label {
                    (if current { "last error" } else { "last error (recovered since)" })
                }
                @if let Some(code) = st.last_errcode {
                    " " span.errcode { "errcode " (code) }
                }
                " " span.msg { (shorten(error, 240)) }
                @if !when.is_empty() {
                    " " span.when { "· " (when.join(" · ")) }
                }
            }
        }
    }
}

fn kind_cells(k: &KindStatus, now_ms: u64) -> Markup {
    let v = &k.value;
    let (class, label) = match k.health {
        Health::Fresh => ("good", "fresh"),
        Health::Due => ("warn", "refresh due"),
        Health::Critical => ("bad", "expiring"),
        Health::Missing => ("bad", "missing"),
        Health::Unknown => ("mute", "unknown"),
    };
    html! {
        td.kind { (v.kind.as_str()) }
        td.col-bar { (bar(k)) }
        @match &k.token_prefix {
            Some(p) => td { code.tok { (p) "…" } },
            None => td.none { "—" },
        }
        @match v.refreshed_at_ms {
            Some(at) => td title=(clock(at)) { (relative(at, now_ms)) },
            None => td.none { "—" },
        }
        @match &v.replica {
            Some(r) => td { (r) },
            None => td.none { "—" },
        }
        @match v.fence {
            Some(f) => td.num { (f) },
            None => td class="num none" { "—" },
        }
        td.runs { (runs(k.refreshes)) }
        td.state {
            span class={ "badge " (class) } { (label) }
            @if let Some(holder) = &v.locked_by {
                span class="badge info" { "refreshing · " (holder) }
            }
            @if let Some(r) = &v.refresh_request {
                span class="badge info" title={
                    "A refresh request waits for a refresher"
                    @if let Some(t) = r.ttl_ms {
                        "; it lapses in " (duration(t))
                    }
                } {
                    (if r.force { "forced refresh pending" } else { "refresh requested" })
                }
            }
        }
    }
}

/// The time-left bar: filled by time left over the announced lifetime, with
/// a mark where the refreshers step in (the refresh margin).
fn bar(k: &KindStatus) -> Markup {
    let v = &k.value;
    let lifetime_ms = v
        .expires_in
        .map(|s| s * 1000)
        .or(v.ttl_ms)
        .unwrap_or(0)
        .max(1);
    let pct = |ms: u64| (ms as f64 * 100.0 / lifetime_ms as f64).clamp(0.0, 100.0);
    match (k.health, v.ttl_ms) {
        (Health::Unknown, _) => html! {
            div class="bar unknown" {}
            div class="bar-label none" { "unknown" }
        },
        (_, None) => html! {
            div class="bar missing" {}
            div class="bar-label bad" { "nothing stored" }
        },
        (health, Some(left)) => html! {
            div class={ "bar " (health.as_str()) } title={
                (duration(left)) " left of " (duration(lifetime_ms))
                "; refreshed when less than " (duration(k.refresh_margin_ms)) " is left"
            } {
                div.fill style=(format!("width:{:.1}%", pct(left))) {}
                div.mark style=(format!("left:{:.1}%", pct(k.refresh_margin_ms))) {}
            }
            div.bar-label { b { (duration(left)) } " " span { "of " (duration(lifetime_ms)) } }
        },
    }
}

fn runs(r: Refreshes) -> Markup {
    if r == Refreshes::default() {
        return html! { span.none { "—" } };
    }
    let mut parts = vec![html! { (r.ok) " ok" }];
    if r.failed > 0 {
        parts.push(html! { span.bad { (r.failed) " failed" } });
    }
    if r.same > 0 {
        parts.push(html! { (r.same) " same (WeCom)" });
    }
    if r.fenced > 0 {
        parts.push(html! { (r.fenced) " fenced" });
    }
    joined(&parts)
}

fn footer(s: &Snapshot) -> Markup {
    let listed: Vec<&String> = s.other_credentials.iter().take(OTHERS_LISTED).collect();
    let rest = s.other_credentials_total.saturating_sub(listed.len());
    html! {
        footer {
            @if s.other_credentials_total > 0 {
                p {
                    "Also registered in this namespace, refreshed by other replicas ("
                    (thousands(s.other_credentials_total)) "): "
                    @for (i, id) in listed.iter().enumerate() {
                        @if i > 0 { " " }
                        code { (id) }
                    }
                    @if rest > 0 {
                        " and " (thousands(rest)) " more"
                    }
                }
            }
            p {
                "Times by the Redis clock. The bar shows time left of the lifetime WeChat announced; \
                 its tick marks the refresh margin. Reloads every " (RELOAD_SECS) " s · "
                a href="status.json" { "status.json" } " · "
                a href="metrics" { "metrics" } " · "
                a href="healthz" { "healthz" } " · "
                a href="readyz" { "readyz" }
            }
        }
    }
}

/// `parts` one after another, ` · ` between them.
fn joined(parts: &[Markup]) -> Markup {
    html! {
        @for (i, part) in parts.iter().enumerate() {
            @if i > 0 { " · " }
            (part)
        }
    }
}

fn good_or_bad(bad: bool) -> &'static str {
    if bad {
        "bad"
    } else {
        "good"
    }
}

fn state_class(state: AuthorizerState) -> &'static str {
    match state {
        AuthorizerState::Expiring | AuthorizerState::Paused => "warn",
        _ => "bad",
    }
}

/// `s` for a count other than one.
fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `n` with comma thousands separators: `20,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `s` cut to `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}
