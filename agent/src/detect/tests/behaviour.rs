//! The behavioural section of the policy: scripts run by a named interpreter, lineage,
//! append-only files, sensitive files and their readers.

use super::*;

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
