//! The fleet console in a real browser: Debian's headless Chromium, driven through
//! chromedriver, against a real `serve` fed over a real Mosquitto with mutual TLS. One browser
//! session and one `serve` for the whole scenario (a browser start costs about a second).
//! Screenshots of each page are saved under `target/console-screenshots/`.

use std::path::PathBuf;

use picket_test_support::browser::Browser;
use serde_json::json;

use super::*;

/// What a hostile device could put in an alert: markup that would run script if the page
/// parsed it as HTML. Every payload sets `window.__pwned` and the title if it ever runs.
const IMG: &str = "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\">";
const SCRIPT: &str = "<script>window.__pwned=2;document.title='pwned'</script>";

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

fn hostile_alert(seq: u64) -> Alert {
    let mut a = alert(seq);
    a.kind = AlertKind::UnknownExecutable;
    a.severity = Severity::Critical;
    a.path = Some(format!("/tmp/{IMG}"));
    a.details = Details(json!({"sha256": "cd".repeat(32), "note": SCRIPT}));
    let p = a.process.as_mut().unwrap();
    p.exe = Some(format!("/tmp/{IMG}"));
    p.argv = vec![SCRIPT.into(), IMG.into()];
    p.ancestry = vec![
        Ancestor {
            pid: 4000,
            exe: Some(format!("/bin/{SCRIPT}")),
        },
        Ancestor {
            pid: 1,
            exe: Some("/sbin/init".into()),
        },
    ];
    a
}

/// Nothing of the payloads ran: no global set, the title unchanged, no element made of them.
async fn assert_inert(browser: &Browser, page: &str) {
    let v = browser
        .js(
            "return {pwned: typeof window.__pwned, title: document.title, \
             markup: document.querySelectorAll('main img, main script').length};",
            vec![],
        )
        .await;
    assert_eq!(v["pwned"], "undefined", "{page}: a payload ran");
    assert!(
        !v["title"].as_str().unwrap().contains("pwned"),
        "{page}: a payload changed the title"
    );
    assert_eq!(v["markup"], 0, "{page}: a payload became an element");
}

async fn login(browser: &Browser, user: &str, password: &str) {
    shown(browser, "#/login").await;
    browser.fill("#login-user", user).await;
    browser.fill("#login-password", password).await;
    browser.click("#login-form button[type=submit]").await;
}

/// The links of the header the user sees.
const NAV_LINKS: &str = "return [...document.querySelectorAll('#nav a')] \
    .filter((a) => a.checkVisibility()).map((a) => a.textContent);";

/// The paths of the rows of the alerts page, top first.
const ROW_PATHS: &str =
    "return [...document.querySelectorAll('#alert-rows td.path')].map((td) => td.textContent);";

/// Opens the page of `fragment` without a reload, and waits until it is shown.
pub(super) async fn go(browser: &Browser, fragment: &str) {
    browser
        .js("location.hash = arguments[0];", vec![json!(fragment)])
        .await;
    shown(browser, fragment).await;
}

/// Waits until the page shown is that of `fragment` (the page marks `main` with it once its
/// content is in place).
async fn shown(browser: &Browser, fragment: &str) {
    browser
        .wait_js(
            &format!("the page {fragment}"),
            "return document.getElementById('main').getAttribute('data-view') === arguments[0];",
            vec![json!(fragment)],
        )
        .await;
}

/// Waits until the open alerts page receives live alerts, and marks the page with `mark`
/// (`window.__same_page`): a reload would lose it.
pub(super) async fn live(browser: &Browser, mark: &str) {
    browser
        .wait_js(
            "the live indicator",
            "return document.getElementById('live').textContent === 'live'",
            vec![],
        )
        .await;
    browser
        .js("window.__same_page = arguments[0];", vec![json!(mark)])
        .await;
}

