//! What the guards' judgements and records become: the refusal of an exec (the exec guard's
//! judgement, detection's own), the alerts of refused execs and of the network guard's records,
//! and detection leaving to the network guard what the kernel refused.

use std::cell::Cell;

use super::*;

fn baseline() -> Arc<ExecBaseline> {
    detector().exec_baseline()
}

#[test]
fn what_the_baseline_allows_runs_and_the_rest_is_refused_with_its_reason() {
    let b = baseline();
    let a = digest(&"a".repeat(64));
    let other = digest(&"c".repeat(64));
    assert_eq!(b.refusal("/usr/bin/app", false, || Ok(a)), None);
    assert_eq!(
        b.refusal("/usr/bin/app", false, || Ok(other)),
        Some(Refusal::Modified {
            expected: a,
            actual: other
        })
    );
    assert_eq!(
        b.refusal("/usr/bin/app", false, || Err("I/O error".into())),
        Some(Refusal::Unverified {
            expected: a,
            error: "I/O error".into()
        })
    );
    assert_eq!(
        b.refusal("/usr/bin/x", false, || Ok(other)),
        Some(Refusal::Unknown { sha256: None })
    );
    assert_eq!(
        b.refusal("/tmp/x", false, || Ok(other)),
        Some(Refusal::Temporary)
    );
    assert_eq!(
        b.refusal("/usr/bin/x", true, || Ok(other)),
        Some(Refusal::Deleted)
    );
    // A listed file is judged by its content, deleted or not (a daemon re-executing itself
    // after an upgrade replaced its file).
    assert_eq!(b.refusal("/usr/bin/app", true, || Ok(a)), None);
}

#[test]
fn only_a_listed_file_is_hashed_before_the_answer() {
    let b = baseline();
    let hashed = Cell::new(0);
    let sha = || {
        hashed.set(hashed.get() + 1);
        Ok([0; 32])
    };
    assert_eq!(b.refusal("/opt/scripts/x.sh", false, sha), None);
    assert!(b.refusal("/usr/bin/unknown", false, sha).is_some());
    assert!(b.refusal("/tmp/x", false, sha).is_some());
    assert_eq!(hashed.get(), 0);
    assert!(b.refusal("/usr/bin/app", false, sha).is_some());
    assert_eq!(hashed.get(), 1);
}

#[test]
fn refused_execs_are_blocked_exec_and_the_dry_run_would_block() {
    let refused = |refusal: Refusal, enforced: bool| {
        let e = Event {
            category: Category::Exec,
            fields: Fields::new_for_test(Record {
                task: test_task(),
                process: process_context(&json!({"exe":"/usr/bin/sh"})),
                detail: Detail::Refused {
                    path: PathBuf::from("/usr/bin/x"),
                    refusal,
                    enforced,
                },
            }),
        };
        detector().check(&e)
    };
    let a = refused(
        Refusal::Modified {
            expected: [1; 32],
            actual: [2; 32],
        },
        true,
    );
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].kind, Kind::BlockedExec);
    assert_eq!(a[0].severity, Severity::Critical);
    assert_eq!(a[0].path.as_deref(), Some("/usr/bin/x"));
    assert_eq!(
        a[0].details["reason"],
        "another SHA-256 than the baseline's"
    );
    let a = refused(Refusal::Temporary, true);
    assert_eq!(
        (a[0].kind, a[0].severity),
        (Kind::BlockedExec, Severity::High)
    );
    let a = refused(Refusal::Temporary, false);
    assert_eq!(
        (a[0].kind, a[0].severity),
        (Kind::WouldBlock, Severity::Medium)
    );
    assert_eq!(a[0].details["action"], "exec");
}

