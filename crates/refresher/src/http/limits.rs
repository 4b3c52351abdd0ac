//! What keeps the HTTP surface from starving the refresh work: a cap on
//! open connections and deadlines on every connection. The deadlines are
//! hyper's; this module picks the values and owns the cap.
//!
//! - **Connection cap.** [`accept`] takes one of [`connection_cap`] slots
//!   *before* it accepts a connection; the slot is given back when the
//!   connection's task ends. Beyond the cap, new connections wait in the
//!   kernel's listen backlog: they cost this process no file descriptor,
//!   and the listener does not spin. The cap is at most [`MAX_CONNECTIONS`]
//!   and at most a quarter of the process's open-file limit, so Redis and
//!   WeChat connections always find a descriptor.
//! - **Header-read and idle timeouts** (hyper's `header_read_timeout`). hyper
//!   starts it whenever it waits for a request head: when the connection is
//!   accepted, and again each time a kept-alive connection goes idle after
//!   a response. Bytes that arrive do not extend it; only a complete head
//!   stops it. So a connection that does not send a complete head within
//!   [`HEADER_READ_TIMEOUT`] is closed, whether it is new, trickling, or
//!   kept alive with nothing to ask: the idle keep-alive timeout
//!   ([`IDLE_TIMEOUT`]) is the same timer.
//! - **Request timeout.** [`request_timeout`] answers 503 when a handler
//!   (body read included) runs past [`REQUEST_TIMEOUT`].
//! - **Connection lifetime.** A connection takes no new request after
//!   [`CONNECTION_LIFETIME`] (hyper's graceful shutdown: the request under
//!   way is answered with `Connection: close`), and is cut if that request
//!   is not answered and taken within [`REQUEST_TIMEOUT`] +
//!   [`WRITE_TIMEOUT`]. This bounds a client that asks for a large response
//!   and never reads it. The same grace applies when the replica shuts
//!   down, under the server's own, shorter, grace period.
//!
//! These are constants, not `[http]` settings. It must not parse HTTP (hyper
//! does), and must not log at more than debug level per connection: anyone
//! who can reach the port can open connections.

use axum::extract::{ConnectInfo, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The most connections served at once (fewer under a low open-file limit).
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// A request head must be complete this long after the connection was
/// accepted, or after the previous response on a kept-alive connection.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept-alive connection with no request under way is closed after this.
/// hyper has no separate idle timeout: its header-read timer also runs
/// while a kept-alive connection waits for its next request.
pub(crate) const IDLE_TIMEOUT: Duration = HEADER_READ_TIMEOUT;
/// The most a request may take once its head is read: body and handler.
/// (The status page of 100,000 credentials takes seconds.)
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// After its lifetime (or at shutdown), a connection's last request has
/// [`REQUEST_TIMEOUT`] and then this long for its response to be taken.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection takes no new request after this.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after an accept error that is not the peer's (e.g. `EMFILE`).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The connection cap for this process: [`MAX_CONNECTIONS`], or a quarter
/// of the open-file limit if that is lower.
pub(crate) fn connection_cap() -> usize {
    cap_for(open_file_limit())
}

fn cap_for(open_files: Option<u64>) -> usize {
    match open_files {
        Some(n) => usize::try_from(n / 4)
            .unwrap_or(MAX_CONNECTIONS)
            .clamp(1, MAX_CONNECTIONS),
        None => MAX_CONNECTIONS,
    }
}

/// The soft `RLIMIT_NOFILE` (Linux: `/proc/self/limits`); `None` when
/// unlimited or unknown.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits for a free slot, then accepts a connection. While no slot is
/// free, nothing is accepted. Cancel-safe.
pub(crate) async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    let Ok(slot) = slots.clone().acquire_owned().await else {
        // The semaphore is never closed.
        return std::future::pending().await;
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return (stream, peer, slot),
            Err(e) if is_peer_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors or the like: wait rather than spin.
                tracing::warn!(error = %e, "HTTP surface: accepting a connection failed; pausing for {ACCEPT_ERROR_PAUSE:?}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The peer of a connection, for handlers (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How every connection is served: hyper's HTTP/1.1 settings and the
/// bounds on a connection's life.
pub(crate) struct Connections {
    http: http1::Builder,
    /// No new request after this.
    lifetime: Duration,
    /// Then (or at shutdown), cut after this.
    linger: Duration,
}

impl Connections {
    /// The replica's settings (the constants above).
    pub(crate) fn new() -> Connections {
        Connections::with(
            HEADER_READ_TIMEOUT,
            CONNECTION_LIFETIME,
            REQUEST_TIMEOUT + WRITE_TIMEOUT,
        )
    }

    fn with(header_read_timeout: Duration, lifetime: Duration, linger: Duration) -> Connections {
        let mut http = http1::Builder::new();
        // The timer makes the header-read timeout effective.
        http.timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .keep_alive(true);
        Connections {
            http,
            lifetime,
            linger,
        }
    }

    /// Serves one accepted connection until it ends, its lifetime is over
    /// or `shutdown` is cancelled (then: graceful shutdown, bounded).
    pub(crate) async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        router: Router,
        shutdown: CancellationToken,
    ) {
        let router = TowerToHyperService::new(router);
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(Peer(peer)));
            router.call(req)
        });
        let conn = self.http.serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        let ended = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = shutdown.cancelled() => None,
            _ = tokio::time::sleep(self.lifetime) => None,
        };
        let ended = match ended {
            Some(r) => r,
            None => {
                // An idle connection closes now; one with a request under
                // way answers it with `Connection: close`.
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(self.linger, conn).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!(%peer, "closing an HTTP connection: its last request was not answered and taken in time");
                        return;
                    }
                }
            }
        };
        if let Err(e) = ended {
            let why = if e.is_timeout() {
                "no complete request head within the header timeout"
            } else {
                "connection error"
            };
            tracing::debug!(%peer, error = %e, "closing an HTTP connection: {why}");
        }
    }
}

