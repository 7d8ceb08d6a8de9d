//! The HTTP API of a real `serve`: live events of alerts, triage and policy results ingested
//! from a real device through Mosquitto (and their resumption), policy push to a device, HTTPS with its `Secure` cookie,
//! the users of the CLI, and the refusal to listen beyond loopback without TLS.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use super::*;

/// An open `/api/events` stream.
struct Events {
    reader: BufReader<TcpStream>,
}

/// One event: its `event`, `id` and `data` fields.
#[derive(Debug, Default)]
struct Event {
    event: String,
    id: Option<String>,
    data: Value,
}

impl Events {
    fn open(port: u16, token: &str, last_event_id: Option<&str>) -> Events {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // A bound on a test that would otherwise hang, not a figure asserted.
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Accept: text/event-stream\r\n{resume}\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut chunked = false;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            let l = line.to_ascii_lowercase();
            if l.starts_with("content-type:") {
                assert!(l.contains("text/event-stream"), "{line}");
            }
            chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
        }
        assert!(chunked, "an event stream is sent in chunks");
        Events { reader }
    }

    /// The next event (comments and the chunks' framing skipped).
    fn next(&mut self) -> Event {
        let mut event = Event::default();
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "the event stream ended");
            let l = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = l.strip_prefix("event: ") {
                event.event = v.into();
            } else if let Some(v) = l.strip_prefix("id: ") {
                event.id = Some(v.into());
            } else if let Some(v) = l.strip_prefix("data: ") {
                event.data = serde_json::from_str(v).unwrap();
            } else if l.is_empty() && !event.event.is_empty() {
                return event;
            }
            // Else a chunk size, a comment or a blank line between chunks.
        }
    }

    /// The next event, an alert: its id is the stream's position, its alert id first.
    fn next_alert(&mut self) -> Event {
        let e = self.next();
        assert_eq!(e.event, "alert", "{e:?}");
        let position = e.id.as_deref().unwrap_or_default();
        assert!(position.starts_with(&format!("{}.", e.data["id"])), "{e:?}");
        e
    }

    /// The next event, a policy result: its id ends with the time it was received.
    fn next_result(&mut self) -> Event {
        let e = self.next();
        assert_eq!(e.event, "policy_result", "{e:?}");
        let position = e.id.as_deref().unwrap_or_default();
        assert!(
            position.ends_with(&format!(".{}", e.data["received_ms"])),
            "{e:?}"
        );
        e
    }
}

