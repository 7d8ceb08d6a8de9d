use super::*;
use crate::enrich::process::{Ancestor, Image};
use crate::enrich::script::code_of;
use crate::enrich::{Category, Context, Fields, Record};
use crate::sensors::decode::{Comm, Task};
use std::net::IpAddr;
use std::sync::Arc;

fn detector() -> Detector {
    let policy = picket_policy::load_toml(
        r#"
[metadata]
name = "t"
device_class = "c"
serial = 1
created = "2026-11-22T10:00:00Z"

[[executable]]
path = "/usr/bin/app"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

[[executable_glob]]
glob = "/opt/scripts/*.sh"
weak = true

[[network.outbound]]
cidr = "10.0.0.0/8"
ports = 443
executable = "/usr/bin/app"

[[network.listen]]
port = 22

[[files.protected]]
path = "/etc/app.conf"
sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

[[files.protected_glob]]
glob = "/etc/init.d/*"
"#,
        "t.toml",
    )
    .unwrap();
    let modes = policy.modes;
    Detector::new(policy, modes, vec![PathBuf::from("/etc/picket")])
}

/// A typed event with what `fields` gives (the keys a test uses), the rest empty.
fn event(fields: Value) -> Event {
    let process = process_context(&fields);
    let (category, detail) = match text(&fields, "event").unwrap() {
        "exec" => (Category::Exec, exec_detail(&fields)),
        "net" => (Category::Net, net_detail(&fields)),
        "file" => (Category::File, file_detail(&fields)),
        "read" => (
            Category::File,
            Detail::Read {
                path: PathBuf::from(text(&fields, "path").unwrap()),
            },
        ),
        other => panic!("no event {other} in these tests"),
    };
    Event {
        category,
        fields: Fields::new_for_test(Record {
            task: test_task(),
            process,
            detail,
        }),
    }
}

/// The string at `k` in `fields`, if any.
fn text<'a>(fields: &'a Value, k: &str) -> Option<&'a str> {
    fields.get(k).and_then(Value::as_str)
}

/// Whether `k` in `fields` is `true`.
fn flag(fields: &Value, k: &str) -> bool {
    fields.get(k).and_then(Value::as_bool) == Some(true)
}

/// The port at `k` in `fields`, or 0.
fn port(fields: &Value, k: &str) -> u16 {
    fields
        .get(k)
        .and_then(Value::as_u64)
        .map_or(0, |p| p as u16)
}

/// The 32 bytes written as 64 hex digits in `hex`.
fn digest(hex: &str) -> [u8; 32] {
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
    }
    d
}

/// The process context: `exe`, `sha256` (hex) and `argv` from `fields` (the code an
/// interpreter runs found from them, relative to `/work`), its parent from `parent` (an
/// object with `exe` and `argv`) when given.
fn process_context(fields: &Value) -> Option<Context> {
    let sha256 = text(fields, "sha256").map(digest);
    let image = Image {
        exe: text(fields, "exe").map(PathBuf::from),
        sha256,
        argv: fields
            .get("argv")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap().as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default(),
        code: None,
        script_sha256: None,
        applet: None,
    };
    let code = image
        .exe
        .as_deref()
        .and_then(|e| code_of(e, &image.argv, Some(Path::new("/work"))));
    let script_sha256 = text(fields, "script_sha256").map(|hex| Ok(digest(hex)));
    let applet = image
        .exe
        .as_deref()
        .and_then(|e| crate::enrich::script::applet_of(e, &image.argv));
    let image = Image {
        code,
        script_sha256,
        applet,
        ..image
    };
    let ancestry = fields
        .get("parent")
        .and_then(process_context)
        .map(|parent| Ancestor {
            pid: 1,
            image: parent.image,
        })
        .into_iter()
        .collect();
    Some(Context {
        ppid: None,
        image: Arc::new(image),
        ancestry,
    })
}

/// An exec, `fileless` and `deleted` from `fields`.
fn exec_detail(fields: &Value) -> Detail {
    Detail::Exec {
        filename: PathBuf::new(),
        argv_truncated: false,
        argv_missing: false,
        interpreter: None,
        fileless: flag(fields, "fileless"),
        deleted: flag(fields, "deleted"),
        execveat: false,
        file: None,
        hash_error: fields["hash_error"].as_str().map(str::to_string),
        name_used: text(fields, "name_used").map(PathBuf::from),
        loader_env: vec![],
        loader_env_truncated: false,
        env_unexamined: false,
        killed: flag(fields, "killed"),
    }
}

