//! The one place wxtoken builds its `redis::Client`: the refresher, the
//! client crate and the operator's commands all call [`client`], so a URL
//! and TLS files mean the same thing everywhere.
//!
//! - `redis://…` is plain TCP; naming TLS files with it is an error (a config
//!   that names a CA but talks plain text is a mistake, not a preference).
//! - `rediss://…` is TLS (rustls, the `ring` crypto provider, installed
//!   once per process if no other provider was installed first). The server
//!   certificate is checked against the system's root certificates, or, when
//!   a CA file is given, against that CA only. `rediss://…/#insecure` (no
//!   check at all) is refused.
//! - A client certificate and key (both or neither) give mutual TLS.
//! - `redis[s]+sentinel://…` is a primary found through Redis Sentinel
//!   ([`Sentinel`]); `redis[s]+cluster://host:port,host:port…` is a Redis
//!   Cluster ([`cluster`]), with the same TLS files for every node.
//!
//! [`Managed`] is the connection the refresher and the client use, and
//! [`Con`] the handle each step runs on (a single server's, or a cluster's,
//! which splits pipelines across hash slots).
//!
//! Files are read here, bounded ([`MAX_TLS_FILE`]), regular files only, and
//! parsed before any connection is made; errors name the file and say what
//! is wrong, never what the file holds. The URL is never put in an error (it
//! may carry a password).
//!
//! [`explain`] turns a connection failure caused by TLS (an untrusted server
//! certificate, a server that requires or refuses the client certificate)
//! into a sentence naming the file to look at.

pub mod cluster;
mod con;
mod managed;
mod sentinel;

pub use cluster::Cluster;
pub use con::{ClusterCon, Con};
pub use managed::{Managed, Target};
pub use sentinel::Sentinel;

use redis::{ConnectionAddr, IntoConnectionInfo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest TLS file read (a CA bundle of a few hundred certificates fits).
pub const MAX_TLS_FILE: u64 = 1024 * 1024;

/// The TLS files of a `rediss://` connection, all optional: no CA file means
/// the system's root certificates; a client certificate and its key (both or
/// neither) give mutual TLS. Paths only: nothing is read until [`client`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificate(s) the server's certificate must chain
    /// to (instead of the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) shown to the server.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether no file is named.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
}

/// Which of the [`TlsFiles`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// [`TlsFiles::ca_file`].
    Ca,
    /// [`TlsFiles::cert_file`].
    Cert,
    /// [`TlsFiles::key_file`].
    Key,
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFile::Ca => "TLS CA file",
            TlsFile::Cert => "TLS client certificate file",
            TlsFile::Key => "TLS client key file",
        })
    }
}

/// Why no client could be built. Never holds the URL or file contents.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("not a usable Redis URL ({kind:?}; the value is not shown, it may hold a password); expected redis[s]://[user:password@]host:port[/db]")]
    Url {
        /// What the Redis client said, without the URL.
        kind: redis::ErrorKind,
    },
    /// A TLS file cannot be read or does not hold what it should.
    #[error("{which} {}: {reason}", path.display())]
    File {
        /// Which file.
        which: TlsFile,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL and the TLS files do not go together (`field` is the file
    /// concerned, if one).
    #[error("{message}")]
    Mismatch {
        /// The file the mismatch is about.
        which: Option<TlsFile>,
        /// What does not go together.
        message: String,
    },
    /// No sentinel named a primary that answered as one.
    #[error("Redis Sentinel: no primary found for master {master:?}: {reason}")]
    Sentinel {
        /// The master's name.
        master: String,
        /// The last sentinel's or node's answer.
        reason: String,
    },
}

/// Builds the client for `url` with `tls`, reading and checking the TLS
/// files. Connects to nothing.
pub fn client(url: &str, tls: &TlsFiles) -> Result<redis::Client, ConnectError> {
    let info = url
        .into_connection_info()
        .map_err(|e| ConnectError::Url { kind: e.kind() })?;
    match info.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(ConnectError::Mismatch {
                which: None,
                message: "rediss://…#insecure (no certificate check) is not supported; give the server's CA file instead".into(),
            })
        }
        ConnectionAddr::TcpTls { .. } => {}
        _ if tls.is_empty() => {
            return redis::Client::open(info).map_err(|e| ConnectError::Url { kind: e.kind() })
        }
        _ => {
            let which = [
                (TlsFile::Ca, &tls.ca_file),
                (TlsFile::Cert, &tls.cert_file),
                (TlsFile::Key, &tls.key_file),
            ]
            .into_iter()
            .find_map(|(w, p)| p.as_ref().map(|_| w));
            return Err(ConnectError::Mismatch {
                which,
                message: "TLS files are given but the Redis URL is not rediss:// (plain text); use rediss:// or remove the TLS files".into(),
            });
        }
    }
    install_crypto_provider();
    let certs = read_all(tls)?;
    if certs.root_cert.is_none() && certs.client_tls.is_none() {
        return redis::Client::open(info).map_err(|e| ConnectError::Url { kind: e.kind() });
    }
    redis::Client::build_with_tls(info, certs).map_err(|e| ConnectError::Mismatch {
        which: None,
        // The files were parsed above; what is left is not about their content.
        message: format!("cannot use the TLS files ({:?})", e.kind()),
    })
}

