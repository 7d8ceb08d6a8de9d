//! The broker flapping (stopped and started again every few seconds) under a steady alert
//! rate. The broker saves its state as the managed broker does (`persistence true`) and is
//! stopped cleanly (SIGTERM, which saves it), and `serve` subscribes without a share group, as
//! it does at the managed broker: the backend's session, its subscriptions and what was queued
//! for it outlive each stop; the agent keeps what the broker did not acknowledge and sends it
//! again. Everything arrives exactly once. (A broker killed with SIGKILL loses what it queued
//! after its last save, docs/BACKEND.md; Mosquitto does not keep shared subscriptions across a
//! restart, so alerts published before `serve` subscribes again are acknowledged and dropped:
//! docs/RELIABILITY.md. Neither is this scenario.)

use super::*;

/// Alerts per second while the broker flaps.
const RATE: u64 = 20;

#[test]
fn faults_broker_flapping_under_a_steady_rate_delivers_everything_exactly_once() {
    let _serial = serial();
    let seconds = if full() { 300 } else { 10 };
    let mut rng = Rng::new("broker_flap");
    let mut broker = Broker::start_saving(true);
    let db = broker.path("flap.db");
    let mut backend = Backend::start(
        &broker,
        "flap",
        &format!("share_group = \"\"\n[store]\nsqlite = {}\n", quote(&db)),
    );
    let mut site = Site::new(&broker, (RATE * (seconds + 10)) as usize);
    let agent = site.start();

    let steady = Steady::start(site.take((RATE * (seconds + 10)) as usize), RATE);

    // Up 1 to 3 s, down 1 to 3 s, until the time is up.
    let start = Instant::now();
    let mut flaps = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
        broker.stop_clean();
        flaps += 1;
        std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
        broker.restart();
    }
    let back = Instant::now();
    let raised = steady.finish(&site, &agent);
    wait_stored(&backend, &raised, "raised");
    let recover = back.elapsed();
    let raised = drain(&site, agent, &backend, &BTreeSet::new());
    backend.assert_running();
    assert!(broker.is_running());
    let reconnects = backend.log().matches("connected to the broker").count();
    let tally = Tally {
        raised,
        stored: stored(&backend),
    };
    let lost = tally.check();
    assert!(lost.is_empty(), "lost: {lost:?}");
    tally.print(
        "broker_flap",
        0,
        recover,
        &format!("seconds={seconds} flaps={flaps} backend_connections={reconnects}"),
    );
    backend.stop();
}
