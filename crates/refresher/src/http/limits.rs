//! What keeps the HTTP surface from starving the refresh work: a cap on
//! open connections and deadlines on every connection.
//!
//! - **Connection cap.** [`Limited`] takes one of [`connection_cap`] slots
//!   *before* it accepts a connection and gives it back when the connection
//!   is dropped. Beyond the cap, new connections wait in the kernel's listen
//!   backlog: they cost this process no file descriptor, and the listener
//!   does not spin. The cap is at most [`MAX_CONNECTIONS`] and at most a
//!   quarter of the process's open-file limit, so Redis and WeChat
//!   connections always find a descriptor.
//! - **Deadlines** ([`Guarded`], at the byte level, under hyper). The head of
//!   the first request must be complete [`HEADER_READ_TIMEOUT`] after the
//!   connection was accepted, the head of a later request that long after
//!   its first byte; a request's body must arrive within its
//!   [`REQUEST_TIMEOUT`]; a kept-alive connection between requests is closed
//!   after [`IDLE_TIMEOUT`]; a response the client does not take within
//!   [`WRITE_TIMEOUT`] is cut. Each deadline is fixed when its phase starts,
//!   so trickling bytes never extends it: a connection lives long only by
//!   making requests that are answered.
//! - **Handler time.** [`request_timeout`] answers 503 when a handler (body
//!   read included) runs past [`REQUEST_TIMEOUT`].
//!
//! These are constants, not `[http]` settings. It must not parse HTTP
//! beyond finding where a request head ends (hyper does the parsing), and
//! must not log at more than debug level per connection: anyone who can
//! reach the port can open connections.

use axum::extract::connect_info::Connected;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The most connections served at once (fewer under a low open-file limit).
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// The head of a request must be complete this long after the connection
/// was accepted (first request) or after its first byte (later requests).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a request may take once its head is read: body and handler.
/// (The status page of 100,000 credentials takes seconds.)
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A kept-alive connection with no request under way is closed after this.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// A response must be taken by the client within this of its first byte.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Margin by which the byte-level body deadline trails [`REQUEST_TIMEOUT`],
/// so a slow handler is answered 503 before its connection is cut.
const REQUEST_GRACE: Duration = Duration::from_secs(5);
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

/// The listener with the connection cap.
pub(crate) struct Limited {
    listener: TcpListener,
    slots: Arc<Semaphore>,
}

impl Limited {
    pub(crate) fn new(listener: TcpListener, cap: usize) -> Limited {
        Limited {
            listener,
            slots: Arc::new(Semaphore::new(cap)),
        }
    }
}

impl Listener for Limited {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        // The slot first: while none is free, nothing is accepted.
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => return (Guarded::new(stream, slot, peer), peer),
                Err(e) if is_peer_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or the like: wait rather than spin.
                    tracing::warn!(error = %e, "HTTP surface: accepting a connection failed; pausing for {ACCEPT_ERROR_PAUSE:?}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
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

impl Connected<IncomingStream<'_, Limited>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Limited>) -> Peer {
        Peer(*stream.remote_addr())
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

/// Where a connection is, and so which deadline applies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Accepted at `at`, nothing read yet: the first head counts from
    /// there.
    Opened { at: Instant },
    /// Reading a request head, counted from `since`.
    Head { since: Instant, scan: HeadEnd },
    /// The head is complete; the body is read and the request handled.
    Handling { since: Instant },
    /// Writing a response that started at `since`; `last` is the latest
    /// write.
    Responding { since: Instant, last: Instant },
}

/// The deadlines of one connection, fed with what is read and written.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Deadlines {
    phase: Phase,
}

impl Deadlines {
    fn new(accepted: Instant) -> Deadlines {
        Deadlines {
            phase: Phase::Opened { at: accepted },
        }
    }

