//! Redis behind Sentinel: `redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]`
//! (`rediss+sentinel://…` for TLS to the data nodes). The sentinels are
//! asked, one after another, where the primary named `master` is; the
//! answer is checked (the node must say `ROLE` master) before it is used.
//! Sentinels are reached in plain TCP without a password (their port should
//! be reachable only from the private network); the user, password, TLS
//! files and database apply to the data nodes.
//!
//! Following a failover is the connection's job ([`crate::Managed`]): on
//! errors it asks again, and moves when the answer changes.

use crate::{client, ConnectError, TlsFiles};
use std::time::Duration;

/// Default Sentinel port, when a host names none.
const SENTINEL_PORT: u16 = 26379;

/// Where a Sentinel-managed primary is found.
#[derive(Clone)]
pub struct Sentinel {
    /// The sentinels, `host:port`.
    sentinels: Vec<String>,
    /// The monitored master's name.
    master: String,
    /// `redis` or `rediss`, for the data nodes.
    scheme: &'static str,
    /// `user:password@` or empty (a secret: never shown).
    userinfo: String,
    /// `/db` or empty.
    db: String,
    tls: TlsFiles,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("scheme", &self.scheme)
            .field("db", &self.db)
            .finish()
    }
}

impl Sentinel {
    /// Parses a `redis+sentinel://` or `rediss+sentinel://` URL; `None`
    /// when `url` has another scheme.
    pub fn parse(url: &str, tls: &TlsFiles) -> Option<Result<Sentinel, ConnectError>> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            ("rediss", rest)
        } else {
            return None;
        };
        Some(Sentinel::parse_rest(scheme, rest, tls))
    }

    fn parse_rest(
        scheme: &'static str,
        rest: &str,
        tls: &TlsFiles,
    ) -> Result<Sentinel, ConnectError> {
        let bad = |why: &str| {
            ConnectError::Mismatch {
            which: None,
            message: format!(
                "not a usable Sentinel URL ({why}; the value is not shown, it may hold a password); expected redis+sentinel://[user:password@]host:port[,host:port…]/master[/db]"
            ),
        }
        };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (format!("{u}@"), r),
            None => (String::new(), rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
        let mut parts = path.splitn(2, '/');
        let master = parts.next().unwrap_or("");
        let db = parts.next().unwrap_or("");
        if master.is_empty()
            || master.len() > 128
            || !master
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(bad("the master name must be 1-128 of A-Z a-z 0-9 _ . -"));
        }
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(bad("the database must be a number"));
        }
        let mut sentinels = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let addr = match h.rsplit_once(':') {
                Some((host, port)) => {
                    port.parse::<u16>()
                        .map_err(|_| bad("a sentinel port is not a number"))?;
                    format!("{host}:{port}")
                }
                None => format!("{h}:{SENTINEL_PORT}"),
            };
            if addr.starts_with(':') {
                return Err(bad("a sentinel has no host"));
            }
            sentinels.push(addr);
        }
        if sentinels.is_empty() || sentinels.len() > 16 {
            return Err(bad("give 1 to 16 sentinels"));
        }
        // The data nodes' TLS, checked now as for a plain URL.
        if scheme == "rediss" {
            crate::check_files(tls)?;
        } else if !tls.is_empty() {
            return Err(ConnectError::Mismatch {
                which: None,
                message: "TLS files are given but the Redis URL is not rediss+sentinel:// (plain text); use rediss+sentinel:// or remove the TLS files".into(),
            });
        }
        Ok(Sentinel {
            sentinels,
            master: master.to_owned(),
            scheme,
            userinfo,
            db: if db.is_empty() {
                String::new()
            } else {
                format!("/{db}")
            },
            tls: tls.clone(),
        })
    }

    /// The master's name.
    pub fn master(&self) -> &str {
        &self.master
    }

    /// Asks the sentinels for the primary and returns a client for it and
    /// its `ip:port`, once the node itself says it is the primary. Each
    /// sentinel and the node get `timeout`.
    pub async fn primary(
        &self,
        timeout: Duration,
    ) -> Result<(redis::Client, String), ConnectError> {
        let mut last = String::from("no sentinel answered");
        for s in &self.sentinels {
            match self.ask(s, timeout).await {
                Ok(found) => return Ok(found),
                Err(why) => last = why,
            }
        }
        Err(ConnectError::Sentinel {
            master: self.master.clone(),
            reason: last,
        })
    }

    async fn ask(
        &self,
        sentinel: &str,
        timeout: Duration,
    ) -> Result<(redis::Client, String), String> {
        let bounded =
            |what: &'static str| move |_| format!("{what} did not answer within {timeout:?}");
        let s = redis::Client::open(format!("redis://{sentinel}"))
            .map_err(|e| format!("sentinel {sentinel}: {:?}", e.kind()))?;
        let mut con = tokio::time::timeout(timeout, s.get_multiplexed_async_connection())
            .await
            .map_err(bounded("the sentinel"))?
            .map_err(|e| format!("sentinel {sentinel}: {e}"))?;
        let addr: Option<(String, u16)> = tokio::time::timeout(
            timeout,
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master)
                .query_async(&mut con),
        )
        .await
        .map_err(bounded("the sentinel"))?
        .map_err(|e| format!("sentinel {sentinel}: {e}"))?;
        let (ip, port) = addr
            .ok_or_else(|| format!("sentinel {sentinel} does not know master {:?}", self.master))?;
        let addr = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let url = format!("{}://{}{addr}{}", self.scheme, self.userinfo, self.db);
        let node = client(&url, &self.tls).map_err(|e| e.to_string())?;
        let mut con = tokio::time::timeout(timeout, node.get_multiplexed_async_connection())
            .await
            .map_err(bounded("the primary"))?
            .map_err(|e| format!("primary {addr}: {}", crate::describe(&e, &self.tls)))?;
        let role: Vec<redis::Value> =
            tokio::time::timeout(timeout, redis::cmd("ROLE").query_async(&mut con))
                .await
                .map_err(bounded("the primary"))?
                .map_err(|e| format!("primary {addr}: {e}"))?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r == b"master" => Ok((node, addr)),
            Some(redis::Value::SimpleString(r)) if r == "master" => Ok((node, addr)),
            _ => Err(format!(
                "{addr}, named by sentinel {sentinel}, is not a primary (yet)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_bad_ones_named_without_the_password() {
        let s = Sentinel::parse(
            "redis+sentinel://user:s3cret@10.0.0.1:26379,10.0.0.2,10.0.0.3:26380/mymaster/2",
            &TlsFiles::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.sentinels,
            ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26380"]
        );
        assert_eq!(
            (s.master(), s.scheme, s.db.as_str()),
            ("mymaster", "redis", "/2")
        );
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(Sentinel::parse("redis://h:1", &TlsFiles::default()).is_none());
        let tls = Sentinel::parse("rediss+sentinel://h:1/m", &TlsFiles::default())
            .unwrap()
            .unwrap();
        assert_eq!(tls.scheme, "rediss");
        for bad in [
            "redis+sentinel://:pw@h:1",
            "redis+sentinel://:pw@h:1/",
            "redis+sentinel://:pw@h:x/m",
            "redis+sentinel://:pw@/m",
            "redis+sentinel://:pw@h:1/m m",
            "redis+sentinel://:pw@h:1/m/x",
        ] {
            let e = Sentinel::parse(bad, &TlsFiles::default())
                .unwrap()
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains("Sentinel URL") && !e.contains("pw"),
                "{bad}: {e}"
            );
        }
    }
}
