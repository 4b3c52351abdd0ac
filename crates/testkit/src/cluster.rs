//! A Redis Cluster on loopback for tests: `primaries` primaries with
//! `replicas` replicas each, every node a real `redis-server
//! --cluster-enabled yes` on free ports (client and cluster bus) in its own
//! temporary directory, joined with `redis-cli --cluster create`. The node
//! timeout is short ([`NODE_TIMEOUT`]) so a test can kill a primary and
//! await its replica's promotion in seconds; replicas may always fail over
//! (`cluster-replica-validity-factor 0`), however long a loaded machine
//! kept them from their primary.
//!
//! [`ClusterSet::start`] returns once every node reports `cluster_state:ok`
//! with all 16384 slots assigned, knows every other node, and every replica
//! is attached and in sync with its primary.

use crate::{free_port, io_err, Error, RedisServer, TlsServer};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cluster-node-timeout`: how long a node may be unreachable before the
/// others consider it failed.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Locates the `redis-cli` binary (it forms the cluster): `$REDIS_CLI`,
/// else `PATH`, else the usual system locations.
pub fn redis_cli_binary() -> Result<PathBuf, Error> {
    if let Some(explicit) = std::env::var_os("REDIS_CLI") {
        let p = PathBuf::from(explicit);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::CliNotInstalled)
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join("redis-cli"))
        .find(|p| p.is_file())
        .ok_or(Error::CliNotInstalled)
}

/// One node: its server and its cluster node id.
#[derive(Debug)]
struct Node {
    server: RedisServer,
    id: String,
}

/// A running Redis Cluster. Every process is killed when dropped.
///
/// Addresses ([`ClusterSet::nodes`], [`ClusterSet::primary_for_key`]…) are
/// the nodes' plain-text ports, also for a TLS cluster
/// ([`ClusterSet::start_tls`]), whose nodes keep a plain-text port open on
/// loopback for the test's own inspection; the code under test is given
/// [`ClusterSet::url`], which names the TLS ports.
#[derive(Debug)]
pub struct ClusterSet {
    nodes: Vec<Node>,
    /// The replicas of each primary killed by [`ClusterSet::kill_primary`].
    orphans: Vec<(SocketAddr, Vec<SocketAddr>)>,
    tls: bool,
}

impl ClusterSet {
    /// Starts `primaries` (at least 3, Redis Cluster's minimum) primaries
    /// with `replicas` replicas each, and waits (up to 60 s) until the
    /// cluster is formed and every replica is in sync.
    pub fn start(primaries: usize, replicas: usize) -> Result<ClusterSet, Error> {
        Self::start_with(primaries, replicas, None)
    }

    /// [`ClusterSet::start`] with TLS: clients, the cluster bus and
    /// replication speak TLS (`tls-cluster`, `tls-replication`) with
    /// `tls`'s certificate; `node_client` (certificate and key files) is
    /// what the nodes (and `redis-cli`) show when `tls.auth_clients`
    /// requires a client certificate.
    pub fn start_tls(
        primaries: usize,
        replicas: usize,
        tls: &TlsServer,
        node_client: Option<(&Path, &Path)>,
    ) -> Result<ClusterSet, Error> {
        Self::start_with(primaries, replicas, Some((tls, node_client)))
    }

    fn start_with(
        primaries: usize,
        replicas: usize,
        tls: Option<(&TlsServer, Option<(&Path, &Path)>)>,
    ) -> Result<ClusterSet, Error> {
        let cli = redis_cli_binary()?;
        if primaries < 3 {
            return Err(Error::Io {
                what: "starting a Redis Cluster",
                source: std::io::Error::other("Redis Cluster needs at least 3 primaries"),
            });
        }
        let total = primaries * (1 + replicas);
        let timeout = NODE_TIMEOUT.as_millis().to_string();
        let mut servers = Vec::with_capacity(total);
        for _ in 0..total {
            let mut bus = free_port()?;
            while bus >= 65000 {
                bus = free_port()?;
            }
            let bus = bus.to_string();
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
                "--cluster-port",
                &bus,
                "--cluster-replica-validity-factor",
                "0",
            ];
            servers.push(match tls {
                None => RedisServer::start_with_args(&args)?,
                Some((server_tls, node_client)) => {
                    args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                    let files: Vec<String> = node_client
                        .map(|(cert, key)| {
                            vec![
                                "--tls-client-cert-file".to_owned(),
                                cert.display().to_string(),
                                "--tls-client-key-file".to_owned(),
                                key.display().to_string(),
                            ]
                        })
                        .unwrap_or_default();
                    args.extend(files.iter().map(String::as_str));
                    RedisServer::start_tls(server_tls, &args)?
                }
            });
        }
        let mut cli = Command::new(cli);
        if let Some((server_tls, node_client)) = tls {
            cli.arg("--tls").arg("--cacert").arg(&server_tls.ca_file);
            if let Some((cert, key)) = node_client {
                cli.arg("--cert").arg(cert).arg("--key").arg(key);
            }
        }
        // redis-cli meets the nodes on the ports it was given (the TLS
        // ports for a TLS cluster).
        let addr = |s: &RedisServer| match s.tls_port() {
            Some(p) if tls.is_some() => SocketAddr::from(([127, 0, 0, 1], p)).to_string(),
            _ => s.addr().to_string(),
        };
        let out = cli
            .arg("--cluster")
            .arg("create")
            .args(servers.iter().map(addr))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running redis-cli --cluster create"))?;
        if !out.status.success() {
            return Err(Error::Io {
                what: "redis-cli --cluster create",
                source: std::io::Error::other(format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
            });
        }
        let mut nodes = Vec::with_capacity(total);
        for server in servers {
            let id =
                text(&query(server.addr(), &["CLUSTER", "MYID"]).map_err(io_err("CLUSTER MYID"))?)
                    .unwrap_or_default();
            nodes.push(Node { server, id });
        }
        let set = ClusterSet {
            nodes,
            orphans: Vec::new(),
            tls: tls.is_some(),
        };
        set.wait(Duration::from_secs(60), |set| {
            set.formed(primaries, replicas)
        })?;
        Ok(set)
    }

    /// What keeps the cluster from being formed, or `None` when it is.
    fn formed(&self, primaries: usize, replicas: usize) -> Option<String> {
        let total = primaries * (1 + replicas);
        for n in &self.nodes {
            let addr = n.server.addr();
            if let Some(why) = cluster_ok(addr) {
                return Some(why);
            }
            let info = query(addr, &["CLUSTER", "INFO"])
                .ok()
                .and_then(|v| text(&v));
            let known = info
                .as_deref()
                .and_then(|i| field(i, "cluster_known_nodes"))
                .unwrap_or_default();
            if known != total.to_string() {
                return Some(format!("{addr} knows {known} of {total} nodes"));
            }
            let Some(view) = cluster_nodes(addr) else {
                return Some(format!("{addr}: no CLUSTER NODES answer"));
            };
            let masters = view.iter().filter(|l| l.is_primary()).count();
            let attached = view.iter().filter(|l| l.master.is_some()).count();
            if masters != primaries || attached != primaries * replicas {
                return Some(format!(
                    "{addr} sees {masters} primaries and {attached} attached replicas"
                ));
            }
            match role(addr) {
                Some((r, state)) if r == "slave" && state != "connected" => {
                    return Some(format!("replica {addr} is in state {state:?}"));
                }
                Some(_) => {}
                None => return Some(format!("{addr}: no ROLE answer")),
            }
        }
        None
    }

    /// Polls `what` (every 50 ms) until it returns `None`, for up to
    /// `limit`; the error names what was still missing.
    fn wait(
        &self,
        limit: Duration,
        what: impl Fn(&ClusterSet) -> Option<String>,
    ) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let Some(missing) = what(self) else {
                return Ok(());
            };
            if start.elapsed() > limit {
                let first = self.running().next();
                let view = first
                    .and_then(|a| query(a, &["CLUSTER", "NODES"]).ok())
                    .and_then(|v| text(&v))
                    .unwrap_or_default();
                return Err(Error::NotReady {
                    port: first.map_or(0, |a| a.port()),
                    waited: start.elapsed(),
                    log: format!("Redis Cluster: {missing}\nCLUSTER NODES:\n{view}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running nodes' addresses.
    fn running(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.server.is_running())
            .map(|n| n.server.addr())
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…` (every node, running
    /// or not, as a seed), or for a TLS cluster
    /// `rediss+cluster://127.0.0.1:tls_port1,…`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}+cluster://{}", self.node_list())
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,…`, every node (the TLS ports of a TLS
    /// cluster).
    pub fn node_list(&self) -> String {
        self.nodes()
            .iter()
            .map(|a| self.client_addr(*a).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The address a client uses for the node on (plain-text) `addr`: the
    /// TLS port of a TLS cluster, else `addr`.
    pub fn client_addr(&self, addr: SocketAddr) -> SocketAddr {
        self.nodes
            .iter()
            .find(|n| n.server.addr() == addr)
            .and_then(|n| n.server.tls_port())
            .filter(|_| self.tls)
            .map_or(addr, |p| SocketAddr::new(addr.ip(), p))
    }

    /// Every node's address, in start order.
    pub fn nodes(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.server.addr()).collect()
    }

    /// The running primaries (nodes whose `ROLE` is master), in start
    /// order.
    pub fn primaries(&self) -> Vec<SocketAddr> {
        self.running()
            .filter(|a| role(*a).is_some_and(|(r, _)| r == "master"))
            .collect()
    }

    /// The hash slot of `key` (asked of a running node: `CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> Result<u16, Error> {
        let addr = self.running().next().ok_or_else(none_running)?;
        match query(addr, &["CLUSTER", "KEYSLOT", key]).map_err(io_err("CLUSTER KEYSLOT"))? {
            Resp::Int(s) => u16::try_from(s).map_err(|_| bad_answer("CLUSTER KEYSLOT")),
            _ => Err(bad_answer("CLUSTER KEYSLOT")),
        }
    }

    /// The primary owning `slot`, as a running node reports it
    /// (`CLUSTER SLOTS`).
    pub fn primary_of_slot(&self, slot: u16) -> Result<SocketAddr, Error> {
        let addr = self.running().next().ok_or_else(none_running)?;
        let Resp::Arr(ranges) =
            query(addr, &["CLUSTER", "SLOTS"]).map_err(io_err("CLUSTER SLOTS"))?
        else {
            return Err(bad_answer("CLUSTER SLOTS"));
        };
        for range in ranges {
            let Resp::Arr(r) = range else { continue };
            if let [Resp::Int(start), Resp::Int(end), Resp::Arr(primary), ..] = r.as_slice() {
                if (*start..=*end).contains(&i64::from(slot)) {
                    if let [Resp::Str(ip), Resp::Int(port), ..] = primary.as_slice() {
                        let ip = ip.parse().map_err(|_| bad_answer("CLUSTER SLOTS"))?;
                        let port = u16::try_from(*port).map_err(|_| bad_answer("CLUSTER SLOTS"))?;
                        return Ok(SocketAddr::new(ip, port));
                    }
                }
            }
        }
        Err(bad_answer("CLUSTER SLOTS (slot not covered)"))
    }

    /// The primary owning `key`'s slot.
    pub fn primary_for_key(&self, key: &str) -> Result<SocketAddr, Error> {
        self.primary_of_slot(self.slot_of(key)?)
    }

    /// Kills the primary on `addr` (SIGKILL), remembering its replicas for
    /// [`ClusterSet::wait_failover`].
    pub fn kill_primary(&mut self, addr: SocketAddr) -> Result<(), Error> {
        if role(addr).is_none_or(|(r, _)| r != "master") {
            return Err(Error::Io {
                what: "killing a primary",
                source: std::io::Error::other(format!("{addr} is not a running primary")),
            });
        }
        let id = self.id_of(addr).to_owned();
        let view = cluster_nodes(addr).ok_or_else(|| bad_answer("CLUSTER NODES"))?;
        let replicas: Vec<SocketAddr> = view
            .iter()
            .filter(|l| l.master.as_deref() == Some(id.as_str()))
            .map(|l| l.addr)
            .collect();
        if let Some(n) = self.nodes.iter_mut().find(|n| n.server.addr() == addr) {
            n.server.stop();
        }
        self.orphans.push((addr, replicas));
        Ok(())
    }

    /// Waits (up to `limit`) until a replica of the primary `old` (killed
    /// with [`ClusterSet::kill_primary`]) is a primary and every running
    /// node reports `cluster_state:ok` again; returns the new primary.
    pub fn wait_failover(&self, old: SocketAddr, limit: Duration) -> Result<SocketAddr, Error> {
        let replicas = self
            .orphans
            .iter()
            .rev()
            .find(|(a, _)| *a == old)
            .map(|(_, r)| r.clone())
            .ok_or_else(|| Error::Io {
                what: "awaiting a failover",
                source: std::io::Error::other(format!("{old} was not killed with kill_primary")),
            })?;
        if replicas.is_empty() {
            return Err(Error::Io {
                what: "awaiting a failover",
                source: std::io::Error::other(format!("{old} had no replica to promote")),
            });
        }
        let promoted = || {
            replicas
                .iter()
                .copied()
                .find(|a| role(*a).is_some_and(|(r, _)| r == "master"))
        };
        self.wait(limit, |set| {
            if promoted().is_none() {
                return Some(format!("no replica of {old} is a primary yet"));
            }
            set.running().find_map(cluster_ok)
        })?;
        promoted().ok_or_else(|| bad_answer("ROLE"))
    }

    fn id_of(&self, addr: SocketAddr) -> &str {
        self.nodes
            .iter()
            .find(|n| n.server.addr() == addr)
            .map_or("", |n| n.id.as_str())
    }

    /// The directory of the node on `addr` (its log lives there).
    pub fn node_dir(&self, addr: SocketAddr) -> Option<&std::path::Path> {
        self.nodes
            .iter()
            .find(|n| n.server.addr() == addr)
            .map(|n| n.server.dir())
    }
}

