//! Dynamic loader variables in an exec's environment (`loader_environment`): read in the kernel
//! from `envp` (only `LD_PRELOAD`, `LD_AUDIT` and `LD_LIBRARY_PATH`, within the first 128
//! entries), judged by the agent.

use super::*;
use picket_test_support::Monitor;
use std::os::unix::fs::chown;

/// `/usr/bin/env` and `/usr/bin/true` by their canonical paths, as events name them.
struct Tools {
    env: PathBuf,
    r#true: PathBuf,
}

impl Tools {
    fn find() -> Tools {
        Tools {
            env: fs::canonicalize("/usr/bin/env").unwrap(),
            r#true: fs::canonicalize("/usr/bin/true").unwrap(),
        }
    }

    /// A policy that lets both run, so that the environment is all an exec of them is judged
    /// by; `extra` is added as is.
    fn policy(&self, extra: &str) -> String {
        let mut policy = PolicyText::new(1);
        for tool in [&self.env, &self.r#true] {
            policy.executable(tool, &sha256_file(tool));
        }
        // The section turns the behavioural signals on.
        policy.raw("[behaviour]\n");
        policy.raw(extra);
        policy.text()
    }

    /// Runs `/usr/bin/true` with exactly the environment `entries` (in that order, through
    /// `env -i`, whose own environment is empty); returns the pid, which both execs share.
    fn run_true_with(&self, entries: &[String]) -> u32 {
        run_ok(
            Command::new(&self.env)
                .env_clear()
                .arg("-i")
                .args(entries)
                .arg(&self.r#true)
                // The loader says a library it cannot find is ignored; nothing to see.
                .stderr(Stdio::null()),
        )
    }
}

/// Library directories outside the temporary locations whatever the checkout's place, removed
/// when dropped.
struct LibDirs(PathBuf);

impl LibDirs {
    fn create() -> LibDirs {
        let root = Path::new("/var/lib/picket-tests").join(unique("loader"));
        fs::create_dir_all(&root).unwrap();
        LibDirs(root)
    }

    /// A new directory `name`, with `mode`, owned by `owner`.
    fn dir(&self, name: &str, mode: u32, owner: (u32, u32)) -> PathBuf {
        let dir = self.0.join(name);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        chown(&dir, Some(owner.0), Some(owner.1)).unwrap();
        dir
    }
}

impl Drop for LibDirs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `count` entries `PREFIX000=x`, ... (sorted, ordinary).
fn filler(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:03}=x")).collect()
}

fn loader_alert_of(agent: &Agent, what: &str, pid_of: u32) -> Value {
    agent.wait_for(what, Some(pid_of), |a| {
        kind(a) == "loader_environment" && pid(a) == Some(pid_of)
    })
}

