//! The signed baseline policy, end to end through the real `picket` binary: a manufacturer makes
//! a key and signs the example policies; a device verifies, shows and applies them, and refuses
//! tampering and rollback, also across restarts (each command is a new process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use picket_test_support::bin;
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

#[test]
fn every_example_policy_signs_verifies_and_shows_back() {
    let dir = TempDir::new("examples");
    let trust = dir.trust_with_new_key("vendor");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let mut seen = 0;
    for entry in fs::read_dir(&examples).unwrap() {
        let toml = entry.unwrap().path();
        if toml.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let bundle = dir.path(&format!("{}.bundle", stem(&toml)));
        ok(picket(&["policy", "sign", "--key"])
            .arg(dir.path("vendor.key"))
            .arg("--in")
            .arg(&toml)
            .arg("--out")
            .arg(&bundle));
        let out = ok(picket(&["policy", "verify", "--trust"])
            .arg(&trust)
            .arg(&bundle));
        assert!(stdout(&out).contains("valid"), "{}", stdout(&out));

        // show gives TOML that loads back to the very same policy.
        let out = ok(picket(&["policy", "show", "--trust"])
            .arg(&trust)
            .arg(&bundle));
        let shown = stdout(&out);
        assert!(shown.contains("signature verified"), "{shown}");
        let original = picket_policy::load_toml_file(&toml).unwrap();
        let back = picket_policy::load_toml(&shown, "shown").unwrap();
        assert_eq!(back, original, "{}", toml.display());

        // Signing the shown policy again gives the same bytes: the form is canonical.
        let again = dir.path("again.toml");
        fs::write(&again, &shown).unwrap();
        let bundle2 = dir.path("again.bundle");
        ok(picket(&["policy", "sign", "--key"])
            .arg(dir.path("vendor.key"))
            .arg("--in")
            .arg(&again)
            .arg("--out")
            .arg(&bundle2));
        assert_eq!(fs::read(&bundle).unwrap(), fs::read(&bundle2).unwrap());
    }
    assert!(
        seen >= 2,
        "expected the example policies in {}",
        examples.display()
    );
}