fn none_running() -> Error {
    Error::Io {
        what: "asking the Redis Cluster",
        source: std::io::Error::other("no node is running"),
    }
}

fn bad_answer(what: &str) -> Error {
    Error::Io {
        what: "asking the Redis Cluster",
        source: std::io::Error::other(format!("unexpected answer to {what}")),
    }
}

/// Why `addr` does not report a healthy cluster, or `None`.
fn cluster_ok(addr: SocketAddr) -> Option<String> {
    let Some(info) = query(addr, &["CLUSTER", "INFO"])
        .ok()
        .and_then(|v| text(&v))
    else {
        return Some(format!("{addr}: no CLUSTER INFO answer"));
    };
    let state = field(&info, "cluster_state").unwrap_or_default();
    let assigned = field(&info, "cluster_slots_assigned").unwrap_or_default();
    let ok = field(&info, "cluster_slots_ok").unwrap_or_default();
    let slots = SLOTS.to_string();
    if state != "ok" || assigned != slots || ok != slots {
        return Some(format!(
            "{addr}: cluster_state {state}, {assigned} slots assigned, {ok} ok"
        ));
    }
    None
}

/// `name:value` of a `CLUSTER INFO` / `INFO` text.
fn field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// `(role, state)` from `ROLE`: `("master", "")`, or `("slave",
/// "connected")` and the like.
fn role(addr: SocketAddr) -> Option<(String, String)> {
    let Resp::Arr(parts) = query(addr, &["ROLE"]).ok()? else {
        return None;
    };
    let r = parts.first().and_then(text)?;
    let state = if r == "slave" {
        parts.get(3).and_then(text).unwrap_or_default()
    } else {
        String::new()
    };
    Some((r, state))
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    addr: SocketAddr,
    flags: String,
    /// The primary's id, for a replica.
    master: Option<String>,
    has_slots: bool,
}

