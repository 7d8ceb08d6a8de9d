//! Each category (executables, network, files) judged against the policy, and what the
//! alerts of unverified, modified and unlisted executables say.

use super::*;

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