/// A network operation: `op`, `local_port`, `remote_addr` and `remote_port` from `fields`.
fn net_detail(fields: &Value) -> Detail {
    let net_op = |op: &str| match op {
        "tcp_connect" => NetOp::TcpConnect,
        "tcp_listen" => NetOp::TcpListen,
        "tcp_bind" => NetOp::TcpBind,
        "udp_send" => NetOp::UdpSend,
        "udp_connect" => NetOp::UdpConnect,
        "udp_bind" => NetOp::UdpBind,
        other => panic!("no net op {other} in these tests"),
    };
    let any: IpAddr = "0.0.0.0".parse().unwrap();
    Detail::Net {
        op: net_op(text(fields, "op").unwrap()),
        pid_source: "task",
        local: (any, port(fields, "local_port")),
        remote: (
            text(fields, "remote_addr").map_or(any, |a| a.parse().unwrap()),
            port(fields, "remote_port"),
        ),
        socket_type: None,
        guard: match text(fields, "guard") {
            Some("blocked") => Some(Guard::Blocked),
            Some("would_block") => Some(Guard::WouldBlock),
            _ => None,
        },
    }
}

/// A file operation: `op`, `path` and `new_path` from `fields`.
fn file_detail(fields: &Value) -> Detail {
    let file_op = |op: &str| match op {
        "open" => FileOp::Open,
        "rename" => FileOp::Rename,
        "unlink" => FileOp::Unlink,
        "chmod" => FileOp::Chmod,
        "symlink" => FileOp::Symlink,
        "truncate" => FileOp::Truncate,
        other => panic!("no file op {other} in these tests"),
    };
    Detail::File {
        op: file_op(text(fields, "op").unwrap()),
        path: text(fields, "path").map(PathBuf::from),
        resolved: true,
        second: text(fields, "new_path").map(|p| ("new_path", PathBuf::from(p))),
        symlink_target: None,
        flags: fields.get("flags").and_then(Value::as_u64).unwrap_or(0) as u32,
        mode: 0,
        owner: 0,
        group: 0,
        length: 0,
    }
}

/// The task every test event comes from: pid 7, root, known.
fn test_task() -> Task {
    Task {
        pid: 7,
        tid: 7,
        uid: 0,
        gid: 0,
        boot_ns: 0,
        cgroup_id: 0,
        comm: Comm::new(&[0; 16]),
        known: true,
    }
}

#[test]
fn alerts_carry_the_process_context_as_printed() {
    let d = detector();
    let e = event(json!({"event":"exec","exe":"/tmp/sh"}));
    let drafts = d.check(&e);
    let p = drafts[0].process.as_ref().unwrap();
    assert_eq!(p.exe.as_deref(), Some("/tmp/sh"));
    assert_eq!(p.pid, Some(7));
    assert_eq!(p.sha256, None);
    assert!(p.argv.is_empty());
    // As printed: the same values as the event's own fields.
    for (key, value) in [
        ("exe", json!(p.exe)),
        ("pid", json!(p.pid)),
        ("uid", json!(p.uid)),
        ("ppid", json!(p.ppid)),
        ("sha256", json!(p.sha256)),
        ("argv", json!(p.argv)),
        ("ancestry", json!(p.ancestry)),
        ("cgroup_id", json!(p.cgroup_id)),
    ] {
        assert_eq!(e.fields[key], value, "{key}");
    }
    assert_eq!(
        drafts[1].details,
        json!({ "sha256": null, "hash_error": "no hash" })
    );
}

#[test]
fn alerts_keep_the_first_arguments_and_count_the_rest() {
    let d = detector();
    let argv: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    let e = event(json!({"event":"exec","exe":"/tmp/sh","argv":argv}));
    let p = d.check(&e)[0].process.clone().unwrap();
    assert_eq!(p.argv, argv[..MAX_ALERT_ARGS]);
    assert_eq!(p.argv_dropped, 4);
    let e = event(json!({"event":"exec","exe":"/tmp/sh","argv":["x"]}));
    let p = d.check(&e)[0].process.clone().unwrap();
    assert_eq!((p.argv, p.argv_dropped), (vec!["x".to_string()], 0));
}

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