/// Reads and checks the TLS files (as [`client`] does) without a URL: for
/// config validation.
pub fn check_files(tls: &TlsFiles) -> Result<(), ConnectError> {
    read_all(tls).map(drop)
}

/// Installs rustls's `ring` provider as the process default, unless a
/// provider is installed already (then that one is used). Idempotent.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

fn read_all(tls: &TlsFiles) -> Result<redis::TlsCertificates, ConnectError> {
    let root_cert = match &tls.ca_file {
        Some(path) => {
            let pem = read_file(TlsFile::Ca, path)?;
            let certs = certificates(TlsFile::Ca, path, &pem)?;
            let mut store = rustls::RootCertStore::empty();
            for cert in certs {
                store.add(cert).map_err(|e| ConnectError::File {
                    which: TlsFile::Ca,
                    path: path.clone(),
                    reason: format!("holds a certificate that cannot be a trust anchor ({e})"),
                })?;
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConnectError::Mismatch {
                which: Some(TlsFile::Key),
                message: "a TLS client certificate file is given without its key file".into(),
            })
        }
        (None, Some(_)) => {
            return Err(ConnectError::Mismatch {
                which: Some(TlsFile::Cert),
                message: "a TLS client key file is given without its certificate file".into(),
            })
        }
        (Some(cert_path), Some(key_path)) => {
            let client_cert = read_file(TlsFile::Cert, cert_path)?;
            let chain = certificates(TlsFile::Cert, cert_path, &client_cert)?;
            let client_key = read_file(TlsFile::Key, key_path)?;
            let key =
                PrivateKeyDer::from_pem_slice(&client_key).map_err(|_| ConnectError::File {
                    which: TlsFile::Key,
                    path: key_path.clone(),
                    reason: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
                })?;
            // The key must be usable and belong to the certificate.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_client_auth_cert(chain, key)
            })
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => ConnectError::File {
                    which: TlsFile::Key,
                    path: key_path.clone(),
                    reason: format!(
                        "is not the key of the certificate in {} ({})",
                        cert_path.display(),
                        short_rustls_error(&e)
                    ),
                },
                other => ConnectError::File {
                    which: TlsFile::Cert,
                    path: cert_path.clone(),
                    reason: format!(
                        "cannot be used with the key in {} ({})",
                        key_path.display(),
                        short_rustls_error(&other)
                    ),
                },
            })?;
            Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// rustls's error without any detail that could echo key material (it
/// carries none today; this keeps it that way).
fn short_rustls_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(k) => format!("inconsistent keys: {k:?}"),
        rustls::Error::General(g) => g.chars().take(120).collect(),
        other => format!("{other}").chars().take(120).collect(),
    }
}

