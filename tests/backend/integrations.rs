//! The integrations of `serve`: alerts published by devices over the broker reach a webhook
//! receiver (a real HTTP server on loopback that checks the signatures), each once and in order
//! per device, though the receiver is down and then failing while they arrive and `serve`
//! restarts meanwhile; `GET /api/integrations` shows the receiver's state. Syslog delivery to
//! rsyslogd is tested in `backend/src/forward/syslog_tests.rs`, against the store.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

const SECRET: &str = "the webhook's shared secret";

/// A webhook receiver on `port`, from a thread: answers `status` to the requests whose
/// signature verifies (and keeps their bodies when it is 2xx), 401 to the others.
struct Receiver {
    status: Arc<AtomicU16>,
    accepted: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(port: u16, status: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let receiver = Receiver {
            status: Arc::new(AtomicU16::new(status)),
            accepted: Arc::default(),
        };
        let (status, accepted) = (receiver.status.clone(), receiver.accepted.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                    headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
                }
                let header = |n: &str| {
                    headers
                        .iter()
                        .find(|(name, _)| name == n)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let timestamp = header("x-picket-timestamp");
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
                let signed = [timestamp.as_bytes(), b".", &body].concat();
                let expected = format!(
                    "sha256={}",
                    picket_test_support::hex(ring::hmac::sign(&key, &signed).as_ref())
                );
                let code = if header("x-picket-signature") == expected {
                    status.load(Ordering::SeqCst)
                } else {
                    401
                };
                if (200..300).contains(&code) {
                    accepted
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        receiver
    }

    /// `(device, seq)` of each alert accepted, in the order received.
    fn alerts(&self) -> Vec<(String, u64)> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["alerts"].as_array().unwrap().clone())
            .map(|a| {
                (
                    a["device_id"].as_str().unwrap().to_string(),
                    a["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

/// Polls `GET /api/integrations` until `done` accepts the receiver `siem`.
fn wait_integration(backend: &Backend, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (code, list) = backend.get("/api/integrations");
        assert_eq!(code, 200, "{list}");
        let siem = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "siem")
            .cloned()
            .unwrap_or(Value::Null);
        if done(&siem) {
            return siem;
        }
        assert!(start.elapsed() < TIMEOUT, "last: {siem:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn publish(devices: &mut [Device], seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        for d in devices.iter_mut() {
            d.publish(Channel::Alert, Format::Postcard, &alert(seq), false)
                .await;
        }
    }
    for d in devices.iter() {
        d.flush().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_failing_and_restarted_gets_every_alert_once_in_order() {
    let broker = Broker::start();
    let hook = picket_test_support::ports::free_port();
    let secret = broker.path("siem.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let webhook = format!(
        "[[webhook]]\nname = \"siem\"\nurl = \"http://127.0.0.1:{hook}/picket\"\n\
         secret = \"{}\"\nbatch = 4\nmax_backoff = \"1s\"\n",
        secret.display()
    );
    // The receiver is down: nothing listens on its port.
    let mut backend = Backend::start(&broker, "be", &webhook);
    let mut devices = vec![
        Device::connect(&broker, "gw-1", None).await,
        Device::connect(&broker, "gw-2", None).await,
    ];
    publish(&mut devices, 1..=6).await;
    backend.wait_for(&["alerts", "--json"], |a| a.as_array().unwrap().len() == 12);
    backend.wait_log("integration `siem` (webhook): connecting to", 1);
    let backend = tokio::task::spawn_blocking(move || {
        backend.stop();
    });
    backend.await.unwrap();

    // Up again, with the HTTP API, while the receiver answers 500: the cursor kept in the store
    // holds every alert back (a receiver new to the store would start after them).
    let receiver = Receiver::start(hook, 500);
    let backend = Backend::with_http(&broker, "be", &webhook);
    publish(&mut devices, 7..=9).await;
    backend.wait_for(&["alerts", "--json"], |a| a.as_array().unwrap().len() == 18);
    let failing = wait_integration(&backend, |s| {
        s["last_error"].as_str().is_some_and(|e| e.contains("500"))
    });
    assert_eq!(failing["kind"], "webhook");
    assert_eq!(failing["cursor"], 0);
    assert_eq!(failing["behind"], 18);
    assert_eq!(failing["last_success_ms"], Value::Null);
    assert!(receiver.alerts().is_empty());

    // It recovers: everything arrives, once, in order per device.
    receiver.status.store(200, Ordering::SeqCst);
    let done = wait_integration(&backend, |s| s["behind"] == 0);
    assert_eq!(done["last_error"], Value::Null);
    assert!(done["last_success_ms"].as_u64().is_some());
    let received = receiver.alerts();
    assert_eq!(received.len(), 18, "{received:?}");
    for device in ["gw-1", "gw-2"] {
        let seqs: Vec<u64> = received
            .iter()
            .filter(|(d, _)| d == device)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "{device}");
    }
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}