#[test]
fn loader_variables_in_an_exec_environment_raise_loader_environment() {
    let lab = Lab::new("loader");
    let tools = Tools::find();
    let bundle = lab.sign("loader", &tools.policy(""));
    let agent = Agent::start(&lab.config(&bundle, None));
    let true_path = tools.r#true.to_str().unwrap();
    let preload_reason = "LD_PRELOAD loads code into the program";
    let mut raised: Vec<(u32, Value)> = Vec::new();

    // LD_PRELOAD, alone among ordinary variables.
    let preload = tools.run_true_with(&[
        "HOME=/".to_string(),
        "LD_PRELOAD=/tmp/x.so".to_string(),
        "PATH=/usr/bin:/bin".to_string(),
    ]);
    let a = loader_alert_of(&agent, &format!("LD_PRELOAD by pid {preload}"), preload);
    check_envelope(&a);
    assert_eq!(a["severity"], "high", "{a}");
    assert_eq!(a["rule"], "behaviour", "{a}");
    assert_eq!(path(&a), Some(true_path), "{a}");
    assert_eq!(
        a["details"],
        serde_json::json!({"variables": [
            {"variable": "LD_PRELOAD", "value": "/tmp/x.so", "reason": preload_reason}
        ]}),
        "{a}"
    );
    raised.push((preload, a));

    // LD_AUDIT, with a harmless LD_LIBRARY_PATH listed but not blamed.
    let audit = tools.run_true_with(&[
        "LD_AUDIT=/tmp/audit.so".to_string(),
        "LD_LIBRARY_PATH=/usr/lib".to_string(),
    ]);
    let a = loader_alert_of(&agent, &format!("LD_AUDIT by pid {audit}"), audit);
    assert_eq!(
        a["details"],
        serde_json::json!({"variables": [
            {"variable": "LD_AUDIT", "value": "/tmp/audit.so",
             "reason": "LD_AUDIT loads code into the program"},
            {"variable": "LD_LIBRARY_PATH", "value": "/usr/lib"},
        ]}),
        "{a}"
    );
    raised.push((audit, a));

    // LD_LIBRARY_PATH into a temporary location, a world-writable directory, a user's, one a
    // group other than root's may write.
    let tmp_lib = format!("/tmp/{}", unique("picket-lib"));
    let libs = LibDirs::create();
    let open_lib = libs.dir("open", 0o1777, (0, 0));
    let user_lib = libs.dir("user", 0o755, (1000, 1000));
    let group_lib = libs.dir("group", 0o775, (0, 1000));
    let root_lib = libs.dir("root", 0o775, (0, 0));
    for (dir, reason) in [
        (
            tmp_lib.clone(),
            format!("{tmp_lib} is in a temporary location"),
        ),
        (
            open_lib.to_str().unwrap().to_string(),
            format!("{} is world-writable", open_lib.display()),
        ),
        (
            user_lib.to_str().unwrap().to_string(),
            format!("{} is owned by uid 1000", user_lib.display()),
        ),
        (
            group_lib.to_str().unwrap().to_string(),
            format!("{} is writable by gid 1000", group_lib.display()),
        ),
    ] {
        let value = format!("/usr/lib:{dir}");
        let p = tools.run_true_with(&[format!("LD_LIBRARY_PATH={value}")]);
        let a = loader_alert_of(&agent, &format!("LD_LIBRARY_PATH={value} by pid {p}"), p);
        assert_eq!(
            a["details"],
            serde_json::json!({"variables": [
                {"variable": "LD_LIBRARY_PATH", "value": value, "reason": reason}
            ]}),
            "{a}"
        );
        raised.push((p, a));
    }

    // LD_PRELOAD within the first 128 entries of a longer environment: caught, and said to be
    // incomplete.
    let mut entries = filler("A", 120);
    entries.push("LD_PRELOAD=/tmp/late.so".to_string());
    entries.extend(filler("Z", 20));
    let late = tools.run_true_with(&entries);
    let a = loader_alert_of(
        &agent,
        &format!("LD_PRELOAD at entry 121 by pid {late}"),
        late,
    );
    assert_eq!(
        a["details"],
        serde_json::json!({
            "variables": [
                {"variable": "LD_PRELOAD", "value": "/tmp/late.so", "reason": preload_reason}
            ],
            "incomplete": true,
        }),
        "{a}"
    );
    raised.push((late, a));

    // Quiet: an ordinary environment, vendor library directories (root's, group root's, one
    // missing), a cleared LD_PRELOAD, and a variable beyond the entries examined (the limit:
    // documented, seen by `picket monitor`).
    let ordinary = tools.run_true_with(&[
        "HOME=/root".to_string(),
        "LANG=C.UTF-8".to_string(),
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "TERM=linux".to_string(),
    ]);
    let vendor = tools.run_true_with(&[
        format!(
            "LD_LIBRARY_PATH=/usr/lib:{}:/nonexistent/lib",
            root_lib.display()
        ),
        "LD_PRELOAD=".to_string(),
    ]);
    let mut entries = filler("A", 140);
    entries.push("LD_PRELOAD=/tmp/beyond.so".to_string());
    let beyond = tools.run_true_with(&entries);

    agent.barrier(&lab, "after the loader variables");
    let out = agent.stop();
    let pids: BTreeSet<u32> = raised
        .iter()
        .map(|(p, _)| *p)
        .chain([ordinary, vendor, beyond])
        .collect();
    let mine: Vec<Value> = out
        .alerts
        .into_iter()
        .filter(|a| pid(a).is_some_and(|p| pids.contains(&p)))
        .filter(|a| !HEALTH_KINDS.contains(&kind(a)))
        .collect();
    let expected: Vec<&Value> = raised.iter().map(|(_, a)| a).collect();
    assert_eq!(
        mine.iter().collect::<Vec<_>>(),
        expected,
        "exactly one loader_environment per suspicious exec, nothing else (quiet pids \
         {ordinary}, {vendor}, {beyond}):\n{}",
        lines(&mine)
    );
}

