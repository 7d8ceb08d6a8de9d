//! The API over real HTTP (a loopback listener) on a SQLite file store: authentication on every
//! endpoint, sessions, CSRF, roles, the login limits, triage and audit, paging.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use picket_proto::{Alert, AlertKind, Details, Severity};
use serde_json::{json, Value};

use super::auth::{hash_password, secret, sha256_hex};
use super::*;
use crate::config::Config;
use crate::store::{SqliteStore, Store};

const PASSWORD: &str = "correct horse battery";

fn alert(seq: u64) -> Alert {
    Alert {
        seq,
        boot_id: "boot".into(),
        time_ms: 1000 + seq,
        kind: AlertKind::UnknownExecutable,
        severity: if seq.is_multiple_of(2) {
            Severity::High
        } else {
            Severity::Medium
        },
        rule: "executables".into(),
        path: Some(format!("/tmp/Dropped-{seq}")),
        details: Details(json!({"n": seq})),
        count: 1,
        first_ms: 1,
        last_ms: 2,
        process: None,
    }
}

/// A response: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a new connection; an event stream is read up to its headers.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let stream = headers
        .iter()
        .any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream"));
    let mut body = String::new();
    if !stream {
        r.read_to_string(&mut body).unwrap();
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// Opens `/api/events` with `header` (credentials): its reader, past the status line (200).
fn open_stream(port: u16, header: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{header}\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    reader
}

/// A store with three users (one per role, named after it) and `alerts` alerts of gw-1, and
/// the API on it.
struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    port: u16,
    runtime: tokio::runtime::Runtime,
}

fn config(extra: &str) -> Config {
    Config::parse(&format!("[http]\nlisten = \"127.0.0.1:0\"\n{extra}")).unwrap()
}

impl Fixture {
    fn new(alerts: u64, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.db");
        let mut store = SqliteStore::open(&db).unwrap();
        let hash = hash_password(PASSWORD).unwrap();
        for role in Role::ALL {
            assert!(store.add_user(role.name(), role.name(), &hash, 1).unwrap());
        }
        for seq in 1..=alerts {
            store
                .insert_alert("gw-1", &alert(seq), "json", seq)
                .unwrap();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let port = serve(&runtime, &db, &config(extra));
        Fixture {
            _dir: dir,
            db,
            port,
            runtime,
        }
    }

    fn store(&self) -> SqliteStore {
        SqliteStore::open_existing(&self.db).unwrap()
    }

    /// A new API token of `user`.
    fn token(&self, user: &str) -> String {
        let token = secret().unwrap();
        self.store()
            .add_token(&sha256_hex(&token), user, 1)
            .unwrap();
        token
    }

    fn login(&self, user: &str, password: &str) -> Reply {
        request(
            self.port,
            "POST",
            "/api/login",
            &[],
            &json!({"user": user, "password": password}).to_string(),
        )
    }

    /// Logs in: the session cookie (`picket_session=...`) and CSRF token.
    fn session(&self, user: &str) -> (String, String) {
        let r = self.login(user, PASSWORD);
        assert_eq!(r.status, 200, "{}", r.body);
        let cookie = r.header("set-cookie").unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        (cookie, r.json()["csrf"].as_str().unwrap().to_string())
    }

    fn get(&self, path: &str, token: &str) -> Reply {
        request(
            self.port,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        )
    }
}

/// Serves the API on a free loopback port, from a new reader connection to `db`.
fn serve(runtime: &tokio::runtime::Runtime, db: &Path, config: &Config) -> u16 {
    let reader: Box<dyn Store> = Box::new(SqliteStore::open_existing(db).unwrap());
    let reader = Arc::new(Mutex::new(reader));
    let config = config.clone();
    runtime.block_on(async move {
        let newest = crate::newest::start(reader.clone());
        let app = router(reader, &config, newest).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        port
    })
}

/// An endpoint's path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("/devices/{id}", "/devices/gw-1")
        .replace("{id}", "1")
}

