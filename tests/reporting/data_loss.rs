//! Sensor data lost in the kernel (a full ring buffer) is raised as sensor_data_loss, with the
//! cgroups that caused it, and counted in the heartbeat. That a healthy run raises none is checked by the detection scenario.

use super::*;

#[test]
fn events_lost_in_the_kernel_are_raised_and_counted() {
    let _serial = serial();
    let fleet = Fleet::new("loss");
    let sub = fleet.subscriber();
    // The smallest ring buffer (one page): a burst of opens overflows it.
    let agent = Agent::start_with_ring_buffer(&fleet.config(""), 4096);
    wait_live_status(&sub, 0, Presence::Online, || agent.log());
    let file = fleet.root.join("burst");
    for _ in 0..20_000 {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file)
            .unwrap();
    }
    // Raised for the file sensor, and the heartbeat's count of the file sensor's losses
    // reaches the total the alerts report.
    let start = Instant::now();
    loop {
        let losses: Vec<Alert> = sub
            .messages()
            .iter()
            .filter(|m| on(m, Channel::Alert))
            .map(decode::<Alert>)
            .filter(|a| a.kind == AlertKind::SensorDataLoss && a.details.0["sensor"] == "file")
            .collect();
        let total = losses
            .iter()
            .filter_map(|a| a.details.0["total"].as_u64())
            .max();
        let counted = last_heartbeat(&sub).and_then(|hb| {
            hb.sensors
                .iter()
                .find(|s| s.sensor == "file")
                .map(|s| s.lost)
        });
        if let (Some(total), Some(counted)) = (total, counted) {
            if total > 0 && counted >= total {
                // The cgroups named, over every alert, account for some of what was lost and
                // never for more (they are read before the totals, and both only grow); one
                // report may name a little of the next one's.
                let mut named = 0;
                for a in &losses {
                    let lost = a.details.0["lost"].as_u64().unwrap_or(0);
                    assert!(lost > 0, "a sensor_data_loss alert of nothing lost: {a:?}");
                    named += a.details.0["cgroups"]
                        .as_array()
                        .unwrap_or_else(|| panic!("no cgroups in {a:?}"))
                        .iter()
                        .map(|c| c["lost"]["file"].as_u64().unwrap_or(0))
                        .sum::<u64>();
                }
                assert!(
                    named > 0 && named <= total,
                    "the cgroups named account for {named} of the {total} lost: {losses:?}"
                );
                // The burst was this process's: its cgroup is named, by its path.
                let own = fs::read_to_string("/proc/self/cgroup").unwrap();
                let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
                assert!(
                    losses
                        .iter()
                        .any(|a| a.details.0["cgroups"]
                            .as_array()
                            .is_some_and(|cs| cs.iter().any(|c| c["cgroup"] == own
                                && c["lost"]["file"].as_u64().unwrap_or(0) > 0))),
                    "no sensor_data_loss names the burst's cgroup {own}: {losses:?}"
                );
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no sensor_data_loss of the file sensor counted in a heartbeat ({} alerts, total \
             {total:?}, heartbeat {counted:?})\n{}",
            losses.len(),
            tail(&agent.log(), 20)
        );
        thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
}
