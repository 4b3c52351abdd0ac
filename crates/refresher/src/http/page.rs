//! The status page for people: a [`Snapshot`] as one self-contained HTML
//! document (inline CSS, no scripts, no external assets; it reloads itself
//! every few seconds): the summary of every credential first, then a block
//! per third-party platform (its authorizers counted by state, the first
//! few with a problem, links to page through the rest), then one page of
//! credentials (problems first) and links to the rest.
//!
//! Pure rendering: no I/O, no decisions about health (those come with the
//! snapshot). Every text that comes from Redis or the config is
//! HTML-escaped here, attributes included; nothing but the snapshot is
//! shown, so no secret and no whole token can appear.

use super::snapshot::{CredentialStatus, Health, KindStatus, Snapshot, View, MAX_LIMIT};
use crate::human::{clock, duration, relative};
use crate::metrics::Refreshes;
use std::fmt::Write;
use wxtoken_schema::snapshot::{AuthorizerState, ComponentView};

/// Seconds between reloads of the page.
const RELOAD_SECS: u32 = 5;
/// Columns of the credential table.
const COLUMNS: usize = 9;
/// Ids of other replicas' credentials listed in the footer.
const OTHERS_LISTED: usize = 100;
/// Authorizers with a problem listed in a platform's block.
const PLATFORM_PROBLEMS_LISTED: usize = 10;

macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        // Writing into a String cannot fail.
        let _ = write!($out, $($arg)*);
    };
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders the whole page; `view` is what was asked for (for the links).
pub(crate) fn render(s: &Snapshot, view: &View) -> String {
    let mut out = String::with_capacity(16 * 1024);
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{RELOAD_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>wxtoken · {}</title><style>{CSS}</style></head><body>\n",
        esc(&s.replica)
    );
    header(&mut out, s);
    out.push_str("<main>\n");
    if !s.redis.up {
        w!(
            out,
            "<div class=\"banner\"><b>Redis is not answering.</b> {} — \
             showing this replica's configuration only; token state is unknown.</div>\n",
            esc(s.redis.error.as_deref().unwrap_or("no answer"))
        );
    }
    cards(&mut out, s);
    summary(&mut out, s, view);
    for p in &s.platforms {
        platform(&mut out, p);
    }
    table(&mut out, s, view);
    more(&mut out, s, view);
    footer(&mut out, s);
    out.push_str("</main></body></html>\n");
    out
}

fn header(out: &mut String, s: &Snapshot) {
    let (class, text) = if s.redis.up {
        ("up", "Redis up")
    } else {
        ("down", "Redis down")
    };
    w!(
        out,
        "<header><div class=\"brand\">wxtoken<span>central token server</span></div>\
         <div class=\"who\">replica <b>{}</b> · namespace <b>{}</b></div>\
         <div class=\"pill {class}\">{text}</div></header>\n",
        esc(&s.replica),
        esc(&s.namespace)
    );
}

