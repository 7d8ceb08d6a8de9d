//! A real Mosquitto for the tests: one mutual-TLS listener on a free loopback port, with the
//! configuration and the ACL the backend writes for its managed broker
//! (`picket_backend::broker::mosquitto_conf` and `picket_backend::broker::acl`), so the tests
//! check the topic rights production has. What a test changes is said in [`Options`]; it never
//! grants a right the backend's ACL does not.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use picket_backend::broker::{acl, mosquitto_conf, Files};

use crate::pki::Pki;
pub use crate::ports::free_port;
use crate::TempDir;

/// How long the broker may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a test sets for its broker; [`Options::default`] is the managed broker's set-up with
/// Mosquitto's own queue limit.
#[derive(Clone, Debug)]
pub struct Options {
    /// Mosquitto's `max_queued_messages`: messages queued per client beyond those in flight.
    pub max_queued_messages: u64,
    /// Whether the certificate's CN is also the client id (`use_username_as_clientid`), as at
    /// the managed broker. Off for tests that connect several clients with one backend
    /// certificate (instances of `serve`, `policy push`), as an external broker may be set up.
    pub username_as_client_id: bool,
    /// `(user, topic filter)`: topics denied to a user on top of the backend's ACL, a right
    /// taken away (never one given).
    pub denied: Vec<(String, String)>,
    /// Whether the broker saves its state (the managed broker's `persistence true`, in its
    /// directory) and finds it again when restarted; off by default: each start begins empty.
    pub persistence: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_queued_messages: 1000,
            username_as_client_id: true,
            denied: Vec::new(),
            persistence: false,
        }
    }
}

/// A Mosquitto broker with one mutual-TLS listener on a free loopback port. Killed on drop;
/// the end of its log is printed to stderr when dropped during a panic.
pub struct Mosquitto {
    dir: TempDir,
    conf: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// Writes the configuration and the ACL for `pki` (its backends issued so far) and starts
    /// the broker; returns once it accepts TCP connections.
    pub fn start(pki: &Pki) -> Mosquitto {
        Mosquitto::start_with(pki, &Options::default())
    }

    /// Like [`Mosquitto::start`], with `options`.
    pub fn start_with(pki: &Pki, options: &Options) -> Mosquitto {
        let dir = TempDir::new();
        let files = Files::new(dir.path());
        fs::write(&files.acl, acl_file(pki, options))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", files.acl.display()));
        let mut broker = Mosquitto {
            conf: files.conf.clone(),
            log: files.log.clone(),
            dir,
            port: 0,
            child: None,
        };
        let mut last_error = String::new();
        for _ in 0..5 {
            broker.port = free_port();
            fs::write(&broker.conf, config_file(pki, options, &files, broker.port))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", broker.conf.display()));
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                // Another process took the port between free_port() and mosquitto's bind.
                Err(e) => last_error = e,
            }
        }
        panic!("mosquitto did not start: {last_error}");
    }

    /// The port of the TLS listener on [`BROKER_HOST`](crate::pki::BROKER_HOST).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the broker with SIGKILL (a crash: no clean disconnects) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker with SIGTERM (a clean stop: with [`Options::persistence`], it saves its
    /// state) and reaps it.
    pub fn stop_clean(&mut self) {
        if let Some(mut child) = self.child.take() {
            if crate::process::terminate(&mut child, READY_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Kills the broker if it runs, starts it again on the same port with the same
    /// configuration, and returns once it accepts TCP connections.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("mosquitto did not restart on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Writes the configuration and the ACL for `pki` and `options` anew (on the same port),
    /// taken at the next [`Mosquitto::restart`].
    pub fn set_options(&mut self, pki: &Pki, options: &Options) {
        let files = Files::new(self.dir.path());
        fs::write(&files.acl, acl_file(pki, options))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", files.acl.display()));
        fs::write(&self.conf, config_file(pki, options, &files, self.port))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.conf.display()));
    }

    /// Everything the broker logged so far (all restarts).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The configuration file the broker runs with.
    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// The broker's working directory (configuration, ACL, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let _ = writeln!(log, "--- starting mosquitto on port {}", self.port);
        // What this start logs begins here.
        let start_offset = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let stdout = log.try_clone().expect("dup the log file");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mosquitto ({e}); scripts/setup.sh installs it"));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "mosquitto exited with {status} before accepting connections; log:\n{}",
                    self.log()
                ));
            }
            // Mosquitto logs `running` once its listener is bound: a connection before that
            // would reach whoever else holds the port.
            let running = self
                .log()
                .get(start_offset..)
                .is_some_and(|l| l.contains(" running"));
            if running && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "mosquitto did not accept connections on {addr} within {READY_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // Its end only: the panic's own message, printed before, stays in view.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the last lines of the mosquitto log:\n{}",
                lines[lines.len().saturating_sub(BROKER_LOG_TAIL)..].join("\n")
            );
        }
    }
}

/// How many lines of the broker's log a failing test prints.
const BROKER_LOG_TAIL: usize = 25;

/// The managed broker's configuration (`picket_backend::broker::mosquitto_conf`) on `port`,
/// then what the tests change: no state saved across restarts (each start of a test's broker
/// begins empty, as after a crash of a broker without persistence, unless
/// [`Options::persistence`]), every log line, and the
/// settings of `options`.
fn config_file(pki: &Pki, options: &Options, files: &Files, port: u16) -> String {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conf = mosquitto_conf(
        listen,
        pki.ca_cert(),
        pki.server_cert(),
        pki.server_key(),
        options.max_queued_messages,
        files,
    );
    if !options.persistence {
        conf.push_str("\n# Tests: nothing saved across restarts.\npersistence false\n");
    }
    conf.push_str(
        "\n# Tests: everything logged.\n\
         log_type all\n\
         log_timestamp_format %H:%M:%S\n",
    );
    if !options.username_as_client_id {
        conf.push_str("use_username_as_clientid false\n");
    }
    conf
}

/// The denials of `options`, then the backend's ACL for the backends `pki` issued so far.
fn acl_file(pki: &Pki, options: &Options) -> String {
    let mut text = String::new();
    for (user, topic) in &options.denied {
        text.push_str(&format!("user {user}\ntopic deny {topic}\n\n"));
    }
    let backends = pki.backend_ids();
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    text.push_str(&acl(&backends));
    text
}
