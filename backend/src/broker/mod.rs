//! The managed broker (`[broker]`): a Mosquitto that `serve` configures, starts, supervises
//! and stops, so that a single machine needs nothing else. It is a separate process, not a
//! broker inside `serve`: Picket needs per-client topic authorization (a device, named by its
//! certificate's CN, may write only under `picket/v1/<its id>/` and read only its own policy
//! topic), which Mosquitto's ACL gives. Documented in `docs/BACKEND.md`, "Managed broker".
//! `files.rs` writes its configuration and ACL (the only generator of both: the tests and the
//! benchmark use it too); this file checks the settings, starts, supervises and stops it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

mod files;

pub use files::{acl, mosquitto_conf, Files, AUTOSAVE};

use crate::config::{BrokerConfig, Config};

/// How long the broker has to listen after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long it has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Restart waits double from 1 s up to this.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);
/// A broker that ran this long before it died is restarted after 1 s again.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The subject CN of the first certificate of a PEM file.
pub fn certificate_cn(path: &Path) -> anyhow::Result<String> {
    let cert = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading the certificate {}", path.display()))?
        .next()
        .with_context(|| format!("{}: no certificate found", path.display()))?
        .with_context(|| format!("parsing the certificate {}", path.display()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: not a valid X.509 certificate: {e}", path.display()))?;
    let mut names = parsed.subject().iter_common_name();
    let cn = names
        .next()
        .with_context(|| format!("{}: the subject has no common name (CN)", path.display()))?
        .as_str()
        .map_err(|e| anyhow::anyhow!("{}: unreadable common name: {e}", path.display()))?
        .to_string();
    anyhow::ensure!(
        names.next().is_none(),
        "{}: the subject has more than one common name",
        path.display()
    );
    anyhow::ensure!(
        !cn.is_empty() && !cn.chars().any(|c| c.is_control() || c.is_whitespace()),
        "{}: the common name `{}` is empty or has spaces or control characters",
        path.display(),
        cn.escape_default()
    );
    Ok(cn)
}

/// Whether `[mqtt]` `host`:`port` reaches a broker listening on `listen`.
pub fn points_at(host: &str, port: u16, listen: SocketAddr) -> bool {
    if port != listen.port() {
        return false;
    }
    let ip = listen.ip();
    if ip.is_unspecified() {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(h) => h == ip,
        Err(_) => host == "localhost" && ip.is_loopback(),
    }
}

/// The Mosquitto executable: `broker.mosquitto`, else `mosquitto` on `PATH` or in `/usr/sbin`.
fn find_mosquitto(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    fn executable(p: &Path) -> bool {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    if let Some(p) = configured {
        anyhow::ensure!(
            executable(p),
            "broker.mosquitto {}: no such executable: install mosquitto (scripts/setup.sh does)",
            p.display()
        );
        return Ok(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| executable(p))
        .context(
            "mosquitto is neither on PATH nor in /usr/sbin: install mosquitto (scripts/setup.sh \
             does) or set broker.mosquitto",
        )
}

/// An absolute path to an existing file (Mosquitto resolves relative paths against its own
/// working directory), free of line breaks (it is written into a configuration line).
fn absolute(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let p = std::fs::canonicalize(path).with_context(|| format!("{what} {}", path.display()))?;
    anyhow::ensure!(
        !p.to_string_lossy().contains(['\n', '\r']),
        "{what}: a path with a line break"
    );
    Ok(p)
}

/// The last lines of the broker's log, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    if tail.is_empty() {
        format!("(nothing in {})", log.display())
    } else {
        format!("{} (last lines):\n{tail}", log.display())
    }
}

/// What is needed to (re)start the broker.
#[derive(Debug, Clone)]
struct Launch {
    exe: PathBuf,
    listen: SocketAddr,
    files: Files,
}

impl Launch {
    /// Starts Mosquitto (its own process group, so that a terminal's Ctrl-C reaches `serve`
    /// only, which stops it; killed if dropped) and waits until it listens.
    async fn start(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.files.log)
            .with_context(|| format!("opening the broker's log {}", self.files.log.display()))?;
        let mut child = Command::new(&self.exe)
            .arg("-c")
            .arg(&self.files.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "running {}: install mosquitto (scripts/setup.sh does)",
                    self.exe.display()
                )
            })?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(&self.files.pid, format!("{pid}\n"));
        }
        let target = match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.listen.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), self.listen.port())
            }
            _ => self.listen,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the broker (mosquitto) exited at its start ({status}); {}",
                    log_tail(&self.files.log)
                );
            }
            let connect = tokio::net::TcpStream::connect::<SocketAddr>(target);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                return Ok(child);
            }
            if start.elapsed() > START_TIMEOUT {
                stop_child(&mut child).await;
                bail!(
                    "the broker (mosquitto) did not listen on {} within {}s; {}",
                    self.listen,
                    START_TIMEOUT.as_secs(),
                    log_tail(&self.files.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
async fn stop_child(child: &mut Child) -> Option<ExitStatus> {
    let pid = child.id()?;
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            log::warn!("the broker (pid {pid}) did not stop within {STOP_TIMEOUT:?}; killing it");
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

/// Stops a broker that a `serve` killed before it could stop it left running: the process of
/// the pid file, if it is a Mosquitto with this configuration file. One whose parent is a
/// running `picket-backend` belongs to another `serve` with the same `broker.dir`: an error.
fn stop_leftover(files: &Files) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(&files.pid) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let conf = files.conf.as_os_str().as_encoded_bytes();
    if !cmdline.split(|b| *b == 0).any(|arg| arg == conf) {
        return Ok(());
    }
    let Some((_, ppid)) = proc_state(pid) else {
        return Ok(());
    };
    let parent = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
    if ppid > 1 && String::from_utf8_lossy(&parent).contains("picket-backend") {
        bail!(
            "broker.dir {} is in use: its broker (pid {pid}) belongs to a running picket-backend \
             (pid {ppid})",
            files.conf.parent().unwrap_or(Path::new("")).display()
        );
    }
    log::warn!("stopping a broker left running by an earlier serve (pid {pid})");
    // Its parent reaps it, or not soon: a zombie counts as gone.
    let alive = || proc_state(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'));
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let start = Instant::now();
    while alive() && start.elapsed() < STOP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(&files.pid);
    Ok(())
}

/// A process's state letter and parent pid (`/proc/<pid>/stat`), if it exists.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: the fields after the last `)`.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The running managed broker: a task that restarts it when it dies, until [`Broker::stop`].
/// Dropping it (or the runtime) kills the broker.
pub struct Broker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    pub files: Files,
}

impl Broker {
    /// Writes the configuration and the ACL, starts Mosquitto and waits until it listens.
    pub async fn start(config: &Config, broker: &BrokerConfig) -> anyhow::Result<Broker> {
        let mqtt = config.mqtt()?;
        let exe = find_mosquitto(broker.mosquitto.as_deref())?;
        let ca = absolute(&broker.ca, "broker.ca")?;
        let cert = absolute(&broker.cert, "broker.cert")?;
        let key = absolute(&broker.key, "broker.key")?;
        // Mosquitto would say little more than "unable to load" about these.
        let cas = CertificateDer::pem_file_iter(&ca)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("broker.ca {}", ca.display()))?;
        anyhow::ensure!(
            !cas.is_empty(),
            "broker.ca {}: no certificate",
            ca.display()
        );
        certificate_cn(&cert).with_context(|| "broker.cert")?;
        crate::tls::private_key(&key).context("broker.key")?;
        let backend_cn = certificate_cn(&mqtt.cert).context("mqtt.cert")?;

        let dir = broker.dir(&config.store);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the broker's directory {}", dir.display()))?;
        let dir = absolute(&dir, "broker.dir")?;
        let files = Files::new(&dir);
        stop_leftover(&files)?;
        std::fs::write(&files.acl, acl(&[&backend_cn]))
            .with_context(|| format!("writing {}", files.acl.display()))?;
        std::fs::write(
            &files.conf,
            mosquitto_conf(
                broker.listen,
                &ca,
                &cert,
                &key,
                broker.max_queued_messages,
                &files,
            ),
        )
        .with_context(|| format!("writing {}", files.conf.display()))?;

        // A clear error for the common case, rather than Mosquitto's exit.
        std::net::TcpListener::bind(broker.listen).with_context(|| {
            format!(
                "broker.listen {}: address unusable or port in use",
                broker.listen
            )
        })?;

        if !points_at(&mqtt.host, mqtt.port, broker.listen) {
            log::warn!(
                "[mqtt] points at {}:{}, not at the managed broker on {}: the ingest uses that other broker",
                mqtt.host,
                mqtt.port,
                broker.listen
            );
        }
        let launch = Launch {
            exe,
            listen: broker.listen,
            files: files.clone(),
        };
        let child = launch.start().await?;
        log::info!(
            "broker: {} (pid {}) listening on {}; configuration {}, log {}",
            launch.exe.display(),
            child.id().unwrap_or(0),
            broker.listen,
            files.conf.display(),
            files.log.display()
        );
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(supervise(launch, child, stopped));
        Ok(Broker { stop, task, files })
    }

    /// Stops the broker (SIGTERM, then SIGKILL after a few seconds) and its supervision.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.files.pid);
    }
}

/// Waits for the broker to exit, logs it and starts it again, waiting 1 s, 2 s, 4 s, ... (up
/// to [`MAX_RESTART_BACKOFF`]) between attempts; until told to stop.
async fn supervise(launch: Launch, child: Child, mut stop: oneshot::Receiver<()>) {
    let mut child = Some(child);
    let mut started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        match child.as_mut() {
            Some(c) => {
                tokio::select! {
                    status = c.wait() => {
                        if started.elapsed() >= STABLE_RUN {
                            backoff = Duration::from_secs(1);
                        }
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        log::error!(
                            "the broker exited ({status}); restarting it in {}s; {}",
                            backoff.as_secs(),
                            log_tail(&launch.files.log)
                        );
                        child = None;
                    }
                    _ = &mut stop => {
                        let pid = c.id().unwrap_or(0);
                        let status = stop_child(c).await;
                        log::info!(
                            "broker (pid {pid}) stopped ({})",
                            status.map(|s| s.to_string()).unwrap_or_else(|| "gone".into())
                        );
                        return;
                    }
                }
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => return,
                }
                backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
                match launch.start().await {
                    Ok(c) => {
                        log::info!("broker restarted (pid {})", c.id().unwrap_or(0));
                        started = Instant::now();
                        child = Some(c);
                    }
                    Err(e) => log::error!(
                        "restarting the broker: {e:#}; trying again in {}s",
                        backoff.as_secs()
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_pointing_at_the_managed_broker() {
        let listen: SocketAddr = "127.0.0.1:18883".parse().unwrap();
        assert!(points_at("127.0.0.1", 18883, listen));
        assert!(points_at("localhost", 18883, listen));
        assert!(!points_at("localhost", 8883, listen));
        assert!(!points_at("broker.example", 18883, listen));
        assert!(!points_at("10.0.0.1", 18883, listen));
        let any: SocketAddr = "0.0.0.0:8883".parse().unwrap();
        assert!(points_at("broker.example", 8883, any));
        assert!(!points_at("broker.example", 8884, any));
    }
}