#[test]
fn behaviour_off_raises_no_loader_environment() {
    let lab = Lab::new("loader-off");
    let tools = Tools::find();
    let bundle = lab.sign(
        "loader-off",
        &tools.policy("[modes]\nbehaviour = \"off\"\n"),
    );
    let agent = Agent::start(&lab.config(&bundle, None));
    let p = tools.run_true_with(&[
        "LD_PRELOAD=/tmp/x.so".to_string(),
        "LD_AUDIT=/tmp/audit.so".to_string(),
        "LD_LIBRARY_PATH=/tmp".to_string(),
    ]);
    agent.barrier(&lab, "after the loader variables");
    let out = agent.stop();
    let of_p: Vec<Value> = out
        .alerts
        .into_iter()
        .filter(|a| pid(a) == Some(p) && !HEALTH_KINDS.contains(&kind(a)))
        .collect();
    assert!(
        of_p.is_empty(),
        "behaviour off: nothing for pid {p}:\n{}",
        lines(&of_p)
    );
}

#[test]
fn monitor_shows_loader_variables_and_an_environment_not_fully_examined() {
    let tools = Tools::find();
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let exec_of_true = |p: u32| {
        mon.wait_for_pid(&format!("exec of true by pid {p}"), p, |e| {
            e["event"] == "exec" && e["exe"] == tools.r#true.to_str().unwrap()
        })
    };

    // A value longer than the record holds (256 bytes of `NAME=value`): cut, and said so.
    let long = format!("/usr/lib/{}", "x".repeat(300));
    let p = tools.run_true_with(&[
        "LD_LIBRARY_PATH=/opt/vendor/lib".to_string(),
        "PATH=/usr/bin".to_string(),
        format!("LD_PRELOAD={long}"),
    ]);
    let e = exec_of_true(p);
    let kept = 256 - "LD_LIBRARY_PATH=/opt/vendor/lib\0LD_PRELOAD=".len();
    assert_eq!(
        e["loader_env"],
        serde_json::json!([
            {"variable": "LD_LIBRARY_PATH", "value": "/opt/vendor/lib"},
            {"variable": "LD_PRELOAD", "value": &long[..kept], "truncated": true},
        ]),
        "{e}"
    );
    assert_eq!(e["loader_env_truncated"], true, "{e}");
    assert!(e.get("env_unexamined").is_none(), "{e}");

    // More entries than examined: flagged, and the variable beyond is not seen.
    let mut entries = filler("A", 140);
    entries.push("LD_PRELOAD=/tmp/beyond.so".to_string());
    let p = tools.run_true_with(&entries);
    let e = exec_of_true(p);
    assert_eq!(e["env_unexamined"], true, "{e}");
    assert!(e.get("loader_env").is_none(), "{e}");

    // An environment without them, of exactly 128 entries: nothing said.
    let p = tools.run_true_with(&filler("A", 128));
    let e = exec_of_true(p);
    for key in ["loader_env", "loader_env_truncated", "env_unexamined"] {
        assert!(e.get(key).is_none(), "{key}: {e}");
    }
    mon.stop();
}
