//! Mutual TLS for the backend's MQTT connections (rustls with the ring provider).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client configuration that trusts the CA certificates in `ca` and presents the
/// certificate chain in `cert` with the private key in `key` (all PEM).
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading the CA certificates {}", ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the CA certificates {}", ca.display()))?;
    anyhow::ensure!(!cas.is_empty(), "{}: no certificate found", ca.display());
    for c in cas {
        roots
            .add(c)
            .with_context(|| format!("{}: unusable CA certificate", ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the certificate {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{}: no certificate found",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .context("the client certificate and key do not form a usable pair")?;
    Ok(config)
}