fn kinds(d: &Detector, fields: Value) -> Vec<Kind> {
    d.check(&event(fields))
        .into_iter()
        .map(|a| a.kind)
        .collect()
}

#[test]
fn executables() {
    let d = detector();
    let a = "a".repeat(64);
    assert!(kinds(&d, json!({"event":"exec","exe":"/usr/bin/app","sha256":a})).is_empty());
    assert_eq!(
        kinds(
            &d,
            json!({"event":"exec","exe":"/usr/bin/app","sha256":"b".repeat(64)})
        ),
        vec![Kind::ModifiedExecutable]
    );
    assert!(kinds(&d, json!({"event":"exec","exe":"/opt/scripts/x.sh"})).is_empty());
    assert_eq!(
        kinds(&d, json!({"event":"exec","exe":"/tmp/sh"})),
        vec![Kind::SuspiciousExec, Kind::UnknownExecutable]
    );
    assert_eq!(
        kinds(
            &d,
            json!({"event":"exec","exe":"/memfd:x (deleted)","fileless":true})
        ),
        // In alert mode the dry run says enforcement would have killed it.
        vec![
            Kind::SuspiciousExec,
            Kind::WouldBlock,
            Kind::UnknownExecutable
        ]
    );
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

#[test]
fn network() {
    let d = detector();
    let ok = json!({"event":"net","op":"tcp_connect","exe":"/usr/bin/app","remote_addr":"10.1.2.3","remote_port":443});
    assert!(kinds(&d, ok).is_empty());
    let other_exe = json!({"event":"net","op":"tcp_connect","exe":"/usr/bin/x","remote_addr":"10.1.2.3","remote_port":443});
    assert_eq!(kinds(&d, other_exe), vec![Kind::UnexpectedConnection]);
    let udp = json!({"event":"net","op":"udp_send","exe":"/usr/bin/app","remote_addr":"10.1.2.3","remote_port":443});
    assert_eq!(kinds(&d, udp), vec![Kind::UnexpectedConnection]);
    assert!(kinds(&d, json!({"event":"net","op":"tcp_listen","local_port":22})).is_empty());
    assert_eq!(
        kinds(&d, json!({"event":"net","op":"tcp_listen","local_port":23})),
        vec![Kind::UnexpectedListener]
    );
}

#[test]
fn a_category_switched_off_raises_nothing() {
    let d = detector();
    let off = Modes {
        executables: Mode::Off,
        ..d.modes()
    };
    let d = Detector::new(d.policy().clone(), off, vec![]);
    assert!(kinds(&d, json!({"event":"exec","exe":"/tmp/sh"})).is_empty());
    assert_eq!(
        kinds(&d, json!({"event":"net","op":"tcp_listen","local_port":23})),
        vec![Kind::UnexpectedListener]
    );
}

#[test]
fn files() {
    let d = detector();
    let k = |op: &str, path: &str| kinds(&d, json!({"event":"file","op":op,"path":path}));
    assert_eq!(k("open", "/etc/app.conf"), vec![Kind::ProtectedFileChanged]);
    assert_eq!(
        k("unlink", "/etc/init.d/rcS"),
        vec![Kind::ProtectedFileChanged]
    );
    assert!(k("open", "/etc/other").is_empty());
    assert_eq!(
        k("open", "/etc/picket/picket.toml"),
        vec![Kind::AgentTamper]
    );
    // A rename over a protected file names it as the new path.
    let over = json!({"event":"file","op":"rename","path":"/tmp/x","new_path":"/etc/app.conf"});
    assert_eq!(kinds(&d, over), vec![Kind::ProtectedFileChanged]);
}

#[test]
fn a_listed_executable_without_a_hash_is_unverified_not_modified() {
    let d = detector();
    let exec = |fields: Value| d.check(&event(fields));
    let a = "a".repeat(64);
    let drafts = exec(json!({"event":"exec","exe":"/usr/bin/app","hash_error":"process exited"}));
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    assert_eq!(drafts[0].kind, Kind::UnverifiedExecutable);
    assert_eq!(drafts[0].severity, Severity::Medium);
    assert_eq!(
        drafts[0].details,
        json!({ "expected": a, "reason": "process exited" })
    );
    // No reason given: a fixed one.
    let drafts = exec(json!({"event":"exec","exe":"/usr/bin/app"}));
    assert_eq!(drafts[0].kind, Kind::UnverifiedExecutable);
    assert_eq!(drafts[0].details["reason"], "no hash");
    // The right hash: nothing at all.
    assert!(exec(json!({"event":"exec","exe":"/usr/bin/app","sha256":a})).is_empty());
}

#[test]
fn a_modified_executable_names_both_hashes() {
    let d = detector();
    let b = "b".repeat(64);
    let drafts = d.check(&event(
        json!({"event":"exec","exe":"/usr/bin/app","sha256":b}),
    ));
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    assert_eq!(drafts[0].kind, Kind::ModifiedExecutable);
    assert_eq!(drafts[0].severity, Severity::Critical);
    assert_eq!(
        drafts[0].details,
        json!({ "expected": "a".repeat(64), "actual": b })
    );
}

#[test]
fn an_unlisted_executable_without_a_hash_says_why() {
    let d = detector();
    let drafts = d.check(&event(
        json!({"event":"exec","exe":"/usr/bin/other","hash_error":"permission denied"}),
    ));
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    assert_eq!(drafts[0].kind, Kind::UnknownExecutable);
    assert_eq!(
        drafts[0].details,
        json!({ "sha256": null, "hash_error": "permission denied" })
    );
    // With a hash, no hash_error.
    let drafts = d.check(&event(
        json!({"event":"exec","exe":"/usr/bin/other","sha256":"c".repeat(64)}),
    ));
    assert_eq!(drafts[0].details, json!({ "sha256": "c".repeat(64) }));
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

/// The test policy with a behavioural section.
fn behavioural(extra_modes: &str) -> Detector {
    let a = "a".repeat(64);
    let policy = picket_policy::load_toml(
        &format!(
            r#"
[metadata]
name = "t"
device_class = "c"
serial = 1
created = "2026-11-22T10:00:00Z"
{extra_modes}
[[executable]]
path = "/usr/bin/dash"
sha256 = "{a}"

[[executable]]
path = "/usr/sbin/cron"
sha256 = "{a}"

[[executable]]
path = "/etc/cron.daily/backup"
sha256 = "{a}"

[behaviour]
interpreters = ["/usr/bin/dash", "/usr/bin/python3*"]

[[behaviour.lineage]]
parent = "/usr/sbin/cron"
child = "/etc/cron.daily/backup"

[[behaviour.lineage]]
parent = "/usr/sbin/cron"
child = "/usr/bin/dash"

[[behaviour.lineage]]
parent = "/etc/cron.daily/backup"
child = "/usr/bin/dash"

[[behaviour.lineage]]
parent = "/usr/sbin/httpd"
child = "/bin/busybox#wget"

[[behaviour.append_only]]
glob = "/var/log/*.log"
rotated_by = ["/usr/sbin/logrotate"]

[[behaviour.sensitive]]
path = "/etc/shadow"
readers = ["/usr/sbin/cron"]
"#
        ),
        "b.toml",
    )
    .unwrap();
    let modes = policy.modes;
    Detector::new(policy, modes, vec![])
}

/// An exec of `argv` by `/usr/bin/dash` (listed, hash matching) from the parent `parent`.
fn sh(argv: &[&str], parent: Value, extra: Value) -> Value {
    let mut fields = json!({
        "event": "exec",
        "exe": "/usr/bin/dash",
        "sha256": "a".repeat(64),
        "argv": argv,
        "parent": parent,
    });
    for (k, v) in extra.as_object().unwrap() {
        fields[k] = v.clone();
    }
    fields
}

fn cron() -> Value {
    json!({ "exe": "/usr/sbin/cron", "argv": ["cron"] })
}

#[test]
fn a_script_run_by_a_named_interpreter_is_judged_like_an_executable() {
    let d = behavioural("");
    let a = "a".repeat(64);
    // Listed, same hash, expected parent: nothing.
    let listed = sh(
        &["sh", "/etc/cron.daily/backup"],
        cron(),
        json!({ "script_sha256": a }),
    );
    assert_eq!(kinds(&d, listed), vec![]);
    // Listed, another hash.
    let b = "b".repeat(64);
    let changed = sh(
        &["sh", "/etc/cron.daily/backup"],
        cron(),
        json!({ "script_sha256": b }),
    );
    let drafts = d.check(&event(changed));
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].kind, Kind::ModifiedExecutable);
    assert_eq!(drafts[0].path.as_deref(), Some("/etc/cron.daily/backup"));
    assert_eq!(drafts[0].rule, "executables.scripts");
    assert_eq!(drafts[0].details["interpreter"], "/usr/bin/dash");
    // From a temporary location, not in the baseline (the pair cron → script is not either).
    let dropped = sh(
        &["sh", "-e", "/tmp/x.sh"],
        cron(),
        json!({ "script_sha256": b }),
    );
    let drafts = d.check(&event(dropped));
    let got: Vec<_> = drafts.iter().map(|d| (d.kind, d.path.clone())).collect();
    let tmp = Some("/tmp/x.sh".to_string());
    assert_eq!(
        got,
        vec![
            (Kind::SuspiciousExec, tmp.clone()),
            (Kind::UnknownExecutable, tmp.clone()),
            (Kind::UnexpectedLineage, tmp)
        ]
    );
    assert_eq!(drafts[1].details["sha256"], b);
    // A relative name is resolved from the process's directory (`/work` in these tests).
    let relative = sh(&["sh", "x.sh"], json!(null), json!({}));
    let drafts = d.check(&event(relative));
    assert_eq!(drafts[0].kind, Kind::UnknownExecutable);
    assert_eq!(drafts[0].path.as_deref(), Some("/work/x.sh"));
    assert_eq!(drafts[0].details["hash_error"], "no hash");
}