/// The id of the row of the open alerts page whose path is `path`.
async fn alert_id(browser: &Browser, path: &str) -> u64 {
    browser
        .wait_js(
            &format!("a row for {path}"),
            "for (const tr of document.querySelectorAll('#alert-rows tr')) { \
               if (tr.querySelector('td.path').textContent === arguments[0]) \
                 return Number(tr.getAttribute('data-id')); } return null;",
            vec![json!(path)],
        )
        .await
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_console_login_live_alerts_triage_roles_and_hostile_text() {
    let broker = Broker::start();
    let backend = Backend::with_http(&broker, "console", "");
    let port = backend.http();
    backend.add_user("alice", "admin", "alice-has-a-long-password");
    backend.add_user("victor", "viewer", "victor-has-a-long-password");

    // The page and its files, with their types and the security headers.
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let Reply { head, body, .. } = http(port, "GET", path, None, "");
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(
            head.contains(
                "content-security-policy: default-src 'self'; script-src 'self'; style-src 'self';"
            ),
            "{path}: {head}"
        );
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
        assert!(
            head.contains("referrer-policy: no-referrer"),
            "{path}: {head}"
        );
        assert!(!body.is_empty());
    }

    let mut device = Device::connect(&broker, "gw-1", None).await;
    device
        .publish(
            Channel::Status,
            Format::Postcard,
            &status(Presence::Online),
            true,
        )
        .await;
    device
        .publish(Channel::Heartbeat, Format::Postcard, &heartbeat(), false)
        .await;
    device
        .publish(Channel::Alert, Format::Postcard, &alert(1), false)
        .await;
    device
        .publish(Channel::Alert, Format::Json, &hostile_alert(2), false)
        .await;
    device.flush().await;
    backend.wait_for(&["alerts", "--json"], |v| v.as_array().unwrap().len() == 2);
    backend.wait_for(&["devices", "--json"], |v| v[0]["counters"].is_object());

    let browser = Browser::start().await;
    let shots = screenshots();
    browser.goto(&format!("http://127.0.0.1:{port}/")).await;

    // Without a session the page asks to log in; a wrong password is refused.
    login(&browser, "alice", "not-her-password").await;
    browser
        .wait_js(
            "the refusal of a wrong password",
            "return document.getElementById('login-error').textContent",
            vec![],
        )
        .await;
    // Logged out, the page offers nothing but the login.
    assert_eq!(
        browser
            .js(
                "return document.getElementById('nav').checkVisibility()",
                vec![]
            )
            .await,
        false
    );
    browser.screenshot(&shots, "login").await;
    login(&browser, "alice", "alice-has-a-long-password").await;
    shown(&browser, "#/overview").await;

    // The session cookie is out of the script's reach (HttpOnly), and the browser enforces the
    // Content-Security-Policy: an inline script added to the page does not run.
    let cookie = browser.js("return document.cookie", vec![]).await;
    assert!(
        !cookie.as_str().unwrap().contains("picket_session"),
        "{cookie}"
    );
    let inline = browser
        .js(
            "const s = document.createElement('script'); \
             s.textContent = 'window.__inline = 1;'; document.body.append(s); \
             return typeof window.__inline;",
            vec![],
        )
        .await;
    assert_eq!(inline, "undefined", "an inline script ran");

    // An admin is offered every page.
    assert_eq!(
        browser.js(NAV_LINKS, vec![]).await,
        json!(["Overview", "Alerts", "Policies", "Audit"])
    );

    // The overview counts what was stored.
    let total = browser
        .wait_js(
            "the overview",
            "const t = document.getElementById('alerts-total'); return t && t.textContent;",
            vec![],
        )
        .await;
    assert_eq!(total, "2");
    assert_eq!(
        browser
            .js(
                "return document.querySelector('[data-state=online] .value').textContent",
                vec![]
            )
            .await,
        "1"
    );
    let kinds = browser
        .js(
            "return [...document.querySelectorAll('#kind-chart > text')].map((t) => t.textContent)",
            vec![],
        )
        .await;
    assert_eq!(kinds, json!(["unknown_executable", "2"]));
    browser.screenshot(&shots, "overview").await;

    // The alerts page lists both; a new alert appears on top without a reload.
    go(&browser, "#/alerts").await;
    let first = alert_id(&browser, "/tmp/dropped-1").await;
    let hostile = alert_id(&browser, &format!("/tmp/{IMG}")).await;
    live(&browser, "yes").await;
    // Sequence number 5: 3 and 4 are missing, a gap the device page shows.
    device
        .publish(Channel::Alert, Format::Postcard, &alert(5), false)
        .await;
    device.flush().await;
    let top = browser
        .wait_js(
            "the new alert on top",
            "const tr = document.querySelector('#alert-rows tr'); \
             return tr && tr.querySelector('td.path').textContent === '/tmp/dropped-5' \
               && document.querySelectorAll('#alert-rows tr').length;",
            vec![],
        )
        .await;
    assert_eq!(top, 3);
    assert_eq!(browser.js("return window.__same_page", vec![]).await, "yes");
    assert_inert(&browser, "alerts").await;
    browser.screenshot(&shots, "alerts").await;

    // Filters: by severity from the address, by text from the form.
    go(&browser, "#/alerts?severity=critical").await;
    assert_eq!(
        browser.js(ROW_PATHS, vec![]).await,
        json!([format!("/tmp/{IMG}")])
    );
    go(&browser, "#/alerts").await;
    assert_eq!(
        browser
            .js(ROW_PATHS, vec![])
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
    browser
        .fill("#alert-filters input[name=q]", "dropped-1")
        .await;
    browser.click("#alert-filters button[type=submit]").await;
    shown(&browser, "#/alerts?q=dropped-1").await;
    assert_eq!(
        browser.js(ROW_PATHS, vec![]).await,
        json!(["/tmp/dropped-1"])
    );

    // The hostile alert's detail shows its markup as text.
    go(&browser, &format!("#/alerts/{hostile}")).await;
    let path = browser
        .wait_js(
            "the hostile alert's path",
            "const p = document.getElementById('alert-path'); return p && p.textContent;",
            vec![],
        )
        .await;
    assert_eq!(path, format!("/tmp/{IMG}"));
    let argv = browser.text("#process-argv").await;
    assert_eq!(argv, format!("{SCRIPT} {IMG}"));
    let tree = browser.text("#process-tree").await;
    assert!(tree.contains(&format!("/bin/{SCRIPT}")), "{tree}");
    assert_inert(&browser, "alert detail").await;
    browser.screenshot(&shots, "alert-hostile").await;

    // Triage: acknowledged with a note, still so after a reload.
    go(&browser, &format!("#/alerts/{first}")).await;
    browser
        .fill("#triage-note-input", "known test binary, ticket 42")
        .await;
    browser.click("#triage-acknowledge").await;
    let triaged = "const t = document.querySelector('#triage [data-triage]'); \
                   const n = document.getElementById('triage-note'); \
                   return t && n && t.getAttribute('data-triage') === 'acknowledged' \
                     && n.textContent;";
    let note = browser
        .wait_js("the acknowledgement", triaged, vec![])
        .await;
    assert_eq!(note, "known test binary, ticket 42");
    browser.client.refresh().await.unwrap();
    shown(&browser, &format!("#/alerts/{first}")).await;
    let note = browser
        .wait_js("the acknowledgement after a reload", triaged, vec![])
        .await;
    assert_eq!(note, "known test binary, ticket 42");
    let ocsf = browser.text("#ocsf-json").await;
    assert!(ocsf.contains("class_uid"), "{ocsf}");
    browser.screenshot(&shots, "alert").await;

    // The device page: its heartbeat, its timeline and the gap.
    go(&browser, "#/devices/gw-1").await;
    let rss = browser
        .wait_js(
            "the device's heartbeat",
            "const r = document.getElementById('hb-rss'); return r && r.textContent;",
            vec![],
        )
        .await;
    assert_eq!(rss, "5.0 MiB");
    assert_eq!(
        browser
            .js(
                "return document.querySelectorAll('#timeline circle').length",
                vec![]
            )
            .await,
        3
    );
    let gap = browser.text("#gaps tbody tr").await;
    assert_eq!(gap, "3 4 2 lost");
    assert_eq!(
        browser
            .js(
                "return document.querySelectorAll('#timeline .gap-loss').length",
                vec![]
            )
            .await,
        1
    );
    browser.screenshot(&shots, "device").await;

    // An admin pushes a signed bundle from the page: the device receives it, and the result it
    // sends back is shown.
    let bundle = signed_bundle(&broker);
    let bundle_path = broker.path("console.bundle");
    std::fs::write(&bundle_path, &bundle).unwrap();
    device
        .client
        .subscribe(
            picket_proto::topic::topic("gw-1", Channel::Policy),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    go(&browser, "#/policies").await;
    browser.js("window.__same_page = 'policies';", vec![]).await;
    browser.upload("#push-bundle", &bundle_path).await;
    browser.click("#push-form input[value='gw-1']").await;
    browser.click("#push-form button[type=submit]").await;
    let answer = browser
        .wait_js(
            "the push's answer",
            "return document.getElementById('push-result').textContent",
            vec![],
        )
        .await;
    assert!(
        answer
            .as_str()
            .unwrap()
            .starts_with("Serial 42 published to gw-1."),
        "{answer}"
    );
    wait_for_bundle(&device, &bundle).await;
    let sha =
        picket_test_support::hex(ring::digest::digest(&ring::digest::SHA256, &bundle).as_ref());
    let result = PolicyResult {
        time_ms: 5,
        bundle_sha256: sha.clone(),
        outcome: PolicyOutcome::Applied {
            name: "console".into(),
            serial: 42,
        },
    };
    device
        .publish(Channel::PolicyResult, Format::Postcard, &result, false)
        .await;
    device.flush().await;
    // The result appears on the open page, without a reload, and the device's serial with it.
    let row = browser
        .wait_js(
            "the push's result on the open page",
            "const tr = document.querySelector('#policy-results tbody tr');              return tr && tr.checkVisibility() && tr.textContent.includes('applied')                && [...tr.querySelectorAll('td')].map((td) => td.textContent).join(' ');",
            vec![],
        )
        .await;
    let row = row.as_str().unwrap();
    assert!(
        row.contains("gw-1 applied console 42") && row.contains(&sha[..16]),
        "{row}"
    );
    assert_eq!(
        browser
            .text("#policy-serials tr[data-device='gw-1'] .policy-serial")
            .await,
        "42"
    );
    assert_eq!(
        browser
            .text("#policy-serials tr[data-device='gw-1'] .policy-name")
            .await,
        "console"
    );
    assert_eq!(
        browser.js("return window.__same_page", vec![]).await,
        "policies",
        "the page was reloaded"
    );
    backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().unwrap().len() == 1
    });
    browser.screenshot(&shots, "policies").await;
    go(&browser, "#/audit").await;
    browser
        .wait_js(
            "the audit log's login and triage",
            "const t = document.querySelector('main table'); \
             return t && t.textContent.includes('alice') && t.textContent.includes('triage');",
            vec![],
        )
        .await;
    browser.screenshot(&shots, "audit").await;

    // A viewer sees the triage, has no triage buttons, no push form, and the API refuses its
    // push.
    browser.click("#logout").await;
    login(&browser, "victor", "victor-has-a-long-password").await;
    shown(&browser, "#/overview").await;
    browser
        .wait_js(
            "the viewer's overview",
            "return document.getElementById('alerts-total') !== null",
            vec![],
        )
        .await;
    assert_eq!(
        browser.js(NAV_LINKS, vec![]).await,
        json!(["Overview", "Alerts", "Policies"])
    );
    go(&browser, &format!("#/alerts/{first}")).await;
    let note = browser
        .wait_js("the triage seen by a viewer", triaged, vec![])
        .await;
    assert_eq!(note, "known test binary, ticket 42");
    assert_eq!(
        browser
            .js(
                "return document.getElementById('triage-acknowledge') === null",
                vec![]
            )
            .await,
        true
    );
    go(&browser, "#/policies").await;
    browser
        .wait_js(
            "the viewer's policies page",
            "return document.querySelector('main h1') && \
               document.querySelector('main h1').textContent === 'Policies' \
               && document.querySelector('main table') !== null",
            vec![],
        )
        .await;
    assert_eq!(
        browser
            .js(
                "return document.getElementById('push-form') === null",
                vec![]
            )
            .await,
        true
    );
    // Pages of 100, the next one after the "Older" button: every alert once, newest first.
    for seq in 10..160 {
        device
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
    }
    device.flush().await;
    backend.wait_for(&["alerts", "--json"], |v| {
        v.as_array().unwrap().len() == 153
    });
    go(&browser, "#/alerts").await;
    let ids = "const ids = [...document.querySelectorAll('#alert-rows tr')] \
                 .map((tr) => Number(tr.getAttribute('data-id'))); \
               return ids.length === arguments[0] && ids;";
    let first_page = browser
        .wait_js("the first page", ids, vec![json!(100)])
        .await;
    browser.click("#older").await;
    let all = browser
        .wait_js("the second page", ids, vec![json!(153)])
        .await;
    let all: Vec<u64> = serde_json::from_value(all).unwrap();
    assert_eq!(
        &all[..100],
        first_page
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(
        all.windows(2).all(|w| w[0] > w[1]),
        "not newest first once each: {all:?}"
    );
    assert_eq!(
        browser
            .js("return document.getElementById('older').hidden", vec![])
            .await,
        true
    );
    browser.screenshot(&shots, "alerts-viewer").await;

    let status = browser
        .js_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/me').then((r) => r.json()).then((me) => fetch('/api/policy/push', {
               method: 'POST',
               headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf},
               body: JSON.stringify({
                 bundle: btoa(String.fromCharCode(...arguments[0])), devices: ['gw-1'],
               }),
             })).then((r) => done(r.status), (e) => done(String(e)));",
            vec![json!(bundle)],
        )
        .await;
    assert_eq!(status, 403);

    super::browser_agent::an_alert_of_a_real_agent_appears_live(
        &browser, &broker, &backend, &shots,
    )
    .await;
    browser.close().await;
    backend.stop();
}

