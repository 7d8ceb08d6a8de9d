//! The fleet of these tests (PKI, Mosquitto, a subscriber) and the agent that reports to it.

use super::*;

/// One test at a time: every agent sees every exec on the machine, so one test's thousand
/// execs would fill another's spool and crowd its broker connection.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
pub(crate) const DEVICE: &str = "gw-test-01";
pub(crate) const BACKEND: &str = "picket-backend";

/// Broker, PKI, keys and a directory for one test.
pub(crate) struct Fleet {
    pub(crate) pki: Pki,
    pub(crate) broker: Mosquitto,
    pub(crate) root: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) device: Identity,
    pub(crate) backend: Identity,
}

impl Fleet {
    pub(crate) fn new(tag: &str) -> Fleet {
        Fleet::with_broker(tag, &BrokerOptions::default())
    }

    /// A fleet whose broker runs with `options`.
    pub(crate) fn with_broker(tag: &str, options: &BrokerOptions) -> Fleet {
        let pki = Pki::new();
        let device = pki.device(DEVICE);
        let backend = pki.backend(BACKEND);
        let broker = Mosquitto::start_with(&pki, options);
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(&format!("reporting-{tag}")));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("trust")).unwrap();
        let root = fs::canonicalize(root).unwrap();
        ok(Command::new(picket())
            .args(["keygen", "--out"])
            .arg(root.join("vendor")));
        fs::copy(root.join("vendor.pub"), root.join("trust/vendor.pub")).unwrap();
        // A binary to run under many names: each name is an unknown executable.
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy("/bin/true", root.join("bin/true")).unwrap();
        Fleet {
            key: root.join("vendor.key"),
            pki,
            broker,
            root,
            device,
            backend,
        }
    }

    /// Signs a policy of `serial` for `class` with `key` (the trusted one by default).
    pub(crate) fn policy(
        &self,
        name: &str,
        serial: u64,
        class: &str,
        key: Option<&Path>,
    ) -> PathBuf {
        let toml = self.root.join(format!("{name}.toml"));
        fs::write(
            &toml,
            format!(
                "[metadata]\nname = \"{name}\"\ndevice_class = \"{class}\"\nserial = {serial}\n\
                 created = \"2026-11-22T10:00:00Z\"\n\n{}",
                picket_test_support::loader_entry()
            ),
        )
        .unwrap();
        let bundle = self.root.join(format!("{name}.bundle"));
        ok(Command::new(picket())
            .args(["policy", "sign", "--key"])
            .arg(key.unwrap_or(&self.key))
            .arg("--in")
            .arg(&toml)
            .arg("--out")
            .arg(&bundle));
        bundle
    }

    /// The agent's configuration: executables checked (everything unlisted alerts), network and
    /// files off, alerts to a file and over MQTT. `extra` is appended.
    pub(crate) fn config(&self, extra: &str) -> PathBuf {
        let bundle = self.policy("base", 1, "lab", None);
        let q = |p: &Path| serde_json::to_string(p.to_str().unwrap()).unwrap();
        let mut text = format!(
            "device_class = \"lab\"\npolicy = {}\ntrust_dir = {}\nstate_dir = {}\n\
             [modes]\nnetwork = \"off\"\nfiles = \"off\"\n\
             [output]\nstdout = false\nfile = {}\n\
             [mqtt]\nbroker = \"localhost:{}\"\nca = {}\ncert = {}\nkey = {}\n\
             heartbeat_interval = \"1s\"\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\n\
             keep_alive = \"10s\"\n",
            q(&bundle),
            q(&self.root.join("trust")),
            q(&self.root.join("state")),
            q(&self.root.join("alerts.jsonl")),
            self.broker.port(),
            q(&self.device.ca),
            q(&self.device.cert),
            q(&self.device.key),
        );
        text.push_str(extra);
        let path = self.root.join("picket.toml");
        fs::write(&path, text).unwrap();
        path
    }

    /// Like [`Fleet::config`], reporting to the broker on `port` on this machine instead of
    /// the fleet's Mosquitto (with the same CA, certificate and key).
    pub(crate) fn config_via(&self, port: u16, extra: &str) -> PathBuf {
        let path = self.config(extra);
        let text = fs::read_to_string(&path).unwrap();
        let broker = format!("broker = \"localhost:{}\"\n", self.broker.port());
        assert!(text.contains(&broker), "{text}");
        fs::write(
            &path,
            text.replace(&broker, &format!("broker = \"localhost:{port}\"\n")),
        )
        .unwrap();
        path
    }

    /// Execs `n` unknown executables named `<prefix>-<i>`; returns their paths, in order.
    pub(crate) fn unknown_execs(&self, prefix: &str, n: usize) -> Vec<String> {
        let dir = self.root.join("bin");
        let mut paths = Vec::with_capacity(n);
        for i in 0..n {
            let path = dir.join(format!("{prefix}-{i}"));
            if !path.exists() {
                fs::hard_link(dir.join("true"), &path).unwrap();
            }
            let status = Command::new(&path).status().unwrap();
            assert!(status.success());
            paths.push(path.to_str().unwrap().to_string());
        }
        paths
    }

    /// Execs a script the agent cannot hash: sparse, larger than the most it hashes (256 MiB).
    /// Its exec is counted as unverified.
    pub(crate) fn unhashable_exec(&self, name: &str) {
        let path = self.root.join("bin").join(name);
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(300 << 20).unwrap();
        drop(file);
        ok(Command::new("chmod").arg("+x").arg(&path));
        let status = Command::new(&path).status().unwrap();
        assert!(status.success());
    }

    pub(crate) fn subscriber(&self) -> Subscriber {
        Subscriber::connect(
            self.broker.port(),
            &self.backend,
            &[&format!("picket/v1/{DEVICE}/#")],
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A running `picket run`, its log collected; killed when dropped.
pub(crate) struct Agent(pub(crate) picket_test_support::Agent);

impl Agent {
    pub(crate) fn start(config: &Path) -> Agent {
        // The tests cause bursts of a thousand execs (and links) at once; what they test is
        // delivery, not the sensors' capacity, so the ring buffer has room for a burst.
        Agent::start_with_ring_buffer(config, 8 << 20)
    }

    /// Starts `picket run` with a ring buffer of `bytes`.
    pub(crate) fn start_with_ring_buffer(config: &Path, bytes: u32) -> Agent {
        let mut command = Command::new(picket());
        command
            .args(["run", "--config"])
            .arg(config)
            .args(["--ring-buffer-size", &bytes.to_string()])
            .env("RUST_LOG", "info");
        Agent(picket_test_support::Agent::spawn(
            command,
            "sensors attached",
        ))
    }

    /// SIGTERM, and the log; panics unless the agent exits with status 0 within 20 s.
    pub(crate) fn stop(self) -> String {
        let out = self.0.terminate(Duration::from_secs(20));
        let log = out.log();
        match out.status {
            Some(status) if status.success() => log,
            Some(status) => panic!(
                "the agent exited with {status} on SIGTERM:\n{}",
                tail(&log, 30)
            ),
            None => panic!(
                "the agent did not exit within 20 s of SIGTERM:\n{}",
                tail(&log, 30)
            ),
        }
    }

    /// SIGKILL: no goodbye, no flush beyond what is already durable.
    pub(crate) fn kill(self) -> String {
        self.0.kill().log()
    }
}

impl Deref for Agent {
    type Target = picket_test_support::Agent;

    fn deref(&self) -> &picket_test_support::Agent {
        &self.0
    }
}

pub(crate) fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(m: &Message) -> T {
    let (_, envelope) = picket_proto::decode::<T>(&m.payload)
        .unwrap_or_else(|e| panic!("undecodable message on {}: {e}", m.topic));
    assert_eq!(envelope.device_id, DEVICE, "device id in the envelope");
    envelope.body
}

pub(crate) fn on(m: &Message, channel: Channel) -> bool {
    m.topic == topic::topic(DEVICE, channel)
}

/// The alerts received about the executables in `paths`: their executable → every seq received.
pub(crate) fn alerts_about(
    sub: &Subscriber,
    paths: &BTreeSet<String>,
) -> BTreeMap<String, Vec<u64>> {
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in sub.messages().iter().filter(|m| on(m, Channel::Alert)) {
        let alert: Alert = decode(m);
        // The unknown-executable alert of each: a checkout under a temporary directory (/tmp)
        // also gets a suspicious_exec alert for every one, with a number of its own.
        if alert.kind != AlertKind::UnknownExecutable {
            continue;
        }
        if let Some(path) = alert.path.as_ref().filter(|p| paths.contains(*p)) {
            seen.entry(path.clone()).or_default().push(alert.seq);
        }
    }
    seen
}

/// Waits until an alert about each of `paths` arrived.
pub(crate) fn wait_for_alerts(
    sub: &Subscriber,
    paths: &[String],
    timeout: Duration,
    agent_log: impl Fn() -> String,
) -> BTreeMap<String, Vec<u64>> {
    let wanted: BTreeSet<String> = paths.iter().cloned().collect();
    let start = Instant::now();
    loop {
        let seen = alerts_about(sub, &wanted);
        if seen.len() == wanted.len() {
            return seen;
        }
        if start.elapsed() > timeout {
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|p| !seen.contains_key(*p))
                .take(5)
                .collect();
            panic!(
                "{} of {} alerts arrived within {timeout:?}; missing e.g. {missing:?}\nagent log:\n{}",
                seen.len(),
                wanted.len(),
                tail(&agent_log(), 40)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every alert about one of ours has one sequence number (sent twice at most with the same),
/// and distinct executables have distinct numbers.
pub(crate) fn assert_once_each(seen: &BTreeMap<String, Vec<u64>>) -> usize {
    let mut numbers = BTreeSet::new();
    let mut duplicates = 0;
    for (path, seqs) in seen {
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            1,
            "{path} was raised as several alerts: {seqs:?}"
        );
        duplicates += seqs.len() - 1;
        assert!(numbers.insert(seqs[0]), "seq {} used twice", seqs[0]);
    }
    duplicates
}

pub(crate) fn results(sub: &Subscriber) -> Vec<PolicyResult> {
    sub.messages()
        .iter()
        .filter(|m| on(m, Channel::PolicyResult))
        .map(decode)
        .collect()
}

pub(crate) fn last_heartbeat(sub: &Subscriber) -> Option<Heartbeat> {
    sub.messages()
        .iter()
        .rev()
        .find(|m| on(m, Channel::Heartbeat))
        .map(decode)
}

/// Waits up to 20 s for a status saying `state` forwarded live (not a retained one) among the
/// messages `sub` received from the `from`th on.
pub(crate) fn wait_live_status(
    sub: &Subscriber,
    from: usize,
    state: Presence,
    agent_log: impl Fn() -> String,
) -> Status {
    let start = Instant::now();
    loop {
        let found =
            sub.messages().into_iter().skip(from).find(|m| {
                on(m, Channel::Status) && !m.retain && decode::<Status>(m).state == state
            });
        if let Some(m) = found {
            return decode(&m);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no live {state:?} status; agent log:\n{}",
            tail(&agent_log(), 30)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The sequence number of the unknown-executable alert about `path` in the alert file.
pub(crate) fn seq_of(alerts_file: &Path, path: &str) -> Option<u64> {
    fs::read_to_string(alerts_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|a| a["alert"] == "unknown_executable" && a["path"] == path)
        .map(|a| a["seq"].as_u64().unwrap())
}

/// A record of a spool segment: its sequence number, where its body starts and its length.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) body: usize,
    pub(crate) len: usize,
}

/// The records of a segment (the layout in `agent/src/spool/mod.rs`: a 28-byte header, magic
/// `PkS1`, body length at 8, sequence number at 12, then the body); a record still being
/// written at the end is left out.
pub(crate) fn records(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 28 <= bytes.len() {
        let header = &bytes[at..at + 28];
        assert_eq!(&header[..4], b"PkS1", "no record at offset {at}");
        let len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(header[12..20].try_into().unwrap());
        if at + 28 + len > bytes.len() {
            break;
        }
        out.push(Record {
            seq,
            body: at + 28,
            len,
        });
        at += 28 + len;
    }
    out
}

/// The segment files of the spool in `dir`, oldest first.
pub(crate) fn spool_segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    segments
}

/// The sequence numbers of the records written to the spool in `dir` so far.
pub(crate) fn spooled(dir: &Path) -> BTreeSet<u64> {
    spool_segments(dir)
        .iter()
        .flat_map(|s| records(&fs::read(s).unwrap_or_default()))
        .map(|r| r.seq)
        .collect()
}
