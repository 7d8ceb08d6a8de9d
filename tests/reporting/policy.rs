//! Policies received over MQTT: verified like policies on disk.

use super::*;

#[test]
fn policies_over_mqtt_are_verified_like_policies_on_disk() {
    let _serial = serial();
    let fleet = Fleet::new("policy");
    let sub = fleet.subscriber();
    let agent = Agent::start(&fleet.config(""));
    // Its online status is published after it subscribed to its policy topic.
    wait_live_status(&sub, 0, Presence::Online, || agent.log());
    let policy_topic = topic::topic(DEVICE, Channel::Policy);

    let cases = policy_cases(&fleet);
    let refused = send_each_and_check_its_outcome(&sub, &agent, &policy_topic, &cases);
    // The good one is in force and announced; each refusal is also an alert.
    check_the_good_one_is_in_force(&sub, &agent);
    check_each_refusal_is_one_alert(&sub, &refused);
    let log = agent.stop();
    assert!(!log.contains("panicked"), "{log}");

    // Persisted: after a restart serial 5 is in force without being sent again (the configured
    // serial 1 is older), and the older bundle is still refused.
    let before = sub.messages().len();
    let agent = Agent::start(&fleet.root.join("picket.toml"));
    agent.wait_log(
        "running with policy `good` serial 5",
        Duration::from_secs(5),
    );
    // Its online status is published after it subscribed to its policy topic.
    let online = wait_live_status(&sub, before, Presence::Online, || agent.log());
    assert_eq!(
        (online.policy_name.as_str(), online.policy_serial),
        ("good", 5)
    );
    let older = cases.iter().find(|c| c.what == "rolled back").unwrap();
    send_each_and_check_its_outcome(&sub, &agent, &policy_topic, std::slice::from_ref(older));
    agent.stop();
}

/// A bundle sent on the policy topic and the outcome it must have (`applied`, `unchanged`,
/// `refused` for a reason that contains `reason`, or `ignored`: no result at all).
struct Case {
    what: &'static str,
    bundle: Vec<u8>,
    expected: &'static str,
    reason: &'static str,
}

/// The bundles sent, in order: forged (signed by an intruder's key), tampered, garbage, huge,
/// for another device class, an empty payload (ignored: no result), good (serial 5), rolled
/// back (serial 3), serial 5 again with other content, and the good one again.
fn policy_cases(fleet: &Fleet) -> Vec<Case> {
    ok(Command::new(picket())
        .args(["keygen", "--out"])
        .arg(fleet.root.join("intruder")));
    let good = fs::read(fleet.policy("good", 5, "lab", None)).unwrap();
    let forged =
        fs::read(fleet.policy("forged", 6, "lab", Some(&fleet.root.join("intruder.key")))).unwrap();
    let mut tampered = good.clone();
    let last = tampered.len() - 40;
    tampered[last] ^= 0x01;
    let other_class = fs::read(fleet.policy("other", 7, "someone-else", None)).unwrap();
    let older = fs::read(fleet.policy("older", 3, "lab", None)).unwrap();
    let same_serial = fs::read(fleet.policy("good-but-other", 5, "lab", None)).unwrap();
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let huge = vec![0x42u8; 5 << 20];

    let case = |what, bundle, expected, reason| Case {
        what,
        bundle,
        expected,
        reason,
    };
    vec![
        case("forged", forged, "refused", "not in the trust directory"),
        case("tampered", tampered, "refused", "signature does not verify"),
        case("garbage", garbage, "refused", "bad magic"),
        case("huge", huge, "refused", "over the limit"),
        case(
            "other device class",
            other_class,
            "refused",
            "device class `someone-else`",
        ),
        case("empty", Vec::new(), "ignored", ""),
        case("good", good.clone(), "applied", ""),
        case(
            "rolled back",
            older,
            "refused",
            "serial 3 is older than serial 5",
        ),
        case(
            "serial 5 with other content",
            same_serial,
            "refused",
            "serial 5 was accepted before with different content",
        ),
        case("the same again", good, "unchanged", ""),
    ]
}

