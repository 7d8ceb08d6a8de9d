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
    gw1.client
        .subscribe(
            picket_proto::topic::topic("gw-1", Channel::Policy),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let responder = {
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
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let config = backend.config.clone();
    let path = bundle_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        backend_bin()
            .arg("--config")
            .arg(&config)
            .args(["policy", "push", "--group", "lab", "--timeout", "5s"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
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
    let results = backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(results[0]["device_id"], "gw-1");
    assert_eq!(results[0]["outcome"], "applied");
    assert_eq!(results[0]["bundle_sha256"], sha);
    let devices = backend.query(&["devices", "--json"]);
    assert_eq!(devices[0]["policy_serial"], 4, "{devices:#}");

    // gw-2 connects later and finds the bundle retained on its policy topic.
    let gw2 = Device::connect(&broker, "gw-2", None).await;
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
            assert_eq!(p.payload.as_ref(), bundle.as_slice());
            assert!(p.retain);
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "gw-2 never got the bundle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The broker refuses the publication (its ACL): said at once, not after the timeout.
    let config = backend.config.clone();
    let path = bundle_path.clone();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        backend_bin()
            .arg("--config")
            .arg(&config)
            .args(["policy", "push", "--device", "locked", "--timeout", "30s"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("locked: the broker refused the bundle"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // Unknown groups and bad device ids are refused before anything is sent.
    let out = backend_bin()
        .arg("--config")
        .arg(&backend.config)
        .args(["policy", "push", "--group", "nope"])
        .arg(&bundle_path)
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
