//! Paths under any spelling: links to files and directories (made before or while running),
//! in the policy or in the event, and the agent's own files.

use super::*;

#[test]
fn own_paths_match_whole_components() {
    assert!(under(Path::new("/etc/picket"), Path::new("/etc/picket")));
    assert!(under(
        Path::new("/etc/picket/k.pub"),
        Path::new("/etc/picket")
    ));
    assert!(!under(Path::new("/etc/picketx"), Path::new("/etc/picket")));
    assert!(under(Path::new("/x"), Path::new("/")));
    assert!(!under(Path::new("etc/picket"), Path::new("/etc/picket")));
}

/// A scratch directory not under /tmp (or wherever running is suspicious in itself): beside the
/// test binary, in whatever target directory the build uses, unless that is itself under such a
/// directory.
fn scratch_outside_temporary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap().canonicalize().unwrap();
    let build = exe.parent().unwrap();
    let base = if TEMPORARY.iter().any(|t| build.starts_with(t)) {
        Path::new("/var/lib")
    } else {
        build
    };
    base.join(format!("picket-detect-{name}-{}", std::process::id()))
}

#[test]
fn a_link_to_a_listed_executable_is_that_executable() {
    let dir = scratch_outside_temporary("link");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real")).unwrap();
    std::fs::write(dir.join("real/tool"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink(dir.join("real/tool"), dir.join("tool")).unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("bin")).unwrap();
    let real = dir.join("real/tool").canonicalize().unwrap();
    let policy = picket_policy::load_toml(
        &format!(
            "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
         created = \"2026-11-22T10:00:00Z\"\n\n[[executable]]\npath = \"{}\"\n\
         sha256 = \"{}\"\n",
            real.display(),
            "a".repeat(64)
        ),
        "t.toml",
    )
    .unwrap();
    let d = Detector::new(policy, Modes::default(), vec![]);
    let exec = |path: &Path, sha: &str| {
        kinds(
            &d,
            json!({"event":"exec","exe":path.to_str().unwrap(),"sha256":sha}),
        )
    };
    let a = "a".repeat(64);
    assert!(exec(&dir.join("tool"), &a).is_empty(), "a file link");
    assert!(
        exec(&dir.join("bin/tool"), &a).is_empty(),
        "a directory link"
    );
    // The hash still decides.
    assert_eq!(
        exec(&dir.join("tool"), &"b".repeat(64)),
        vec![Kind::ModifiedExecutable]
    );
    assert_eq!(
        exec(&dir.join("missing"), &a),
        vec![Kind::UnknownExecutable]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A policy protecting `protected` (a file) and the glob `glob`, nothing else.
fn file_policy(protected: &Path, glob: &str) -> Detector {
    let policy = picket_policy::load_toml(
        &format!(
            "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
             created = \"2026-11-22T10:00:00Z\"\n\n[[files.protected]]\npath = \"{}\"\n\
             sha256 = \"{}\"\n\n[[files.protected_glob]]\nglob = \"{glob}\"\n",
            protected.display(),
            "a".repeat(64)
        ),
        "t.toml",
    )
    .unwrap();
    Detector::new(policy, Modes::default(), vec![])
}

#[test]
fn one_spelling_in_the_policy_covers_every_spelling_through_directory_links() {
    let dir = std::env::temp_dir()
        .canonicalize()
        .unwrap()
        .join(format!("picket-detect-canon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real/conf.d")).unwrap();
    std::fs::write(dir.join("real/f"), "f").unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
    let open = |d: &Detector, path: &Path| {
        kinds(
            d,
            json!({"event":"file","op":"open","path":path.to_str().unwrap()}),
        )
    };
    let changed = vec![Kind::ProtectedFileChanged];
    // The policy names the link's spelling; the event, the real one; and the reverse.
    let by_link = file_policy(
        &dir.join("link/f"),
        &format!("{}/link/conf.d/*", dir.display()),
    );
    let by_real = file_policy(
        &dir.join("real/f"),
        &format!("{}/real/conf.d/*", dir.display()),
    );
    for d in [&by_link, &by_real] {
        for spelling in ["real", "link"] {
            let base = dir.join(spelling);
            assert_eq!(open(d, &base.join("f")), changed, "{spelling}/f");
            assert_eq!(
                open(d, &base.join("conf.d/x.conf")),
                changed,
                "{spelling}/conf.d/x.conf"
            );
            // Siblings are not protected, whatever the spelling.
            assert!(open(d, &base.join("g")).is_empty(), "{spelling}/g");
            assert!(
                open(d, &base.join("conf.d")).is_empty(),
                "{spelling}/conf.d"
            );
        }
        assert!(open(d, &dir.join("other/f")).is_empty());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_executable_is_found_under_any_spelling_of_its_directory() {
    let dir = scratch_outside_temporary("spelling");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real")).unwrap();
    std::fs::write(dir.join("real/tool"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("bin")).unwrap();
    // Listed under the link's spelling; run under the real one.
    let policy = picket_policy::load_toml(
        &format!(
            "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
             created = \"2026-11-22T10:00:00Z\"\n\n[[executable]]\npath = \"{}\"\n\
             sha256 = \"{}\"\n",
            dir.join("bin/tool").display(),
            "a".repeat(64)
        ),
        "t.toml",
    )
    .unwrap();
    let d = Detector::new(policy, Modes::default(), vec![]);
    let exec = |path: &Path, sha: &str| {
        kinds(
            &d,
            json!({"event":"exec","exe":path.to_str().unwrap(),"sha256":sha}),
        )
    };
    let a = "a".repeat(64);
    assert!(exec(&dir.join("real/tool"), &a).is_empty());
    assert!(exec(&dir.join("bin/tool"), &a).is_empty());
    assert_eq!(
        exec(&dir.join("real/tool"), &"b".repeat(64)),
        vec![Kind::ModifiedExecutable]
    );
    assert_eq!(
        exec(&dir.join("real/other"), &a),
        vec![Kind::UnknownExecutable]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_agents_own_files_are_its_own_under_any_spelling() {
    let dir = std::env::temp_dir()
        .canonicalize()
        .unwrap()
        .join(format!("picket-detect-own-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real/state")).unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
    let d = Detector::new(
        detector().policy().clone(),
        Modes::default(),
        vec![dir.join("link/state")],
    );
    let open = |path: &Path| {
        kinds(
            &d,
            json!({"event":"file","op":"open","path":path.to_str().unwrap()}),
        )
    };
    assert_eq!(open(&dir.join("real/state/x")), vec![Kind::AgentTamper]);
    assert_eq!(open(&dir.join("link/state/x")), vec![Kind::AgentTamper]);
    assert!(open(&dir.join("real/stateful")).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_link_made_while_running_is_followed_once_seen() {
    let dir = std::env::temp_dir()
        .canonicalize()
        .unwrap()
        .join(format!("picket-detect-newlink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real")).unwrap();
    let d = file_policy(&dir.join("real/f"), &format!("{}/none/*", dir.display()));
    let open = |path: &Path| {
        kinds(
            &d,
            json!({"event":"file","op":"open","path":path.to_str().unwrap()}),
        )
    };
    // Not a link yet: another file.
    assert!(open(&dir.join("later/f")).is_empty());
    std::os::unix::fs::symlink(dir.join("real"), dir.join("later")).unwrap();
    let made = json!({"event":"file","op":"symlink","path":dir.join("real").to_str().unwrap(),
        "new_path":dir.join("later").to_str().unwrap()});
    assert!(kinds(&d, made).is_empty());
    assert_eq!(open(&dir.join("later/f")), vec![Kind::ProtectedFileChanged]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_run_through_a_link_is_checked_under_the_name_the_exec_used() {
    let d = detector();
    let a = "a".repeat(64);
    let b = "b".repeat(64);
    let exec = |sha: &str| {
        d.check(&event(json!({
            "event": "exec", "exe": "/usr/lib/app/app-1.2", "name_used": "/usr/bin/app", "sha256": sha
        })))
    };
    // Listed as `/usr/bin/app`, which led to the file that ran: its hash decides.
    assert!(exec(&a).is_empty());
    let drafts = exec(&b);
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    assert_eq!(drafts[0].kind, Kind::ModifiedExecutable);
    // The same file by its own name, not listed: unknown.
    let drafts = d.check(&event(
        json!({"event": "exec", "exe": "/usr/lib/app/app-1.2", "sha256": a}),
    ));
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    assert_eq!(drafts[0].kind, Kind::UnknownExecutable);
}

#[test]
fn a_network_rule_naming_a_link_allows_the_file_it_leads_to() {
    let dir = std::env::temp_dir()
        .canonicalize()
        .unwrap()
        .join(format!("picket-detect-rule-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("python3.11"), "x").unwrap();
    std::os::unix::fs::symlink(dir.join("python3.11"), dir.join("python3")).unwrap();
    let policy = picket_policy::load_toml(
        &format!(
            r#"
[metadata]
name = "t"
device_class = "c"
serial = 1
created = "2026-11-22T10:00:00Z"

[[network.outbound]]
cidr = "10.0.0.0/8"
ports = 443
executable = "{}/python3"
"#,
            dir.display()
        ),
        "t.toml",
    )
    .unwrap();
    let modes = policy.modes;
    let d = Detector::new(policy, modes, vec![]);
    let connect = |exe: PathBuf| {
        kinds(
            &d,
            json!({"event":"net","op":"tcp_connect","exe":exe.to_str().unwrap(),
                   "remote_addr":"10.1.2.3","remote_port":443}),
        )
    };
    assert!(connect(dir.join("python3.11")).is_empty());
    assert!(connect(dir.join("python3")).is_empty());
    assert_eq!(connect(dir.join("other")), vec![Kind::UnexpectedConnection]);
    std::fs::remove_dir_all(&dir).unwrap();
}