#[test]
fn the_network_guards_records_are_its_alerts() {
    let d = detector();
    let blocked = json!({"event":"net","op":"tcp_connect","exe":"/usr/bin/x","remote_addr":"192.0.2.1","remote_port":80,"guard":"blocked"});
    assert_eq!(kinds(&d, blocked), vec![Kind::BlockedConnection]);
    let bind =
        json!({"event":"net","op":"tcp_bind","exe":"/usr/bin/x","local_port":23,"guard":"blocked"});
    assert_eq!(kinds(&d, bind), vec![Kind::BlockedListener]);
    let dry = json!({"event":"net","op":"udp_send","exe":"/usr/bin/x","remote_addr":"192.0.2.1","remote_port":53,"guard":"would_block"});
    let a = d.check(&event(dry));
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].kind, a[0].severity),
        (Kind::WouldBlock, Severity::Medium)
    );
    assert_eq!(a[0].details["action"], "connect");
    assert_eq!(a[0].details["remote_port"], 53);
    // A TCP bind seen by no guard raises nothing: the listen does.
    let plain_bind = json!({"event":"net","op":"tcp_bind","exe":"/usr/bin/x","local_port":23});
    assert!(kinds(&d, plain_bind).is_empty());
}

#[test]
fn with_the_network_guarded_detection_leaves_the_refused_to_the_guard() {
    let mut d = detector();
    // Seen by the syscall sensors before the kernel refused it: the guard's record says so.
    let refused = json!({"event":"net","op":"udp_connect","exe":"/usr/bin/x","remote_addr":"192.0.2.1","remote_port":53});
    let refused_bind = json!({"event":"net","op":"udp_bind","exe":"/usr/bin/x","local_port":5353});
    // Allowed to another executable: the kernel let it through, detection reports it.
    let other_exe = json!({"event":"net","op":"tcp_connect","exe":"/usr/bin/x","remote_addr":"10.1.2.3","remote_port":443});
    assert_eq!(kinds(&d, refused.clone()), vec![Kind::UnexpectedConnection]);
    assert_eq!(
        kinds(&d, refused_bind.clone()),
        vec![Kind::UnexpectedListener]
    );
    d.set_network_guarded(true);
    assert!(kinds(&d, refused).is_empty());
    assert!(kinds(&d, refused_bind).is_empty());
    // A listener on a port the kernel picked, which the guard never judges: still detection's.
    let picked = json!({"event":"net","op":"tcp_listen","exe":"/usr/bin/x","local_port":40001});
    assert_eq!(kinds(&d, picked), vec![Kind::UnexpectedListener]);
    assert_eq!(kinds(&d, other_exe), vec![Kind::UnexpectedConnection]);
}

#[test]
fn an_ipv4_peer_of_a_dual_stack_socket_is_judged_as_ipv4() {
    let d = detector();
    let mapped = json!({"event":"net","op":"tcp_connect","exe":"/usr/bin/app","remote_addr":"::ffff:10.1.2.3","remote_port":443});
    assert!(kinds(&d, mapped).is_empty());
    let other = json!({"event":"net","op":"tcp_connect","exe":"/usr/bin/app","remote_addr":"::ffff:192.0.2.1","remote_port":443});
    assert_eq!(kinds(&d, other), vec![Kind::UnexpectedConnection]);
}

#[test]
fn a_memory_file_killed_by_the_kernel_is_blocked_exec() {
    let d = detector();
    let mut e = json!({"event":"exec","exe":"/memfd:x (deleted)","fileless":true});
    let a = d.check(&event(e.clone()));
    let dry: Vec<_> = a.iter().filter(|a| a.kind == Kind::WouldBlock).collect();
    assert_eq!(dry.len(), 1);
    assert_eq!(dry[0].details["reason"], "fileless");
    e["killed"] = json!(true);
    let a = d.check(&event(e));
    let blocked: Vec<_> = a.iter().filter(|a| a.kind == Kind::BlockedExec).collect();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].details["reason"], "fileless");
    assert!(a.iter().all(|a| a.kind != Kind::WouldBlock));
}
