//! What the enforcement tests share: a lab outside every directory the test policy allows, the
//! policy that allows the rest of the machine, and `picket run`.
//!
//! An enforcing agent judges every exec on the machine. So that nothing else running here is
//! refused while a test runs (builds, services), the test policy allows every top-level
//! directory by an `executable_glob` but the one that holds the lab (`/srv`), whose other
//! entries it allows one by one; the lab's files are judged by what each test lists.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use picket_test_support::bin::picket;
use picket_test_support::{unique, Agent};
use serde_json::Value;

/// How long a test waits for the alert its action should cause.
pub(crate) const ALERT_TIMEOUT: Duration = Duration::from_secs(15);
/// What `picket run` logs once its sensors are attached.
const READY: &str = "running with policy";
/// Where labs are made: not a temporary location, and outside the directories the test
/// policy allows wholesale.
const LAB_PARENT: &str = "/srv";

/// One test at a time: an enforcing agent judges the other tests' execs too.
static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A test's keys, trust and state, and the directory of the files it runs.
pub(crate) struct Lab {
    pub(crate) root: PathBuf,
    key: PathBuf,
    trust: PathBuf,
    state: PathBuf,
}

impl Lab {
    pub(crate) fn new(tag: &str) -> Lab {
        let root = Path::new(LAB_PARENT).join(unique(&format!("picket-enforce-{tag}")));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let root = fs::canonicalize(root).unwrap();
        ok(Command::new(picket())
            .args(["keygen", "--out"])
            .arg(root.join("vendor")));
        let trust = root.join("trust");
        fs::create_dir_all(&trust).unwrap();
        fs::copy(root.join("vendor.pub"), trust.join("vendor.pub")).unwrap();
        let state = root.join("state");
        fs::create_dir_all(&state).unwrap();
        Lab {
            key: root.join("vendor.key"),
            root,
            trust,
            state,
        }
    }

    /// Copies `from` into the lab as `name`, executable; returns its path.
    pub(crate) fn install(&self, from: &str, name: &str) -> PathBuf {
        let to = self.root.join(name);
        fs::copy(from, &to).unwrap();
        to
    }

    /// Signs policy `text` into NAME.bundle.
    pub(crate) fn sign(&self, name: &str, text: &str) -> PathBuf {
        let toml = self.root.join(format!("{name}.toml"));
        fs::write(&toml, text).unwrap();
        let bundle = self.root.join(format!("{name}.bundle"));
        ok(Command::new(picket())
            .args(["policy", "sign", "--key"])
            .arg(&self.key)
            .arg("--in")
            .arg(&toml)
            .arg("--out")
            .arg(&bundle));
        bundle
    }

    /// A configuration for `bundle`, with `extra` TOML appended; returns its path. Unless
    /// `extra` says otherwise, an exec waits up to 10 s for its file's hash: the verdicts the
    /// tests expect do not depend on how loaded the machine is.
    pub(crate) fn config(&self, bundle: &Path, extra: &str) -> PathBuf {
        let decision = if extra.contains("[enforce]") {
            ""
        } else {
            "[enforce]\ndecision_time = \"10s\"\n"
        };
        let text = format!(
            "device_id = \"test-device\"\n\
             device_class = \"lab\"\n\
             policy = {}\n\
             trust_dir = {}\n\
             state_dir = {}\n\
             rescan_interval = \"1h\"\n\
             {extra}\n\
             {decision}\
             [alerts]\n\
             window = \"60s\"\n\
             \n\
             [output]\n\
             stdout = true\n",
            toml_str(bundle),
            toml_str(&self.trust),
            toml_str(&self.state),
        );
        let path = self.root.join(format!("{}.conf", unique("picket")));
        fs::write(&path, text).unwrap();
        path
    }

    /// Starts `picket run` with `config`.
    pub(crate) fn run(&self, config: &Path) -> Agent {
        let args = ["run".as_ref(), "--config".as_ref(), config.as_os_str()];
        Agent::start(picket(), &args, READY)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A policy for device class `lab` that allows, by location, everything on the machine but
/// the lab's directory; `modes` is its `[modes]` body.
pub(crate) fn policy(lab: &Lab, modes: &str) -> String {
    let mut text = format!(
        "[metadata]\nname = \"enforce-test\"\ndevice_class = \"lab\"\nserial = 1\n\
         created = \"2026-12-07T10:00:00Z\"\n\n[modes]\n{modes}\n\n"
    );
    let lab_parent = lab.root.parent().unwrap();
    let mut allowed: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir("/").unwrap().flatten() {
        let path = entry.path();
        if path == lab_parent {
            for sibling in fs::read_dir(lab_parent).unwrap().flatten() {
                if !sibling
                    .file_name()
                    .to_string_lossy()
                    .starts_with("picket-enforce-")
                {
                    allowed.push(sibling.path());
                }
            }
        } else if entry.file_type().is_ok_and(|t| t.is_dir())
            && !["/dev", "/proc", "/sys"].contains(&path.to_str().unwrap_or(""))
        {
            // Not /dev: the tests' temporary location is /dev/shm.
            allowed.push(path);
        }
    }
    allowed.sort();
    for dir in allowed {
        let _ = writeln!(
            text,
            "[[executable_glob]]\nglob = {}\nweak = true\n",
            toml_str(&dir.join("**"))
        );
    }
    text
}

/// Appends an `[[executable]]` entry.
pub(crate) fn executable(text: &mut String, path: &Path, sha256: &str) {
    let _ = writeln!(
        text,
        "[[executable]]\npath = {}\nsha256 = \"{sha256}\"\n",
        toml_str(path)
    );
}

/// `path` as a TOML basic string (JSON string escapes are valid TOML).
pub(crate) fn toml_str(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("test paths are UTF-8")).unwrap()
}

pub(crate) fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn kind(a: &Value) -> &str {
    a["alert"].as_str().unwrap_or("")
}

pub(crate) fn path(a: &Value) -> Option<&str> {
    a["path"].as_str()
}

/// Runs `path` (no arguments): `Ok(exit code)`, or the error of the exec (`EPERM` when
/// refused).
pub(crate) fn try_run(path: &Path) -> std::io::Result<i32> {
    Command::new(path).status().map(|s| s.code().unwrap_or(-1))
}

/// Whether `r` is the exec refused with `EPERM`.
pub(crate) fn is_eperm(r: &std::io::Result<i32>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EPERM))
}
