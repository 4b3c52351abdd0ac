//! [`Options`]: the namespace, the timing knobs of the cache and the TLS
//! files of a `rediss://` URL, with defaults and builder methods. Plain
//! data: it must not read files (the TLS files are read by
//! [`Client::connect`](crate::Client::connect)), environment variables or
//! anything else — the business server owns its configuration.

use std::path::PathBuf;
use std::time::Duration;
use wxtoken_connect::TlsFiles;

/// How a [`Client`](crate::Client) reads and caches tokens.
///
/// Build it from [`Options::default`] with the builder methods, so that new
/// fields can be added without breaking callers:
///
/// ```
/// use std::time::Duration;
/// let options = wxtoken_client::Options::default()
///     .namespace("prod")
///     .wait_for_token(Duration::from_secs(10));
/// assert_eq!(options.namespace, "prod");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Key namespace the refreshers write under. Default `"wxtoken"`.
    pub namespace: String,
    /// How long a read waits when no value is stored yet (a refresher that
    /// just started, or Redis that just lost its data) and no unexpired value
    /// is cached to serve instead. Default 5 s.
    pub wait_for_token: Duration,
    /// While the update-event subscription is down, cached values older than
    /// this are read again from Redis. Keep it well under WeChat's 5-minute
    /// overlap of old and new tokens. Default 30 s.
    pub poll_interval: Duration,
    /// A cached value this close to its expiry is read again from Redis
    /// instead of being served. Default 5 s.
    pub expiry_margin: Duration,
    /// Bound on one Redis round trip and on one connection attempt, so that a
    /// stalled Redis turns into an error instead of a hung read. Default 2 s.
    pub redis_timeout: Duration,
    /// TLS files of a `rediss://` URL: the CA the server's certificate must
    /// chain to (default: the system's root certificates), and a client
    /// certificate and key for mutual TLS. Must be empty with `redis://`.
    pub tls: TlsFiles,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: wxtoken_schema::DEFAULT_NAMESPACE.to_owned(),
            wait_for_token: Duration::from_secs(5),
            poll_interval: Duration::from_secs(30),
            expiry_margin: Duration::from_secs(5),
            redis_timeout: Duration::from_secs(2),
            tls: TlsFiles::default(),
        }
    }
}

impl Options {
    /// Sets [`Options::namespace`].
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`Options::wait_for_token`].
    pub fn wait_for_token(mut self, wait: Duration) -> Self {
        self.wait_for_token = wait;
        self
    }

    /// Sets [`Options::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`Options::expiry_margin`].
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = margin;
        self
    }

    /// Sets [`Options::redis_timeout`].
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// Sets [`TlsFiles::ca_file`] of [`Options::tls`]: the PEM CA file the
    /// Redis server's certificate must chain to (instead of the system's
    /// roots).
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Sets the client certificate and key (PEM files) of [`Options::tls`],
    /// for a Redis that requires client certificates (mutual TLS).
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.cert_file = Some(cert.into());
        self.tls.key_file = Some(key.into());
        self
    }
}
