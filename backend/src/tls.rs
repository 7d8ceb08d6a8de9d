//! TLS for the backend's client connections, MQTT (mutual), PostgreSQL and the receivers of the
//! integrations (rustls with the ring provider).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client configuration that trusts the CA certificates in `ca` and presents the
/// certificate chain in `cert` with the private key in `key` (all PEM).
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<rustls::ClientConfig> {
    client_config_for(ca, Some((cert, key)))
}

/// A client configuration that trusts the CA certificates in `ca` and presents the certificate
/// chain and key of `identity`, if given (all PEM).
pub fn client_config_for(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots(ca)?);
    let Some((cert, key)) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the certificate {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{}: no certificate found",
        cert.display()
    );
    let key = private_key(key)?;
    builder
        .with_client_auth_cert(chain, key)
        .context("the client certificate and key do not form a usable pair")
}

/// The CA certificates in the PEM file `ca`, refused when it holds none.
fn roots(ca: &Path) -> anyhow::Result<rustls::RootCertStore> {
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
    Ok(roots)
}

/// The PEM private key in `path`, refused when its group or others may read it.
pub fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = picket_policy::keys::read_private(path)
        .with_context(|| format!("reading the private key {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("{}: no usable private key (PEM)", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// A key its group or others may read is refused before it is parsed, saying so.
    #[test]
    fn a_private_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.key");
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", super::private_key(&path).unwrap_err());
        assert!(
            err.contains("backend.key") && err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        super::private_key(&path).unwrap();
    }
}