impl NodeLine {
    fn is_primary(&self) -> bool {
        self.flags.split(',').any(|f| f == "master")
            && !self.flags.split(',').any(|f| f == "fail" || f == "fail?")
            && self.has_slots
    }
}

fn cluster_nodes(addr: SocketAddr) -> Option<Vec<NodeLine>> {
    let view = text(&query(addr, &["CLUSTER", "NODES"]).ok()?)?;
    let mut lines = Vec::new();
    for line in view.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // ip:port@cport[,hostname]
        let ip_port = f[1].split(['@', ',']).next().unwrap_or_default();
        let Ok(addr) = ip_port.parse() else { continue };
        lines.push(NodeLine {
            addr,
            flags: f[2].to_owned(),
            master: (f[3] != "-").then(|| f[3].to_owned()),
            has_slots: f.len() > 8,
        });
    }
    Some(lines)
}

/// A RESP reply.
#[derive(Debug)]
enum Resp {
    Str(String),
    Int(i64),
    Arr(Vec<Resp>),
    Nil,
}

fn text(r: &Resp) -> Option<String> {
    match r {
        Resp::Str(s) => Some(s.clone()),
        Resp::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Sends one command and reads its reply (an error reply is an `Err`).
fn query(addr: SocketAddr, args: &[&str]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    read_reply(&mut BufReader::new(s), 0)
}

fn read_reply(r: &mut impl BufRead, depth: usize) -> std::io::Result<Resp> {
    if depth > 8 {
        return Err(std::io::Error::other("reply nested too deep"));
    }
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = |rest: &str| rest.parse::<i64>().map_err(std::io::Error::other);
    Ok(match kind {
        "+" => Resp::Str(rest.to_owned()),
        ":" => Resp::Int(number(rest)?),
        "-" => return Err(std::io::Error::other(rest.to_owned())),
        "$" => {
            let n = number(rest)?;
            if n < 0 {
                Resp::Nil
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Str(String::from_utf8_lossy(&buf).into_owned())
            }
        }
        "*" => {
            let n = number(rest)?;
            if n < 0 {
                Resp::Nil
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_reply(r, depth + 1)?);
                }
                Resp::Arr(items)
            }
        }
        _ => return Err(std::io::Error::other(format!("unexpected reply {line:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_forms_and_a_killed_primary_is_replaced_by_its_replica() {
        let mut set =
            ClusterSet::start(3, 1).expect("redis-server and redis-cli must be installed");
        assert_eq!(set.nodes().len(), 6);
        let primaries = set.primaries();
        assert_eq!(primaries.len(), 3, "{primaries:?}");
        assert!(set.url().starts_with("redis+cluster://127.0.0.1:"));
        assert_eq!(set.url().matches(',').count(), 5);
        let slot = set.slot_of("{wx}a").unwrap();
        assert_eq!(set.slot_of("{wx}b").unwrap(), slot);
        let owner = set.primary_for_key("{wx}a").unwrap();
        assert_eq!(set.primary_of_slot(slot).unwrap(), owner);
        assert!(primaries.contains(&owner));
        // Every slot has a primary: the first and the last.
        assert!(primaries.contains(&set.primary_of_slot(0).unwrap()));
        assert!(primaries.contains(&set.primary_of_slot(SLOTS - 1).unwrap()));

        set.kill_primary(owner).unwrap();
        let new = set
            .wait_failover(owner, Duration::from_secs(60))
            .expect("failover");
        assert_ne!(new, owner);
        assert_eq!(set.primary_for_key("{wx}a").unwrap(), new);
        assert_eq!(set.primaries().len(), 3);
        assert!(set.kill_primary(owner).is_err(), "already dead");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_tls_cluster_forms_with_client_certificates() {
        let pki = crate::TestPki::generate().unwrap();
        let set = ClusterSet::start_tls(
            3,
            0,
            &pki.server(true),
            Some((&pki.client_cert, &pki.client_key)),
        )
        .expect("redis-server and redis-cli (with TLS) must be installed");
        assert_eq!(set.primaries().len(), 3);
        assert!(set.url().starts_with("rediss+cluster://127.0.0.1:"));
        let first = set.nodes()[0];
        assert_ne!(set.client_addr(first), first);
        assert!(set.url().contains(&set.client_addr(first).to_string()));
    }

    #[test]
    fn missing_redis_cli_says_how_to_install() {
        let msg = Error::CliNotInstalled.to_string();
        assert!(msg.contains("apt-get install -y redis-tools"), "{msg}");
    }
}