fn cards(out: &mut String, s: &Snapshot) {
    let values = &s.summary.values;
    let (fresh, due, critical, missing, unknown) = (
        values.fresh,
        values.due,
        values.critical,
        values.missing,
        values.unknown,
    );
    let creds = &s.summary.credentials;
    out.push_str("<section class=\"cards\">");
    w!(
        out,
        "<div class=\"card\"><div class=\"k\">Up for</div><div class=\"v\">{}</div>\
         <div class=\"s\">since {}</div></div>",
        duration(s.uptime_ms),
        clock(s.started_at_ms)
    );
    w!(
        out,
        "<div class=\"card\"><div class=\"k\">Refreshes by this replica</div>\
         <div class=\"v\"><span class=\"{}\">{}</span> ok · <span class=\"{}\">{}</span> failed</div>\
         <div class=\"s\">{}</div></div>",
        if s.refreshes.ok > 0 { "good" } else { "zero" },
        s.refreshes.ok,
        if s.refreshes.failed > 0 { "bad" } else { "zero" },
        s.refreshes.failed,
        if s.refreshes.fenced > 0 {
            format!("{} fetched but fenced off by a newer write", s.refreshes.fenced)
        } else {
            "WeChat calls that stored a value, or failed".to_owned()
        }
    );
    let mut detail = Vec::new();
    if due > 0 {
        detail.push(format!(
            "<span class=\"warn\">{} due</span>",
            thousands(due)
        ));
    }
    if critical > 0 {
        detail.push(format!(
            "<span class=\"bad\">{} critical</span>",
            thousands(critical)
        ));
    }
    if missing > 0 {
        detail.push(format!(
            "<span class=\"bad\">{} missing</span>",
            thousands(missing)
        ));
    }
    if creds.failing > 0 {
        detail.push(format!(
            "<span class=\"bad\">{} failing</span>",
            creds.failing
        ));
    }
    if creds.paused > 0 {
        detail.push(format!(
            "<span class=\"warn\">{} paused</span>",
            creds.paused
        ));
    }
    if unknown > 0 {
        detail.push(format!("{unknown} unknown (Redis down)"));
    }
    if detail.is_empty() {
        detail.push(format!(
            "{} credential{}, all fine",
            thousands(creds.total),
            if creds.total == 1 { "" } else { "s" }
        ));
    }
    w!(
        out,
        "<div class=\"card\"><div class=\"k\">Values fresh</div>\
         <div class=\"v\">{} <small>/ {}</small></div><div class=\"s\">{}</div></div>",
        thousands(fresh),
        thousands(values.total),
        detail.join(" · ")
    );
    match (s.redis.up, s.redis.latency_ms) {
        (true, latency) => {
            w!(
                out,
                "<div class=\"card\"><div class=\"k\">Redis</div><div class=\"v good\">up</div>\
                 <div class=\"s\" title=\"Redis clock {}\">{}</div></div>",
                clock(s.now_ms),
                latency.map_or(String::new(), |l| format!("answered in {l:.1} ms"))
            );
        }
        (false, _) => {
            w!(
                out,
                "<div class=\"card\"><div class=\"k\">Redis</div><div class=\"v bad\">down</div>\
                 <div class=\"s\">{}</div></div>",
                esc(s.redis.error.as_deref().unwrap_or("no answer"))
            );
        }
    }
    out.push_str("</section>\n");
}

/// Counts by kind and health over every credential held, and the filters.
fn summary(out: &mut String, s: &Snapshot, view: &View) {
    let c = &s.summary.credentials;
    w!(
        out,
        "<section class=\"summary\"><div class=\"section\"><h2>Summary <span>{} credential{} on this replica · \
         <b class=\"{}\">{} with problems</b></span></h2>",
        thousands(c.total),
        if c.total == 1 { "" } else { "s" },
        if c.with_problems > 0 { "bad" } else { "good" },
        thousands(c.with_problems)
    );
    out.push_str("<div class=\"filters\">show ");
    let links = [
        ("all", String::new(), !view.filtered()),
        (
            "problems only",
            "?problems=true".to_owned(),
            view.problems && view.ids.is_none() && view.prefix.is_none(),
        ),
    ];
    for (i, (label, href, current)) in links.iter().enumerate() {
        if i > 0 {
            out.push_str(" · ");
        }
        if *current {
            w!(out, "<b>{label}</b>");
        } else {
            let href = if href.is_empty() { "./" } else { href.as_str() };
            w!(out, "<a href=\"{}\">{label}</a>", esc(href));
        }
    }
    out.push_str("</div></div>\n");
    out.push_str(
        "<table class=\"sum\"><thead><tr><th>Values</th><th class=\"num\">fresh</th>\
         <th class=\"num\">due</th><th class=\"num\">critical</th><th class=\"num\">missing</th>\
         <th class=\"num\">unknown</th><th class=\"num\">total</th></tr></thead><tbody>",
    );
    let rows = s
        .summary
        .by_kind
        .iter()
        .map(|k| (k.kind.as_str(), &k.counts));
    for (name, counts) in rows {
        w!(out, "<tr><td class=\"kind\">{}</td>", esc(name));
        for (h, class) in [
            (Health::Fresh, "good"),
            (Health::Due, "warn"),
            (Health::Critical, "bad"),
            (Health::Missing, "bad"),
            (Health::Unknown, "muted"),
        ] {
            let n = counts.of(h);
            w!(
                out,
                "<td class=\"num {}\">{}</td>",
                if n > 0 { class } else { "zero" },
                thousands(n)
            );
        }
        w!(
            out,
            "<td class=\"num\">{}</td></tr>",
            thousands(counts.total)
        );
    }
    w!(
        out,
        "</tbody></table><div class=\"sum-note\">{} failing · {} paused</div></section>\n",
        thousands(c.failing),
        thousands(c.paused)
    );
}

