//! The benign soak: after learning, the device's own workload (services started as init
//! starts them, cron jobs each second, web requests, log rotation, a restart of the services)
//! raises no alert about the world's processes. `SOAK_SECONDS` sets how long (30 s by default,
//! the CI's; `SOAK_SECONDS=600` for the ten-minute run of docs/DETECTION.md).

use super::*;

/// Whether alert `a` is about the world: its paths, programs or arguments name the world's
/// directory or its web server's port, or a world service is among its process's ancestors.
fn about_world(a: &Value, world: &World, services: &[u32]) -> bool {
    let text = a.to_string();
    text.contains(world.dir.to_str().unwrap())
        || text.contains(&format!("127.0.0.1:{}", world.port))
        || services.iter().any(|s| of_tree(a, *s))
}

#[test]
fn soak_the_device_workload_raises_nothing() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .map(|s| s.parse().expect("SOAK_SECONDS: a number of seconds"))
        .unwrap_or(30);
    let lab = Lab::new("soak");
    let mut world = World::new("soak");
    let bundle = world.baseline(&lab);
    let agent = Agent::start(&config(&lab, &bundle));
    let mut services = world.service_pids();
    let start = Instant::now();
    let mut requests = 0u64;
    let mut restarted = false;
    while start.elapsed() < Duration::from_secs(seconds) {
        world.get("/").expect("the web server answers");
        world
            .get("/cgi-bin/status")
            .expect("the status page answers");
        requests += 2;
        // Half-way, the services are stopped and started again as init does.
        if !restarted && start.elapsed() > Duration::from_secs(seconds / 2) {
            world.shutdown();
            world.boot();
            services.extend(world.service_pids());
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.barrier(&lab, "after the soak");
    let out = agent.stop();
    let rotated = fs::metadata(world.dir.join("log/app.log.1")).is_ok();
    assert!(
        rotated,
        "the log was never rotated: the workload did not run"
    );
    let of_world: Vec<Value> = out
        .alerts
        .iter()
        .filter(|a| !HEALTH_KINDS.contains(&kind(a)) && about_world(a, &world, &services))
        .cloned()
        .collect();
    eprintln!(
        "soak: {seconds} s, {requests} web requests, services restarted once; {} alerts about \
         the device's workload, {} alerts in all (the rest from elsewhere on this machine)",
        of_world.len(),
        out.alerts.len()
    );
    assert!(
        of_world.is_empty(),
        "the device's own workload raised alerts:\n{}",
        lines(&of_world)
    );
}
