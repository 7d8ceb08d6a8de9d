//! A throw-away PKI in a temporary directory: the CA the broker trusts, the broker's server
//! certificate, device and backend certificates issued on demand, and an unrelated second CA;
//! and rustls client configurations built from their PEM files.
//!
//! Identities: the certificate's CN is the MQTT user name and client id at the broker, and
//! the device id in the topics (`picket/v1/<id>/...`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::TempDir;

/// The address the broker listens on and clients connect to (the server certificate names it).
pub const BROKER_HOST: &str = "127.0.0.1";

/// A test PKI in a temporary directory: the CA the broker trusts, the broker's server
/// certificate, client certificates issued on demand, and an unrelated second CA.
pub struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
    ca_cert: PathBuf,
    other_ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    backends: Mutex<Vec<String>>,
}

/// A client certificate and key (PEM files), with the CA certificate that authenticates the
/// broker to this client.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The certificate's CN: the MQTT username and client id at the broker.
    pub id: String,
    /// Certificate, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, ECDSA P-256).
    pub key: PathBuf,
    /// CA certificate the client trusts for the broker, PEM.
    pub ca: PathBuf,
}

impl Identity {
    /// A rustls client configuration presenting this identity.
    pub fn tls_config(&self) -> ClientConfig {
        tls_client_config(&self.ca, &self.cert, &self.key)
    }
}

impl Pki {
    /// Generates both CAs and the broker's server certificate (SANs `localhost`, `127.0.0.1`).
    pub fn new() -> Pki {
        let dir = TempDir::new();
        let ca = new_ca("Picket test CA");
        let other_ca = new_ca("Unrelated test CA");
        let ca_cert = write_pem(&dir, "ca.crt", &ca.pem());
        let other_ca_cert = write_pem(&dir, "other-ca.crt", &other_ca.pem());

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), BROKER_HOST.to_owned()])
                .expect("server certificate parameters");
        params.distinguished_name = dn("localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let server_cert = write_pem(&dir, "server.crt", &cert.pem());
        let server_key = write_pem(&dir, "server.key", &key.serialize_pem());

        Pki {
            dir,
            ca,
            other_ca,
            ca_cert,
            other_ca_cert,
            server_cert,
            server_key,
            backends: Mutex::new(Vec::new()),
        }
    }

    /// The directory holding every PEM file of this PKI.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate the broker trusts for clients and clients trust for the broker.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The certificate of the unrelated CA that signs [`Pki::foreign_device`] certificates.
    pub fn other_ca_cert(&self) -> &Path {
        &self.other_ca_cert
    }

    pub fn server_cert(&self) -> &Path {
        &self.server_cert
    }

    pub fn server_key(&self) -> &Path {
        &self.server_key
    }

    /// A device certificate with CN=`id`, signed by the CA. Files `device-<id>.{crt,key}`.
    pub fn device(&self, id: &str) -> Identity {
        self.issue(&self.ca, "device", id)
    }

    /// A backend certificate with CN=`id`, signed by the CA. The broker grants it the backend
    /// rights only if it is issued before [`Mosquitto::start`](crate::mosquitto::Mosquitto::start) writes the ACL. Backend ids must
    /// differ from device ids. Files `backend-<id>.{crt,key}`.
    pub fn backend(&self, id: &str) -> Identity {
        let identity = self.issue(&self.ca, "backend", id);
        let mut backends = self.backends.lock().unwrap();
        if !backends.iter().any(|b| b == id) {
            backends.push(id.to_owned());
        }
        identity
    }

    /// A device certificate with CN=`id` signed by the unrelated CA, which the broker does not
    /// trust; the client itself still trusts the broker. Files `foreign-<id>.{crt,key}`.
    pub fn foreign_device(&self, id: &str) -> Identity {
        self.issue(&self.other_ca, "foreign", id)
    }

    /// Backend ids issued so far.
    pub fn backend_ids(&self) -> Vec<String> {
        self.backends.lock().unwrap().clone()
    }

    fn issue(&self, issuer: &CertifiedIssuer<'static, KeyPair>, kind: &str, id: &str) -> Identity {
        assert!(
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "client id {id:?} must be non-empty ASCII letters, digits, '-', '_' or '.'"
        );
        let (cert_path, key_path) = (
            self.dir.join(format!("{kind}-{id}.crt")),
            self.dir.join(format!("{kind}-{id}.key")),
        );
        // Issued once: a process may be reading the files (a running `serve`, an agent), and
        // a new pair written over them could be read half old, half new.
        if cert_path.exists() && key_path.exists() {
            return Identity {
                id: id.to_owned(),
                cert: cert_path,
                key: key_path,
                ca: self.ca_cert.clone(),
            };
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, issuer).expect("client certificate");
        Identity {
            id: id.to_owned(),
            cert: write_pem(&self.dir, &format!("{kind}-{id}.crt"), &cert.pem()),
            key: write_pem(&self.dir, &format!("{kind}-{id}.key"), &key.serialize_pem()),
            ca: self.ca_cert.clone(),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    CertifiedIssuer::self_signed(params, key).expect("CA certificate")
}

fn dn(common_name: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes a PEM file; a key (`*.key`) readable by its owner only, as the agent and the backend
/// require of private keys.
fn write_pem(dir: &TempDir, name: &str, pem: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    fs::write(&path, pem).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    if name.ends_with(".key") {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) that trusts the CA in
/// `ca` (PEM) and authenticates with the certificate chain in `cert` and the key in `key`
/// (PEM, PKCS#8, SEC1 or PKCS#1).
pub fn tls_client_config(ca: &Path, cert: &Path, key: &Path) -> ClientConfig {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .unwrap_or_else(|e| panic!("cannot read certificates from {}: {e}", cert.display()));
    assert!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| panic!("cannot read a private key from {}: {e}", key.display()));
    client_config_builder(ca)
        .with_client_auth_cert(chain, key)
        .unwrap_or_else(|e| panic!("unusable client certificate {}: {e}", cert.display()))
}

/// A rustls client configuration that trusts the CA in `ca` and presents no certificate.
pub fn tls_client_config_without_certificate(ca: &Path) -> ClientConfig {
    client_config_builder(ca).with_no_client_auth()
}

fn client_config_builder(
    ca: &Path,
) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(ca)
        .unwrap_or_else(|e| panic!("cannot read CA certificates from {}: {e}", ca.display()));
    for cert in cas {
        let cert = cert.unwrap_or_else(|e| panic!("bad CA certificate in {}: {e}", ca.display()));
        roots
            .add(cert)
            .unwrap_or_else(|e| panic!("unusable CA certificate in {}: {e}", ca.display()));
    }
    assert!(!roots.is_empty(), "no CA certificate in {}", ca.display());
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
}
