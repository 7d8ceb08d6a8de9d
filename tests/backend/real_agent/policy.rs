//! A policy pushed with `policy push` to a real agent: applied or refused, its result stored
//! and served by the API.

use super::*;

#[test]
fn a_policy_pushed_by_the_backend_is_applied_or_refused_by_the_agent_and_the_result_stored() {
    let _serial = serial();
    let broker = Broker::start();
    let backend = Backend::with_http(&broker, "be", "");
    let site = Site::new(&broker);
    let agent = site.start_agent();
    wait_online_with_policy(&backend, "base", 1, &agent);

    // A newer policy: applied, in force, persisted and announced.
    let good = site.sign("good", 5, None);
    let applied = push(&backend, &good);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    assert!(
        stdout(&applied).contains(&format!("{DEVICE}: applied `good` serial 5")),
        "{}",
        text(&applied)
    );
    agent.wait_log(
        "now enforcing policy `good` serial 5",
        Duration::from_secs(10),
    );
    site.assert_policy_in_force(5, &good);
    wait_online_with_policy(&backend, "good", 5, &agent);

    // An older one and a tampered one: refused, each with its reason; serial 5 stays.
    let older = site.sign("older", 3, None);
    let tampered = site.tampered(&good);
    let older_reason = push_refused(&backend, &older, "serial 3 is older than serial 5");
    let tampered_reason = push_refused(&backend, &tampered, "signature does not verify");
    site.assert_policy_in_force(5, &good);

    // The backend stored the three results, newest first, as the CLI and the API say.
    let expected = [
        Expected::refused(&tampered, &tampered_reason),
        Expected::refused(&older, &older_reason),
        Expected::applied(&good, "good", 5),
    ];
    let results = backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().is_some_and(|a| a.len() >= expected.len())
    });
    check_results(&results, &expected);
    check_the_api_gives_the_same_results(&backend, &results);

    // Each refusal is also a policy_rejected alert from the agent, stored with its digest,
    // reason and source; the agent raised nothing else.
    let alerts = backend.wait_for(&["alerts", "--device", DEVICE, "--json"], |v| {
        v.as_array().is_some_and(|a| a.len() >= 2)
    });
    let mut rejected: Vec<(String, String, String, String)> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let field = |k: &str| a["details"][k].as_str().unwrap_or_default().to_string();
            (
                a["kind"].as_str().unwrap().to_string(),
                field("bundle_sha256"),
                field("reason"),
                field("source"),
            )
        })
        .collect();
    rejected.sort();
    let mut want = vec![
        (
            "policy_rejected".to_string(),
            sha256_file(&older),
            older_reason.clone(),
            "mqtt".to_string(),
        ),
        (
            "policy_rejected".to_string(),
            sha256_file(&tampered),
            tampered_reason.clone(),
            "mqtt".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(rejected, want, "{alerts:#}");

    // Restarted, the agent answers again the bundle retained on its topic (the last pushed):
    // a result for a bundle pushed to it, stored. Nothing it sent was refused: no result
    // (`unknown_policy`), no heartbeat or status (`presence_limited`, a heartbeat a second).
    stop(agent);
    let agent = site.start_agent();
    let retained = sha256_file(&tampered);
    backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .filter(|r| r["bundle_sha256"] == retained.as_str())
                .count()
                >= 2
        })
    });
    assert_eq!(backend.query(&["refused", "--json"]), serde_json::json!([]));
    stop(agent);
    backend.stop();
}

/// A policy result the backend must have stored: the bundle's digest, the outcome, the
/// policy's name and serial when applied, the reason when refused.
struct Expected {
    sha: String,
    outcome: &'static str,
    applied: Option<(&'static str, u64)>,
    reason: Option<String>,
}

impl Expected {
    fn applied(bundle: &Path, name: &'static str, serial: u64) -> Expected {
        Expected {
            sha: sha256_file(bundle),
            outcome: "applied",
            applied: Some((name, serial)),
            reason: None,
        }
    }

    fn refused(bundle: &Path, reason: &str) -> Expected {
        Expected {
            sha: sha256_file(bundle),
            outcome: "refused",
            applied: None,
            reason: Some(reason.to_string()),
        }
    }
}

/// `results` (newest first) are exactly `expected`, each from the device, with its times.
fn check_results(results: &Value, expected: &[Expected]) {
    let rows = results.as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "{results:#}");
    for (row, e) in rows.iter().zip(expected) {
        let mut want = serde_json::json!({
            "device_id": DEVICE,
            "bundle_sha256": e.sha,
            "outcome": e.outcome,
            "name": e.applied.map(|a| a.0),
            "serial": e.applied.map(|a| a.1),
            "reason": e.reason,
        });
        // The agent's time and the backend's: set.
        assert!(
            row["time_ms"].as_u64().unwrap() > 1_700_000_000_000,
            "{row}"
        );
        assert!(
            row["received_ms"].as_u64().unwrap() > 1_700_000_000_000,
            "{row}"
        );
        want["time_ms"] = row["time_ms"].clone();
        want["received_ms"] = row["received_ms"].clone();
        assert_eq!(row, &want, "{results:#}");
    }
}

/// `/api/policy-results` gives the CLI's `results`; `?device=` filters; a bad id is refused.
fn check_the_api_gives_the_same_results(backend: &Backend, results: &Value) {
    assert_eq!(backend.get("/api/policy-results"), (200, results.clone()));
    assert_eq!(
        backend.get(&format!("/api/policy-results?device={DEVICE}")),
        (200, results.clone())
    );
    assert_eq!(
        backend.get("/api/policy-results?device=gw-other"),
        (200, serde_json::json!([]))
    );
    let (code, err) = backend.get("/api/policy-results?device=a%2Fb");
    assert_eq!(code, 400, "{err}");
}