/// A bundle of the policy "console", serial 42, signed with a key made for the test.
fn signed_bundle(broker: &Broker) -> Vec<u8> {
    let (key, _, _) = picket_policy::keys::generate(&broker.path("vendor")).unwrap();
    let policy = picket_policy::load_toml(
        "[metadata]\nname = \"console\"\ndevice_class = \"gw\"\nserial = 42\n\
         created = \"2026-11-22T10:00:00Z\"\n\n[[executable]]\npath = \"/usr/bin/a\"\n\
         sha256 = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n",
        "console.toml",
    )
    .unwrap();
    let key = picket_policy::keys::SigningKey::load(&key).unwrap();
    picket_policy::bundle::sign(&policy, &key)
}

/// Waits until `device` received `bundle` on its policy topic.
async fn wait_for_bundle(device: &Device, bundle: &[u8]) {
    let start = std::time::Instant::now();
    while !device
        .received
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.payload.as_ref() == bundle)
    {
        assert!(start.elapsed() < TIMEOUT, "gw-1 did not receive the bundle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        time_ms: 2,
        uptime_s: 3600,
        agent_version: "0.1.1".into(),
        policy_serial: 3,
        rss_bytes: 5 << 20,
        sensors: vec![SensorCounters {
            sensor: "process".into(),
            seen: 100,
            lost: 2,
        }],
        alerts: AlertCounters {
            raised: 3,
            sent: 3,
            ..Default::default()
        },
        spool_pending: 0,
        spool_bytes: 0,
        exec_unverified: Some(0),
    }
}