#[test]
fn a_device_refuses_rollback_across_restarts() {
    let dir = TempDir::new("rollback");
    let trust = dir.trust_with_new_key("vendor");
    let state = dir.path("state");
    let five = dir.signed_policy("vendor", 5, "gw");
    let four = dir.signed_policy("vendor", 4, "gw");
    let apply = |bundle: &Path| {
        picket(&["policy", "apply", "--device-class", "gw", "--trust"])
            .arg(&trust)
            .arg("--state")
            .arg(&state)
            .arg(bundle)
            .output()
            .unwrap()
    };
    let out = apply(&five);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("serial 5 now in force"),
        "{}",
        stdout(&out)
    );
    // Each `picket` run is a fresh process: the refusal comes from the persisted state.
    for _ in 0..2 {
        let out = apply(&four);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("serial 4 is older than serial 5"), "{err}");
        assert!(err.contains("unchanged"), "{err}");
        assert_eq!(in_force(&state, &trust), 5);
    }
    assert_eq!(in_force(&state, &trust), 5);
    let out = apply(&five);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("already in force"),
        "{}",
        stdout(&out)
    );
    assert_eq!(in_force(&state, &trust), 5);
    let six = dir.signed_policy("vendor", 6, "gw");
    let out = apply(&six);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(in_force(&state, &trust), 6);
    let other_class = dir.signed_policy("vendor", 7, "camera");
    let out = apply(&other_class);
    assert!(!out.status.success(), "applied a policy for another class");
    assert!(
        stderr(&out).contains("device class `camera`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(in_force(&state, &trust), 6);
}

/// The serial of the policy in force in the device state `state`: the one accepted, whose
/// stored bundle verifies with `trust` and has that serial.
fn in_force(state: &Path, trust: &Path) -> u64 {
    let store = picket_policy::store::PolicyStore::open(state, Some("gw".into())).unwrap();
    let trust = picket_policy::keys::TrustStore::load_dir(trust).unwrap();
    let accepted = store.accepted_serial().unwrap();
    let active = store.active(&trust).unwrap().expect("a policy in force");
    assert_eq!(active.policy.metadata.serial, accepted);
    accepted
}

#[test]
fn tampered_and_foreign_bundles_are_refused_with_the_reason() {
    let dir = TempDir::new("tamper");
    let trust = dir.trust_with_new_key("vendor");
    let good = dir.signed_policy("vendor", 1, "gw");
    let bytes = fs::read(&good).unwrap();
    let verify = |bytes: &[u8]| {
        let file = dir.path("candidate.bundle");
        fs::write(&file, bytes).unwrap();
        let out = picket(&["policy", "verify", "--trust"])
            .arg(&trust)
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted a bad bundle");
        stderr(&out)
    };
    assert!(verify(&bytes[..bytes.len() - 10]).contains("length is inconsistent"));
    let mut flipped = bytes.clone();
    flipped[30] ^= 0x04;
    assert!(verify(&flipped).contains("signature does not verify"));
    let mut version = bytes.clone();
    version[4] = 9;
    assert!(verify(&version).contains("format version 9 is not supported"));
    assert!(verify(b"").contains("truncated"));
    // Signed by a key the device does not trust.
    let other_dir = TempDir::new("tamper-other");
    other_dir.trust_with_new_key("intruder");
    let foreign = other_dir.signed_policy("intruder", 1, "gw");
    assert!(verify(&fs::read(foreign).unwrap()).contains("not in the trust directory"));
}

#[test]
fn bad_policy_text_is_refused_at_signing_with_its_line() {
    let dir = TempDir::new("authoring");
    dir.trust_with_new_key("vendor");
    for (text, expected) in [
        ("[metadata]\nname = \"x\"\ndevice_class = \"y\"\nserial = 1\ncreated = \"2026-01-01T00:00:00Z\"\nnmae = 2\n", "unknown field `nmae`"),
        ("[metadata]\nname = \"x\"\n", "missing field"),
        ("[metadata\n", "line 1"),
    ] {
        let file = dir.path("bad.toml");
        fs::write(&file, text).unwrap();
        let out = picket(&["policy", "sign", "--key"])
            .arg(dir.path("vendor.key"))
            .arg("--in")
            .arg(&file)
            .arg("--out")
            .arg(dir.path("bad.bundle"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(!dir.path("bad.bundle").exists(), "a bundle was written for a bad policy");
    }
}

#[test]
fn keygen_never_overwrites_a_key() {
    let dir = TempDir::new("keygen");
    dir.trust_with_new_key("vendor");
    let before = fs::read(dir.path("vendor.key")).unwrap();
    let out = picket(&["keygen", "--out"])
        .arg(dir.path("vendor"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    assert_eq!(fs::read(dir.path("vendor.key")).unwrap(), before);
}

fn picket(args: &[&str]) -> Command {
    let mut c = Command::new(bin::picket());
    c.args(args);
    c
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", stderr(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("picket-policy-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Makes key NAME here and a trust directory holding its public half.
    fn trust_with_new_key(&self, name: &str) -> PathBuf {
        ok(picket(&["keygen", "--out"]).arg(self.path(name)));
        let trust = self.path("trust");
        fs::create_dir_all(&trust).unwrap();
        fs::copy(
            self.path(&format!("{name}.pub")),
            trust.join(format!("{name}.pub")),
        )
        .unwrap();
        trust
    }

    /// Writes and signs a minimal policy.
    fn signed_policy(&self, key: &str, serial: u64, class: &str) -> PathBuf {
        let toml = self.path(&format!("p{serial}-{class}.toml"));
        fs::write(
            &toml,
            format!(
                "[metadata]\nname = \"p{serial}\"\ndevice_class = \"{class}\"\nserial = {serial}\n\
                 created = \"2026-11-22T10:00:00Z\"\n"
            ),
        )
        .unwrap();
        let bundle = self.path(&format!("p{serial}-{class}.bundle"));
        ok(picket(&["policy", "sign", "--key"])
            .arg(self.path(&format!("{key}.key")))
            .arg("--in")
            .arg(&toml)
            .arg("--out")
            .arg(&bundle));
        bundle
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