/// One platform: its verify ticket, component token, authorizers by
/// state, last reconciliation and backlog as cards, then the first
/// authorizers with a problem, each linking to its row.
fn platform(out: &mut String, p: &ComponentView) {
    let now = p.now_ms;
    let a = &p.authorizers;
    let not_ok = a.with_problems();
    let base = format!("?prefix=authorizer/{}/", p.appid);
    w!(
        out,
        "<section class=\"platform\" id=\"platform-{}\"><div class=\"section\"><h2>Platform <code>{}</code> \
         <span>{} authorizer{} · <b class=\"{}\">{} not ok</b></span></h2>\
         <div class=\"filters\">authorizers: <a href=\"{}\">all</a> · <a href=\"{}\">with problems</a></div></div>\n",
        esc(&p.appid),
        esc(&p.appid),
        thousands(a.total as usize),
        if a.total == 1 { "" } else { "s" },
        if not_ok > 0 { "bad" } else { "good" },
        thousands(not_ok as usize),
        esc(&base),
        esc(&format!("{base}&problems=true"))
    );
    out.push_str("<div class=\"cards pcards\">");
    let t = &p.verify_ticket;
    let (v, sub) = if t.stored {
        (
            format!(
                "<span class=\"good\">{}</span> <small>left</small>",
                t.ttl_ms.map_or("no expiry".to_owned(), duration)
            ),
            format!(
                "received {}{}",
                t.received_at_ms
                    .map_or("?".to_owned(), |at| relative(at, now)),
                t.create_time.map_or(String::new(), |ct| format!(
                    " · CreateTime {}",
                    clock(ct.saturating_mul(1000))
                ))
            ),
        )
    } else {
        (
            "<span class=\"bad\">missing</span>".to_owned(),
            "no component token until WeChat pushes one".to_owned(),
        )
    };
    card(out, "Verify ticket", &v, &esc(&sub));
    let ct = &p.component_token;
    let v = match (ct.stored, ct.ttl_ms) {
        (false, _) => "<span class=\"bad\">missing</span>".to_owned(),
        (true, Some(ms)) => format!(
            "<span class=\"good\">{}</span> <small>left</small>",
            duration(ms)
        ),
        (true, None) => "stored <small>no expiry</small>".to_owned(),
    };
    let sub = match (&ct.status.last_error, ct.failing) {
        (Some(e), true) => format!(
            "<span class=\"bad\">{}{}</span>",
            ct.status
                .last_errcode
                .map_or(String::new(), |c| format!("errcode {c}: ")),
            esc(&shorten(e, 120))
        ),
        _ => esc(&ct
            .refreshed_at_ms
            .map_or("never refreshed".to_owned(), |at| {
                format!("refreshed {}", relative(at, now))
            })),
    };
    card(out, "Component token", &v, &sub);
    let mut detail = Vec::new();
    for (st, class) in [
        (AuthorizerState::Expiring, "warn"),
        (AuthorizerState::Missing, "bad"),
        (AuthorizerState::Failing, "bad"),
        (AuthorizerState::Paused, "warn"),
    ] {
        let n = a.of(st) as usize;
        if n > 0 {
            detail.push(format!(
                "<span class=\"{class}\">{} {}</span>",
                thousands(n),
                st.as_str()
            ));
        }
    }
    if detail.is_empty() {
        detail.push("all fine".to_owned());
    }
    card(
        out,
        "Authorizers ok",
        &format!(
            "{} <small>/ {}</small>",
            thousands(a.ok as usize),
            thousands(a.total as usize)
        ),
        &detail.join(" · "),
    );
    let (v, sub) = match &p.reconciliation {
        None => (
            "<span class=\"zero\">none yet</span>".to_owned(),
            String::new(),
        ),
        Some(r) => (
            esc(&r.at_ms.map_or("?".to_owned(), |at| relative(at, now))),
            match r.listed {
                Some(listed) => format!(
                    "listed {} · added {} · updated {} · removed {}",
                    thousands(listed as usize),
                    r.added.unwrap_or(0),
                    r.updated.unwrap_or(0),
                    r.removed.unwrap_or(0)
                ),
                None => esc(&r.summary),
            },
        ),
    };
    card(out, "Last reconciliation", &v, &sub);
    let b = &p.backlog;
    card(
        out,
        "Backlog",
        &format!(
            "<span class=\"{}\">{}</span> <small>due now</small>",
            if b.due_now > 0 { "warn" } else { "good" },
            thousands(b.due_now as usize)
        ),
        &esc(&format!(
            "{}{} queued",
            b.oldest_due_at_ms.map_or(String::new(), |at| format!(
                "oldest due {} · ",
                relative(at, now)
            )),
            thousands(b.queued as usize)
        )),
    );
    out.push_str("</div>\n");
    if !p.problems.is_empty() {
        out.push_str(
            "<table class=\"sum probs\"><thead><tr><th>Authorizer</th><th>State</th>\
             <th>Time left</th><th>Last error</th></tr></thead><tbody>",
        );
        for x in p.problems.iter().take(PLATFORM_PROBLEMS_LISTED) {
            let class = match x.state {
                AuthorizerState::Expiring | AuthorizerState::Paused => "warn",
                _ => "bad",
            };
            w!(
                out,
                "<tr><td><a href=\"{}\"><code>{}</code></a></td><td><span class=\"badge {class}\">{}</span></td><td>{}</td><td class=\"msg\">{}{}</td></tr>",
                esc(&format!("?id={}", x.id)),
                esc(&x.appid),
                x.state.as_str(),
                esc(&x.ttl_ms.map_or("—".to_owned(), duration)),
                x.last_errcode
                    .map_or(String::new(), |c| format!("<span class=\"errcode\">errcode {c}</span>")),
                esc(&shorten(x.last_error.as_deref().unwrap_or(""), 160))
            );
        }
        out.push_str("</tbody></table>");
        let left = not_ok.saturating_sub(PLATFORM_PROBLEMS_LISTED.min(p.problems.len()) as u64);
        if left > 0 {
            w!(
                out,
                "<p class=\"more\"><b>{} more</b> not ok — <a href=\"{}\">page through them</a></p>",
                thousands(left as usize),
                esc(&format!("{base}&problems=true"))
            );
        }
    }
    out.push_str("</section>\n");
}

