//! PostgreSQL restarted while `serve` ingests a steady rate of alerts: once cleanly (`fast`),
//! once as a crash (`immediate`, recovered from its log at the next start). `serve` keeps
//! running: a batch whose transaction fails is not acknowledged, the broker delivers it again,
//! and the store connects again. Nothing is lost, nothing stored twice.

use picket_test_support::postgres::Postgres;

use super::*;

/// Alerts per second during the restarts.
const RATE: u64 = 20;

#[test]
fn faults_postgres_restarted_during_ingest_loses_nothing() {
    let _serial = serial();
    let restarts = rounds(2, 10);
    let pg = Postgres::start();
    let params = pg.database("faults");
    let broker = Broker::start();
    let mut backend = Backend::start(
        &broker,
        "pg-restart",
        &format!("[store]\npostgres = \"{params}\"\n"),
    );
    let mut site = Site::new(&broker, (RATE * (4 * restarts as u64 + 10)) as usize);
    let agent = site.start();
    let steady = Steady::start(
        site.take((RATE * (4 * restarts as u64 + 10)) as usize),
        RATE,
    );

    // Each restart: 1 to 2 s of ingest, the server down for 1 s, alternately fast and immediate.
    let mut rng = Rng::new("postgres_restart");
    for round in 0..restarts {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(1000)));
        let mode = if round % 2 == 0 { "fast" } else { "immediate" };
        pg.restart(mode, Duration::from_secs(1));
    }
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let raised = steady.finish(&site, &agent);
    wait_stored(&backend, &raised, "raised");
    let recover = back.elapsed();
    let raised = drain(&site, agent, &backend, &BTreeSet::new());
    backend.assert_running();
    let tally = Tally {
        raised,
        stored: stored(&backend),
    };
    let lost = tally.check();
    assert!(lost.is_empty(), "lost: {lost:?}");
    let failed = backend.log().matches("reconnecting in").count();
    tally.print(
        "postgres_restart",
        0,
        recover,
        &format!("restarts={restarts} serve_restarts=0 ingest_reconnects={failed}"),
    );
    backend.stop();
}
