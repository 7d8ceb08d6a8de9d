use super::*;

#[test]
fn backoff_doubles_up_to_its_cap_with_jitter_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
    let steps: Vec<u64> = [1, 2, 4, 8, 8, 8].to_vec();
    for step in steps {
        let d = b.delay();
        let step = Duration::from_secs(step);
        assert!(
            d >= step / 2 && d <= step,
            "{d:?} outside [{:?}, {step:?}]",
            step / 2
        );
    }
    b.reset();
    assert!(b.delay() <= Duration::from_secs(1));
    // Jitter: a fleet does not come back in step.
    let delays: std::collections::BTreeSet<Duration> = (0..20)
        .map(|_| Backoff::new(Duration::from_secs(60), Duration::from_secs(60)).delay())
        .collect();
    assert!(delays.len() > 10, "{delays:?}");
}

#[test]
fn backoff_never_waits_less_than_its_minimum_even_with_a_smaller_cap() {
    let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(1));
    for _ in 0..5 {
        let d = b.delay();
        assert!(
            d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
            "{d:?} outside [2s, 4s]: the cap is raised to the minimum"
        );
    }
    assert!(b.at_start(), "capped at the minimum, the step stays there");
}

#[test]
fn an_alert_left_behind_is_noticed_only_when_nothing_is_in_flight() {
    let mut link = Link::connected();
    assert!(!link.passed_over(Some(1)), "nothing sent yet");
    link.last = Some(10);
    assert!(link.passed_over(Some(7)));
    assert!(link.passed_over(Some(10)));
    assert!(!link.passed_over(Some(11)), "a new alert, not sent yet");
    assert!(!link.passed_over(None), "the spool is empty");
    link.queued.push_back(Queued::Alert(10));
    assert!(!link.passed_over(Some(7)), "still in flight");
    link.queued.clear();
    link.inflight.insert(3, 10);
    assert!(!link.passed_over(Some(7)), "still in flight");
    link.inflight.clear();
    link.refused = true;
    assert!(
        !link.passed_over(Some(7)),
        "refused: waits for the next connection"
    );
}

#[test]
fn other_messages_in_flight_do_not_hide_an_alert_left_behind() {
    let mut link = Link::connected();
    link.queue_alert(4);
    link.sent(1).unwrap();
    link.queue_other(true);
    link.queue_other(false);
    assert!(!link.may_have_passed_over(), "alert #4 is in flight");
    assert_eq!(link.acknowledged(1), Ok(Some(4)));
    // The status and the heartbeat still wait to go out: no alert does.
    assert!(link.may_have_passed_over());
    assert!(link.passed_over(Some(3)));
    assert!(!link.passed_over(Some(5)));
}

#[test]
fn a_link_matches_acknowledgements_to_alerts_or_says_it_cannot() {
    let mut link = Link::connected();
    link.queued.extend([
        Queued::Qos1,
        Queued::Qos0,
        Queued::Alert(7),
        Queued::Alert(8),
    ]);
    link.sent(1).unwrap();
    link.sent(0).unwrap();
    link.sent(2).unwrap();
    link.sent(3).unwrap();
    assert_eq!(link.acknowledged(2), Ok(Some(7)));
    assert_eq!(link.acknowledged(1), Ok(None));
    assert!(link.acknowledged(2).is_err(), "acknowledged twice");
    assert!(link.acknowledged(9).is_err(), "never sent");
    assert_eq!(link.acknowledged(3), Ok(Some(8)));
    // What the library reports must fit what was queued.
    assert!(link.sent(4).is_err(), "nothing queued");
    link.queued.push_back(Queued::Qos0);
    assert!(link.sent(5).is_err(), "a QoS 0 message has no packet id");
    link.queued.push_back(Queued::Alert(9));
    assert!(link.sent(0).is_err(), "an alert goes out with a packet id");
}

#[test]
fn a_mismatch_says_what_did_not_fit() {
    let mut link = Link::connected();
    assert_eq!(
        link.sent(4),
        Err(Mismatch::Sent {
            pkid: 4,
            queued: None
        })
    );
    link.queue_alert(9);
    let e = link.sent(0).unwrap_err();
    assert_eq!(
        e,
        Mismatch::Sent {
            pkid: 0,
            queued: Some(Queued::Alert(9))
        }
    );
    assert_eq!(
        e.to_string(),
        "a publish went out with packet id 0 where Some(Alert(9)) was expected"
    );
    let e = link.acknowledged(6).unwrap_err();
    assert_eq!(e, Mismatch::Acknowledged { pkid: 6 });
    assert_eq!(
        e.to_string(),
        "an acknowledgement for packet id 6, which nothing sent awaits"
    );
}

#[test]
fn alerts_wait_since_the_first_was_queued_or_the_last_acknowledgement() {
    let pause = || std::thread::sleep(Duration::from_millis(5));
    let mut link = Link::connected();
    let connected = link.progress;
    pause();
    link.queue_alert(1);
    let first = link.progress;
    assert!(first > connected, "alerts wait from the first queued");
    pause();
    link.queue_alert(2);
    link.queued.push_back(Queued::Qos0);
    link.sent(1).unwrap();
    link.sent(2).unwrap();
    link.sent(0).unwrap();
    assert_eq!(link.progress, first, "what goes out is no progress");
    pause();
    assert_eq!(link.acknowledged(1), Ok(Some(1)));
    let acked = link.progress;
    assert!(acked > first, "an acknowledgement is");
    pause();
    link.queue_alert(3);
    assert_eq!(link.progress, acked, "alert 2 still waits since then");
}

