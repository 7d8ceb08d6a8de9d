//! Debian's headless Chromium, driven through its WebDriver (`chromedriver`) with
//! [`fantoccini`], for the tests of the fleet console. Each [`Browser`] has its own
//! chromedriver on a free loopback port and a fresh profile directory; dropping it ends the
//! session and kills chromedriver's process group (Chromium included).

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::mosquitto::free_port;
use crate::TempDir;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page may take to show what a test waits for.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (a 1400×900 window).
    ///
    /// The flags keep Chromium from contacting anything but the pages a test opens: a closed
    /// network refuses its background connections otherwise.
    pub async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: scripts/setup.sh installs Debian's chromium and chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < PAGE_TIMEOUT,
                "chromedriver does not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let profile = TempDir::new();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let mut browser = Browser {
            client: match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => client,
                Err(e) => {
                    kill_group(&driver);
                    panic!("cannot start a Chromium session: {e}");
                }
            },
            driver,
            _profile: profile,
        };
        browser.driver.try_wait().unwrap();
        browser
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Runs an asynchronous `script`: it calls `arguments[arguments.length - 1]` with its result.
    pub async fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute_async(script, args)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Polls `script` until it returns something other than `null`, `false` or `""`, and
    /// returns that; panics with `what` after [`PAGE_TIMEOUT`].
    pub async fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script, args.clone()).await;
            if !matches!(&v, Value::Null | Value::Bool(false))
                && v.as_str().is_none_or(|s| !s.is_empty())
            {
                return v;
            }
            if start.elapsed() > PAGE_TIMEOUT {
                let page = self.text("main").await;
                panic!("{what}: not seen within {PAGE_TIMEOUT:?}; the page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the first element matching `css`, waiting for it to exist.
    pub async fn text(&self, css: &str) -> String {
        match self
            .client
            .wait()
            .at_most(PAGE_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(e) => format!("(no `{css}`: {e})"),
        }
    }

    /// Waits for an element matching `css` and clicks it.
    pub async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(PAGE_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` to click: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click `{css}`: {e}"));
    }

    /// Waits for an input matching `css`, clears it and types `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self
            .client
            .wait()
            .at_most(PAGE_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` to fill: {e}"));
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Chooses the file `path` in the file input matching `css`.
    pub async fn upload(&self, css: &str, path: &Path) {
        self.client
            .wait()
            .at_most(PAGE_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` to choose a file in: {e}"))
            .send_keys(&path.display().to_string())
            .await
            .unwrap_or_else(|e| panic!("cannot choose {} in `{css}`: {e}", path.display()));
    }

    /// Saves a PNG of the window as `dir/name.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        kill_group(&self.driver);
        let _ = self.driver.wait();
    }
}

fn kill_group(driver: &Child) {
    // SAFETY: kill(2) of the process group our own child leads (process_group(0)).
    unsafe { libc::kill(-(driver.id() as libc::pid_t), libc::SIGKILL) };
}

impl Drop for Browser {
    /// A failed test leaves neither chromedriver nor Chromium behind.
    fn drop(&mut self) {
        if matches!(self.driver.try_wait(), Ok(None)) {
            kill_group(&self.driver);
            let _ = self.driver.wait();
        }
    }
}