#[test]
fn scripts_are_not_judged_for_interpreters_the_policy_does_not_name() {
    let d = behavioural("");
    // perl is a known interpreter family but the policy does not name it; the exe itself is
    // not in this baseline, which says so once.
    let perl = json!({
        "event": "exec", "exe": "/usr/bin/perl", "argv": ["perl", "/tmp/x.pl"],
        "parent": cron(),
    });
    let kinds = kinds(&d, perl);
    assert!(
        kinds == vec![Kind::UnknownExecutable, Kind::UnexpectedLineage],
        "{kinds:?}"
    );
    // A policy without interpreters judges no script: only dash itself, unknown there.
    let drafts = detector().check(&event(sh(&["sh", "/tmp/x.sh"], cron(), json!({}))));
    let got: Vec<_> = drafts.iter().map(|d| (d.kind, d.path.as_deref())).collect();
    assert_eq!(got, vec![(Kind::UnknownExecutable, Some("/usr/bin/dash"))]);
}

#[test]
fn lineage_raises_only_pairs_the_baseline_does_not_list() {
    let d = behavioural("");
    let a = "a".repeat(64);
    // cron → sh -c: listed (inline code is the interpreter itself).
    assert!(kinds(
        &d,
        sh(
            &["sh", "-c", "run-parts /etc/cron.daily"],
            cron(),
            json!({})
        )
    )
    .is_empty());
    // The cron job's script starting a shell: the parent is the script, not dash.
    let job = json!({ "exe": "/usr/bin/dash", "argv": ["sh", "/etc/cron.daily/backup"] });
    assert!(kinds(&d, sh(&["sh", "-c", "tar"], job, json!({}))).is_empty());
    // A web server starting a shell with inline code: the classic case.
    let web = json!({ "exe": "/usr/sbin/lighttpd", "argv": ["lighttpd"] });
    let drafts = d.check(&event(sh(
        &["sh", "-c", "id"],
        web,
        json!({ "script_sha256": a }),
    )));
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].kind, Kind::UnexpectedLineage);
    assert_eq!(drafts[0].severity, Severity::High);
    assert_eq!(drafts[0].rule, "behaviour.lineage");
    assert_eq!(
        drafts[0].details,
        json!({ "parent": "/usr/sbin/lighttpd", "child": "/usr/bin/dash", "inline": "argument" })
    );
    // A parent replaced on disk since it started (an upgrade) is still the program listed.
    let upgraded = json!({ "exe": "/usr/sbin/cron (deleted)", "argv": ["cron"] });
    assert!(kinds(&d, sh(&["sh", "-c", "x"], upgraded, json!({}))).is_empty());
    // A multi-call binary is named with its applet: the web server may run busybox's wget,
    // not its shell.
    let httpd = || json!({ "exe": "/usr/sbin/httpd", "argv": ["httpd"] });
    let busybox = |argv: &[&str]| {
        json!({
            "event": "exec", "exe": "/bin/busybox", "argv": argv, "parent": httpd(),
        })
    };
    let got = |argv: &[&str]| {
        d.check(&event(busybox(argv)))
            .into_iter()
            .filter(|a| a.kind == Kind::UnexpectedLineage)
            .map(|a| a.details["child"].clone())
            .collect::<Vec<_>>()
    };
    assert!(got(&["wget", "-q", "http://x"]).is_empty());
    assert_eq!(got(&["sh", "-c", "id"]), vec![json!("/bin/busybox#sh")]);
    // No known parent (a process whose executable could not be read): not judged.
    assert!(kinds(&d, sh(&["sh", "-c", "id"], json!(null), json!({}))).is_empty());
    let unknown = json!({ "argv": ["?"] });
    assert!(kinds(&d, sh(&["sh", "-c", "id"], unknown, json!({}))).is_empty());
    // Switched off with the behavioural mode; a policy without lineage checks none.
    let off = behavioural("[modes]\nbehaviour = \"off\"\n");
    let web = json!({ "exe": "/usr/sbin/lighttpd", "argv": ["lighttpd"] });
    assert!(kinds(&off, sh(&["sh", "-c", "id"], web.clone(), json!({}))).is_empty());
    assert_eq!(
        kinds(&detector(), sh(&["sh", "-c", "id"], web, json!({}))),
        vec![Kind::UnknownExecutable]
    );
}