fn body_of(e: &Endpoint) -> &'static str {
    match e.path {
        "/api/alerts/{id}/triage" => r#"{"state": "acknowledged", "note": "seen"}"#,
        _ => "",
    }
}

#[test]
fn every_endpoint_but_the_login_needs_credentials_csrf_and_its_role() {
    let f = Fixture::new(3, "");
    let forged = format!("picket_session={}", secret().unwrap());
    // A session and a token of each role (Argon2 is slow: one login per role).
    let sessions: Vec<(String, String)> = Role::ALL.iter().map(|r| f.session(r.name())).collect();
    let tokens: Vec<String> = Role::ALL.iter().map(|r| f.token(r.name())).collect();
    for e in ENDPOINTS {
        let path = concrete(e.path);
        let method = e.method.as_str();
        let Some(role) = e.role else {
            assert_eq!(e.path, "/api/login");
            continue;
        };
        let body = body_of(e);
        let r = request(f.port, method, &path, &[], body);
        assert_eq!(r.status, 401, "{method} {path} without credentials");
        assert_eq!(r.json()["error"], "authentication required");
        let r = request(f.port, method, &path, &[("Cookie", &forged)], body);
        assert_eq!(r.status, 401, "{method} {path} with a forged cookie");
        let r = request(
            f.port,
            method,
            &path,
            &[("Authorization", "Bearer not-a-token")],
            body,
        );
        assert_eq!(r.status, 401, "{method} {path} with a forged token");
        // The logout ends its session: a session of its own.
        let (cookie, csrf) = match e.path {
            "/api/logout" => f.session(role.name()),
            _ => sessions[role as usize].clone(),
        };
        if e.method != Method::GET {
            for header in [vec![], vec![("X-CSRF-Token", "forged")]] {
                let mut headers = vec![("Cookie", cookie.as_str())];
                headers.extend(header);
                let r = request(f.port, method, &path, &headers, body);
                assert_eq!(r.status, 403, "{method} {path}: no or a forged CSRF token");
                assert_eq!(r.json()["error"], "missing or wrong CSRF token");
            }
        }
        for low in Role::ALL.into_iter().filter(|r| *r < role) {
            let token = &tokens[low as usize];
            let r = request(
                f.port,
                method,
                &path,
                &[("Authorization", &format!("Bearer {token}"))],
                body,
            );
            assert_eq!(r.status, 403, "{method} {path} as {}", low.name());
            let (cookie, csrf) = &sessions[low as usize];
            let r = request(
                f.port,
                method,
                &path,
                &[("Cookie", cookie), ("X-CSRF-Token", csrf)],
                body,
            );
            assert_eq!(r.status, 403, "{method} {path} as {} (session)", low.name());
        }
        // The role needed, with a session and its CSRF token: answered (a push without a
        // bundle is refused by the handler, after the layer let it through).
        let r = request(
            f.port,
            method,
            &path,
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
            body,
        );
        let expected = if e.path == "/api/policy/push" {
            400
        } else {
            200
        };
        assert!(
            r.status == expected || (expected == 200 && r.status == 204),
            "{method} {path} as {}: {} {}",
            role.name(),
            r.status,
            r.body
        );
    }
}