fn sha256(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Publishes each bundle on the policy topic and checks the result for it; returns the
/// digests and reasons of those refused. A bundle to be ignored must have no result by the
/// time the next one's arrives (the agent takes them in the order sent).
fn send_each_and_check_its_outcome(
    sub: &Subscriber,
    agent: &Agent,
    policy_topic: &str,
    cases: &[Case],
) -> Vec<(String, String)> {
    let mut report = String::new();
    let mut refused = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let sha = sha256(&case.bundle);
        let results_before = results(sub).len();
        let reason = sub.publish(policy_topic, case.bundle.clone(), false);
        if case.expected == "ignored" {
            ignored.push(sha);
            let _ = writeln!(report, "{}: sent, to be ignored", case.what);
            continue;
        }
        let start = Instant::now();
        let result = loop {
            let new = results(sub)
                .into_iter()
                .skip(results_before)
                .find(|r| r.bundle_sha256 == sha);
            if new.is_some() || start.elapsed() > Duration::from_secs(15) {
                break new;
            }
            thread::sleep(Duration::from_millis(50));
        }
        .unwrap_or_else(|| {
            panic!(
                "no result for the {} policy (#{i}, PUBACK {reason:?}); agent log:\n{}",
                case.what,
                tail(&agent.log(), 30)
            )
        });
        let outcome = result.outcome;
        let _ = writeln!(report, "{}: {outcome:?}", case.what);
        let got = match &outcome {
            PolicyOutcome::Applied { name, serial } => {
                assert_eq!((name.as_str(), *serial), ("good", 5), "{report}");
                "applied"
            }
            PolicyOutcome::Unchanged { serial } => {
                assert_eq!(*serial, 5, "{report}");
                "unchanged"
            }
            PolicyOutcome::Refused { reason } => {
                assert!(
                    reason.contains(case.reason),
                    "{}: refused for `{reason}`, not for `{}`\n{report}",
                    case.what,
                    case.reason
                );
                refused.push((sha.clone(), reason.clone()));
                "refused"
            }
        };
        assert_eq!(got, case.expected, "{}: {outcome:?}\n{report}", case.what);
        // Those to be ignored were taken before this one: they had a result by now if any.
        let answered: Vec<&String> = ignored
            .iter()
            .filter(|s| results(sub).iter().any(|r| &r.bundle_sha256 == *s))
            .collect();
        assert!(
            answered.is_empty(),
            "a result for a payload to be ignored\n{report}"
        );
    }
    assert!(
        cases.last().is_none_or(|c| c.expected != "ignored"),
        "a payload to be ignored needs one after it"
    );
    eprintln!("{report}");
    refused
}

/// A status announces `good` serial 5 and the agent logs it in force.
fn check_the_good_one_is_in_force(sub: &Subscriber, agent: &Agent) {
    let online = sub
        .wait_for_message(Duration::from_secs(5), |m| {
            on(m, Channel::Status) && decode::<Status>(m).policy_serial == 5
        })
        .expect("a status announcing serial 5");
    assert_eq!(decode::<Status>(&online).policy_name, "good");
    agent.wait_log(
        "now enforcing policy `good` serial 5",
        Duration::from_secs(5),
    );
}

/// Each refused bundle raised one policy_rejected alert (spooled, then sent: they may still be
/// on their way) naming its digest, its reason and MQTT as its source, and nothing else did.
fn check_each_refusal_is_one_alert(sub: &Subscriber, refused: &[(String, String)]) {
    // seq → (bundle_sha256, reason, source); an alert sent twice has one seq.
    let rejections = || {
        sub.messages()
            .iter()
            .filter(|m| on(m, Channel::Alert))
            .map(decode::<Alert>)
            .filter(|a| a.kind == AlertKind::PolicyRejected)
            .map(|a| {
                let field = |k: &str| a.details.0[k].as_str().unwrap_or_default().to_string();
                (
                    a.seq,
                    (field("bundle_sha256"), field("reason"), field("source")),
                )
            })
            .collect::<BTreeMap<u64, (String, String, String)>>()
    };
    let start = Instant::now();
    while rejections().len() < refused.len() && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    // Any late extra one would have come by now with the others.
    let mut got: Vec<(String, String, String)> = rejections().into_values().collect();
    let mut want: Vec<(String, String, String)> = refused
        .iter()
        .map(|(sha, reason)| (sha.clone(), reason.clone(), "mqtt".to_string()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "the policy_rejected alerts (digest, reason, source) are not one per refused bundle"
    );
}
