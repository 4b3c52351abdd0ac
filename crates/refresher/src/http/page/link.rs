//! The status page's links: relative URLs with a query string whose
//! values are percent-encoded, so an id or appid from Redis or the config
//! stays one value of one parameter whatever it holds (`&`, `=`, `#`, `+`,
//! `,`, quotes, angle brackets, spaces, non-ASCII). The template then
//! escapes the whole URL again as an attribute value, as it does every
//! text.
//!
//! Parameters come out in one order: the filters (`problems`, `id`,
//! `prefix`), then the page (`offset`, `limit`).

use super::super::snapshot::View;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Bytes percent-encoded in a query value: all but the unreserved
/// characters of RFC 3986 and `/`, which a query may hold as is and which
/// keeps `authorizer/COMPONENT/APPID` readable.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A query string, built one parameter at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Query(Vec<String>);

impl Query {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The filters of `view` (not its page).
    pub fn filters(view: &View) -> Self {
        let mut q = Self::new();
        if view.problems {
            q = q.with("problems", "true");
        }
        if let Some(ids) = &view.ids {
            q = q.list("id", ids.iter().map(String::as_str));
        }
        if let Some(prefix) = &view.prefix {
            q = q.with("prefix", prefix);
        }
        q
    }

    /// Adds `name=value`, `value` percent-encoded.
    pub fn with(mut self, name: &'static str, value: &str) -> Self {
        self.0
            .push(format!("{name}={}", utf8_percent_encode(value, VALUE)));
        self
    }

    /// Adds `name=v1,v2,…`, each value percent-encoded. (The server
    /// splits the decoded list at commas; ids never hold one.)
    pub fn list<'a>(mut self, name: &'static str, values: impl Iterator<Item = &'a str>) -> Self {
        let values: Vec<String> = values
            .map(|v| utf8_percent_encode(v, VALUE).to_string())
            .collect();
        self.0.push(format!("{name}={}", values.join(",")));
        self
    }

    /// `path` with this query: `path?a=1&b=2`, or `path` alone without
    /// parameters (`./` when `path` is empty too: this page, unfiltered).
    pub fn href(&self, path: &str) -> String {
        match (path, self.0.is_empty()) {
            ("", true) => "./".to_owned(),
            (_, true) => path.to_owned(),
            (_, false) => format!("{path}?{}", self.0.join("&")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Query as Extract;
    use axum::http::Uri;

    /// The parameters the server's query extractor reads from `href`.
    fn decoded(href: &str) -> Vec<(String, String)> {
        let uri: Uri = format!("http://x/{href}").parse().expect("a valid URI");
        let Extract(pairs) = Extract::<Vec<(String, String)>>::try_from_uri(&uri).expect("decodes");
        pairs
    }

    #[test]
    fn values_round_trip_through_the_servers_decoder() {
        for value in [
            "authorizer/wxc/wxa1",
            "<script>alert(1)</script>",
            "\"'><img src=x onerror=alert(1)>",
            "&amp;",
            "a&b=c#d?e+f g,h%20i",
            "微信",
        ] {
            let href = Query::new()
                .with("prefix", value)
                .with("offset", "7")
                .href("status.json");
            assert!(
                href.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~/?=&%".contains(&b)),
                "{href}"
            );
            assert_eq!(
                decoded(&href),
                [
                    ("prefix".to_owned(), value.to_owned()),
                    ("offset".to_owned(), "7".to_owned())
                ],
                "{href}"
            );
        }
    }

    #[test]
    fn filters_come_first_in_one_order() {
        let view = View {
            problems: true,
            ids: Some(["c1".to_owned(), "a1".to_owned()].into()),
            prefix: Some("authorizer/wxc/".into()),
            offset: 3,
            limit: 10,
        };
        let q = Query::filters(&view);
        assert_eq!(q.href(""), "?problems=true&id=a1,c1&prefix=authorizer/wxc/");
        assert_eq!(
            q.clone().with("offset", "1").href("status.json"),
            "status.json?problems=true&id=a1,c1&prefix=authorizer/wxc/&offset=1"
        );
        assert_eq!(
            decoded(&q.href(""))[1],
            ("id".to_owned(), "a1,c1".to_owned())
        );
        let prefix = View {
            prefix: Some("b".into()),
            ..View::default()
        };
        assert_eq!(Query::filters(&prefix).href(""), "?prefix=b");
        assert_eq!(Query::filters(&View::default()).href(""), "./");
        assert_eq!(Query::new().href("status.json"), "status.json");
    }
}