#[test]
fn login_sets_a_strict_http_only_cookie_and_logout_ends_the_session() {
    let f = Fixture::new(1, "");
    let r = f.login("operator", PASSWORD);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["user"], "operator");
    assert_eq!(v["role"], "operator");
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("picket_session="), "{cookie}");
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("; Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "no TLS, no Secure: {cookie}");
    let cookie = cookie.split(';').next().unwrap();
    let csrf = v["csrf"].as_str().unwrap();
    // Only the hash of the cookie is stored.
    let secret = cookie.split_once('=').unwrap().1;
    let mut store = f.store();
    assert!(store.session(secret).unwrap().is_none());
    assert!(store.session(&sha256_hex(secret)).unwrap().is_some());

    let me = request(f.port, "GET", "/api/me", &[("Cookie", cookie)], "");
    assert_eq!(me.status, 200);
    assert_eq!(
        me.json(),
        json!({"user": "operator", "role": "operator", "csrf": csrf})
    );
    // A restart of `serve` keeps the session: it is in the store.
    let port = serve(&f.runtime, &f.db, &config(""));
    assert_eq!(
        request(port, "GET", "/api/me", &[("Cookie", cookie)], "").status,
        200
    );
    let out = request(
        f.port,
        "POST",
        "/api/logout",
        &[("Cookie", cookie), ("X-CSRF-Token", csrf)],
        "",
    );
    assert_eq!(out.status, 204);
    assert!(store.session(&sha256_hex(secret)).unwrap().is_none());
    for port in [f.port, port] {
        assert_eq!(
            request(port, "GET", "/api/me", &[("Cookie", cookie)], "").status,
            401
        );
    }
}

#[test]
fn a_wrong_password_and_an_unknown_user_get_the_same_answer_then_429() {
    let f = Fixture::new(
        0,
        "login_failures_per_user = 3\nlogin_failures_per_address = 6\n",
    );
    let wrong = f.login("admin", "not the password");
    let unknown = f.login("nobody", PASSWORD);
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.json()["error"], "wrong user name or password");
    assert!(wrong.header("set-cookie").is_none());
    // The third failure of `admin` reaches its limit: even the right password is refused.
    assert_eq!(f.login("admin", "wrong again").status, 401);
    assert_eq!(f.login("admin", "and again").status, 401);
    let r = f.login("admin", PASSWORD);
    assert_eq!(r.status, 429, "{}", r.body);
    // Other users from this address still may, until the address's limit (6 failures).
    assert_eq!(f.login("viewer", PASSWORD).status, 200);
    assert_eq!(f.login("viewer", "wrong").status, 401);
    assert_eq!(f.login("operator", "wrong").status, 401);
    assert_eq!(f.login("operator", PASSWORD).status, 429);
    // Malformed: a clear error.
    let r = request(f.port, "POST", "/api/login", &[], r#"{"user": "admin"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    let token = f.token("admin");
    let audit = f.get("/api/audit", &token).json();
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["user"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("login_failed", "operator"),
            ("login_failed", "viewer"),
            ("login", "viewer"),
            ("login_failed", "admin"),
            ("login_failed", "admin"),
            ("login_failed", "(unknown user)"),
            ("login_failed", "admin"),
        ]
    );
}

#[test]
fn an_idle_or_old_session_is_refused_and_deleted() {
    let f = Fixture::new(0, "session_idle = \"1h\"\nsession_lifetime = \"1d\"\n");
    let now = crate::ingest::now_ms();
    let mut store = f.store();
    for (name, created, last) in [
        ("idle", now - 3_600_000 - 1, now - 3_600_000 - 1),
        ("old", now - 86_400_000 - 1, now - 1000),
        ("live", now - 86_400_000 + 60_000, now - 1000),
    ] {
        let cookie = secret().unwrap();
        store
            .add_session(&sha256_hex(&cookie), "viewer", "csrf", created)
            .unwrap();
        store.touch_session(&sha256_hex(&cookie), last).unwrap();
        let r = request(
            f.port,
            "GET",
            "/api/me",
            &[("Cookie", &format!("picket_session={cookie}"))],
            "",
        );
        let live = name == "live";
        assert_eq!(r.status, if live { 200 } else { 401 }, "{name}");
        assert_eq!(
            store.session(&sha256_hex(&cookie)).unwrap().is_some(),
            live,
            "{name}"
        );
    }
}

