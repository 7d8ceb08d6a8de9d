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
        let pem = picket_policy::keys::read_private(key_path)
            .with_context(|| format!("reading the device key {}", key_path.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};

    struct Files(std::path::PathBuf);
    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        if name.ends_with(".key") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        path
    }

    /// A CA, and a device certificate with subject `cn` (none if empty), as PEM files.
    fn pki(tag: &str, cn: &str) -> (Files, [std::path::PathBuf; 3], String) {
        let dir = std::env::temp_dir().join(format!("picket-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        if !cn.is_empty() {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let cert = params.signed_by(&key, &issuer).unwrap();
        let paths = [
            write(&dir, "ca.pem", &ca_cert.pem()),
            write(&dir, "device.pem", &cert.pem()),
            write(&dir, "device.key", &key.serialize_pem()),
        ];
        (
            Files(dir),
            paths,
            KeyPair::generate().unwrap().serialize_pem(),
        )
    }

    #[test]
    fn the_device_id_is_the_certificates_cn() {
        let (_files, [ca, cert, key], _) = pki("cn", "gw-0042");
        assert_eq!(
            Identity::load(&ca, &cert, &key).unwrap().device_id,
            "gw-0042"
        );
    }

    #[test]
    fn refuses_unusable_identities_saying_which_file() {
        let (files, [ca, cert, key], other_key) = pki("bad", "");
        let err = format!("{:#}", Identity::load(&ca, &cert, &key).err().unwrap());
        assert!(
            err.contains("no common name") && err.contains("device.pem"),
            "{err}"
        );

        let (files2, [ca, cert, _], _) = pki("bad2", "gw-1");
        let wrong = write(&files.0, "other.key", &other_key);
        let err = format!("{:#}", Identity::load(&ca, &cert, &wrong).err().unwrap());
        assert!(err.contains("cannot be used for TLS"), "{err}");

        let garbage = write(&files2.0, "garbage.pem", "not a certificate");
        let err = format!(
            "{:#}",
            Identity::load(&garbage, &cert, &wrong).err().unwrap()
        );
        assert!(err.contains("garbage.pem"), "{err}");

        // A key its group or others can read.
        let (_f4, [ca, cert, key], _) = pki("exposed", "gw-1");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = format!("{:#}", Identity::load(&ca, &cert, &key).err().unwrap());
        assert!(
            err.contains("device.key") && err.contains("mode 0640") && err.contains("chmod 600"),
            "{err}"
        );

        let (_f3, [ca, cert, key], _) = pki("bad3", "gw/1");
        let err = format!("{:#}", Identity::load(&ca, &cert, &key).err().unwrap());
        assert!(err.contains("invalid device id"), "{err}");
    }
}