/// One card: a label, a value (HTML) and a line under it (HTML).
fn card(out: &mut String, label: &str, value: &str, sub: &str) {
    w!(
        out,
        "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{value}</div>\
         <div class=\"s\">{sub}</div></div>",
        esc(label)
    );
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
        filters.push(format!("id starting with “{}”", esc(prefix)));
    }
    if let Some(ids) = &view.ids {
        filters.push(format!(
            "{} id{} asked for",
            ids.len(),
            if ids.len() == 1 { "" } else { "s" }
        ));
    }
    if !filters.is_empty() {
        w!(text, " ({})", filters.join(", "));
    }
    text
}

fn table(out: &mut String, s: &Snapshot, view: &View) {
    if s.summary.credentials.total == 0 && s.credentials.is_empty() {
        out.push_str("<p class=\"empty\">No credentials are configured on this replica.</p>\n");
        return;
    }
    w!(
        out,
        "<div class=\"section\"><h2>Credentials <span>{} · problems first</span></h2>\
         <div class=\"legend\"><i class=\"fresh\"></i>fresh <i class=\"due\"></i>refresh due \
         <i class=\"critical\"></i>expiring <i class=\"missing\"></i>nothing stored \
         <i class=\"tick\"></i>refresh margin</div></div>\n",
        showing(s, view)
    );
    if s.credentials.is_empty() {
        out.push_str("<p class=\"empty\">No credential matches on this page. <a href=\"./\">Show all</a></p>\n");
        return;
    }
    out.push_str(
        "<table class=\"creds\"><thead><tr><th>Credential</th><th>Kind</th>\
         <th class=\"col-bar\">Time left</th><th>Token</th><th>Refreshed</th><th>Fetched by</th>\
         <th class=\"num\">Fence</th><th>Runs here</th><th>State</th></tr></thead>\n",
    );
    let mut group = None;
    for c in &s.credentials {
        if group != Some(c.problem) {
            group = Some(c.problem);
            w!(
                out,
                "<tbody class=\"group\"><tr><td colspan=\"{COLUMNS}\">{}</td></tr></tbody>\n",
                if c.problem {
                    "Needs attention"
                } else {
                    "Everything else"
                }
            );
        }
        credential(out, c, s.now_ms);
    }
    out.push_str("</table>\n");
}