#[test]
fn triage_is_stored_seen_by_others_audited_and_needs_no_csrf_with_a_token() {
    let f = Fixture::new(3, "");
    let operator = f.token("operator");
    let r = request(
        f.port,
        "POST",
        "/api/alerts/2/triage",
        &[("Authorization", &format!("Bearer {operator}"))],
        r#"{"state": "resolved", "note": "a known updater"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json();
    assert_eq!(t["state"], "resolved");
    assert_eq!(t["by"], "operator");
    assert!(t["time_ms"].as_u64().unwrap() > 0);
    // Another user sees it, in the list and the alert.
    let viewer = f.token("viewer");
    let one = f.get("/api/alerts/2", &viewer).json();
    assert_eq!(one["triage"], t);
    assert_eq!(one["seq"], 2);
    assert_eq!(one["ocsf"]["finding_info"]["uid"], "gw-1:2");
    let resolved = f.get("/api/alerts?triage=resolved", &viewer).json();
    assert_eq!(resolved.as_array().unwrap().len(), 1);
    assert_eq!(resolved[0]["id"], 2);
    let open = f.get("/api/alerts?triage=open", &viewer).json();
    let ids: Vec<u64> = open
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [3, 1]);
    assert_eq!(open[0]["triage"], Value::Null);
    // Refused: an unknown state, an alert not stored, a bad id.
    for (path, body, status) in [
        ("/api/alerts/2/triage", r#"{"state": "done"}"#, 400),
        ("/api/alerts/99/triage", r#"{"state": "open"}"#, 404),
        ("/api/alerts/x/triage", r#"{"state": "open"}"#, 400),
    ] {
        let r = request(
            f.port,
            "POST",
            path,
            &[("Authorization", &format!("Bearer {operator}"))],
            body,
        );
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
    }
    assert_eq!(f.get("/api/alerts/99", &viewer).status, 404);
    let audit = f.get("/api/audit", &f.token("admin")).json();
    assert_eq!(audit[0]["action"], "triage");
    assert_eq!(audit[0]["user"], "operator");
    assert_eq!(audit[0]["target"], "2");
    assert_eq!(audit[0]["detail"], "resolved: a known updater");
    assert_eq!(audit.as_array().unwrap().len(), 1);
}

#[test]
fn pages_follow_each_other_and_stay_stable_as_alerts_arrive() {
    let f = Fixture::new(10, "");
    let token = f.token("viewer");
    let ids = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_u64().unwrap())
            .collect()
    };
    let all = ids(&f.get("/api/alerts", &token).json());
    assert_eq!(all, (1..=10).rev().collect::<Vec<_>>());
    let first = ids(&f.get("/api/alerts?limit=4", &token).json());
    assert_eq!(first, [10, 9, 8, 7]);
    // Newer alerts arrive: the next page is unchanged.
    let mut store = f.store();
    for seq in 11..=13 {
        store
            .insert_alert("gw-1", &alert(seq), "json", 100)
            .unwrap();
    }
    let second = ids(&f.get("/api/alerts?limit=4&before=7", &token).json());
    assert_eq!(second, [6, 5, 4, 3]);
    let third = ids(&f.get("/api/alerts?limit=4&before=3", &token).json());
    assert_eq!(third, [2, 1]);
    // The filters: text (any case, in the path), severity, received time.
    let q = ids(&f.get("/api/alerts?q=dropped-1", &token).json());
    assert_eq!(q, [13, 12, 11, 10, 1]);
    let q = ids(&f.get("/api/alerts?q=%25", &token).json());
    assert!(q.is_empty(), "% is a character, not a wildcard: {q:?}");
    let high = ids(&f.get("/api/alerts?severity=high&before=10", &token).json());
    assert_eq!(high, [8, 6, 4, 2]);
    let until = ids(&f
        .get("/api/alerts?until=1970-01-01T00:00:00.005Z", &token)
        .json());
    assert_eq!(until, [5, 4, 3, 2, 1]);
    let r = f.get("/api/alerts?triage=maybe", &token);
    assert_eq!(r.status, 400);
    let r = f.get("/api/alerts?before=x", &token);
    assert_eq!(r.status, 400);
    // The overview counts what is stored.
    let o = f.get("/api/overview", &token).json();
    assert_eq!(o["alerts_total"], 13);
    assert_eq!(o["alerts_by_severity"], json!({"high": 6, "medium": 7}));
    assert_eq!(
        o["devices"],
        json!({"online": 0, "offline": 0, "lost": 0, "timed_out": 0, "unknown": 1})
    );
    // Received in 1970: outside the last 24 hours.
    assert_eq!(o["alerts_over_time"], json!([]));
}

#[test]
fn the_console_is_served_without_authentication_and_every_answer_has_the_security_headers() {
    let f = Fixture::new(0, "");
    let page = request(f.port, "GET", "/", &[], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html"), "{}", page.body);
    let api = request(f.port, "GET", "/api/devices", &[], "");
    assert_eq!(api.status, 401);
    for r in [&page, &api] {
        assert!(
            r.header("content-security-policy")
                .is_some_and(|v| v.starts_with("default-src 'self'")),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    }
}

/// Attempts sent together are counted as they start, not as they end: the limit holds.
#[test]
fn logins_sent_together_do_not_pass_the_limit() {
    let f = Fixture::new(
        0,
        "login_failures_per_user = 3\nlogin_failures_per_address = 1000\n",
    );
    let port = f.port;
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let attempts: Vec<_> = (0..24)
            .map(|i| {
                scope.spawn(move || {
                    request(
                        port,
                        "POST",
                        "/api/login",
                        &[],
                        &json!({"user": "admin", "password": format!("guess {i}")}).to_string(),
                    )
                    .status
                })
            })
            .collect();
        attempts.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let checked = answers.iter().filter(|s| **s == 401).count();
    let refused = answers.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, refused), (3, 21), "{answers:?}");
}

/// A live stream ends when its session does: logout (or expiry, or the user removed).
#[test]
fn a_live_stream_ends_with_its_session() {
    let f = Fixture::new(1, "");
    let (cookie, csrf) = f.session("viewer");
    let mut reader = open_stream(f.port, &format!("Cookie: {cookie}"));
    let r = request(
        f.port,
        "POST",
        "/api/logout",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        "",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    // An alert stored after the logout is not sent, and the stream ends.
    f.store()
        .insert_alert("gw-1", &alert(2), "json", 2)
        .unwrap();
    let mut rest = String::new();
    reader
        .read_to_string(&mut rest)
        .expect("the stream ends after the logout");
    assert!(!rest.contains("event: alert"), "{rest}");

    // A stream of a token ends once its user is removed (by the CLI: another process).
    let token = f.token("viewer");
    let mut reader = open_stream(f.port, &format!("Authorization: Bearer {token}"));
    assert!(f.store().remove_user("viewer").unwrap());
    let mut rest = String::new();
    reader
        .read_to_string(&mut rest)
        .expect("the stream ends once its user is removed");
}

#[test]
fn a_query_that_panics_leaves_the_store_usable() {
    let dir = tempfile::tempdir().unwrap();
    let store: Box<dyn Store> = Box::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let store = Arc::new(Mutex::new(store));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let failed = run_query(&store, |_| -> anyhow::Result<u64> { panic!("a bug") }).await;
        assert!(failed.is_err());
        assert!(store.is_poisoned());
        // The next query is served, on the same connection.
        assert_eq!(run_query(&store, |s| s.last_alert_id()).await.unwrap(), 0);
        assert!(!store.is_poisoned());
        // A transaction a panic left open is rolled back: nothing of it is kept, and the
        // next one commits.
        let failed = run_query(&store, |s| {
            s.in_transaction(&mut |s| {
                s.insert_alert("gw-1", &alert(1), "json", 1)?;
                panic!("a bug in a batch")
            })
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(run_query(&store, |s| s.last_alert_id()).await.unwrap(), 0);
        run_query(&store, |s| {
            s.in_transaction(&mut |s| s.insert_alert("gw-1", &alert(2), "json", 2).map(drop))
        })
        .await
        .unwrap();
        assert_ne!(run_query(&store, |s| s.last_alert_id()).await.unwrap(), 0);
    });
}
