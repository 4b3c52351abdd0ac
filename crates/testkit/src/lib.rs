//! Throwaway local infrastructure for tests and the demo: real `redis-server`
//! processes on free loopback ports, each in its own temporary directory.
//!
//! Every test of wxtoken talks to a real Redis; this crate is how it gets one
//! (a single server, a Sentinel set: [`SentinelSet`], or a Redis Cluster:
//! [`ClusterSet`]). It never assumes a server on 6379 and never silently
//! skips: when `redis-server` (or, for a cluster, `redis-cli`) is missing,
//! starting fails with a message saying how to install it. It must not grow knowledge of wxtoken's key
//! schema or protocol; it only runs servers.

mod cluster;
mod sentinel;

pub use cluster::{redis_cli_binary, ClusterSet, NODE_TIMEOUT, SLOTS};
pub use sentinel::SentinelSet;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What can go wrong starting a local Redis.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `redis-server` binary is not installed.
    #[error(
        "`redis-server` was not found on PATH (or in $REDIS_SERVER). Install it: \
         `sudo apt-get install -y redis-server` on Debian/Ubuntu, `brew install redis` on macOS"
    )]
    NotInstalled,
    /// The `redis-cli` binary (which forms a [`ClusterSet`]) is not
    /// installed.
    #[error(
        "`redis-cli` was not found on PATH (or in $REDIS_CLI); it forms the test Redis Cluster. Install it: \
         `sudo apt-get install -y redis-tools` on Debian/Ubuntu (the redis-server package pulls it in), \
         `brew install redis` on macOS"
    )]
    CliNotInstalled,
    /// Spawning or talking to the process failed.
    #[error("redis-server: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The server did not answer PING in time.
    #[error("redis-server on port {port} did not become ready within {waited:?}; its log:\n{log}")]
    NotReady {
        port: u16,
        waited: Duration,
        log: String,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Locates the `redis-server` binary: `$REDIS_SERVER`, else `PATH`, else the
/// usual system locations (Debian installs to /usr/bin).
pub fn redis_server_binary() -> Result<PathBuf, Error> {
    if let Some(explicit) = std::env::var_os("REDIS_SERVER") {
        let p = PathBuf::from(explicit);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::NotInstalled)
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or(Error::NotInstalled)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding a free port"))?;
    let port = l
        .local_addr()
        .map_err(io_err("reading a free port"))?
        .port();
    Ok(port)
}

/// A `redis-server` child process, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// The TLS port, if the server speaks TLS ([`RedisServer::start_tls`]).
    tls_port: Option<u16>,
    /// Arguments given after the defaults (kept for [`RedisServer::restart`]).
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

/// How [`RedisServer::start_tls`] runs TLS: the server's certificate and
/// key, the CA it checks client certificates against, and whether it
/// requires one.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// PEM certificate the server presents.
    pub cert_file: PathBuf,
    /// Its PEM private key.
    pub key_file: PathBuf,
    /// PEM CA certificate client certificates must chain to.
    pub ca_file: PathBuf,
    /// `--tls-auth-clients yes` (mutual TLS) or `no`.
    pub auth_clients: bool,
}

impl RedisServer {
    /// Starts a fresh, empty, non-persistent Redis on a free loopback port.
    pub fn start() -> Result<RedisServer, Error> {
        Self::start_on(free_port()?)
    }

    /// Starts a fresh Redis on `port` (used to restart "the same" server).
    pub fn start_on(port: u16) -> Result<RedisServer, Error> {
        Self::start_with(port, None, Vec::new())
    }

    /// Starts a fresh Redis on a free port with `args` after the defaults
    /// (which are `--save "" --appendonly no`), e.g.
    /// `["--maxmemory-policy", "allkeys-lru"]` or `["--appendonly", "yes"]`.
    pub fn start_with_args(args: &[&str]) -> Result<RedisServer, Error> {
        Self::start_with(
            free_port()?,
            None,
            args.iter().map(|a| (*a).to_owned()).collect(),
        )
    }

    /// Starts a fresh Redis that speaks TLS on [`RedisServer::tls_port`]
    /// (see [`RedisServer::tls_url`]) with `tls`, and `args` after the
    /// defaults. The plain-text port ([`RedisServer::url`]) stays open on
    /// loopback for the test's own inspection and for readiness checks; the
    /// code under test is given the TLS URL only.
    pub fn start_tls(tls: &TlsServer, args: &[&str]) -> Result<RedisServer, Error> {
        let tls_port = free_port()?;
        let mut extra: Vec<String> = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            tls.cert_file.display().to_string(),
            "--tls-key-file".into(),
            tls.key_file.display().to_string(),
            "--tls-ca-cert-file".into(),
            tls.ca_file.display().to_string(),
            "--tls-auth-clients".into(),
            if tls.auth_clients { "yes" } else { "no" }.into(),
        ];
        extra.extend(args.iter().map(|a| (*a).to_owned()));
        Self::start_with(free_port()?, Some(tls_port), extra)
    }

    fn start_with(
        port: u16,
        tls_port: Option<u16>,
        extra: Vec<String>,
    ) -> Result<RedisServer, Error> {
        let dir = tempfile::Builder::new()
            .prefix("wxtoken-redis-")
            .tempdir()
            .map_err(io_err("creating a temporary directory"))?;
        let mut server = RedisServer {
            child: None,
            port,
            tls_port,
            extra,
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let bin = redis_server_binary()?;
        let log = self.log_path();
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("spawning"))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), Error> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if ping(self.addr()).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::NotReady {
            port: self.port,
            waited: limit,
            log: std::fs::read_to_string(self.log_path()).unwrap_or_default(),
        })
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS port, if started with [`RedisServer::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://127.0.0.1:tls_port` (panics if the server has no TLS port).
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}",
            self.tls_port.expect("started with RedisServer::start_tls")
        )
    }

    /// The server's working directory (its log lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL): all data is lost, clients see errors.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.spawn()
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(feature = "tls")]
mod pki;
#[cfg(feature = "tls")]
pub use pki::TestPki;

/// One synchronous PING over RESP, so readiness needs no Redis client library.
fn ping(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.starts_with("+PONG") {
        Ok(())
    } else {
        Err(io::Error::other(format!("unexpected reply {line:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_dies_with_drop() {
        let mut server = RedisServer::start().expect("redis-server must be installed for tests");
        assert!(ping(server.addr()).is_ok());
        let port = server.port();
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert!(ping(server.addr()).is_ok());
        let addr = server.addr();
        drop(server);
        assert!(ping(addr).is_err(), "server must be gone after drop");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_tls_server_starts_with_the_test_pki() {
        let pki = TestPki::generate().unwrap();
        let server = RedisServer::start_tls(&pki.server(true), &[]).unwrap();
        assert!(ping(server.addr()).is_ok());
        assert!(server.tls_url().starts_with("rediss://127.0.0.1:"));
        assert_ne!(server.tls_port(), Some(server.port()));
    }

    #[test]
    fn extra_arguments_reach_the_server() {
        let server = RedisServer::start_with_args(&["--maxmemory-policy", "allkeys-lru"]).unwrap();
        assert!(ping(server.addr()).is_ok());
    }

    #[test]
    fn missing_binary_says_how_to_install() {
        let msg = Error::NotInstalled.to_string();
        assert!(msg.contains("apt-get install -y redis-server"), "{msg}");
    }
}
