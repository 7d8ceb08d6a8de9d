//! What an alert carries: the process context as the event prints it, its arguments bounded.

use super::*;

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