    /// `bytes` were read at `now`.
    fn read(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        let (since, mut scan) = match self.phase {
            Phase::Handling { .. } => return,
            Phase::Head { since, scan } => (since, scan),
            Phase::Opened { at } => (at, HeadEnd::default()),
            // Bytes after a response: the next request (or the rest of a
            // body the handler did not read; then the deadline is early,
            // never missing).
            Phase::Responding { .. } => (now, HeadEnd::default()),
        };
        self.phase = if scan.feed(bytes) {
            Phase::Handling { since }
        } else {
            Phase::Head { since, scan }
        };
    }

    /// A write (of at least one byte, or one that is waiting) at `now`.
    fn wrote(&mut self, now: Instant) {
        self.phase = match self.phase {
            Phase::Responding { since, .. } => Phase::Responding { since, last: now },
            _ => Phase::Responding {
                since: now,
                last: now,
            },
        };
    }

    /// When a read that is waiting gives up, and why.
    fn read_deadline(&self) -> (Instant, &'static str) {
        match self.phase {
            Phase::Opened { at } => (
                at + HEADER_READ_TIMEOUT,
                "no request head within the header timeout",
            ),
            Phase::Head { since, .. } => (
                since + HEADER_READ_TIMEOUT,
                "request head not complete within the header timeout",
            ),
            Phase::Handling { since } => (
                since + HEADER_READ_TIMEOUT + REQUEST_TIMEOUT + REQUEST_GRACE,
                "request body not complete within the request timeout",
            ),
            Phase::Responding { last, .. } => (last + IDLE_TIMEOUT, "idle after a response"),
        }
    }

    /// When a write that is waiting gives up.
    fn write_deadline(&self, now: Instant) -> Instant {
        match self.phase {
            Phase::Responding { since, .. } => since + WRITE_TIMEOUT,
            _ => now + WRITE_TIMEOUT,
        }
    }
}

/// Finds the end of a request head: an empty line (`\r\n\r\n` or `\n\n`)
/// after some text (blank lines before the request line do not count).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct HeadEnd {
    text: bool,
    newline: bool,
}

impl HeadEnd {
    /// Feeds `bytes`; true once the head has ended.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\n' if self.newline && self.text => return true,
                b'\n' => self.newline = true,
                b'\r' => {}
                _ => {
                    self.text = true;
                    self.newline = false;
                }
            }
        }
        false
    }
}

/// A timer re-armed only when its deadline changes.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
}