/// A result of the device applying the bundle `sha`, policy `p` serial `serial` (device time
/// `serial`).
fn applied(sha: &str, serial: u64) -> PolicyResult {
    PolicyResult {
        time_ms: serial,
        bundle_sha256: sha.into(),
        outcome: PolicyOutcome::Applied {
            name: "p".into(),
            serial,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_deliver_what_is_stored_and_resume_after_the_last_id() {
    let broker = Broker::start();
    let backend = Backend::with_http(&broker, "events", "");
    let (port, token) = (backend.http(), backend.token());
    let mut device = Device::connect(&broker, "gw-1", None).await;
    // A bundle pushed to the device, which its results name (no result comes within the
    // second `policy push` waits: exit 2).
    let bundle = broker.path("events.bundle");
    std::fs::write(&bundle, b"a bundle").unwrap();
    let config = backend.config.clone();
    let pushed = tokio::task::spawn_blocking(move || {
        backend_bin()
            .arg("--config")
            .arg(&config)
            .args(["policy", "push", "--device", "gw-1", "--timeout", "1s"])
            .arg(&bundle)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(pushed.status.code(), Some(2), "{}", text(&pushed));
    let sha =
        picket_test_support::hex(ring::digest::digest(&ring::digest::SHA256, b"a bundle").as_ref());
    // Stored before the stream opens: not sent.
    device
        .publish(Channel::Alert, Format::Postcard, &alert(1), false)
        .await;
    device.flush().await;
    backend.wait_for(&["alerts", "--json"], |v| seqs(v) == [1]);

    let t = token.clone();
    let mut events = tokio::task::spawn_blocking(move || Events::open(port, &t, None))
        .await
        .unwrap();
    device
        .publish(Channel::Alert, Format::Postcard, &alert(2), false)
        .await;
    device.flush().await;
    let (mut events, first) = tokio::task::spawn_blocking(move || {
        let e = events.next_alert();
        (events, e)
    })
    .await
    .unwrap();
    assert_eq!(first.data["seq"], 2);
    assert_eq!(first.data["device_id"], "gw-1");
    assert_eq!(first.data["triage"], Value::Null);
    // The same row as the list gives.
    let (code, list) = api_call(port, "GET", "/api/alerts?limit=1", &token, "");
    assert_eq!(code, 200);
    assert_eq!(list[0], first.data);
    let id = first.data["id"].as_u64().unwrap();

    // A triage is sent too.
    let (code, triage) = api_call(
        port,
        "POST",
        &format!("/api/alerts/{id}/triage"),
        &token,
        r#"{"state": "acknowledged", "note": "looking"}"#,
    );
    assert_eq!(code, 200, "{triage}");
    let (mut events, change) = tokio::task::spawn_blocking(move || {
        let e = events.next();
        (events, e)
    })
    .await
    .unwrap();
    assert_eq!(change.event, "triage");
    assert_eq!(change.data, serde_json::json!({"id": id, "triage": triage}));

    // A policy result the device sends: the row /api/policy-results gives, at the position of
    // the last alert sent and its own time received.
    device
        .publish(
            Channel::PolicyResult,
            Format::Postcard,
            &applied(&sha, 7),
            false,
        )
        .await;
    device.flush().await;
    let (events, result) = tokio::task::spawn_blocking(move || {
        let e = events.next_result();
        (events, e)
    })
    .await
    .unwrap();
    let (code, results) = api_call(port, "GET", "/api/policy-results", &token, "");
    assert_eq!(code, 200);
    assert_eq!(results[0], result.data);
    assert_eq!(result.data["device_id"], "gw-1");
    assert_eq!(result.data["outcome"], "applied");
    assert_eq!(result.data["name"], "p");
    assert_eq!(result.data["serial"], 7);
    let received = result.data["received_ms"].as_u64().unwrap();
    let position = result.id.clone().unwrap();
    assert_eq!(position, format!("{id}.{received}"));
    drop(events);

    // Two alerts and a result while no one listens. A stream resumed from the last position
    // gets the alerts after its alert, in order, then the results received from its time on:
    // the last one sent (received in that millisecond) and the new one.
    for seq in [3, 4] {
        device
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
    }
    device
        .publish(
            Channel::PolicyResult,
            Format::Postcard,
            &applied(&sha, 8),
            false,
        )
        .await;
    device.flush().await;
    backend.wait_for(&["alerts", "--json"], |v| seqs(v).len() == 4);
    backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().unwrap().len() == 2
    });
    let t = token.clone();
    let resumed = tokio::task::spawn_blocking(move || {
        let mut events = Events::open(port, &t, Some(&position));
        [
            events.next_alert(),
            events.next_alert(),
            events.next_result(),
            events.next_result(),
        ]
    })
    .await
    .unwrap();
    let seqs: Vec<u64> = resumed[..2]
        .iter()
        .map(|e| e.data["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4]);
    assert!(resumed[0].data["id"].as_u64().unwrap() > id);
    assert_eq!(
        resumed[0].id.as_deref(),
        Some(format!("{}.{received}", resumed[0].data["id"]).as_str())
    );
    assert_eq!(resumed[2].data, result.data);
    assert_eq!(resumed[3].data["serial"], 8);

    // Resumed from an alert id alone: the alerts after it, and the results from then on only.
    let t = token.clone();
    let mut events = tokio::task::spawn_blocking(move || {
        let mut events = Events::open(port, &t, Some(&id.to_string()));
        let seqs = [events.next_alert(), events.next_alert()].map(|e| e.data["seq"].clone());
        assert_eq!(seqs, [3, 4]);
        events
    })
    .await
    .unwrap();
    device
        .publish(
            Channel::PolicyResult,
            Format::Postcard,
            &applied(&sha, 9),
            false,
        )
        .await;
    device.flush().await;
    let next = tokio::task::spawn_blocking(move || events.next_result())
        .await
        .unwrap();
    assert_eq!(next.data["serial"], 9);
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}

/// A rustls client trusting the test CA, for the HTTPS listener.
fn https_client(broker: &Broker) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(broker.pki.ca_cert()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A request over HTTPS (`headers`: lines ending with CRLF): the response's head and body.
fn https(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (String, String) {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    // The server may close without a TLS close_notify: what came before it is the answer.
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn https_serves_the_api_and_console_with_a_secure_cookie() {
    let broker = Broker::start();
    let backend = Backend::with_http(
        &broker,
        "tls",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            broker.pki.server_cert().display(),
            broker.pki.server_key().display()
        ),
    );
    let port = backend.http();
    assert!(
        backend
            .log()
            .contains(&format!("on https://127.0.0.1:{port}/")),
        "{}",
        backend.log()
    );
    // A user of the CLI, with the password given on standard input.
    backend.add_user("ops", "operator", "a long passphrase");
    let users = backend.query(&["user", "list", "--json"]);
    let roles: Vec<(&str, &str)> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap(), u["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [(ADMIN, "admin"), ("ops", "operator")]);
    assert!(users[0].get("password_hash").is_none());

    let client = https_client(&broker);
    let (head, body) = https(
        &client,
        port,
        "POST",
        "/api/login",
        "",
        r#"{"user": "ops", "password": "a long passphrase"}"#,
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("{head}"));
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    assert!(cookie.contains("; HttpOnly; SameSite=Strict"), "{cookie}");
    // The console's page, with the security headers, over the same listener.
    let (head, body) = https(&client, port, "GET", "/", "", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(body.contains("<html"), "{body}");
    // The API's answers carry them too.
    let (head, _) = https(&client, port, "GET", "/api/devices", "", "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    // Plain HTTP on the HTTPS port gets no answer.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(plain, "GET /api/me HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1"), "{answer}");

    // A user removed: written to the audit log, as every change of the CLI.
    let out = backend_bin()
        .arg("--config")
        .arg(&backend.config)
        .args(["user", "remove", "ops"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let bearer = format!("Authorization: Bearer {}\r\n", backend.token());
    let (head, audit) = https(&client, port, "GET", "/api/audit", &bearer, "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["user_remove", "login", "user_add", "token_add", "user_add"]
    );
    backend.stop();
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_tls() {
    let broker = Broker::pki();
    let config = broker.backend_config("open", "[http]\nlisten = \"0.0.0.0:8443\"\n");
    let out = backend_bin()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen = \"0.0.0.0:8443\" is beyond the loopback interface")
            && err.contains("http.tls_cert"),
        "{err}"
    );
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const POLICY: &str = r#"
[metadata]
name = "pushed"
device_class = "gw"
serial = 42
created = "2026-11-22T10:00:00Z"

[[executable]]
path = "/usr/bin/a"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pushes_a_signed_bundle_to_a_device_and_lower_roles_may_not() {
    let broker = Broker::start();
    let backend = Backend::with_http(&broker, "push", "");
    let port = backend.http();
    let (key, _, _) = picket_policy::keys::generate(&broker.path("vendor")).unwrap();
    let policy = picket_policy::load_toml(POLICY, "pushed.toml").unwrap();
    let key = picket_policy::keys::SigningKey::load(&key).unwrap();
    let bundle = picket_policy::bundle::sign(&policy, &key);
    let body = serde_json::json!({"bundle": base64(&bundle), "devices": ["gw-1"]}).to_string();

    let device = Device::connect(&broker, "gw-1", None).await;
    device
        .client
        .subscribe(
            picket_proto::topic::topic("gw-1", Channel::Policy),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();

    let admin = backend.token();
    let (b, a, signed) = (body.clone(), admin.clone(), bundle.clone());
    let backend = tokio::task::spawn_blocking(move || {
        // Viewers and operators may not push.
        for (name, role) in [("vic", "viewer"), ("olga", "operator")] {
            let token = backend.user_with_token(name, role);
            let (code, err) = api_call(port, "POST", "/api/policy/push", &token, &b);
            assert_eq!(code, 403, "{role}: {err}");
        }
        // What is not a bundle, or not a device id, is refused before anything is sent.
        let not_a_bundle = r#"{"bundle": "bm90IGEgYnVuZGxl", "devices": ["gw-1"]}"#;
        let (code, err) = api_call(port, "POST", "/api/policy/push", &a, not_a_bundle);
        assert_eq!(code, 400, "{err}");
        let bad_device = serde_json::json!({"bundle": base64(&signed), "devices": ["a/b"]});
        let (code, err) = api_call(
            port,
            "POST",
            "/api/policy/push",
            &a,
            &bad_device.to_string(),
        );
        assert_eq!(code, 400, "{err}");
        backend
    })
    .await
    .unwrap();
    let (code, answer) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || api_call(port, "POST", "/api/policy/push", &admin, &body)
    })
    .await
    .unwrap();
    assert_eq!(code, 202, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"serial": 42, "devices": ["gw-1"]})
    );
    // The device got the bundle, as signed.
    let start = Instant::now();
    loop {
        let got = device
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.payload.as_ref() == bundle.as_slice());
        if got {
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "the device did not get the bundle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, audit) =
        tokio::task::spawn_blocking(move || api_call(port, "GET", "/api/audit", &admin, ""))
            .await
            .unwrap();
    assert_eq!(code, 200);
    assert_eq!(audit[0]["action"], "policy_push");
    assert_eq!(audit[0]["user"], ADMIN);
    assert_eq!(audit[0]["target"], "gw-1");
    assert!(audit[0]["detail"]
        .as_str()
        .unwrap()
        .starts_with("serial 42, sha256 "));
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}
