//! What the tests share: the table of misses, and `picket run` with a signed policy.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use picket_test_support::bin::picket;
use picket_test_support::{unique, Agent};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// One test at a time
// ---------------------------------------------------------------------------------------------

/// Every agent sees every exec on the machine: several of these tests at once would have each
/// agent handle the others' execs too (the burst's 100,000 among them), and lose events, and
/// the checks with them. Each test holds this while its agent runs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Waits until no other test of this target runs; held until dropped.
pub(crate) fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Misses
// ---------------------------------------------------------------------------------------------

/// What went wrong with one attempt, and the event or alert printed for it.
pub(crate) struct Miss {
    problems: Vec<String>,
    printed: String,
}

impl Miss {
    /// `problems` found in `printed` (none: the attempt was right).
    pub(crate) fn new(problems: Vec<String>, printed: Option<&Value>) -> Miss {
        Miss {
            problems,
            printed: printed.map_or_else(|| "(nothing)".into(), brief),
        }
    }
}

/// Every attempt's outcome, by case: a failure lists them all, as a table.
#[derive(Default)]
pub(crate) struct Misses {
    /// Case → attempts done and the misses among them.
    cases: BTreeMap<String, (usize, Vec<(usize, Miss)>)>,
}

impl Misses {
    pub(crate) fn record(&mut self, case: &str, attempt: usize, miss: Miss) {
        let entry = self.cases.entry(case.to_string()).or_default();
        entry.0 += 1;
        if !miss.problems.is_empty() {
            entry.1.push((attempt, miss));
        }
    }

    /// Panics with a summary of each case (`cases` first, in this order, `attempts` each, then
    /// any other recorded) and a table of the misses (then `more`) unless there were none.
    pub(crate) fn assert_none(
        &self,
        cases: &[&str],
        attempts: usize,
        more: impl FnOnce() -> String,
    ) {
        if self.cases.values().all(|(_, m)| m.is_empty()) {
            return;
        }
        let mut order: Vec<&str> = cases.to_vec();
        order.extend(
            self.cases
                .keys()
                .map(String::as_str)
                .filter(|c| !cases.contains(c)),
        );
        let mut msg = String::from("misses:\n\ncase                            | right\n");
        for case in &order {
            let (done, missed) = self.cases.get(*case).map_or((0, 0), |(d, m)| (*d, m.len()));
            let of = if cases.contains(case) { attempts } else { done };
            let _ = writeln!(msg, "{case:<31} | {}/{of}", done - missed);
        }
        let _ = writeln!(msg, "\ncase | attempt | what is wrong | what was printed");
        for case in &order {
            for (attempt, miss) in self.cases.get(*case).map_or(&[][..], |(_, m)| &m[..]) {
                let _ = writeln!(
                    msg,
                    "{case} | {attempt} | {} | {}",
                    miss.problems.join("; "),
                    miss.printed
                );
            }
        }
        panic!("{msg}\n{}", more());
    }
}

/// The fields of an event or alert that say what ran.
fn brief(v: &Value) -> String {
    let from = if v["process"].is_object() {
        &v["process"]
    } else {
        v
    };
    let mut out = serde_json::Map::new();
    for key in ["alert", "path", "details"] {
        if !v[key].is_null() {
            out.insert(key.into(), v[key].clone());
        }
    }
    for key in ["pid", "exe", "sha256"] {
        out.insert(key.into(), from[key].clone());
    }
    for key in [
        "filename",
        "fileless",
        "deleted",
        "execveat",
        "interpreter",
        "hash_error",
        "file",
    ] {
        if !v[key].is_null() {
            out.insert(key.into(), v[key].clone());
        }
    }
    Value::Object(out).to_string()
}

// ---------------------------------------------------------------------------------------------
// `picket run`
// ---------------------------------------------------------------------------------------------

/// What `picket run` logs once its sensors are attached.
const READY: &str = "running with policy";

/// A scratch directory outside the temporary locations the agent finds suspicious (a
/// canonical path): a signing key, trust and state directories, policies. Removed when dropped.
pub(crate) struct Lab {
    pub(crate) root: PathBuf,
    key: PathBuf,
    trust: PathBuf,
    state: PathBuf,
}

