//! Policies received over MQTT: verified like policies on disk.

use super::*;

#[test]
fn policies_over_mqtt_are_verified_like_policies_on_disk() {
    let _serial = serial();
    let fleet = Fleet::new("policy");
    let sub = fleet.subscriber();
    let agent = Agent::start(&fleet.config(""));
    agent.wait_log("connected to the broker", Duration::from_secs(20));
    let policy_topic = topic::topic(DEVICE, Channel::Policy);

    let cases = policy_cases(&fleet);
    send_each_and_check_its_outcome(&sub, &agent, &policy_topic, cases);
    // The good one is in force and announced; each refusal is also an alert.
    check_the_good_one_is_in_force_and_refusals_are_alerts(&sub, &agent);
    let log = agent.stop();
    assert!(!log.contains("panicked"), "{log}");
    // Persisted: after a restart serial 5 is in force without being sent again.
    let agent = Agent::start(&fleet.root.join("picket.toml"));
    agent.wait_log("serial 5", Duration::from_secs(5));
    agent.stop();
}

/// The bundles sent, in order, each with what it is and the outcome it must have: forged
/// (signed by an intruder's key), tampered, garbage, huge, for another device class, good
/// (serial 5), rolled back (serial 3), and the good one again.
fn policy_cases(fleet: &Fleet) -> Vec<(&'static str, Vec<u8>, &'static str)> {
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
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let huge = vec![0x42u8; 5 << 20];

    vec![
        ("forged", forged, "refused"),
        ("tampered", tampered, "refused"),
        ("garbage", garbage, "refused"),
        ("huge", huge, "refused"),
        ("other device class", other_class, "refused"),
        ("good", good.clone(), "applied"),
        ("rolled back", older, "refused"),
        ("the same again", good, "unchanged"),
    ]
}

/// Publishes each bundle on the policy topic and checks the outcome of the result for it.
fn send_each_and_check_its_outcome(
    sub: &Subscriber,
    agent: &Agent,
    policy_topic: &str,
    cases: Vec<(&str, Vec<u8>, &str)>,
) {
    let mut report = String::new();
    for (i, (what, bundle, expected)) in cases.into_iter().enumerate() {
        let sha = hex(ring::digest::digest(&ring::digest::SHA256, &bundle).as_ref());
        let results_before = results(sub).len();
        let reason = sub.publish(policy_topic, bundle, false);
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
                "no result for the {what} policy (#{i}, PUBACK {reason:?}); agent log:\n{}",
                tail(&agent.log(), 30)
            )
        });
        let outcome = result.outcome;
        let _ = writeln!(report, "{what}: {outcome:?}");
        let got = match &outcome {
            PolicyOutcome::Applied { serial, .. } => {
                assert_eq!(*serial, 5);
                "applied"
            }
            PolicyOutcome::Unchanged { serial } => {
                assert_eq!(*serial, 5);
                "unchanged"
            }
            PolicyOutcome::Refused { reason } => {
                assert!(!reason.is_empty());
                "refused"
            }
        };
        assert_eq!(got, expected, "{what}: {outcome:?}\n{report}");
    }
    eprintln!("{report}");
}

/// A status announces `good` serial 5, the agent logs it in force, and at least one
/// policy_rejected alert arrives.
fn check_the_good_one_is_in_force_and_refusals_are_alerts(sub: &Subscriber, agent: &Agent) {
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
    // The refusals were raised as alerts too (spooled, then sent: they may still be on their way).
    let rejected = || {
        sub.messages()
            .iter()
            .filter(|m| on(m, Channel::Alert))
            .map(decode::<Alert>)
            .filter(|a| a.kind == AlertKind::PolicyRejected)
            .count()
    };
    let start = Instant::now();
    while rejected() == 0 && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(rejected() >= 1, "no policy_rejected alert");
}
