//! Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port…][/]`
//! (`rediss+cluster://…` for TLS to every node, with the same TLS files as
//! `rediss://`: a CA file or the system's roots, an optional client
//! certificate and key). The nodes named are seeds: the cluster's layout
//! (which primary owns which hash slot) is asked from them and followed as
//! it changes. A host without a port means 6379; IPv6 addresses go in
//! brackets (`[::1]:7000`). Redis Cluster has only database 0, so the URL
//! names none.
//!
//! What wxtoken's code sees of a cluster:
//!
//! - [`crate::Con`] routes each command to the primary owning its key's
//!   slot. A pipeline whose keys are in several slots is split by slot; see
//!   [`crate::Con`] for what that means for atomic pipelines (atomic per
//!   slot).
//! - [`crate::Managed::nodes`] gives one connection per primary, for `SCAN`
//!   sweeps that must visit every primary.
//! - [`crate::Managed::client`] gives a client for one node, another node on
//!   each call, for pub/sub: classic `PUBLISH` (also from a Lua script)
//!   reaches the subscribers of every node of a cluster, so subscribing on
//!   any one node sees every event; a subscriber that lost its node gets
//!   another one next time.
//! - Following failovers and resharding is the cluster connection's job
//!   (redis-rs asks for the slot map again on `MOVED` and connection
//!   errors); [`crate::Managed::saw_error`] does nothing for a cluster.
//!
//! Nothing here shows the URL or the password: errors name what is wrong.

use crate::{ConnectError, TlsFiles};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::IntoConnectionInfo;
use std::time::Duration;

/// Port of a node named without one.
const DEFAULT_PORT: u16 = 6379;

/// Most seed nodes a URL may name.
pub const MAX_SEEDS: usize = 64;

/// Where a Redis Cluster is: its seed nodes and how to talk to them.
#[derive(Clone)]
pub struct Cluster {
    /// The seed nodes, `host:port` (IPv6 hosts in brackets).
    seeds: Vec<String>,
    /// `redis` or `rediss`.
    scheme: &'static str,
    /// `user:password@` or empty (a secret: never shown).
    userinfo: String,
    /// The TLS material, read and checked when the URL was parsed.
    certs: Option<redis::TlsCertificates>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seeds", &self.seeds)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Parses a `redis+cluster://` or `rediss+cluster://` URL with `tls`
    /// (the files are read and checked now); `None` when `url` has another
    /// scheme.
    pub fn parse(url: &str, tls: &TlsFiles) -> Option<Result<Cluster, ConnectError>> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            ("rediss", rest)
        } else {
            return None;
        };
        Some(Cluster::parse_rest(scheme, rest, tls))
    }

    fn parse_rest(
        scheme: &'static str,
        rest: &str,
        tls: &TlsFiles,
    ) -> Result<Cluster, ConnectError> {
        let bad = |why: &str| {
            ConnectError::Mismatch {
            which: None,
            message: format!(
                "not a usable Redis Cluster URL ({why}; the value is not shown, it may hold a password); expected {scheme}+cluster://[user:password@]host:port[,host:port…]"
            ),
        }
        };
        // The password may hold any character but '@' ends it.
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (format!("{u}@"), r),
            None => (String::new(), rest),
        };
        if rest.contains(['?', '#']) {
            return Err(bad(
                "query parameters and #fragments are not supported after the nodes",
            ));
        }
        let (hosts, path) = match rest.split_once('/') {
            Some((h, p)) => (h, p),
            None => (rest, ""),
        };
        if !path.is_empty() {
            return Err(bad(
                "a database cannot be chosen: Redis Cluster has only database 0, so nothing may follow the '/'",
            ));
        }
        let mut seeds: Vec<String> = Vec::new();
        for node in hosts.split(',') {
            let node = node.trim();
            if node.is_empty() {
                continue;
            }
            let addr = seed(node).map_err(|why| bad(&why))?;
            if !seeds.contains(&addr) {
                seeds.push(addr);
            }
        }
        if seeds.is_empty() {
            return Err(bad("no node is named"));
        }
        if seeds.len() > MAX_SEEDS {
            return Err(bad(&format!("give 1 to {MAX_SEEDS} nodes")));
        }
        let certs = if scheme == "rediss" {
            crate::install_crypto_provider();
            let certs = crate::read_all(tls)?;
            (certs.root_cert.is_some() || certs.client_tls.is_some()).then_some(certs)
        } else if !tls.is_empty() {
            return Err(ConnectError::Mismatch {
                which: None,
                message: "TLS files are given but the Redis URL is not rediss+cluster:// (plain text); use rediss+cluster:// or remove the TLS files".into(),
            });
        } else {
            None
        };
        let cluster = Cluster {
            seeds,
            scheme,
            userinfo,
            certs,
        };
        // Each node's URL must be one the Redis client takes (this checks
        // the user and password too).
        for s in &cluster.seeds {
            cluster
                .node_url(s)
                .as_str()
                .into_connection_info()
                .map_err(|e| bad(&format!("a node is not usable ({:?})", e.kind())))?;
        }
        Ok(cluster)
    }

    /// The seed nodes, `host:port`.
    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// Whether the nodes are reached over TLS (`rediss+cluster://`).
    pub fn is_tls(&self) -> bool {
        self.scheme == "rediss"
    }

    /// `scheme://userinfo@addr` (a secret: never shown).
    fn node_url(&self, addr: &str) -> String {
        format!("{}://{}{addr}", self.scheme, self.userinfo)
    }

    /// A client for the one node at `addr` (`host:port`), with the
    /// cluster's user, password and TLS material. Connects to nothing.
    pub fn node_client(&self, addr: &str) -> Result<redis::Client, ConnectError> {
        let info = self
            .node_url(addr)
            .as_str()
            .into_connection_info()
            .map_err(|e| ConnectError::Url { kind: e.kind() })?;
        match &self.certs {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()).map_err(|e| {
                ConnectError::Mismatch {
                    which: None,
                    message: format!("cannot use the TLS files ({:?})", e.kind()),
                }
            }),
            None => redis::Client::open(info).map_err(|e| ConnectError::Url { kind: e.kind() }),
        }
    }

    /// The cluster client: every attempt to connect is bounded by
    /// `connect_timeout`, every answer by `response_timeout`, as is a whole
    /// request with its `retries` (redirections after a failover or a slot
    /// move included); retries wait 50 ms growing to `max_delay`.
    pub fn client(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
        retries: u32,
        max_delay: Duration,
    ) -> Result<ClusterClient, ConnectError> {
        let urls: Vec<String> = self.seeds.iter().map(|s| self.node_url(s)).collect();
        let mut builder = ClusterClientBuilder::new(urls)
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout)
            .retries(retries)
            .min_retry_wait(50)
            .max_retry_wait(max_delay.as_millis().clamp(51, 60_000) as u64);
        if let Some(certs) = &self.certs {
            builder = builder.certs(certs.clone());
        }
        builder.build().map_err(|e| ConnectError::Mismatch {
            which: None,
            // Never the URL: the kind and the client's own sentence (which
            // names no node and no password).
            message: format!("cannot set up the Redis Cluster client ({:?})", e.kind()),
        })
    }

    /// The connection config matching [`Cluster::client`]'s timeouts.
    pub(crate) fn config(connect_timeout: Duration, response_timeout: Duration) -> ClusterConfig {
        ClusterConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_response_timeout(response_timeout)
    }
}