impl Lab {
    pub(crate) fn new(tag: &str) -> Lab {
        // Outside the temporary locations the agent finds suspicious (the checkout, and with it
        // the target directory, may be under /tmp).
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let base = if is_temporary_location(target) {
            Path::new("/var/lib/picket-tests")
        } else {
            target
        };
        let root = base.join(unique(&format!("exec-{tag}")));
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

    /// Signs a policy baselining `executables` (path, SHA-256) and starts `picket run`
    /// enforcing it; returns once it is running.
    pub(crate) fn run(&self, executables: &[(PathBuf, String)]) -> Agent {
        self.run_with(executables, &[])
    }

    /// [`Lab::run`] with more arguments for `picket run`.
    pub(crate) fn run_with(&self, executables: &[(PathBuf, String)], extra: &[&str]) -> Agent {
        let mut text = String::from(
            "[metadata]\nname = \"exec-test\"\ndevice_class = \"lab\"\nserial = 1\n\
             created = \"2026-11-22T10:00:00Z\"\n\n",
        );
        text.push_str(&picket_test_support::loader_entry());
        for (path, sha256) in executables {
            let _ = writeln!(
                text,
                "[[executable]]\npath = {}\nsha256 = \"{sha256}\"\n",
                toml_str(path)
            );
        }
        let toml = self.root.join("policy.toml");
        fs::write(&toml, text).unwrap();
        let bundle = self.root.join("policy.bundle");
        ok(Command::new(picket())
            .args(["policy", "sign", "--key"])
            .arg(&self.key)
            .arg("--in")
            .arg(&toml)
            .arg("--out")
            .arg(&bundle));
        let config = self.root.join("picket.conf");
        fs::write(
            &config,
            format!(
                "device_id = \"test-device\"\ndevice_class = \"lab\"\npolicy = {}\n\
                 trust_dir = {}\nstate_dir = {}\nrescan_interval = \"1h\"\n\n\
                 [alerts]\nwindow = \"60s\"\n\n[output]\nstdout = true\n",
                toml_str(&bundle),
                toml_str(&self.trust),
                toml_str(&self.state),
            ),
        )
        .unwrap();
        let mut args = vec![
            OsStr::new("run"),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        Agent::start(picket(), &args, READY)
    }

    /// Runs an executable no policy knows and waits up to `timeout` for its alert: the sensors
    /// deliver events in order, so everything done before has been handled by then.
    pub(crate) fn barrier(&self, agent: &Agent, timeout: Duration) {
        let marker = self.root.join(unique("barrier"));
        fs::copy("/usr/bin/true", &marker).unwrap();
        let pid = picket_test_support::process::run(&mut Command::new(&marker));
        agent.wait_for_within(
            &format!("the barrier's unknown_executable alert (pid {pid})"),
            timeout,
            Some(pid),
            |a| kind(a) == "unknown_executable" && pid_of(a) == Some(pid),
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Whether the agent counts `path` as a temporary location (its suspicious_exec rule).
fn is_temporary_location(path: &Path) -> bool {
    [
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        "/home",
        "/root",
        "/run/user",
    ]
    .iter()
    .any(|dir| path.starts_with(dir))
}

/// `path` as a TOML basic string (JSON string escapes are valid TOML).
fn toml_str(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("test paths are UTF-8")).unwrap()
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A miss row for each `sensor_data_loss` alert of the process sensor among `alerts`: exec
/// events lost leave execs unchecked or unexplained, which the table should say.
pub(crate) fn record_losses(misses: &mut Misses, alerts: &[Value]) {
    for (i, a) in alerts.iter().filter(|a| is_exec_loss(a)).enumerate() {
        misses.record(
            "the agent lost events",
            i + 1,
            Miss::new(vec!["sensor_data_loss".into()], Some(a)),
        );
    }
}

/// Whether `a` says that the process sensor (execs, forks, exits) lost events.
pub(crate) fn is_exec_loss(a: &Value) -> bool {
    kind(a) == "sensor_data_loss" && a["details"]["sensor"] == "process"
}

/// The alerts detection raised: all but the dry run of enforcement (`would_block`), which
/// judges the same execs on a path of its own (the exec guard's) and is tested with it
/// (`tests/enforce/`). These tests are about what detection makes of each exec.
pub(crate) fn detection(alerts: Vec<Value>) -> Vec<Value> {
    alerts
        .into_iter()
        .filter(|a| kind(a) != "would_block")
        .collect()
}

pub(crate) fn kind(a: &Value) -> &str {
    a["alert"].as_str().unwrap_or("")
}

pub(crate) fn pid_of(a: &Value) -> Option<u32> {
    a["process"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

/// Whether `a` is about process `pid` or one of its descendants.
pub(crate) fn from_tree_of(a: &Value, pid: u32) -> bool {
    pid_of(a) == Some(pid)
        || a["process"]["ancestry"]
            .as_array()
            .is_some_and(|up| up.iter().any(|p| p["pid"].as_u64() == Some(u64::from(pid))))
}

pub(crate) fn lines(alerts: &[Value]) -> String {
    alerts.iter().fold(String::new(), |mut s, a| {
        let _ = writeln!(s, "  {a}");
        s
    })
}
