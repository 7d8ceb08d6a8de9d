//! On the device: the active policy and the highest serial ever accepted, in the agent's state
//! directory.
//!
//! A bundle is accepted only if a trusted key signed it, it is for this device class, and its
//! serial is higher than the highest accepted before (or equal to it with the very same
//! content, as on a restart). Files are replaced atomically (write, fsync, rename, fsync the
//! directory), so a power cut leaves either the old policy or the new one, never a mix; a
//! refused bundle changes nothing.
//!
//! ```text
//! STATE_DIR/policy/active.bundle   the bundle in force
//! STATE_DIR/policy/serial          highest serial accepted, in decimal
//! ```

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::{
    bundle::{self, BundleError, Verified},
    keys::TrustStore,
};

/// Why a policy was not accepted.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("policy serial {offered} is older than serial {accepted} accepted before: refused (anti-rollback)")]
    Rollback { offered: u64, accepted: u64 },
    #[error("policy serial {0} was accepted before with different content: a new policy needs a higher serial")]
    SerialReused(u64),
    #[error("policy is for device class `{policy}`, this device is `{device}`")]
    WrongDeviceClass { policy: String, device: String },
    #[error("state file {path} is corrupt: {reason}")]
    CorruptState { path: PathBuf, reason: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The policy state of one device.
pub struct PolicyStore {
    dir: PathBuf,
    device_class: Option<String>,
}

/// What accepting a bundle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new policy is in force.
    Installed(Verified),
    /// The bundle is the one already in force.
    Unchanged(Verified),
}

