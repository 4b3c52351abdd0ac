//! A Redis Sentinel set on loopback for failover tests: a primary, a
//! replica of it and three sentinels watching them, each a real
//! `redis-server` process (sentinels run `redis-server --sentinel`) on a
//! free port in its own temporary directory. Failover is made fast
//! (`down-after-milliseconds` 1000, `failover-timeout` 5000) so a test can
//! kill the primary and await the promotion.

use crate::{free_port, io_err, ping, redis_server_binary, Error};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One process of the set.
#[derive(Debug)]
struct Node {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Node {
    fn spawn(args: &[String], conf: Option<String>) -> Result<Node, Error> {
        let port = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("wxtoken-sentinel-")
            .tempdir()
            .map_err(io_err("creating a temporary directory"))?;
        let log = dir.path().join("redis.log");
        let mut cmd = Command::new(redis_server_binary()?);
        if let Some(conf) = conf {
            // Sentinels rewrite their config file: it must be theirs.
            let path: PathBuf = dir.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n{conf}",
                dir.path().display(),
                log.display()
            );
            std::fs::write(&path, text).map_err(io_err("writing sentinel.conf"))?;
            cmd.arg(&path).arg("--sentinel");
        } else {
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .args(args);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("spawning"))?;
        let node = Node {
            child: Some(child),
            port,
            dir,
        };
        let start = Instant::now();
        while ping(node.addr()).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(Error::NotReady {
                    port,
                    waited: start.elapsed(),
                    log: std::fs::read_to_string(log).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(node)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary, one replica and three sentinels monitoring them as
/// [`SentinelSet::master_name`]. Every process is killed when dropped.
#[derive(Debug)]
pub struct SentinelSet {
    nodes: Vec<Node>,
    sentinels: Vec<Node>,
    master_name: String,
}

impl SentinelSet {
    /// Starts the set and waits until every sentinel knows the replica.
    pub fn start(master_name: &str) -> Result<SentinelSet, Error> {
        let primary = Node::spawn(&[], None)?;
        let replica = Node::spawn(
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
            None,
        )?;
        let conf = format!(
            "sentinel monitor {master_name} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {master_name} 1000\n\
             sentinel failover-timeout {master_name} 5000\n\
             sentinel parallel-syncs {master_name} 1\n",
            primary.port
        );
        let sentinels = (0..3)
            .map(|_| Node::spawn(&[], Some(conf.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let set = SentinelSet {
            nodes: vec![primary, replica],
            sentinels,
            master_name: master_name.to_owned(),
        };
        let start = Instant::now();
        loop {
            let ready = set.sentinels.iter().all(|s| {
                command(s.addr(), &["SENTINEL", "replicas", &set.master_name])
                    .is_ok_and(|r| r.contains("slave") || r.contains("replica"))
            });
            if ready {
                return Ok(set);
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(Error::NotReady {
                    port: set.sentinels[0].port,
                    waited: start.elapsed(),
                    log: "the sentinels did not discover the replica".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The name the sentinels monitor the primary as.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The sentinels' addresses.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(Node::addr).collect()
    }

    /// `redis+sentinel://…` style list: `127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn sentinel_list(&self) -> String {
        self.sentinel_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The primary's address as the first sentinel that answers reports it.
    pub fn primary(&self) -> Result<SocketAddr, Error> {
        for s in &self.sentinels {
            if let Ok(reply) = command(
                s.addr(),
                &["SENTINEL", "get-master-addr-by-name", &self.master_name],
            ) {
                let mut parts = reply.split('\n');
                if let (Some(ip), Some(port)) = (parts.next(), parts.next()) {
                    if let (Ok(ip), Ok(port)) = (ip.parse(), port.parse()) {
                        return Ok(SocketAddr::new(ip, port));
                    }
                }
            }
        }
        Err(Error::Io {
            what: "asking the sentinels for the primary",
            source: std::io::Error::other("no sentinel answered"),
        })
    }

    /// Kills the current primary (SIGKILL) and returns its address.
    pub fn kill_primary(&mut self) -> Result<SocketAddr, Error> {
        let primary = self.primary()?;
        if let Some(n) = self.nodes.iter_mut().find(|n| n.addr() == primary) {
            n.kill();
        }
        Ok(primary)
    }

    /// Waits until the sentinels report a primary other than `old`.
    pub fn wait_failover(&self, old: SocketAddr, limit: Duration) -> Result<SocketAddr, Error> {
        let start = Instant::now();
        loop {
            if let Ok(now) = self.primary() {
                if now != old {
                    return Ok(now);
                }
            }
            if start.elapsed() > limit {
                return Err(Error::NotReady {
                    port: old.port(),
                    waited: start.elapsed(),
                    log: "no failover".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The directory of the data node on `addr` (its log lives there).
    pub fn node_dir(&self, addr: SocketAddr) -> Option<&std::path::Path> {
        self.nodes
            .iter()
            .chain(&self.sentinels)
            .find(|n| n.addr() == addr)
            .map(|n| n.dir.path())
    }
}

/// Sends one command over RESP and returns the reply flattened to lines
/// (bulk strings and simple strings; arrays one element per line).
fn command(addr: SocketAddr, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    read_reply(&mut r, &mut out, 0)?;
    Ok(out.join("\n"))
}

fn read_reply(r: &mut impl BufRead, out: &mut Vec<String>, depth: usize) -> std::io::Result<()> {
    if depth > 8 {
        return Err(std::io::Error::other("reply nested too deep"));
    }
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => out.push(rest.to_owned()),
        "-" => return Err(std::io::Error::other(rest.to_owned())),
        "$" => {
            let n: i64 = rest.parse().map_err(std::io::Error::other)?;
            if n >= 0 {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                out.push(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(std::io::Error::other)?;
            for _ in 0..n.max(0) {
                read_reply(r, out, depth + 1)?;
            }
        }
        _ => return Err(std::io::Error::other(format!("unexpected reply {line:?}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_primary_is_replaced_by_its_replica() {
        let mut set = SentinelSet::start("wxmaster").expect("redis-server must be installed");
        let old = set.primary().unwrap();
        assert_eq!(set.sentinel_addrs().len(), 3);
        let killed = set.kill_primary().unwrap();
        assert_eq!(killed, old);
        let new = set
            .wait_failover(old, Duration::from_secs(30))
            .expect("failover");
        assert_ne!(new, old);
        assert!(ping(new).is_ok());
        let role = command(new, &["ROLE"]).unwrap();
        assert!(role.starts_with("master"), "{role}");
    }
}
