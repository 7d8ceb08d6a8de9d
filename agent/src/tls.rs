//! The device's TLS identity: its certificate and key, the fleet CA it trusts, and the device id,
//! which is the certificate's common name (CN). rustls with the ring provider: no OpenSSL.

use std::{path::Path, sync::Arc};

use anyhow::{bail, Context as _};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};

/// A device's identity for mutual TLS.
pub struct Identity {
    /// The CN of the device certificate.
    pub device_id: String,
    pub config: Arc<ClientConfig>,
}

impl Identity {
    /// Loads the fleet CA bundle, the device certificate (chain) and its private key (PEM).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let roots = read_certs(ca, "the fleet CA")?;
        let mut store = RootCertStore::empty();
        for (i, root) in roots.into_iter().enumerate() {
            store.add(root).with_context(|| {
                format!(
                    "{}: certificate #{} is not a usable CA certificate",
                    ca.display(),
                    i + 1
                )
            })?;
        }
        let chain = read_certs(cert, "the device certificate")?;
        let device_id = common_name(&chain[0])
            .with_context(|| format!("{}: reading the device id", cert.display()))?;
        picket_proto::topic::check_device_id(&device_id)
            .with_context(|| format!("{}: the certificate's CN", cert.display()))?;
        let key_path = key;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
            anyhow::anyhow!(
                "{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                key_path.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("configuring TLS")?
            .with_root_certificates(store)
            .with_client_auth_cert(chain, key)
            .with_context(|| {
                format!(
                    "the certificate {} with the key {} cannot be used for TLS",
                    cert.display(),
                    key_path.display()
                )
            })?;
        Ok(Self {
            device_id,
            config: Arc::new(config),
        })
    }
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("reading {what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{} ({what}): not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{} ({what}) holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The subject CN of a DER certificate.
fn common_name(cert: &CertificateDer<'_>) -> anyhow::Result<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow::anyhow!("not a valid X.509 certificate: {e}"))?;
    let mut names = parsed.subject().iter_common_name();
    let cn = names
        .next()
        .context("the certificate's subject has no common name (CN)")?;
    if names.next().is_some() {
        bail!("the certificate's subject has more than one common name");
    }
    Ok(cn
        .as_str()
        .map_err(|e| anyhow::anyhow!("the certificate's CN is not a string: {e}"))?
        .to_string())
}
