//! One spelling in the policy covers every spelling on the device: paths through directory
//! links (merged /usr), and `/**` globs scanned at start-up like `/*`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Canonical paths
// ---------------------------------------------------------------------------------------------

/// Files created in /usr/lib for one test, removed when dropped.
struct UsrLibFiles(Vec<PathBuf>);

impl UsrLibFiles {
    fn create(names: &[&str]) -> UsrLibFiles {
        let files: Vec<PathBuf> = names
            .iter()
            .map(|n| Path::new("/usr/lib").join(unique(&format!("picket-canonical-{n}"))))
            .collect();
        for f in &files {
            fs::write(f, "original\n").unwrap();
        }
        UsrLibFiles(files)
    }
}

impl Drop for UsrLibFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
        }
    }
}

/// `/lib/NAME` for `/usr/lib/NAME`.
fn through_lib(usr_lib_file: &Path) -> PathBuf {
    Path::new("/lib").join(usr_lib_file.file_name().unwrap())
}

/// Appends a line to `file` from a fresh shell; returns the shell's pid.
fn append(file: &Path) -> u32 {
    run_ok(
        Command::new("/bin/sh")
            .args(["-c", "printf 'changed\\n' >> \"$0\""])
            .arg(file),
    )
}

#[test]
fn a_policy_path_catches_changes_made_through_a_directory_link_and_the_reverse() {
    // This CI machine is merged-/usr: the test depends on it and says so if it is not.
    let lib = fs::symlink_metadata("/lib").unwrap();
    assert!(
        lib.file_type().is_symlink() && fs::canonicalize("/lib").unwrap() == Path::new("/usr/lib"),
        "this test needs a merged-/usr system (/lib a link to /usr/lib)"
    );
    let lab = Lab::new("canonical");
    let files = UsrLibFiles::create(&["usr", "lib", "sibling"]);
    let (by_usr, by_lib, sibling) = (&files.0[0], &files.0[1], &files.0[2]);
    // Listed as /usr/lib/..., changed through /lib/...; listed as /lib/..., changed through
    // /usr/lib/...; the sibling is not listed at all.
    let mut policy = PolicyText::new(1);
    policy.protected(by_usr, &sha256_file(by_usr));
    policy.protected(&through_lib(by_lib), &sha256_file(by_lib));
    let bundle = lab.sign("canonical", &policy.text());
    let agent = Agent::start(&lab.config(&bundle, None));

    for (written, listed) in [
        (through_lib(by_usr), by_usr.clone()),
        (by_lib.clone(), through_lib(by_lib)),
    ] {
        let writer = append(&written);
        let a = agent.wait_for(
            &format!(
                "protected_file_changed of {} (listed as {}) by pid {writer}",
                written.display(),
                listed.display()
            ),
            Some(writer),
            |a| kind(a) == "protected_file_changed" && pid(a) == Some(writer),
        );
        check_envelope(&a);
        let reported = path(&a).unwrap_or_default();
        assert!(
            reported == written.to_str().unwrap() || reported == listed.to_str().unwrap(),
            "the alert names the file under one of its spellings: {a}"
        );
    }
    let writer = append(&through_lib(sibling));
    agent.barrier(&lab, "after the sibling's change");
    let out = agent.stop();
    let name = sibling.file_name().unwrap().to_str().unwrap();
    let about_sibling: Vec<Value> = out
        .alerts
        .into_iter()
        .filter(|a| {
            (pid(a) == Some(writer) && kind(a) == "protected_file_changed")
                || path(a).is_some_and(|p| p.ends_with(name))
        })
        .collect();
    assert!(
        about_sibling.is_empty(),
        "an unlisted sibling raises nothing:\n{}",
        lines(&about_sibling)
    );
}

// ---------------------------------------------------------------------------------------------
// `/**` globs across restarts
// ---------------------------------------------------------------------------------------------

/// Starts the agent, waits until it handled everything up to now, stops it and returns the
/// integrity drift it reported under `dir`.
fn drift_at_start(lab: &Lab, config: &Path, dir: &Path) -> Vec<Value> {
    let agent = Agent::start(config);
    agent.barrier(lab, "after the start-up scan");
    agent
        .stop()
        .alerts
        .into_iter()
        .filter(|a| {
            kind(a) == "integrity_drift" && path(a).is_some_and(|p| Path::new(p).starts_with(dir))
        })
        .collect()
}

#[test]
fn drift_under_a_double_star_glob_while_stopped_is_reported_at_restart() {
    let lab = Lab::new("doublestar");
    let fw = lab.dir("firmware");
    fs::create_dir_all(fw.join("a/b")).unwrap();
    fs::write(fw.join("top.bin"), "top").unwrap();
    fs::write(fw.join("a/b/deep.bin"), "deep").unwrap();
    let mut policy = PolicyText::new(1);
    policy.raw(&format!(
        "[[files.protected_glob]]\nglob = {}\n",
        toml_str(&fw.join("**"))
    ));
    let bundle = lab.sign("doublestar", &policy.text());
    let config = lab.config(&bundle, None);

    // First start: recorded (the log says how many files); second: nothing changed, no drift.
    let first = drift_at_start(&lab, &config, &fw);
    assert!(first.is_empty(), "first scan:\n{}", lines(&first));
    let snapshot = fs::read_to_string(lab.state.join("integrity.snapshot")).unwrap();
    assert!(
        snapshot.contains(&format!("{}", fw.join("a/b/deep.bin").display())),
        "a file two levels down is recorded: {snapshot}"
    );
    let unchanged = drift_at_start(&lab, &config, &fw);
    assert!(
        unchanged.is_empty(),
        "nothing changed:\n{}",
        lines(&unchanged)
    );

    // While stopped: a deep file changed, a new one in a new directory, the top one removed.
    fs::write(fw.join("a/b/deep.bin"), "patched").unwrap();
    fs::create_dir_all(fw.join("c")).unwrap();
    fs::write(fw.join("c/new.bin"), "new").unwrap();
    fs::remove_file(fw.join("top.bin")).unwrap();
    let mut drift: Vec<(String, String)> = drift_at_start(&lab, &config, &fw)
        .iter()
        .map(|a| {
            check_envelope(a);
            (
                path(a).unwrap().to_string(),
                a["details"]["what"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    drift.sort();
    let p = |n: &str| fw.join(n).display().to_string();
    assert_eq!(
        drift,
        vec![
            (p("a/b/deep.bin"), "content".to_string()),
            (p("c/new.bin"), "new file".to_string()),
            (p("top.bin"), "missing".to_string()),
        ]
    );
    // Reported once.
    let again = drift_at_start(&lab, &config, &fw);
    assert!(again.is_empty(), "reported once:\n{}", lines(&again));
}