impl PolicyStore {
    /// The store under `state_dir`; `device_class`, when given, must match each policy's.
    pub fn open(state_dir: &Path, device_class: Option<String>) -> Result<Self, StoreError> {
        let dir = state_dir.join("policy");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self { dir, device_class })
    }

    /// The highest serial accepted so far (0 when none).
    pub fn accepted_serial(&self) -> Result<u64, StoreError> {
        let path = self.dir.join("serial");
        match fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned()) {
            Ok(text) => text.trim().parse().map_err(|_| StoreError::CorruptState {
                path,
                reason: format!(
                    "`{}` is not a serial number",
                    text.trim()
                        .chars()
                        .take(64)
                        .collect::<String>()
                        .escape_debug()
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Replaces a `serial` file that holds no serial number (damaged on the medium, written by
    /// something else) with the serial of the bundle in force, if it verifies, else 0: the
    /// value an intact file holds (the bundle is written before the serial), so that a bundle
    /// older than the one in force is still refused, and the agent starts rather than refusing
    /// every policy. Returns what was found and done, for the log; `None` when the file is
    /// fine or absent.
    pub fn repair_serial(&self, trust: &TrustStore) -> Result<Option<String>, StoreError> {
        let path = self.dir.join("serial");
        let reason = match self.accepted_serial() {
            Err(StoreError::CorruptState { reason, .. }) => reason,
            Err(e) => return Err(e),
            Ok(_) => return Ok(None),
        };
        let floor = fs::read(self.dir.join("active.bundle"))
            .ok()
            .and_then(|bytes| bundle::verify(&bytes, trust).ok())
            .map_or(0, |v| v.policy.metadata.serial);
        write_atomic(&path, format!("{floor}\n").as_bytes())?;
        Ok(Some(format!(
            "{} is corrupt ({reason}): set again to {floor}, the serial of the policy in force",
            path.display()
        )))
    }

    /// The policy in force, verified again (the state directory is not trusted blindly).
    pub fn active(&self, trust: &TrustStore) -> Result<Option<Verified>, StoreError> {
        let path = self.dir.join("active.bundle");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let verified = bundle::verify(&bytes, trust)?;
        let accepted = self.accepted_serial()?;
        if verified.policy.metadata.serial < accepted {
            return Err(StoreError::Rollback {
                offered: verified.policy.metadata.serial,
                accepted,
            });
        }
        Ok(Some(verified))
    }

    /// Verifies `bytes` and, if every check passes, makes it the policy in force.
    pub fn accept(&self, bytes: &[u8], trust: &TrustStore) -> Result<Accepted, StoreError> {
        let verified = bundle::verify(bytes, trust)?;
        let meta = &verified.policy.metadata;
        if let Some(device) = &self.device_class {
            if &meta.device_class != device {
                return Err(StoreError::WrongDeviceClass {
                    policy: meta.device_class.clone(),
                    device: device.clone(),
                });
            }
        }
        // The bundle in force counts too: a `serial` file cut short by damage ("1" of "12")
        // still reads as a number, and must not let an older bundle in.
        let in_force = fs::read(self.dir.join("active.bundle"))
            .ok()
            .and_then(|bytes| bundle::verify(&bytes, trust).ok())
            .map_or(0, |v| v.policy.metadata.serial);
        let accepted = self.accepted_serial()?.max(in_force);
        let serial = meta.serial;
        if serial < accepted {
            return Err(StoreError::Rollback {
                offered: serial,
                accepted,
            });
        }
        let active_path = self.dir.join("active.bundle");
        if serial == accepted && accepted != 0 {
            return match fs::read(&active_path) {
                Ok(current) if current == bytes => Ok(Accepted::Unchanged(verified)),
                _ => Err(StoreError::SerialReused(serial)),
            };
        }
        // Bundle first, then the serial: after a crash in between, the new bundle is active
        // and `active()` still sees a serial no lower than the recorded one.
        write_atomic(&active_path, bytes)?;
        write_atomic(&self.dir.join("serial"), format!("{serial}\n").as_bytes())?;
        Ok(Accepted::Installed(verified))
    }
}

/// Replaces `path` with `bytes` so that readers see the old or the new content, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{self, SigningKey};

    fn policy(serial: u64, class: &str) -> crate::Policy {
        crate::load_toml(
            &format!(
                "[metadata]\nname = \"p\"\ndevice_class = \"{class}\"\nserial = {serial}\n\
                 created = \"2026-11-22T10:00:00Z\"\n"
            ),
            "p.toml",
        )
        .unwrap()
    }

    /// A new directory named after `tag` and the process, with a vendor key in `trust/`: the
    /// directory, the key to sign with and the trust store that verifies it.
    fn lab(tag: &str) -> (PathBuf, SigningKey, TrustStore) {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let keys_dir = dir.join("trust");
        fs::create_dir_all(&keys_dir).unwrap();
        let (key, _, _) = keys::generate(&keys_dir.join("vendor")).unwrap();
        let signer = SigningKey::load(&key).unwrap();
        let trust = TrustStore::load_dir(&keys_dir).unwrap();
        (dir, signer, trust)
    }

    #[test]
    fn refuses_rollback_also_after_a_restart() {
        let (dir, signer, trust) = lab("picket-store");
        let state = dir.join("state");

        let five = bundle::sign(&policy(5, "gw"), &signer);
        let four = bundle::sign(&policy(4, "gw"), &signer);
        let store = PolicyStore::open(&state, Some("gw".into())).unwrap();
        assert!(matches!(
            store.accept(&five, &trust),
            Ok(Accepted::Installed(_))
        ));
        assert!(matches!(
            store.accept(&four, &trust),
            Err(StoreError::Rollback {
                offered: 4,
                accepted: 5
            })
        ));
        // A restart: a new store over the same state directory.
        drop(store);
        let store = PolicyStore::open(&state, Some("gw".into())).unwrap();
        assert_eq!(store.accepted_serial().unwrap(), 5);
        assert!(matches!(
            store.accept(&four, &trust),
            Err(StoreError::Rollback { .. })
        ));
        assert!(matches!(
            store.accept(&five, &trust),
            Ok(Accepted::Unchanged(_))
        ));
        assert_eq!(
            store
                .active(&trust)
                .unwrap()
                .unwrap()
                .policy
                .metadata
                .serial,
            5
        );
        // Same serial, other content: refused.
        let mut other = policy(5, "gw");
        other.metadata.name = "other".into();
        let other = bundle::sign(&other, &signer);
        assert!(matches!(
            store.accept(&other, &trust),
            Err(StoreError::SerialReused(5))
        ));
        // Wrong class: refused, nothing changes.
        let wrong = bundle::sign(&policy(9, "camera"), &signer);
        assert!(matches!(
            store.accept(&wrong, &trust),
            Err(StoreError::WrongDeviceClass { .. })
        ));
        assert_eq!(store.accepted_serial().unwrap(), 5);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_serial_is_set_again_from_the_policy_in_force_and_rollback_stays_refused() {
        let (dir, signer, trust) = lab("picket-store-dmg");
        let state = dir.join("state");
        let store = PolicyStore::open(&state, Some("gw".into())).unwrap();
        assert_eq!(
            store.repair_serial(&trust).unwrap(),
            None,
            "no file: nothing to do"
        );
        let twelve = bundle::sign(&policy(12, "gw"), &signer);
        let seven = bundle::sign(&policy(7, "gw"), &signer);
        store.accept(&twelve, &trust).unwrap();
        assert_eq!(
            store.repair_serial(&trust).unwrap(),
            None,
            "intact: nothing to do"
        );
        let serial = state.join("policy/serial");
        let intact = fs::read(&serial).unwrap();
        // Cut at every offset (a prefix of "12\n" that is still a number is not damage it can
        // tell), and bytes that are no number.
        let mut damaged: Vec<Vec<u8>> = (0..intact.len()).map(|n| intact[..n].to_vec()).collect();
        damaged.push(b"\xff\xfe\x00garbage".to_vec());
        damaged.push(vec![b'9'; 100]);
        for bytes in damaged {
            fs::write(&serial, &bytes).unwrap();
            if let Ok(n) = store.accepted_serial() {
                // A prefix that is still a number: the bundle in force keeps the floor.
                assert!(n <= 12, "{bytes:?}");
                assert!(matches!(
                    store.accept(&seven, &trust),
                    Err(StoreError::Rollback {
                        offered: 7,
                        accepted: 12
                    })
                ));
                continue;
            }
            // Without the repair, the policy in force cannot be checked: the agent would not
            // start.
            assert!(store.active(&trust).is_err(), "{bytes:?}");
            let said = store.repair_serial(&trust).unwrap().unwrap();
            assert!(said.contains("corrupt"), "{said}");
            assert_eq!(store.accepted_serial().unwrap(), 12, "{bytes:?}");
            let active = store.active(&trust).unwrap().unwrap();
            assert_eq!(active.policy.metadata.serial, 12);
            assert!(matches!(
                store.accept(&seven, &trust),
                Err(StoreError::Rollback {
                    offered: 7,
                    accepted: 12
                })
            ));
        }
        // No bundle in force to take it from: 0, and the next bundle is accepted.
        fs::remove_file(state.join("policy/active.bundle")).unwrap();
        fs::write(&serial, "x").unwrap();
        store.repair_serial(&trust).unwrap().unwrap();
        assert_eq!(store.accepted_serial().unwrap(), 0);
        assert!(matches!(
            store.accept(&seven, &trust),
            Ok(Accepted::Installed(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