/// `host:port` of one seed as written in the URL, checked.
fn seed(node: &str) -> Result<String, String> {
    let (host, port) = if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address lacks its closing ']'")?;
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        {
            return Err("a bracketed host is not an IPv6 address".into());
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("only ':port' may follow an IPv6 address")?,
            ),
        };
        (format!("[{v6}]"), port)
    } else {
        match node.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h.to_owned(), Some(p)),
            Some(_) => {
                return Err("an IPv6 address must be in brackets, e.g. [::1]:7000".into());
            }
            None => (node.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("a node has no host".into());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
    {
        return Err("a node's host holds a character not allowed in a host name".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or("a node's port is not a number from 1 to 65535")?,
    };
    Ok(format!("{host}:{port}"))
}

/// The nodes a `CLUSTER SLOTS` answer names, each `(host, port)`, sorted,
/// without duplicates.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The primaries (of at least one slot).
    pub(crate) primaries: Vec<(String, u16)>,
    /// The primaries and their replicas.
    pub(crate) all: Vec<(String, u16)>,
}

/// The [`Layout`] of a `CLUSTER SLOTS` answer. A node announced without an
/// address (empty, `?` or a wildcard) cannot be reached by address and is
/// an error.
pub(crate) fn slots_nodes(answer: &redis::Value) -> Result<Layout, String> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = answer else {
        return Err("CLUSTER SLOTS did not answer an array".into());
    };
    let mut primaries = Vec::new();
    let mut all = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else {
            continue;
        };
        for (i, node) in range.iter().enumerate().skip(2) {
            let Value::Array(node) = node else {
                continue;
            };
            let host = node.first().and_then(text).unwrap_or_default();
            let port = match node.get(1) {
                Some(Value::Int(p)) => u16::try_from(*p).ok(),
                _ => None,
            };
            let Some(port) = port else {
                continue;
            };
            if host.is_empty() || host == "?" || host == "0.0.0.0" || host == "::" {
                return Err(format!(
                    "a node (port {port}) announces no address; set cluster-announce-ip (or -hostname) on the nodes"
                ));
            }
            let addr = (host, port);
            if i == 2 {
                primaries.push(addr.clone());
            }
            all.push(addr);
        }
    }
    primaries.sort();
    primaries.dedup();
    all.sort();
    all.dedup();
    Ok(Layout { primaries, all })
}

