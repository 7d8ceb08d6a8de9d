//! The signed bundle: a policy's canonical bytes in a versioned envelope with the signer's key
//! id and an Ed25519 signature.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "PKTB"
//! 4       2     format version, little endian (1; 2 for a policy with behavioural sections;
//!               3 for one that enforces)
//! 6       8     key id: first 8 bytes of SHA-256(signer's public key)
//! 14      4     payload length N, little endian
//! 18      N     payload: the policy, canonical postcard
//! 18+N    64    Ed25519 signature over CONTEXT || bytes 4..18+N
//! ```
//!
//! The signature covers everything after the magic (version, key id, length, payload), prefixed
//! with a context string so that it cannot be confused with a signature over anything else.
//! Decoding checks, in order: size, magic, version, length, signer, signature, payload; each
//! failure says which.

use thiserror::Error;

use crate::{
    canonical_bytes, format_of, from_canonical_bytes,
    keys::{KeyId, SigningKey, TrustStore},
    Policy,
};

/// The newest bundle format this build writes and reads. Format 2 adds the policy's
/// behavioural sections; format 3 (the same payload) the `enforce` mode, so that an agent that
/// cannot enforce refuses the policy by its version, saying so, instead of running it in alert
/// mode. A policy is written in the oldest format that can hold it: older agents keep reading
/// what they understand.
pub const FORMAT_VERSION: u16 = 3;
const MAGIC: &[u8; 4] = b"PKTB";
const CONTEXT: &[u8] = b"picket policy bundle\0";
const HEADER: usize = 18;
const SIGNATURE: usize = 64;
/// Largest payload accepted: far above any real policy, far below what would strain a device.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Why a bundle was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("bundle is truncated: {0} bytes is less than the smallest possible bundle")]
    Truncated(usize),
    #[error("not a policy bundle (bad magic)")]
    BadMagic,
    #[error(
        "bundle format version {0} is not supported (this agent reads versions 1 to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("bundle payload is {0} bytes, over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("bundle length is inconsistent: it says {said} payload bytes, {actual} are present (truncated or trailing data)")]
    BadLength { said: usize, actual: usize },
    #[error("bundle is signed by key {0}, which is not in the trust directory")]
    UnknownKey(KeyId),
    #[error("bundle signature does not verify with key {0}: the bundle was altered or signed by another key")]
    BadSignature(KeyId),
    #[error("bundle payload is invalid: {0}")]
    BadPayload(String),
}

/// A bundle whose signature was checked against a trusted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub policy: Policy,
    pub signer: KeyId,
}

/// Signs `policy` into a bundle.
pub fn sign(policy: &Policy, key: &SigningKey) -> Vec<u8> {
    let payload = canonical_bytes(policy);
    let mut out = Vec::with_capacity(HEADER + payload.len() + SIGNATURE);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&format_of(policy).to_le_bytes());
    out.extend_from_slice(&key.id().0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let signature = key.sign(&signed_message(&out[4..]));
    out.extend_from_slice(&signature);
    out
}

/// Checks a bundle's structure and signature and decodes its policy.
pub fn verify(bytes: &[u8], trust: &TrustStore) -> Result<Verified, BundleError> {
    let parts = parse(bytes)?;
    match trust.verify(parts.signer, &signed_message(parts.signed), parts.signature) {
        None => return Err(BundleError::UnknownKey(parts.signer)),
        Some(false) => return Err(BundleError::BadSignature(parts.signer)),
        Some(true) => {}
    }
    let policy =
        from_canonical_bytes(parts.payload, parts.format).map_err(BundleError::BadPayload)?;
    Ok(Verified {
        policy,
        signer: parts.signer,
    })
}

/// Decodes a bundle **without** checking its signature, for display only.
pub fn inspect(bytes: &[u8]) -> Result<(Policy, KeyId), BundleError> {
    let parts = parse(bytes)?;
    let policy =
        from_canonical_bytes(parts.payload, parts.format).map_err(BundleError::BadPayload)?;
    Ok((policy, parts.signer))
}

struct Parts<'a> {
    format: u16,
    signer: KeyId,
    /// Bytes 4..18+N: what the signature covers.
    signed: &'a [u8],
    payload: &'a [u8],
    signature: &'a [u8],
}

fn parse(bytes: &[u8]) -> Result<Parts<'_>, BundleError> {
    if bytes.len() < HEADER + SIGNATURE {
        return Err(BundleError::Truncated(bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(BundleError::UnsupportedVersion(version));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[6..14]);
    let said = u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]) as usize;
    if said > MAX_PAYLOAD {
        return Err(BundleError::TooLarge(said));
    }
    let actual = bytes.len() - HEADER - SIGNATURE;
    if said != actual {
        return Err(BundleError::BadLength { said, actual });
    }
    Ok(Parts {
        format: version,
        signer: KeyId(id),
        signed: &bytes[4..HEADER + said],
        payload: &bytes[HEADER..HEADER + said],
        signature: &bytes[HEADER + said..],
    })
}