/// The certificates of a PEM file: at least one, all well formed.
fn certificates(
    which: TlsFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let bad = |reason: &str| ConnectError::File {
        which,
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("is not a well-formed PEM file"))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// Reads a regular file of at most [`MAX_TLS_FILE`] bytes (a device or FIFO
/// is refused before it is opened).
fn read_file(which: TlsFile, path: &Path) -> Result<Vec<u8>, ConnectError> {
    let err = |reason: String| ConnectError::File {
        which,
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let not_regular = || err("is not a regular file".into());
    if !meta.is_file() {
        return Err(not_regular());
    }
    let too_large = || err(format!("is larger than {} KiB", MAX_TLS_FILE / 1024));
    if meta.len() > MAX_TLS_FILE {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(MAX_TLS_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_TLS_FILE {
        return Err(too_large());
    }
    Ok(bytes)
}

/// If `e` (from connecting or a command) is a TLS failure, what it means and
/// which file to look at; `None` for anything else.
pub fn explain(e: &redis::RedisError, tls: &TlsFiles) -> Option<String> {
    explain_text(&e.to_string(), tls)
}

/// [`explain`] on an error's text (for errors already turned into strings).
pub fn explain_text(text: &str, tls: &TlsFiles) -> Option<String> {
    let trusted_by = || match &tls.ca_file {
        Some(ca) => format!("the CA in the TLS CA file {}", ca.display()),
        None => "the system's root certificates (no TLS CA file is given)".to_owned(),
    };
    if text.contains("invalid peer certificate") {
        let what = if text.contains("NotValidForName") {
            "is not valid for the host name in the Redis URL".to_owned()
        } else if text.contains("Expired") {
            "has expired".to_owned()
        } else if text.contains("NotValidYet") {
            "is not valid yet".to_owned()
        } else {
            format!("is not signed by {}", trusted_by())
        };
        let what = if what.starts_with("is not signed") {
            what
        } else {
            format!("{what} (checked against {})", trusted_by())
        };
        return Some(format!("TLS: the Redis server's certificate {what}"));
    }
    if text.contains("CertificateRequired")
        || (tls.cert_file.is_none() && text.contains("HandshakeFailure"))
    {
        return Some(match &tls.cert_file {
            None => "TLS: the Redis server requires a client certificate (mutual TLS) and none is given: give a TLS client certificate file and key file".to_owned(),
            Some(cert) => format!(
                "TLS: the Redis server did not accept the client certificate in {}",
                cert.display()
            ),
        });
    }
    if text.contains("received fatal alert")
        && [
            "BadCertificate",
            "UnknownCA",
            "DecryptError",
            "AccessDenied",
        ]
        .iter()
        .any(|a| text.contains(a))
    {
        return Some(match &tls.cert_file {
            Some(cert) => format!(
                "TLS: the Redis server refused the client certificate in {} (is it signed by a CA the server trusts?)",
                cert.display()
            ),
            None => "TLS: the Redis server refused the handshake (does it require a client certificate?)".to_owned(),
        });
    }
    if text.contains("InvalidContentType")
        || text.contains("corrupt message")
        || text.contains("InvalidMessage")
    {
        return Some(
            "TLS: the server did not answer in TLS (is this port a plain-text Redis? then use redis://)"
                .to_owned(),
        );
    }
    None
}

/// `e`'s text, with [`explain`]'s sentence in front when it is a TLS failure.
pub fn describe(e: &redis::RedisError, tls: &TlsFiles) -> String {
    match explain(e, tls) {
        Some(hint) => format!("{hint} ({e})"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> TlsFiles {
        TlsFiles {
            ca_file: ca.map(Path::to_owned),
            cert_file: cert.map(Path::to_owned),
            key_file: key.map(Path::to_owned),
        }
    }

    #[test]
    fn plain_urls_need_no_files_and_refuse_them() {
        assert!(client("redis://127.0.0.1:1", &TlsFiles::default()).is_ok());
        let e = client(
            "redis://127.0.0.1:1",
            &files(Some(Path::new("/x/ca.pem")), None, None),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ConnectError::Mismatch {
                    which: Some(TlsFile::Ca),
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("not rediss://"), "{e}");
    }

    #[test]
    fn tls_urls_work_with_system_roots_and_refuse_insecure() {
        assert!(client("rediss://127.0.0.1:1", &TlsFiles::default()).is_ok());
        let e = client("rediss://127.0.0.1:1/#insecure", &TlsFiles::default()).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }

    #[test]
    fn bad_urls_are_never_shown() {
        let e = client("redis:/u:hunter2@h", &TlsFiles::default()).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn files_are_checked_and_named_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "s3cr3t-not-a-cert").unwrap();
        let e = client("rediss://h:1", &files(Some(&junk), None, None)).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("TLS CA file "), "{text}");
        assert!(text.contains("junk.pem"), "{text}");
        assert!(text.contains("no PEM certificate"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");

        let e = client(
            "rediss://h:1",
            &files(Some(Path::new("/dev/null")), None, None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is not a regular file"), "{e}");

        let e = client(
            "rediss://h:1",
            &files(None, None, Some(Path::new("/nonexistent/key.pem"))),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("key file is given without its certificate"),
            "{e}"
        );
        let e = client(
            "rediss://h:1",
            &files(None, Some(Path::new("/nonexistent/c.pem")), None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("without its key file"), "{e}");

        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_TLS_FILE as usize + 1]).unwrap();
        let e = check_files(&files(Some(&big), None, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is larger than 1024 KiB"), "{e}");
    }

    #[test]
    fn tls_failures_are_explained_with_the_file_to_look_at() {
        let t = files(Some(Path::new("/etc/wx/ca.pem")), None, None);
        let hint = explain_text(
            "Connection refused - invalid peer certificate: UnknownIssuer",
            &t,
        )
        .unwrap();
        assert!(hint.contains("/etc/wx/ca.pem"), "{hint}");
        let hint = explain_text("received fatal alert: CertificateRequired", &t).unwrap();
        assert!(hint.contains("requires a client certificate"), "{hint}");
        assert_eq!(explain_text("Connection refused (os error 111)", &t), None);
    }
}
