//! The behavioural baseline: a script run by an interpreter the policy names is judged like an
//! executable, and a program started by a parent the baseline does not expect is a signal.

use super::*;

/// A directory for this test's programs, outside every temporary location (a program run from
/// one is suspicious in itself), removed when dropped.
struct Programs(PathBuf);

impl Programs {
    fn new(tag: &str) -> Programs {
        let dir = Path::new("/var/lib/picket-tests").join(unique(tag));
        fs::create_dir_all(&dir).unwrap();
        Programs(fs::canonicalize(dir).unwrap())
    }

    /// A copy of the shell under another name: a program that is not an interpreter by name.
    fn shell_named(&self, name: &str) -> PathBuf {
        let to = self.0.join(name);
        fs::copy("/usr/bin/dash", &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
        to
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` (shell code) with the program `shell`; returns its pid.
fn run_with(shell: &Path, script: &str) -> u32 {
    run_ok(Command::new(shell).args(["-c", script]))
}

/// The alerts of the processes `parents` started (their children), kind and path, sorted;
/// health kinds left out.
fn of_children(alerts: &[Value], parents: &[u32]) -> Vec<(String, String)> {
    let mut got: Vec<(String, String)> = alerts
        .iter()
        .filter(|a| {
            let ppid = a["process"]["ppid"].as_u64().map(|p| p as u32);
            ppid.is_some_and(|p| parents.contains(&p)) && !HEALTH_KINDS.contains(&kind(a))
        })
        .map(|a| (kind(a).to_string(), path(a).unwrap_or_default().to_string()))
        .collect();
    got.sort();
    got
}

#[test]
fn scripts_and_lineage_are_judged_against_the_behavioural_baseline() {
    let lab = Lab::new("behaviour");
    let programs = Programs::new("behaviour");
    // A scheduler and a web server: two programs that are not interpreters by name.
    let scheduler = programs.shell_named("scheduler");
    let web = programs.shell_named("webd");
    let job = programs.0.join("job.sh");
    fs::write(&job, ": nightly job\n").unwrap();
    let dropped = Path::new("/tmp").join(unique("picket-dropped.sh"));
    fs::write(&dropped, ": dropped\n").unwrap();
    let dash = Path::new("/usr/bin/dash");
    let this_test = std::env::current_exe().unwrap();

    let mut policy = PolicyText::new(1);
    for exe in [dash, &scheduler, &web] {
        policy.executable(exe, &sha256_file(dash));
    }
    policy.executable(&job, &sha256_file(&job));
    policy.raw(&format!(
        "[behaviour]\ninterpreters = [\"/usr/bin/dash\"]\n\n\
         [[behaviour.lineage]]\nparent = {test}\nchild = {scheduler}\n\n\
         [[behaviour.lineage]]\nparent = {test}\nchild = {web}\n\n\
         [[behaviour.lineage]]\nparent = {scheduler}\nchild = {job}\n\n\
         [[behaviour.lineage]]\nparent = {scheduler}\nchild = \"/usr/bin/dash\"\n",
        test = toml_str(&this_test),
        scheduler = toml_str(&scheduler),
        web = toml_str(&web),
        job = toml_str(&job),
    ));
    let bundle = lab.sign("behaviour", &policy.text());
    let agent = Agent::start(&lab.config(&bundle, None));

    // What the baseline expects: the scheduler runs the job's script and inline shell code.
    let healthy = run_with(&scheduler, &format!("sh {}; sh -c :; true", job.display()));
    // The web server starting a shell: the classic case.
    let attacked = run_with(&web, "sh -c :; true");
    let a = agent.wait_for(
        "unexpected_lineage of a shell started by the web server",
        Some(attacked),
        |a| kind(a) == "unexpected_lineage" && a["process"]["ppid"] == attacked,
    );
    check_envelope(&a);
    assert_eq!(a["severity"], "high", "{a}");
    assert_eq!(a["details"]["parent"], web.to_str().unwrap(), "{a}");
    assert_eq!(a["details"]["child"], "/usr/bin/dash", "{a}");
    assert_eq!(a["details"]["inline"], "argument", "{a}");
    // A script dropped in /tmp run by the scheduler's shell.
    let dropper = run_with(&scheduler, &format!("sh {}; true", dropped.display()));
    agent.wait_for(
        "unknown_executable of the dropped script",
        Some(dropper),
        |a| {
            kind(a) == "unknown_executable"
                && a["process"]["ppid"] == dropper
                && path(a) == dropped.to_str()
        },
    );
    // The job's script changed after the baseline was signed.
    fs::write(&job, ": nightly job, changed\n").unwrap();
    let changed = run_with(&scheduler, &format!("sh {}; true", job.display()));
    let a = agent.wait_for(
        "modified_executable of the changed script",
        Some(changed),
        |a| kind(a) == "modified_executable" && a["process"]["ppid"] == changed,
    );
    assert_eq!(a["severity"], "critical", "{a}");
    assert_eq!(a["rule"], "executables.scripts", "{a}");
    assert_eq!(a["details"]["interpreter"], "/usr/bin/dash", "{a}");
    assert_eq!(a["details"]["actual"], sha256_file(&job), "{a}");

    agent.barrier(&lab, "after the scripts");
    let out = agent.stop();
    let _ = fs::remove_file(&dropped);
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let pair = |k: &str, p: String| (k.to_string(), p);
    assert_eq!(
        of_children(&out.alerts, &[healthy]),
        vec![],
        "the expected lineage and a listed script raise nothing"
    );
    assert_eq!(
        of_children(&out.alerts, &[attacked]),
        vec![pair("unexpected_lineage", "/usr/bin/dash".into())]
    );
    assert_eq!(
        of_children(&out.alerts, &[dropper]),
        vec![
            pair("suspicious_exec", p(&dropped)),
            pair("unexpected_lineage", p(&dropped)),
            pair("unknown_executable", p(&dropped)),
        ]
    );
    assert_eq!(
        of_children(&out.alerts, &[changed]),
        vec![pair("modified_executable", p(&job))]
    );
    // The programs themselves, started by this test as the baseline says: nothing.
    let own: Vec<&Value> = out
        .alerts
        .iter()
        .filter(|a| {
            [healthy, attacked, dropper, changed].contains(&pid(a).unwrap_or(0))
                && !HEALTH_KINDS.contains(&kind(a))
        })
        .collect();
    assert!(own.is_empty(), "alerts of the programs themselves: {own:?}");
}

#[test]
fn a_sensitive_file_read_by_an_executable_not_among_its_readers() {
    let lab = Lab::new("sensitive");
    let programs = Programs::new("sensitive");
    let secret = programs.0.join("device.key");
    fs::write(&secret, "secret\n").unwrap();
    // The one program allowed to read it: a copy of cat under its own name.
    let reader = programs.0.join("keyreader");
    fs::copy("/usr/bin/cat", &reader).unwrap();
    let cat = Path::new("/usr/bin/cat");
    let mut policy = PolicyText::new(1);
    for exe in [cat, &reader] {
        policy.executable(exe, &sha256_file(cat));
    }
    policy.raw(&format!(
        "[[behaviour.sensitive]]\npath = {}\nreaders = [{}]\n",
        toml_str(&secret),
        toml_str(&reader)
    ));
    let bundle = lab.sign("sensitive", &policy.text());
    let agent = Agent::start(&lab.config(&bundle, None));
    let read_by = |exe: &Path, file: &Path| run_ok(Command::new(exe).arg(file));

    let allowed = read_by(&reader, &secret);
    let stolen = read_by(cat, &secret);
    let a = agent.wait_for("sensitive_file_read by cat", Some(stolen), |a| {
        kind(a) == "sensitive_file_read" && pid(a) == Some(stolen)
    });
    check_envelope(&a);
    assert_eq!(a["severity"], "high", "{a}");
    assert_eq!(path(&a), secret.to_str(), "{a}");
    assert_eq!(a["details"]["reader"], "/usr/bin/cat", "{a}");
    assert_eq!(a["process"]["exe"], "/usr/bin/cat", "{a}");
    // Through another name of the same file: the mark is on the file, not the name. (Each
    // step reads with another program: identical alerts within the window are aggregated.)
    let link = programs.0.join("innocent.txt");
    fs::hard_link(&secret, &link).unwrap();
    let through_link = read_by(Path::new("/usr/bin/head"), &link);
    agent.wait_for(
        "sensitive_file_read through a hard link",
        Some(through_link),
        |a| kind(a) == "sensitive_file_read" && pid(a) == Some(through_link),
    );
    // Replaced under its name (a new file renamed over it): the new file is watched within a
    // second; until then its reads are not seen, so the test reads until one is reported.
    let next = programs.0.join("device.key.new");
    fs::write(&next, "rotated\n").unwrap();
    fs::rename(&next, &secret).unwrap();
    let deadline = Instant::now() + ALERT_TIMEOUT;
    let mut readers = Vec::new();
    let replaced = loop {
        readers.push(read_by(Path::new("/usr/bin/tail"), &secret));
        let seen = agent.alerts().into_iter().find(|a| {
            kind(a) == "sensitive_file_read" && pid(a).is_some_and(|p| readers.contains(&p))
        });
        if let Some(a) = seen {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no read of the replaced file reported:\n{}",
            agent.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(path(&replaced), secret.to_str(), "{replaced}");

    agent.barrier(&lab, "after the reads");
    let out = agent.stop();
    let of_allowed: Vec<&Value> = out
        .alerts
        .iter()
        .filter(|a| pid(a) == Some(allowed) && !HEALTH_KINDS.contains(&kind(a)))
        .collect();
    assert!(of_allowed.is_empty(), "the allowed reader: {of_allowed:?}");
    let reads: Vec<&Value> = out
        .alerts
        .iter()
        .filter(|a| kind(a) == "sensitive_file_read" && pid(a) == Some(stolen))
        .collect();
    assert_eq!(reads.len(), 1, "one alert per read: {reads:?}");
}