#[test]
fn append_only_files_may_grow_but_not_shrink_or_go() {
    let d = behavioural("");
    let file = |op: &str, exe: &str, extra: Value| {
        let mut f = json!({ "event": "file", "op": op, "path": "/var/log/app.log", "exe": exe });
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        kinds(&d, f)
    };
    let append = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT;
    assert!(file("open", "/usr/bin/app", json!({ "flags": append })).is_empty());
    let violated = vec![Kind::AppendOnlyViolated];
    let truncating = libc::O_WRONLY | libc::O_TRUNC;
    assert_eq!(
        file("open", "/usr/bin/dash", json!({ "flags": truncating })),
        violated
    );
    assert_eq!(file("truncate", "/usr/bin/shred", json!({})), violated);
    assert_eq!(file("unlink", "/usr/bin/rm", json!({})), violated);
    assert_eq!(
        file("rename", "/usr/bin/mv", json!({ "new_path": "/tmp/gone" })),
        violated
    );
    // Rotation by the named rotator.
    let rotated = json!({ "new_path": "/var/log/app.log.1" });
    assert!(file("rename", "/usr/sbin/logrotate", rotated).is_empty());
    assert!(file("unlink", "/usr/sbin/logrotate", json!({})).is_empty());
    // What the rotator starts (its gzip removing the old log) rotates with it.
    let by_child = json!({ "parent": { "exe": "/usr/sbin/logrotate", "argv": ["logrotate"] } });
    assert!(file("unlink", "/usr/bin/gzip", by_child).is_empty());
    // Other files are not append-only.
    let other = json!({ "event": "file", "op": "unlink", "path": "/var/log/app.txt", "exe": "/usr/bin/rm" });
    assert!(kinds(&d, other).is_empty());
}