impl Timer {
    fn new(deadline: Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: deadline,
        }
    }

    /// Ready once `deadline` has passed; otherwise wakes the task then.
    fn poll_passed(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        if self.armed != deadline {
            self.sleep.as_mut().reset(deadline);
            self.armed = deadline;
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// An accepted connection: holds its slot until dropped and fails a read
/// or write that waits past its deadline (hyper then closes it).
pub(crate) struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    peer: SocketAddr,
    deadlines: Deadlines,
    read_timer: Timer,
    write_timer: Timer,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, peer: SocketAddr) -> Guarded {
        let now = Instant::now();
        let deadlines = Deadlines::new(now);
        let (read_by, _) = deadlines.read_deadline();
        Guarded {
            stream,
            _slot: slot,
            peer,
            deadlines,
            read_timer: Timer::new(read_by),
            write_timer: Timer::new(now + WRITE_TIMEOUT),
        }
    }

    fn timed_out(&self, why: &'static str) -> io::Error {
        tracing::debug!(peer = %self.peer, "closing an HTTP connection: {why}");
        io::Error::new(io::ErrorKind::TimedOut, why)
    }

    /// The outcome of a write, with the write deadline applied.
    fn on_write(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let now = Instant::now();
        self.deadlines.wrote(now);
        // A read waiting since before the response keeps its (later)
        // deadline unless re-armed here: hyper may not poll it again.
        let (read_by, _) = self.deadlines.read_deadline();
        if self.read_timer.poll_passed(cx, read_by).is_ready() {
            cx.waker().wake_by_ref();
        }
        match res {
            Poll::Pending => {
                let deadline = self.deadlines.write_deadline(now);
                match self.write_timer.poll_passed(cx, deadline) {
                    Poll::Ready(()) => Poll::Ready(Err(self.timed_out(
                        "the client did not take the response within the write timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => ready,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().get(before..).unwrap_or_default();
                this.deadlines.read(read, Instant::now());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let (deadline, why) = this.deadlines.read_deadline();
                match this.read_timer.poll_passed(cx, deadline) {
                    Poll::Ready(()) => Poll::Ready(Err(this.timed_out(why))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.on_write(cx, res)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.on_write(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_most_file_descriptors_to_the_rest() {
        assert_eq!(cap_for(None), MAX_CONNECTIONS);
        assert_eq!(cap_for(Some(1_048_576)), MAX_CONNECTIONS);
        assert_eq!(cap_for(Some(1024)), MAX_CONNECTIONS);
        assert_eq!(cap_for(Some(64)), 16);
        assert_eq!(cap_for(Some(2)), 1);
        assert!((1..=MAX_CONNECTIONS).contains(&connection_cap()));
    }

    #[test]
    fn head_ends_at_the_first_empty_line_after_text() {
        let ends = |chunks: &[&[u8]]| {
            let mut s = HeadEnd::default();
            chunks.iter().any(|c| s.feed(c))
        };
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\nHost: x\n\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: x\r", b"\n", b"\r", b"\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]));
        assert!(!ends(&[b"\r\n\r\n\r\n", b"GET / HTTP/1.1\r\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nA: \r\r\nB: y\r\n"]));
    }

    #[test]
    fn trickled_bytes_never_extend_a_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = Deadlines::new(t0);
        // The first head counts from the accept, however late its bytes.
        assert_eq!(d.read_deadline().0, t0 + HEADER_READ_TIMEOUT);
        d.read(b"GET / HTTP/1.1\r\n", t0 + 3 * s);
        assert_eq!(d.read_deadline().0, t0 + HEADER_READ_TIMEOUT);
        d.read(b"Host: x\r\n", t0 + 4 * s);
        assert_eq!(d.read_deadline().0, t0 + HEADER_READ_TIMEOUT);
        // Head complete: the request has its own, longer, deadline.
        d.read(b"\r\n", t0 + 4 * s);
        assert_eq!(
            d.read_deadline().0,
            t0 + HEADER_READ_TIMEOUT + REQUEST_TIMEOUT + REQUEST_GRACE
        );
        d.read(b"body bytes", t0 + 10 * s);
        assert!(matches!(d.phase, Phase::Handling { since } if since == t0));
        // The response: writes count from its first byte, reads go idle.
        d.wrote(t0 + 11 * s);
        d.wrote(t0 + 12 * s);
        assert_eq!(d.write_deadline(t0 + 12 * s), t0 + 11 * s + WRITE_TIMEOUT);
        assert_eq!(d.read_deadline().0, t0 + 12 * s + IDLE_TIMEOUT);
        // A kept-alive request: its head counts from its first byte.
        d.read(b"GET /healthz HTTP/1.1\r\n", t0 + 30 * s);
        assert_eq!(d.read_deadline().0, t0 + 30 * s + HEADER_READ_TIMEOUT);
        d.read(b"Host: x\r\n", t0 + 33 * s);
        assert_eq!(d.read_deadline().0, t0 + 30 * s + HEADER_READ_TIMEOUT);
        d.read(b"\r\n", t0 + 34 * s);
        d.wrote(t0 + 35 * s);
        assert_eq!(d.write_deadline(t0 + 35 * s), t0 + 35 * s + WRITE_TIMEOUT);
        // Nothing read: an empty read changes nothing.
        let before = d;
        d.read(b"", t0 + 40 * s);
        assert_eq!(d, before);
    }
}