/// The line under the table when more credentials match than are shown:
/// links to the next page and to `/status.json` for the rest.
fn more(out: &mut String, s: &Snapshot, view: &View) {
    let p = &s.page;
    let next = p.offset.saturating_add(s.credentials.len());
    let filters = view.filters_query();
    let with = |extra: String| {
        if filters.is_empty() {
            extra
        } else {
            format!("{filters}&{extra}")
        }
    };
    let mut links = Vec::new();
    if p.offset > 0 && p.total_matching > 0 {
        let prev = p.offset.saturating_sub(p.limit.max(1));
        let href = format!("?{}", with(format!("offset={prev}")));
        links.push(format!("<a href=\"{}\">previous page</a>", esc(&href)));
    }
    if next < p.total_matching {
        let left = p.total_matching - next;
        let json = format!(
            "status.json?{}",
            with(format!("offset={next}&limit={MAX_LIMIT}"))
        );
        let page = format!("?{}", with(format!("offset={next}")));
        w!(
            out,
            "<p class=\"more\"><b>{} more</b> — use <a href=\"{}\"><code>/{}</code></a> \
             or <a href=\"{}\">the next page</a>",
            thousands(left),
            esc(&json),
            esc(&json),
            esc(&page)
        );
        for l in &links {
            w!(out, " · {l}");
        }
        out.push_str("</p>\n");
    } else if !links.is_empty() {
        w!(out, "<p class=\"more\">{}</p>\n", links.join(" · "));
    }
}