#[test]
fn link_counts_alerts_in_flight_not_other_messages() {
    let mut link = Link::default();
    link.queued
        .extend([Queued::Alert(1), Queued::Qos1, Queued::Alert(2)]);
    link.inflight.insert(7, 0);
    assert_eq!(link.alerts_in_flight(), 3);
}

#[test]
fn a_connection_stalls_only_on_alerts_awaiting_their_acknowledgement() {
    let timeout = Duration::from_secs(30);
    let mut link = Link::default();
    link.queue_alert(1);
    assert_eq!(link.stall_deadline(timeout), None, "not connected");

    let mut link = Link::connected();
    assert_eq!(link.stall_deadline(timeout), None, "nothing in flight");
    // Status and heartbeats awaiting theirs are not watched.
    link.queue_other(true);
    link.queue_other(false);
    link.sent(1).unwrap();
    link.sent(0).unwrap();
    assert_eq!(link.stall_deadline(timeout), None, "only other messages");

    link.queue_alert(5);
    let queued = link.progress;
    assert_eq!(link.stall_deadline(timeout), Some(queued + timeout));
    link.sent(2).unwrap();
    assert_eq!(
        link.stall_deadline(timeout),
        Some(queued + timeout),
        "going out is no progress"
    );
    // An acknowledgement of another message is progress: the broker answers.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(link.acknowledged(1), Ok(None));
    let answered = link.stall_deadline(timeout).unwrap();
    assert!(answered > queued + timeout);
    assert_eq!(link.acknowledged(2), Ok(Some(5)));
    assert_eq!(link.stall_deadline(timeout), None, "all acknowledged");
}

#[test]
fn auto_falls_back_to_mqtt_3_1_1_only_when_the_broker_takes_it_at_once() {
    let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
    let mut a = Attempts::new(Protocol::Auto, min, max);
    assert!(a.v5(), "auto starts with v5");
    // Not a protocol refusal: same version again, after the backoff.
    let retry = a.failed(false);
    assert!(!retry.switch && retry.delay > Duration::ZERO, "{retry:?}");
    // Refused for its protocol: 3.1.1 at once.
    let retry = a.failed(true);
    assert!(retry.switch && retry.delay == Duration::ZERO, "{retry:?}");
    a.switch_protocol();
    assert!(!a.v5());
    // That attempt failed too, for any reason: the v5 refusal said nothing about the version
    // (a broker stopping closes before any CONNACK too). v5 again, after the backoff.
    let retry = a.failed(false);
    assert!(retry.switch && retry.delay > Duration::ZERO, "{retry:?}");
    a.switch_protocol();
    assert!(a.v5());
    // Refused again, and 3.1.1 refused for its protocol as well: back and forth, until one
    // works.
    assert!(a.failed(true).switch);
    a.switch_protocol();
    assert!(a.failed(true).switch);
    a.switch_protocol();
    assert!(a.v5());
    assert!(a.failed(true).switch);
    a.switch_protocol();
    // 3.1.1 right after the v5 refusal worked: it stays, whatever goes wrong later but a
    // refusal of 3.1.1 itself.
    assert!(a.connected());
    for _ in 0..3 {
        assert!(!a.failed(false).switch);
        assert!(!a.v5());
    }
    assert!(
        a.failed(true).switch,
        "a broker refusing 3.1.1 now: v5 again"
    );
    a.switch_protocol();

    // Once v5 connected, the version stays: a close before CONNACK is the broker stopping.
    let mut a = Attempts::new(Protocol::Auto, min, max);
    assert!(a.connected());
    for _ in 0..3 {
        let retry = a.failed(true);
        assert!(!retry.switch && retry.delay > Duration::ZERO, "{retry:?}");
        assert!(a.v5());
    }

    // A configured version is kept whatever the broker says.
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut a = Attempts::new(protocol, min, max);
        assert_eq!(a.v5(), protocol == Protocol::V5);
        assert!(!a.failed(true).switch, "{protocol:?}");
        assert!(!a.failed(false).switch, "{protocol:?}");
    }
}

#[test]
fn a_failure_is_news_after_a_connection_or_at_the_first_attempt_only() {
    let (min, max) = (Duration::from_secs(1), Duration::from_secs(8));
    let mut a = Attempts::new(Protocol::V5, min, max);
    let first = a.failed(false);
    assert!(first.loud, "the broker was never reached: said once");
    assert!(first.delay <= min);
    let second = a.failed(false);
    assert!(!second.loud, "still unreachable: no news");
    assert!(
        second.delay >= min && second.delay <= 2 * min,
        "{:?}",
        second.delay
    );
    assert!(a.connected(), "connected: news");
    assert!(!a.connected(), "still connected: no news");
    let lost = a.failed(false);
    assert!(lost.loud, "a connection that was up is lost");
    assert!(
        lost.delay <= min,
        "the backoff started over: {:?}",
        lost.delay
    );
    assert!(!a.failed(false).loud);
    assert!(a.connected(), "connected again after failures: news");
}
