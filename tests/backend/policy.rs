//! Policy push to devices and their results; the configuration file.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_push_reaches_devices_and_shows_their_results() {
    let broker = Broker::start();
    let backend = Backend::start(&broker, "be", "[groups]\nlab = [\"gw-1\", \"gw-2\"]\n");
    let bundle = b"signed bundle bytes (the device verifies them)".to_vec();
    let bundle_path = broker.path("policy.bundle");
    std::fs::write(&bundle_path, &bundle).unwrap();
    let sha = {
        let d = ring::digest::digest(&ring::digest::SHA256, &bundle);
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };

    // gw-1 is online and answers each bundle it receives; gw-2 is offline.
    let gw1 = Device::connect(&broker, "gw-1", None).await;
    let responder = answer_each_bundle_as_applied(&gw1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = push_off_thread(
        &backend,
        &["policy", "push", "--group", "lab", "--timeout", "5s"],
        &bundle_path,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("gw-1: applied `base` serial 4"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("gw-2: no result within 5s"),
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(2), "not every device answered");
    responder.abort();

    // The serving backend stored gw-1's result and the new policy serial.
    check_the_result_and_serial_of_gw1(&backend, &sha);

    // Results for bundles never pushed to their devices are refused.
    let mut gw1 = gw1;
    made_up_results_are_refused(&backend, &broker, &mut gw1, &sha).await;

    // gw-2 connects later and finds the bundle retained on its policy topic.
    let _gw2 = connect_gw2_and_find_the_bundle_retained(&broker, &bundle).await;

    // The broker refuses the publication (its ACL): said at once, not after the timeout.
    a_push_the_broker_refuses_is_said_at_once(&backend, &bundle_path).await;

    // Unknown groups and bad device ids are refused before anything is sent.
    a_push_to_an_unknown_group_is_refused(&backend, &bundle_path);
}

/// Subscribes gw-1 to its policy topic and answers each bundle it receives with an applied
/// result (`base`, serial 4) for that bundle's digest, until aborted.
async fn answer_each_bundle_as_applied(gw1: &Device) -> tokio::task::JoinHandle<()> {
    gw1.client
        .subscribe(
            picket_proto::topic::topic("gw-1", Channel::Policy),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let client = gw1.client.clone();
    let received = gw1.received.clone();
    tokio::spawn(async move {
        loop {
            let got = received.lock().unwrap().pop();
            if let Some(p) = got {
                let digest = ring::digest::digest(&ring::digest::SHA256, &p.payload);
                let result = PolicyResult {
                    time_ms: 5,
                    bundle_sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
                    outcome: PolicyOutcome::Applied {
                        name: "base".into(),
                        serial: 4,
                    },
                };
                let bytes = picket_proto::encode(Format::Postcard, "gw-1", &result).unwrap();
                client
                    .publish(
                        picket_proto::topic::topic("gw-1", Channel::PolicyResult),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        bytes,
                    )
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Runs `picket-backend --config CONFIG ARGS BUNDLE` on a blocking thread.
async fn push_off_thread(
    backend: &Backend,
    args: &'static [&'static str],
    bundle_path: &std::path::Path,
) -> std::process::Output {
    let config = backend.config.clone();
    let path = bundle_path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        backend_bin()
            .arg("--config")
            .arg(&config)
            .args(args)
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The serving backend stored gw-1's result for the bundle `sha` and its new policy serial.
fn check_the_result_and_serial_of_gw1(backend: &Backend, sha: &str) {
    let results = backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(results[0]["device_id"], "gw-1");
    assert_eq!(results[0]["outcome"], "applied");
    assert_eq!(results[0]["bundle_sha256"], sha);
    let devices = backend.query(&["devices", "--json"]);
    assert_eq!(devices[0]["policy_serial"], 4, "{devices:#}");
}

/// gw-1 sends a result for a bundle never pushed (claiming serial 99), gw-3 (not in the
/// group) one for the bundle pushed to the group: both refused as `unknown_policy`, neither
/// stored; gw-2's result for the bundle pushed to it, not yet received, is stored.
async fn made_up_results_are_refused(
    backend: &Backend,
    broker: &Broker,
    gw1: &mut Device,
    pushed: &str,
) {
    let result = |sha: &str, serial| PolicyResult {
        time_ms: 6,
        bundle_sha256: sha.into(),
        outcome: PolicyOutcome::Applied {
            name: "made-up".into(),
            serial,
        },
    };
    let never_pushed = "ab".repeat(32);
    gw1.publish(
        Channel::PolicyResult,
        Format::Postcard,
        &result(&never_pushed, 99),
        false,
    )
    .await;
    let mut gw3 = Device::connect(broker, "gw-3", None).await;
    gw3.publish(
        Channel::PolicyResult,
        Format::Json,
        &result(pushed, 98),
        false,
    )
    .await;
    let mut gw2 = Device::connect(broker, "gw-2", None).await;
    gw2.publish(
        Channel::PolicyResult,
        Format::Postcard,
        &result(pushed, 4),
        false,
    )
    .await;
    gw1.flush().await;
    gw3.flush().await;
    gw2.flush().await;
    let refused = backend.wait_for(&["refused", "--json"], |v| v.as_array().unwrap().len() == 2);
    let refused = refused.as_array().unwrap();
    let rows: Vec<(&str, &str, u64)> = refused
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap(),
                r["device_id"].as_str().unwrap(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("unknown_policy", "gw-1", 1), ("unknown_policy", "gw-3", 1)]
    );
    assert_eq!(
        refused[0]["last_error"],
        format!(
            "a result (applied) for bundle {never_pushed}, which was never pushed to this \
             device: not stored"
        )
    );
    let results = backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().unwrap().len() == 2
    });
    let stored: Vec<(&str, &str)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["device_id"].as_str().unwrap(),
                r["bundle_sha256"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(stored.contains(&("gw-2", pushed)), "{results:#}");
    assert!(stored.contains(&("gw-1", pushed)), "{results:#}");
    // gw-1's policy is still the one it applied, not the one it made up.
    let devices = backend.query(&["devices", "--json"]);
    let gw1_row = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "gw-1")
        .unwrap();
    assert_eq!(gw1_row["policy_serial"], 4, "{devices:#}");
}

/// Connects gw-2, subscribes to its policy topic and waits for `bundle`, retained; returns
/// the device, to stay connected.
async fn connect_gw2_and_find_the_bundle_retained(broker: &Broker, bundle: &[u8]) -> Device {
    let gw2 = Device::connect(broker, "gw-2", None).await;
    gw2.client
        .subscribe(
            picket_proto::topic::topic("gw-2", Channel::Policy),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if let Some(p) = gw2.received.lock().unwrap().first() {
            assert_eq!(p.payload.as_ref(), bundle);
            assert!(p.retain);
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "gw-2 never got the bundle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw2
}

/// A push to `locked`, whose policy topic the broker's ACL denies: exit 2 with the refusal,
/// well before the 30 s timeout.
async fn a_push_the_broker_refuses_is_said_at_once(
    backend: &Backend,
    bundle_path: &std::path::Path,
) {
    let started = std::time::Instant::now();
    let out = push_off_thread(
        backend,
        &["policy", "push", "--device", "locked", "--timeout", "30s"],
        bundle_path,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("locked: the broker refused the bundle"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A push to a group the configuration lacks: exit 1, saying so.
fn a_push_to_an_unknown_group_is_refused(backend: &Backend, bundle_path: &std::path::Path) {
    let out = backend_bin()
        .arg("--config")
        .arg(&backend.config)
        .args(["policy", "push", "--group", "nope"])
        .arg(bundle_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no group `nope`"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bad_configuration_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backend.toml");
    std::fs::write(
        &config,
        "[store]\nsqlite = \"x.db\"\n\n[mqtt]\nhost = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nshare = \"g\"\n",
    )
    .unwrap();
    let out = backend_bin()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 9") && stderr.contains("share"),
        "{stderr}"
    );
    // A missing database is an error for the queries, not a new empty database.
    let out = backend_bin()
        .arg("--db")
        .arg(dir.path().join("none.db"))
        .arg("devices")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("none.db").exists());
}