/// `host:port`, IPv6 hosts in brackets.
pub(crate) fn addr_text(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Cluster, ConnectError> {
        Cluster::parse(url, &TlsFiles::default()).expect("a cluster URL")
    }

    #[test]
    fn urls_are_parsed_into_seeds() {
        let c =
            parse("redis+cluster://u:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002,[fe80::1]/").unwrap();
        assert_eq!(
            c.seeds(),
            [
                "10.0.0.1:7000",
                "10.0.0.2:6379",
                "[::1]:7002",
                "[fe80::1]:6379"
            ]
        );
        assert!(!c.is_tls());
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let c = parse("redis+cluster://h1:1, h2:2 ,h1:1").unwrap();
        assert_eq!(c.seeds(), ["h1:1", "h2:2"]);
        let c = parse("rediss+cluster://h:7000").unwrap();
        assert!(c.is_tls());
        assert!(Cluster::parse("redis://h:1", &TlsFiles::default()).is_none());
        assert!(Cluster::parse("redis+sentinel://h:1/m", &TlsFiles::default()).is_none());
        // A password with '@' and ':' in it.
        let c = parse("redis+cluster://user:p@ss:w@h:1").unwrap();
        assert_eq!(c.seeds(), ["h:1"]);
    }

    #[test]
    fn bad_urls_name_the_problem_never_the_password() {
        for (url, why) in [
            ("redis+cluster://:pw@", "no node is named"),
            ("redis+cluster://:pw@,,", "no node is named"),
            ("redis+cluster://:pw@h:x", "port is not a number"),
            ("redis+cluster://:pw@h:0", "port is not a number"),
            ("redis+cluster://:pw@h:70000", "port is not a number"),
            ("redis+cluster://:pw@:7000", "has no host"),
            ("redis+cluster://:pw@h:1/0", "only database 0"),
            ("redis+cluster://:pw@h:1/2", "only database 0"),
            ("redis+cluster://:pw@h:1?protocol=3", "query parameters"),
            ("rediss+cluster://:pw@h:1/#insecure", "query parameters"),
            ("redis+cluster://:pw@::1:7000", "must be in brackets"),
            ("redis+cluster://:pw@[::1:7000", "closing ']'"),
            ("redis+cluster://:pw@[::1]7000", "only ':port'"),
            ("redis+cluster://:pw@[zz]:1", "not an IPv6 address"),
            ("redis+cluster://:pw@h st:1", "not allowed in a host name"),
        ] {
            let e = parse(url).err().unwrap_or_else(|| panic!("{url} parsed"));
            let text = e.to_string();
            assert!(text.contains("Redis Cluster URL"), "{url}: {text}");
            assert!(text.contains(why), "{url}: {text}");
            assert!(!text.contains("pw"), "{url}: {text}");
        }
        let many = (1..=65)
            .map(|i| format!("h{i}:1"))
            .collect::<Vec<_>>()
            .join(",");
        let e = parse(&format!("redis+cluster://{many}")).err().unwrap();
        assert!(e.to_string().contains("give 1 to 64 nodes"), "{e}");
    }

    #[test]
    fn tls_files_need_rediss_and_are_checked() {
        let tls = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let e = Cluster::parse("redis+cluster://h:1", &tls)
            .unwrap()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not rediss+cluster://"), "{e}");
        let e = Cluster::parse("rediss+cluster://h:1", &tls)
            .unwrap()
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                ConnectError::File {
                    which: crate::TlsFile::Ca,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn clients_are_built_without_connecting() {
        let c = parse("redis+cluster://u:pw@127.0.0.1:1,127.0.0.1:2").unwrap();
        assert!(c
            .client(
                Duration::from_secs(1),
                Duration::from_secs(1),
                3,
                Duration::from_secs(1)
            )
            .is_ok());
        let node = c.node_client("127.0.0.1:2").unwrap();
        assert_eq!(
            node.get_connection_info().redis_settings().password(),
            Some("pw")
        );
    }

    #[test]
    fn cluster_slots_answers_name_primaries_and_all_nodes() {
        use redis::Value;
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("127.0.0.1", 7000),
            ]),
        ]);
        let Layout { primaries, all } = slots_nodes(&answer).unwrap();
        let p = |port| ("127.0.0.1".to_owned(), port);
        assert_eq!(primaries, [p(7000), p(7001)]);
        assert_eq!(all, [p(7000), p(7001), p(7003)]);
        let unknown = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(1),
            node("", 7000),
        ])]);
        assert!(slots_nodes(&unknown)
            .unwrap_err()
            .contains("announces no address"));
        assert_eq!(addr_text("::1", 7000), "[::1]:7000");
        assert_eq!(addr_text("h", 7000), "h:7000");
    }
}
