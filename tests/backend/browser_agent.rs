//! The console fed by a real agent: a `picket run` enrolled in the fleet of the browser test
//! (its certificate from the same CA, reporting to the same broker) runs an executable the
//! baseline does not know, and the open alerts page shows the alert without a reload; its
//! detail draws the process ancestry the kernel saw: this test's own process chain.

use std::fs;
use std::path::Path;
use std::process::Command;

use picket_test_support::browser::Browser;
use serde_json::json;

use super::browser::{go, live};
use super::real_agent::{self, Site, DEVICE};
use super::*;

/// The parent of this process: its pid and executable.
fn parent() -> (u32, String) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    // After the command name (in parentheses, which may hold spaces): state, then the ppid.
    let ppid: u32 = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let exe = fs::read_link(format!("/proc/{ppid}/exe")).unwrap();
    (ppid, exe.to_str().unwrap().to_string())
}

pub(super) async fn an_alert_of_a_real_agent_appears_live(
    browser: &Browser,
    broker: &Broker,
    backend: &Backend,
    shots: &Path,
) {
    let _serial = real_agent::serial();
    let site = Site::new(broker);
    let agent = site.start_exec_agent();
    real_agent::wait_online_with_policy(backend, "execs", 1, &agent);

    go(browser, &format!("#/alerts?device={DEVICE}")).await;
    live(browser, "agent").await;

    // A program the baseline does not know, run by this test.
    let dropper = site.root.join("bin/dropper");
    fs::create_dir_all(dropper.parent().unwrap()).unwrap();
    fs::copy("/bin/true", &dropper).unwrap();
    let mut child = Command::new(&dropper).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let path = dropper.to_str().unwrap();

    // Its rows (the program is also `suspicious_exec`, run from /tmp, and
    // `would_block`, what enforcing would refuse): the one of its kind.
    let row = browser
        .wait_js(
            "the agent's unknown_executable alert on the open page",
            "for (const tr of document.querySelectorAll('#alert-rows tr')) { \
               const cells = [...tr.querySelectorAll('td')].map((td) => td.textContent); \
               if (cells[5] === arguments[0] && cells[3] === 'unknown_executable') \
                 return {id: Number(tr.getAttribute('data-id')), device: cells[1]}; } \
             return null;",
            vec![json!(path)],
        )
        .await;
    assert_eq!(row["device"], DEVICE, "{row}");
    assert_eq!(
        browser.js("return window.__same_page", vec![]).await,
        "agent",
        "the page was reloaded"
    );
    browser.screenshot(shots, "alerts-agent").await;

    // Its detail: the tree of the processes, from the oldest ancestor down to the program, ends
    // with this test's parent, this test and the program.
    let id = row["id"].as_u64().unwrap();
    go(browser, &format!("#/alerts/{id}")).await;
    let tree = browser
        .wait_js(
            "the process tree",
            "const t = document.getElementById('process-tree'); \
             return t && [...t.querySelectorAll('text')].map((x) => x.textContent);",
            vec![],
        )
        .await;
    let tree: Vec<String> = serde_json::from_value(tree).unwrap();
    let me = std::env::current_exe().unwrap();
    let (ppid, parent_exe) = parent();
    let want = [
        format!("pid {ppid}"),
        parent_exe,
        format!("pid {}", std::process::id()),
        me.to_str().unwrap().to_string(),
        format!("pid {pid} (the alert's process)"),
        path.to_string(),
    ];
    assert!(tree.len() >= want.len(), "{tree:?}");
    assert_eq!(tree[tree.len() - want.len()..], want, "{tree:?}");
    let argv = browser.text("#process-argv").await;
    assert_eq!(argv, path);
    browser.screenshot(shots, "alert-agent").await;
    real_agent::stop(agent);
}