fn signed_message(signed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + signed.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(signed);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    fn setup(tag: &str) -> (std::path::PathBuf, SigningKey, TrustStore) {
        let dir = std::env::temp_dir().join(format!("picket-bundle-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (key, _, _) = keys::generate(&dir.join("k")).unwrap();
        let signer = SigningKey::load(&key).unwrap();
        let trust = TrustStore::load_dir(&dir).unwrap();
        (dir, signer, trust)
    }

    fn small_policy() -> Policy {
        crate::load_toml(
            r#"
[metadata]
name = "small"
device_class = "gw"
serial = 5
created = "2026-11-22T10:00:00Z"

[[executable]]
path = "/bin/sh"
sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
"#,
            "small.toml",
        )
        .unwrap()
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let (dir, signer, trust) = setup("flip");
        let bundle = sign(&small_policy(), &signer);
        assert!(verify(&bundle, &trust).is_ok());
        for byte in 0..bundle.len() {
            for bit in 0..8 {
                let mut bad = bundle.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    verify(&bad, &trust).is_err(),
                    "flipping bit {bit} of byte {byte} was not detected"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_kind_of_damage_says_what_it_is() {
        let (dir, signer, trust) = setup("damage");
        let bundle = sign(&small_policy(), &signer);
        assert_eq!(
            verify(&bundle[..10], &trust),
            Err(BundleError::Truncated(10))
        );
        let mut bad = bundle.clone();
        bad[0] = b'X';
        assert_eq!(verify(&bad, &trust), Err(BundleError::BadMagic));
        for version in [0, FORMAT_VERSION + 1] {
            let mut bad = bundle.clone();
            bad[4..6].copy_from_slice(&version.to_le_bytes());
            assert_eq!(
                verify(&bad, &trust),
                Err(BundleError::UnsupportedVersion(version))
            );
        }
        let short = &bundle[..bundle.len() - 1];
        assert!(matches!(
            verify(short, &trust),
            Err(BundleError::BadLength { .. })
        ));
        let mut long = bundle.clone();
        long.push(0);
        assert!(matches!(
            verify(&long, &trust),
            Err(BundleError::BadLength { .. })
        ));
        let mut bad = bundle.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            verify(&bad, &trust),
            Err(BundleError::BadSignature(_))
        ));
        // Signed by a key the device does not trust.
        let (other_dir, other, _) = setup("other");
        let foreign = sign(&small_policy(), &other);
        assert_eq!(
            verify(&foreign, &trust),
            Err(BundleError::UnknownKey(other.id()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other_dir).unwrap();
    }

    #[test]
    fn round_trips_and_is_stable() {
        let (dir, signer, trust) = setup("round");
        let policy = small_policy();
        let a = sign(&policy, &signer);
        let b = sign(&policy, &signer);
        // Ed25519 signatures are deterministic: same policy and key, same bundle.
        assert_eq!(a, b);
        let verified = verify(&a, &trust).unwrap();
        assert_eq!(verified.policy, policy);
        assert_eq!(verified.signer, signer.id());
        assert_eq!(inspect(&a).unwrap().0, policy);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `small_policy` with a behavioural section.
    fn behavioural_policy() -> Policy {
        let mut p = small_policy();
        p.behaviour
            .get_or_insert_with(Default::default)
            .lineage
            .push(crate::model::Lineage {
                parent: "/usr/sbin/cron".parse().unwrap(),
                child: "/usr/bin/dash".parse().unwrap(),
            });
        p
    }

    #[test]
    fn a_policy_without_behaviour_stays_in_format_1_and_one_with_it_needs_format_2() {
        let (dir, signer, trust) = setup("formats");
        let plain = sign(&small_policy(), &signer);
        assert_eq!(&plain[4..6], &1u16.to_le_bytes());
        let policy = behavioural_policy();
        let bundle = sign(&policy, &signer);
        assert_eq!(&bundle[4..6], &2u16.to_le_bytes());
        assert_eq!(verify(&bundle, &trust).unwrap().policy, policy);
        // The same payloads under the other format number, signed properly: refused, each
        // policy has one canonical form.
        let relabel = |bytes: &[u8], version: u16| {
            let payload = &bytes[HEADER..bytes.len() - SIGNATURE];
            let mut out = Vec::new();
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&signer.id().0);
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
            let signature = signer.sign(&signed_message(&out[4..]));
            out.extend_from_slice(&signature);
            out
        };
        for (bytes, version) in [(&plain, 2), (&bundle, 1)] {
            match verify(&relabel(bytes, version), &trust) {
                Err(BundleError::BadPayload(_)) => {}
                other => panic!("format {version} relabelled: {other:?}"),
            }
        }
        // A format-2 payload of a policy that needs only format 1.
        let mut with_mode = small_policy();
        with_mode.modes.behaviour = crate::model::Mode::Off;
        let off = sign(&with_mode, &signer);
        assert_eq!(&off[4..6], &2u16.to_le_bytes());
        assert_eq!(verify(&off, &trust).unwrap().policy, with_mode);
        // Enforcing needs format 3, and a format-3 payload is refused under 2 (and the reverse).
        let mut enforcing = small_policy();
        enforcing.modes.network = crate::model::Mode::Enforce;
        let enforced = sign(&enforcing, &signer);
        assert_eq!(&enforced[4..6], &3u16.to_le_bytes());
        assert_eq!(verify(&enforced, &trust).unwrap().policy, enforcing);
        for (bytes, version) in [(&enforced, 2), (&bundle, 3)] {
            match verify(&relabel(bytes, version), &trust) {
                Err(BundleError::BadPayload(e)) => assert!(e.contains("format"), "{e}"),
                other => panic!("format {version} relabelled: {other:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_executables_and_network_can_be_enforced() {
        for field in ["files", "behaviour"] {
            let mut p = small_policy();
            match field {
                "files" => p.modes.files = crate::model::Mode::Enforce,
                _ => p.modes.behaviour = crate::model::Mode::Enforce,
            }
            let e = crate::canonicalize(p).unwrap_err();
            assert!(e.contains(&format!("modes.{field}")), "{e}");
        }
    }
}
