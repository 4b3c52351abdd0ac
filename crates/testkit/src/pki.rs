//! A throwaway PKI for TLS tests: a CA, a server certificate for
//! `127.0.0.1` / `localhost` and a client certificate signed by it, and an
//! unrelated second CA (the "wrong CA"), all PEM files in a temporary
//! directory that lives as long as the [`TestPki`].

use crate::{io_err, Error, TlsServer};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM files of a test CA and the certificates it signed.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate (SANs `127.0.0.1`, `localhost`) and key.
    pub server_cert: PathBuf,
    /// The server certificate's key.
    pub server_key: PathBuf,
    /// Client certificate (CN `wxtoken-test-client`) and key.
    pub client_cert: PathBuf,
    /// The client certificate's key.
    pub client_key: PathBuf,
    /// A CA that signed none of the above.
    pub other_ca: PathBuf,
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |e| Error::Io {
        what,
        source: std::io::Error::other(e.to_string()),
    }
}

fn ca_params(name: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA params"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, name.to_owned());
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl TestPki {
    /// Generates the CA, the server and client certificates and a second CA.
    pub fn generate() -> Result<TestPki, Error> {
        let dir = tempfile::Builder::new()
            .prefix("wxtoken-pki-")
            .tempdir()
            .map_err(io_err("creating a temporary directory"))?;
        let write = |name: &str, pem: &str| -> Result<PathBuf, Error> {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).map_err(io_err("writing a PEM file"))?;
            Ok(path)
        };

        let ca_key = KeyPair::generate().map_err(rc("CA key"))?;
        let params = ca_params("wxtoken test CA")?;
        let ca_cert = params.self_signed(&ca_key).map_err(rc("CA cert"))?;
        let ca = write("ca.pem", &ca_cert.pem())?;
        let issuer = Issuer::new(params, ca_key);

        let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(rc("server params"))?;
        server
            .distinguished_name
            .push(DnType::CommonName, "wxtoken-test-redis");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().map_err(rc("server key"))?;
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .map_err(rc("server cert"))?;

        let mut client = CertificateParams::new(Vec::<String>::new()).map_err(rc("client"))?;
        client
            .distinguished_name
            .push(DnType::CommonName, "wxtoken-test-client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().map_err(rc("client key"))?;
        let client_cert = client
            .signed_by(&client_key, &issuer)
            .map_err(rc("client cert"))?;

        let other_key = KeyPair::generate().map_err(rc("other CA key"))?;
        let other = ca_params("some other CA")?
            .self_signed(&other_key)
            .map_err(rc("other CA cert"))?;

        Ok(TestPki {
            ca,
            server_cert: write("server.pem", &server_cert.pem())?,
            server_key: write("server-key.pem", &server_key.serialize_pem())?,
            client_cert: write("client.pem", &client_cert.pem())?,
            client_key: write("client-key.pem", &client_key.serialize_pem())?,
            other_ca: write("other-ca.pem", &other.pem())?,
            dir,
        })
    }

    /// What [`RedisServer::start_tls`](crate::RedisServer::start_tls) needs:
    /// this CA's server certificate, client certificates checked against
    /// this CA, required if `auth_clients`.
    pub fn server(&self, auth_clients: bool) -> TlsServer {
        TlsServer {
            cert_file: self.server_cert.clone(),
            key_file: self.server_key.clone(),
            ca_file: self.ca.clone(),
            auth_clients,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