/// Middleware: a handler that runs past [`REQUEST_TIMEOUT`] is dropped and
/// answered 503.
pub(crate) async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (CONTENT_TYPE, "text/plain; charset=utf-8"),
                (CACHE_CONTROL, "no-store"),
            ],
            format!("the request took longer than {REQUEST_TIMEOUT:?}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_cap_leaves_most_file_descriptors_to_the_rest() {
        assert_eq!(cap_for(None), MAX_CONNECTIONS);
        assert_eq!(cap_for(Some(1_048_576)), MAX_CONNECTIONS);
        assert_eq!(cap_for(Some(1024)), MAX_CONNECTIONS);
        assert_eq!(cap_for(Some(64)), 16);
        assert_eq!(cap_for(Some(2)), 1);
        assert!((1..=MAX_CONNECTIONS).contains(&connection_cap()));
    }

    const HEADER: Duration = Duration::from_millis(300);

    fn app() -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/peer",
                get(|ConnectInfo(p): ConnectInfo<Peer>| async move { p.to_string() }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "slow\n"
                }),
            )
            .route("/huge", get(|| async { vec![b'x'; 64 << 20] }))
    }

    /// One connection from a client to `conns` serving [`app`]; the task
    /// returns how long the connection was served.
    async fn one(
        conns: Connections,
        shutdown: CancellationToken,
    ) -> (TcpStream, tokio::task::JoinHandle<Duration>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let served = tokio::spawn(async move {
            let started = Instant::now();
            conns.serve(stream, peer, app(), shutdown).await;
            started.elapsed()
        });
        (client, served)
    }

    /// Reads one response with a body ending in `end`.
    async fn response(s: &mut TcpStream, end: &[u8]) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(end) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response: {got:?}");
            got.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Reads until the server closes; returns what it sent and when.
    async fn until_closed(s: &mut TcpStream) -> (usize, Instant) {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        (rest.len(), Instant::now())
    }

    fn short() -> Connections {
        Connections::with(HEADER, Duration::from_secs(30), Duration::from_secs(30))
    }

    #[tokio::test]
    async fn a_half_sent_head_is_closed_after_the_header_timeout_even_if_it_trickles() {
        let (mut c, served) = one(short(), CancellationToken::new()).await;
        let opened = Instant::now();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        for _ in 0..5 {
            tokio::time::sleep(HEADER / 4).await;
            // The peer may already have closed: then the write fails.
            if c.write_all(b"X-Trickle: 1\r\n").await.is_err() {
                break;
            }
        }
        let (bytes, closed) = until_closed(&mut c).await;
        assert_eq!(bytes, 0, "no response to half a request");
        let after = closed - opened;
        assert!(after >= HEADER && after < HEADER * 3, "{after:?}");
        assert!(served.await.unwrap() < HEADER * 3);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_closed_when_idle_for_the_header_timeout() {
        let (mut c, served) = one(short(), CancellationToken::new()).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let first = response(&mut c, b"ok\n").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        // Kept alive: a second request within the timeout is served, and
        // the timeout runs again from its response.
        tokio::time::sleep(HEADER * 2 / 3).await;
        c.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let local = c.local_addr().unwrap().to_string();
        let second = response(&mut c, local.as_bytes()).await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        let answered = Instant::now();
        let (bytes, closed) = until_closed(&mut c).await;
        assert_eq!(bytes, 0);
        let idle = closed - answered;
        assert!(idle >= HEADER * 9 / 10 && idle < HEADER * 3, "{idle:?}");
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_never_takes_its_response_is_cut() {
        let lifetime = Duration::from_millis(200);
        let linger = Duration::from_millis(300);
        let conns = Connections::with(Duration::from_secs(30), lifetime, linger);
        let (mut c, served) = one(conns, CancellationToken::new()).await;
        c.write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let served = tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the stalled connection is cut")
            .unwrap();
        assert!(served >= lifetime + linger, "{served:?}");
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_under_way_finish_then_closes() {
        let shutdown = CancellationToken::new();
        let (mut c, served) = one(short(), shutdown.clone()).await;
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        let res = response(&mut c, b"slow\n").await;
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        assert!(res.to_lowercase().contains("connection: close"), "{res}");
        let (bytes, _) = until_closed(&mut c).await;
        assert_eq!(bytes, 0);
        let served = served.await.unwrap();
        assert!(served < Duration::from_secs(2), "{served:?}");
        // An idle connection closes at once.
        let shutdown = CancellationToken::new();
        let (mut c, served) = one(short(), shutdown.clone()).await;
        shutdown.cancel();
        let (bytes, _) = until_closed(&mut c).await;
        assert_eq!(bytes, 0);
        assert!(served.await.unwrap() < HEADER);
    }
}
