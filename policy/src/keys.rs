//! Ed25519 keys: the signing key that stays on the build host, and the public keys a device
//! trusts (a directory of them, so keys can be rotated).
//!
//! Files: `NAME.key` is the PKCS#8 document ring produces (binary DER, mode 0600);
//! `NAME.pub` is one line, `ed25519 <64 hex digits> <name>`.
//!
//! [`read_private`] reads any private key (this one, and the TLS keys of the agent and the
//! backend) only when its owner alone can read it.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    io::{Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519},
};
use thiserror::Error;

/// Errors about keys.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PKCS#8 Ed25519 private key ({reason})")]
    BadPrivateKey { path: PathBuf, reason: String },
    #[error("{path}:{line}: {reason}")]
    BadPublicKey {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0} exists already; refusing to overwrite a key")]
    Exists(PathBuf),
    #[error("generating a key: the system random source failed")]
    Random,
    #[error("trust directory {0} holds no *.pub key")]
    NoKeys(PathBuf),
}

/// The first 8 bytes of the SHA-256 of a public key: how a bundle names its signer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    pub fn of(public_key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Reads the private key at `path`, refused (`PermissionDenied`, saying the mode and the fix)
/// when its group or others may read it, as ssh refuses such keys: a key others could read is a
/// key someone may have copied, and the device or fleet it stands for is no longer proven by it.
pub fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    let mode = file.metadata()?.mode() & 0o7777;
    if mode & 0o044 != 0 {
        let who = match (mode & 0o040 != 0, mode & 0o004 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "a private key readable by {who} (mode {mode:04o}) is refused: make it readable \
                 by its owner only (chmod 600 {})",
                path.display()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A private signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Reads `NAME.key`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let der = read_private(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| KeyError::BadPrivateKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self { pair })
    }

    pub fn id(&self) -> KeyId {
        KeyId::of(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// Writes a new key pair: `NAME.key` (mode 0600) and `NAME.pub`. Never overwrites.
pub fn generate(out: &Path) -> Result<(PathBuf, PathBuf, KeyId), KeyError> {
    let key_path = with_suffix(out, "key");
    let pub_path = with_suffix(out, "pub");
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Random)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(io(&key_path))?;
    file.write_all(pkcs8.as_ref()).map_err(io(&key_path))?;
    file.sync_all().map_err(io(&key_path))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let public = pair.public_key().as_ref();
    let line = format!("ed25519 {} {name}\n", hex(public));
    fs::write(&pub_path, line).map_err(io(&pub_path))?;
    Ok((key_path, pub_path, KeyId::of(public)))
}

fn with_suffix(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The public keys a device trusts, by id.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<KeyId, (Vec<u8>, PathBuf)>,
}

impl TrustStore {
    /// Reads every `*.pub` file in `dir`. A malformed file is an error (naming it): a trust
    /// directory is small and curated, and a broken key there is a mistake to fix, not skip.
    pub fn load_dir(dir: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut store = TrustStore::default();
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        entries.sort();
        for path in entries {
            let text = fs::read_to_string(&path).map_err(|source| KeyError::Io {
                path: path.clone(),
                source,
            })?;
            let key = parse_public_key(&text).map_err(|(line, reason)| KeyError::BadPublicKey {
                path: path.clone(),
                line,
                reason,
            })?;
            store.keys.insert(KeyId::of(&key), (key, path));
        }
        if store.keys.is_empty() {
            return Err(KeyError::NoKeys(dir.to_path_buf()));
        }
        Ok(store)
    }

    /// Whether the key `id` signed `message` with `signature`. `None` if the key is unknown.
    pub fn verify(&self, id: KeyId, message: &[u8], signature: &[u8]) -> Option<bool> {
        let (key, _) = self.keys.get(&id)?;
        Some(
            UnparsedPublicKey::new(&ED25519, key)
                .verify(message, signature)
                .is_ok(),
        )
    }
}

/// Parses `ed25519 <hex> [comment]`; `#` lines and blank lines are ignored.
fn parse_public_key(text: &str) -> Result<Vec<u8>, (usize, String)> {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(kind), Some(hex_key)) = (words.next(), words.next()) else {
            return Err((n + 1, "expected `ed25519 <64 hex digits> [name]`".into()));
        };
        if kind != "ed25519" {
            return Err((n + 1, format!("key type `{kind}` is not ed25519")));
        }
        let key = unhex(hex_key)
            .filter(|k| k.len() == 32)
            .ok_or_else(|| (n + 1, "an Ed25519 public key is 64 hex digits".to_string()))?;
        return Ok(key);
    }
    Err((1, "no key in the file".into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_loads_and_trusts_a_key() {
        let dir = std::env::temp_dir().join(format!("picket-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (key, public, id) = generate(&dir.join("vendor")).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            generate(&dir.join("vendor")),
            Err(KeyError::Exists(_))
        ));
        // Readable by others, or by its group: refused, saying why and what to do.
        for mode in [0o644, 0o640, 0o604] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let err = SigningKey::load(&key).err().unwrap();
            let KeyError::Io { source, .. } = &err else {
                panic!("{err}")
            };
            assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
            let text = format!("{err}: {source}");
            assert!(
                text.contains(&format!("mode {mode:04o}")) && text.contains("chmod 600"),
                "{text}"
            );
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        let signer = SigningKey::load(&key).unwrap();
        assert_eq!(signer.id(), id);
        let sig = signer.sign(b"hello");
        let trust = TrustStore::load_dir(&dir).unwrap();
        assert_eq!(trust.verify(id, b"hello", &sig), Some(true));
        assert_eq!(trust.verify(id, b"hellO", &sig), Some(false));
        assert_eq!(trust.verify(KeyId([0; 8]), b"hello", &sig), None);
        assert!(public.exists());
        fs::write(dir.join("broken.pub"), "ed25519 abcd\n").unwrap();
        let err = TrustStore::load_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("broken.pub:1"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