fn credential(out: &mut String, c: &CredentialStatus, now_ms: u64) {
    let has_error = c.status.last_error.is_some();
    let rows = c.kinds.len() + usize::from(has_error);
    w!(out, "<tbody class=\"cred\" id=\"cred-{}\">", esc(&c.id));
    for (i, v) in c.kinds.iter().enumerate() {
        w!(out, "<tr class=\"value h-{}\">", v.health.as_str());
        if i == 0 {
            w!(
                out,
                "<td class=\"cred-id\" rowspan=\"{rows}\"><div class=\"id\">{}</div>\
                 <div class=\"meta\"><code>{}</code> <span class=\"tag\">{}</span></div>",
                esc(&c.id),
                esc(c.status.appid.as_deref().unwrap_or_default()),
                esc(c.status.mode.as_deref().unwrap_or_default())
            );
            if let Some(until) = c.status.paused_until_ms.filter(|_| c.status.paused) {
                w!(
                    out,
                    "<div class=\"paused\" title=\"{}\"><span class=\"badge warn\">paused until {}</span>\
                     <div>daily quota · resumes {}</div></div>",
                    esc("WeChat reported the daily API quota exhausted (45009): every replica waits until then"),
                    esc(clock(until).get(11..19).unwrap_or("")),
                    esc(&relative(until, now_ms))
                );
            }
            out.push_str("</td>");
        }
        kind_cells(out, v, now_ms);
        out.push_str("</tr>\n");
    }
    if has_error {
        let current = c.status.failing();
        w!(
            out,
            "<tr class=\"err{}\"><td colspan=\"{}\"><span class=\"err-label\">{}</span>",
            if current { "" } else { " old" },
            COLUMNS - 1,
            if current {
                "last error"
            } else {
                "last error (recovered since)"
            }
        );
        if let Some(code) = c.status.last_errcode {
            w!(out, " <span class=\"errcode\">errcode {code}</span>");
        }
        w!(
            out,
            " <span class=\"msg\">{}</span>",
            esc(&shorten(c.status.last_error.as_deref().unwrap_or(""), 240))
        );
        let mut when = Vec::new();
        if let Some(at) = c.status.last_error_at_ms {
            when.push(esc(&relative(at, now_ms)));
        }
        if let Some(r) = &c.status.replica {
            when.push(format!("seen by {}", esc(r)));
        }
        if !when.is_empty() {
            w!(out, " <span class=\"when\">· {}</span>", when.join(" · "));
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n");
}

fn kind_cells(out: &mut String, k: &KindStatus, now_ms: u64) {
    let v = &k.value;
    w!(out, "<td class=\"kind\">{}</td>", esc(v.kind.as_str()));
    out.push_str("<td class=\"col-bar\">");
    bar(out, k);
    out.push_str("</td>");
    match &k.token_prefix {
        Some(p) => {
            w!(out, "<td><code class=\"tok\">{}…</code></td>", esc(p));
        }
        None => out.push_str("<td class=\"none\">—</td>"),
    }
    match v.refreshed_at_ms {
        Some(at) => {
            w!(
                out,
                "<td title=\"{}\">{}</td>",
                esc(&clock(at)),
                esc(&relative(at, now_ms))
            );
        }
        None => out.push_str("<td class=\"none\">—</td>"),
    }
    match &v.replica {
        Some(r) => {
            w!(out, "<td>{}</td>", esc(r));
        }
        None => out.push_str("<td class=\"none\">—</td>"),
    }
    match v.fence {
        Some(f) => {
            w!(out, "<td class=\"num\">{f}</td>");
        }
        None => out.push_str("<td class=\"num none\">—</td>"),
    }
    w!(out, "<td class=\"runs\">{}</td>", runs(k.refreshes));
    out.push_str("<td class=\"state\">");
    let (class, label) = match k.health {
        Health::Fresh => ("good", "fresh"),
        Health::Due => ("warn", "refresh due"),
        Health::Critical => ("bad", "expiring"),
        Health::Missing => ("bad", "missing"),
        Health::Unknown => ("mute", "unknown"),
    };
    w!(out, "<span class=\"badge {class}\">{label}</span>");
    if let Some(holder) = &v.locked_by {
        w!(
            out,
            "<span class=\"badge info\">refreshing · {}</span>",
            esc(holder)
        );
    }
    if let Some(r) = &v.refresh_request {
        let lapses = r
            .ttl_ms
            .map_or(String::new(), |t| format!("; it lapses in {}", duration(t)));
        w!(
            out,
            "<span class=\"badge info\" title=\"{}\">{}</span>",
            esc(&format!("A refresh request waits for a refresher{lapses}")),
            if r.force {
                "forced refresh pending"
            } else {
                "refresh requested"
            }
        );
    }
    out.push_str("</td>");
}

/// The time-left bar: filled by time left over the announced lifetime, with
/// a mark where the refreshers step in (the refresh margin).
fn bar(out: &mut String, k: &KindStatus) {
    let v = &k.value;
    let lifetime_ms = v
        .expires_in
        .map(|s| s * 1000)
        .or(v.ttl_ms)
        .unwrap_or(0)
        .max(1);
    let pct = |ms: u64| (ms as f64 * 100.0 / lifetime_ms as f64).clamp(0.0, 100.0);
    match (k.health, v.ttl_ms) {
        (Health::Unknown, _) => {
            out.push_str(
                "<div class=\"bar unknown\"></div><div class=\"bar-label none\">unknown</div>",
            );
        }
        (_, None) => {
            out.push_str(
                "<div class=\"bar missing\"></div><div class=\"bar-label bad\">nothing stored</div>",
            );
        }
        (health, Some(left)) => {
            let title = format!(
                "{} left of {}; refreshed when less than {} is left",
                duration(left),
                duration(lifetime_ms),
                duration(k.refresh_margin_ms)
            );
            w!(
                out,
                "<div class=\"bar {}\" title=\"{}\"><div class=\"fill\" style=\"width:{:.1}%\"></div>\
                 <div class=\"mark\" style=\"left:{:.1}%\"></div></div>\
                 <div class=\"bar-label\"><b>{}</b> <span>of {}</span></div>",
                health.as_str(),
                esc(&title),
                pct(left),
                pct(k.refresh_margin_ms),
                duration(left),
                duration(lifetime_ms)
            );
        }
    }
}

fn runs(r: Refreshes) -> String {
    if r == Refreshes::default() {
        return "<span class=\"none\">—</span>".into();
    }
    let mut parts = vec![format!("{} ok", r.ok)];
    if r.failed > 0 {
        parts.push(format!("<span class=\"bad\">{} failed</span>", r.failed));
    }
    if r.same > 0 {
        parts.push(format!("{} same (WeCom)", r.same));
    }
    if r.fenced > 0 {
        parts.push(format!("{} fenced", r.fenced));
    }
    parts.join(" · ")
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

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

fn footer(out: &mut String, s: &Snapshot) {
    out.push_str("<footer>");
    if s.other_credentials_total > 0 {
        let ids: Vec<String> = s
            .other_credentials
            .iter()
            .take(OTHERS_LISTED)
            .map(|id| format!("<code>{}</code>", esc(id)))
            .collect();
        let rest = s.other_credentials_total.saturating_sub(ids.len());
        w!(
            out,
            "<p>Also registered in this namespace, refreshed by other replicas ({}): {}{}</p>",
            thousands(s.other_credentials_total),
            ids.join(" "),
            if rest > 0 {
                format!(" and {} more", thousands(rest))
            } else {
                String::new()
            }
        );
    }
    w!(
        out,
        "<p>Times by the Redis clock. The bar shows time left of the lifetime WeChat announced; \
         its tick marks the refresh margin. Reloads every {RELOAD_SECS} s · \
         <a href=\"status.json\">status.json</a> · <a href=\"metrics\">metrics</a> · \
         <a href=\"healthz\">healthz</a> · <a href=\"readyz\">readyz</a></p>"
    );
    out.push_str("</footer>\n");
}

const CSS: &str = r#"
:root{--bg:#f3f5f8;--card:#fff;--ink:#1d2733;--muted:#687586;--line:#e2e7ee;--green:#1e9e57;--amber:#e09100;--red:#d43f3f;--blue:#2d6cdf}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:13.5px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans","DejaVu Sans",sans-serif;font-variant-numeric:tabular-nums}
header{background:#16212e;color:#fff;padding:13px 28px;display:flex;align-items:center;gap:20px}
.brand{font-weight:700;font-size:18px;letter-spacing:.2px}
.brand span{font-weight:400;color:#93a4b7;font-size:13px;margin-left:10px}
.who{margin-left:auto;color:#b8c5d3;font-size:13px}
.who b{color:#fff;font-weight:600}
.pill{border-radius:999px;padding:3px 11px;font-size:12px;font-weight:600}
.pill.up{background:rgba(30,158,87,.18);color:#7fe0a9;border:1px solid rgba(30,158,87,.7)}
.pill.down{background:rgba(212,63,63,.2);color:#ffb3b3;border:1px solid rgba(212,63,63,.8)}
main{padding:20px 28px 8px;max-width:1500px;margin:0 auto}
.banner{background:#fdecec;border:1px solid #f3b7b7;color:#9b1c1c;border-radius:8px;padding:10px 14px;margin-bottom:16px}
.cards{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:14px;margin-bottom:20px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px;box-shadow:0 1px 2px rgba(16,24,40,.04)}
.card .k{font-size:11px;text-transform:uppercase;letter-spacing:.7px;color:var(--muted);font-weight:600}
.card .v{font-size:21px;font-weight:650;margin:2px 0 1px}
.card .v small{font-size:14px;color:var(--muted);font-weight:500}
.card .s{font-size:12px;color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.good{color:var(--green)}.warn{color:#b87400}.bad{color:var(--red)}.zero,.muted{color:var(--muted)}
.section{display:flex;align-items:baseline;margin:0 2px 8px}
h2{font-size:15px;margin:0;font-weight:650}
h2 span{font-weight:400;color:var(--muted);font-size:13px;margin-left:6px}
.legend{margin-left:auto;font-size:12px;color:var(--muted)}
.legend i{display:inline-block;width:18px;height:8px;border-radius:4px;margin:0 5px 0 12px;vertical-align:middle}
.legend i.fresh{background:var(--green)}.legend i.due{background:var(--amber)}.legend i.critical{background:var(--red)}
.legend i.missing{background:repeating-linear-gradient(45deg,#fbe3e3,#fbe3e3 3px,#f1c2c2 3px,#f1c2c2 6px)}
.legend i.tick{width:2px;height:12px;background:#394452;opacity:.5;border-radius:1px}
table.creds{width:100%;border-collapse:separate;border-spacing:0;background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;box-shadow:0 1px 2px rgba(16,24,40,.04)}
th{text-align:left;font-size:11px;text-transform:uppercase;letter-spacing:.6px;color:var(--muted);background:#f8fafc;padding:9px 10px;border-bottom:1px solid var(--line);font-weight:600;white-space:nowrap}
td{padding:8px 10px;border-bottom:1px solid #edf1f5;vertical-align:middle;white-space:nowrap}
tbody.cred tr:last-child td{border-bottom:1px solid var(--line)}
tbody.cred:last-child tr:last-child td{border-bottom:0}
td.cred-id{vertical-align:top;border-right:1px solid #edf1f5;background:#fcfdfe;white-space:normal;width:228px}
td.cred-id .id{font-weight:650;font-size:15px}
td.cred-id .meta{margin-top:3px;color:var(--muted);font-size:12px}
.paused{margin-top:8px;font-size:12px;color:#8a6a2a}
.paused div{margin-top:2px}
.num{text-align:right}
.none{color:#a3adba}
.kind{color:#3b4756}
code{font-family:ui-monospace,"SFMono-Regular","DejaVu Sans Mono",Menlo,monospace;font-size:12px;background:#f0f3f7;border-radius:4px;padding:1px 5px}
.tag{display:inline-block;font-size:11px;border:1px solid var(--line);border-radius:4px;padding:0 5px;color:var(--muted)}
.col-bar{width:186px}
.bar{position:relative;height:10px;border-radius:5px;background:#e6eaf0;width:170px}
.bar .fill{height:100%;border-radius:5px}
.bar.fresh .fill{background:linear-gradient(90deg,#1e9e57,#2fbf71)}
.bar.due .fill{background:linear-gradient(90deg,#e08a00,#f2b134)}
.bar.critical .fill{background:linear-gradient(90deg,#c93232,#e45858)}
.bar.missing{background:repeating-linear-gradient(45deg,#fbe3e3,#fbe3e3 6px,#f6d0d0 6px,#f6d0d0 12px)}
.bar.unknown{background:repeating-linear-gradient(45deg,#eef1f4,#eef1f4 6px,#e3e7ec 6px,#e3e7ec 12px)}
.bar .mark{position:absolute;top:-3px;bottom:-3px;width:2px;margin-left:-1px;background:#394452;opacity:.45;border-radius:1px}
.bar-label{font-size:12px;color:var(--muted);margin-top:3px}
.bar-label b{color:var(--ink);font-weight:600}
td.state{white-space:normal;min-width:150px}
.badge{display:inline-block;font-size:11.5px;font-weight:600;border-radius:999px;padding:1px 9px;margin:1px 4px 1px 0;border:1px solid transparent;white-space:nowrap}
.badge.good{background:#e8f6ee;color:#17804a;border-color:#c4e8d3}
.badge.warn{background:#fff4de;color:#9a6200;border-color:#f5dba6}
.badge.bad{background:#fdeaea;color:#b42323;border-color:#f5c2c2}
.badge.info{background:#e9f0fd;color:#2856b6;border-color:#c8d8f7}
.badge.mute{background:#f0f2f5;color:var(--muted)}
tr.err td{background:#fdf2f2;color:#9b1c1c;white-space:normal;font-size:12.5px;border-left:3px solid var(--red);word-break:break-word}
tr.err.old td{background:#f8f9fb;color:var(--muted);border-left-color:#c5ccd6}
.err-label{font-weight:700;text-transform:uppercase;font-size:11px;letter-spacing:.6px;margin-right:4px}
.errcode{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-weight:700;background:#fbd5d5;border-radius:4px;padding:0 6px;margin-right:4px}
tr.err.old .errcode{background:#e6e9ee}
.when{color:#b26a6a;white-space:nowrap}
tr.err.old .when{color:var(--muted)}
.empty{background:var(--card);border:1px dashed var(--line);border-radius:10px;padding:28px;text-align:center;color:var(--muted)}
footer{color:var(--muted);font-size:12px;padding:14px 2px 20px}
footer p{margin:4px 0}
footer a{color:var(--blue);text-decoration:none}
.summary{margin-bottom:18px}
.filters{margin-left:auto;font-size:12.5px;color:var(--muted)}
.filters a,.more a,.empty a{color:var(--blue);text-decoration:none}
table.sum{border-collapse:separate;border-spacing:0;background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden}
table.sum th,table.sum td{padding:6px 14px}
table.sum tbody tr:last-child td{border-bottom:0}
.sum-note{font-size:12px;color:var(--muted);margin:5px 2px 0}
tbody.group td{background:#f8fafc;color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.6px;font-weight:600;padding:6px 10px}
.more{margin:10px 2px;font-size:13px}
.platform{margin-bottom:18px}
.pcards{grid-template-columns:repeat(5,minmax(0,1fr));margin-bottom:10px}
table.probs td{white-space:normal}
table.probs td.msg{color:#9b1c1c;font-size:12.5px;word-break:break-word}
"#;

#[cfg(test)]
mod tests {
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
        for raw in [
            "<script>",
            "<img",
            "<b>x",
            "r<1>",
            "r\"2",
            "alert('x')",
            "& more",
        ] {
            assert!(!html.contains(raw), "{raw:?} unescaped in\n{html}");
        }
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
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
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