#[test]
fn a_sensitive_file_read_by_another_executable_than_its_readers() {
    let d = behavioural("");
    assert_eq!(d.sensitive_files(), vec![PathBuf::from("/etc/shadow")]);
    let read = |exe: Value, path: &str| {
        let mut f = json!({ "event": "read", "path": path });
        if !exe.is_null() {
            f["exe"] = exe;
        }
        d.check(&event(f))
    };
    assert!(read(json!("/usr/sbin/cron"), "/etc/shadow").is_empty());
    let drafts = read(json!("/usr/bin/cat"), "/etc/shadow");
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].kind, Kind::SensitiveFileRead);
    assert_eq!(drafts[0].severity, Severity::High);
    assert_eq!(drafts[0].path.as_deref(), Some("/etc/shadow"));
    assert_eq!(drafts[0].details, json!({ "reader": "/usr/bin/cat" }));
    // A reader whose executable is unknown is not one of the allowed readers.
    assert_eq!(
        read(Value::Null, "/etc/shadow")[0].kind,
        Kind::SensitiveFileRead
    );
    // A file the policy does not name, and the behavioural mode off: nothing.
    assert!(read(json!("/usr/bin/cat"), "/etc/passwd").is_empty());
    let off = behavioural("[modes]\nbehaviour = \"off\"\n");
    let f = json!({ "event": "read", "path": "/etc/shadow", "exe": "/usr/bin/cat" });
    assert!(kinds(&off, f).is_empty());
}

mod guard;
