//! The device the attacks are played on: a small world under `/var/lib/picket-tests` (not a
//! temporary location: running from one is a signal in itself) with a web server, a cron-like
//! scheduler running job scripts, a log written and rotated, a configuration and a secret key;
//! and its baseline, made the way a manufacturer makes one: `picket baseline scan`, then
//! `picket baseline learn --merge` while the device works, then the entries written by hand by
//! design, then `picket policy sign`.

use super::*;

/// The web server: serves `www/`, runs the status CGI script with the device's shell, and has
/// the bug the attacker uses: `/debug?c=HEX` runs the hex-encoded shell code it is given (a
/// command injection) and answers with the shell's pid, its exit status and its output.
const HTTPD: &str = r#"import http.server, subprocess, sys, os
port, world = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/debug?c="):
            code = bytes.fromhex(self.path[len("/debug?c="):]).decode()
            p = subprocess.Popen([world + "/bin/sh", "-c", code], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out, _ = p.communicate()
            self.answer(b"%d %d\n" % (p.pid, p.returncode) + out)
        elif self.path == "/cgi-bin/status":
            out = subprocess.run([world + "/bin/sh", world + "/www/cgi-bin/status.sh"],
                                 stdin=subprocess.DEVNULL, capture_output=True).stdout
            self.answer(out)
        else:
            with open(world + "/www/index.html", "rb") as f:
                self.answer(f.read())
open(world + "/run/httpd.pid", "w").write("%d\n" % os.getpid())
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// The device: its directory and the port its web server answers on.
pub(crate) struct World {
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
    /// The services' process group (init's children), killed when dropped.
    services: Option<u32>,
}

impl World {
    pub(crate) fn new(tag: &str) -> World {
        let dir = Path::new("/var/lib/picket-tests").join(unique(tag));
        fs::create_dir_all(&dir).unwrap();
        let dir = fs::canonicalize(dir).unwrap();
        let port = free_port();
        let w = dir.to_str().unwrap().to_string();
        for sub in [
            "bin",
            "sbin",
            "etc/init.d",
            "etc/cron.d",
            "etc/systemd/system",
            "root/.ssh",
            "www/cgi-bin",
            "log",
            "run",
            "data",
        ] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let file = |rel: &str, text: &str, mode: u32| {
            let p = dir.join(rel);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        let copy = |from: &str, rel: &str| {
            let p = dir.join(rel);
            fs::copy(from, &p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        };
        // The device's own programs: its shell, its log rotator, the key's one reader and a
        // status tool nothing runs.
        copy("/usr/bin/dash", "bin/sh");
        copy("/usr/bin/mv", "bin/logrotate");
        copy("/usr/bin/sha256sum", "bin/keytool");
        copy("/usr/bin/uptime", "bin/status");
        file("sbin/httpd.py", HTTPD, 0o755);
        file(
            "sbin/crond",
            &format!(
                "# Runs every job of {w}/etc/cron.d each second.\n\
                 echo $$ > {w}/run/crond.pid\n\
                 while :; do\n\
                 \tfor job in {w}/etc/cron.d/*.sh; do {w}/bin/sh \"$job\"; done\n\
                 \t/usr/bin/sleep 1\n\
                 done\n"
            ),
            0o755,
        );
        file(
            "etc/init.d/rcS",
            &format!(
                "# Starts the device's services.\n\
                 /usr/bin/python3.11 {w}/sbin/httpd.py {port} {w} >/dev/null 2>&1 </dev/null &\n\
                 {w}/bin/sh {w}/sbin/crond >/dev/null 2>&1 </dev/null &\n"
            ),
            0o755,
        );
        file(
            "etc/cron.d/heartbeat.sh",
            &format!("/usr/bin/date >> {w}/log/app.log\n"),
            0o644,
        );
        file(
            "etc/cron.d/rotate.sh",
            &format!("{w}/bin/logrotate -f {w}/log/app.log {w}/log/app.log.1\n"),
            0o644,
        );
        file(
            "etc/cron.d/keycheck.sh",
            &format!("{w}/bin/keytool {w}/etc/device.key > /dev/null\n"),
            0o644,
        );
        file(
            "etc/cron.d/webcheck.sh",
            &format!(
                "/usr/bin/curl -fsS -o /dev/null http://127.0.0.1:{port}/\n\
                 /usr/bin/curl -fsS -o /dev/null http://127.0.0.1:{port}/cgi-bin/status\n"
            ),
            0o644,
        );
        file("www/index.html", "<h1>device</h1>\n", 0o644);
        file("www/cgi-bin/status.sh", "/usr/bin/date\n", 0o755);
        file("etc/app.conf", "mode = \"production\"\n", 0o644);
        file("etc/device.key", "device private key\n", 0o600);
        file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
        file("etc/group", "root:x:0:\n", 0o644);
        file("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o600);
        file(
            "etc/systemd/system/app.service",
            &format!("[Service]\nExecStart={w}/sbin/httpd.py\n"),
            0o644,
        );
        file("root/.profile", "PATH=/usr/bin:/bin\n", 0o644);
        file(
            "root/.ssh/authorized_keys",
            "ssh-ed25519 AAAAvendor vendor\n",
            0o600,
        );
        for log in ["app", "auth", "audit", "messages", "debug"] {
            file(&format!("log/{log}.log"), "boot\n", 0o644);
        }
        World {
            dir,
            port,
            services: None,
        }
    }

    /// `rel` in the world, as a string.
    pub(crate) fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.dir.display())
    }

    /// Starts the services as init does: the world's shell runs `etc/init.d/rcS`, in a process
    /// group of its own.
    pub(crate) fn boot(&mut self) {
        let mut rcs = Command::new(self.path("bin/sh"));
        rcs.arg(self.path("etc/init.d/rcS")).process_group(0);
        let mut child = rcs.spawn().unwrap();
        self.services = Some(child.id());
        assert!(child.wait().unwrap().success(), "rcS failed");
        // Until the web server answers and the scheduler ran once.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/").is_none() || !Path::new(&self.path("run/crond.pid")).exists() {
            assert!(
                Instant::now() < deadline,
                "the device's services did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pids of the running services (web server, scheduler).
    pub(crate) fn service_pids(&self) -> Vec<u32> {
        ["httpd", "crond"]
            .iter()
            .map(|s| {
                fs::read_to_string(self.path(&format!("run/{s}.pid")))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    /// GET `target` from the web server: the body, or None when it does not answer.
    pub(crate) fn get(&self, target: &str) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "GET {target} HTTP/1.0\r\nHost: device\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
        assert!(resp.starts_with(b"HTTP/1.0 200"), "{target}: {resp:?}");
        Some(resp[head_end + 4..].to_vec())
    }

    /// Runs shell code through the web server's command injection, as the attacker does;
    /// returns the pid of the shell the web server started, its exit status and its output.
    pub(crate) fn inject(&self, code: &str) -> (u32, i32, String) {
        let hex: String = code.bytes().map(|b| format!("{b:02x}")).collect();
        let body = self
            .get(&format!("/debug?c={hex}"))
            .expect("the web server answers");
        let text = String::from_utf8_lossy(&body).to_string();
        let (head, out) = text.split_once('\n').unwrap();
        let (pid, status) = head.split_once(' ').unwrap();
        (
            pid.parse().unwrap(),
            status.parse().unwrap(),
            out.to_string(),
        )
    }

    /// The baseline: the scan of what the device ships (`/usr/bin`, `/usr/sbin` and the world,
    /// the world's `etc` protected), its sensitive files declared, `picket baseline learn`
    /// while the device boots and works, the entries that are written by hand by design
    /// appended, signed with the lab's key. Boots the world during learning.
    pub(crate) fn baseline(&mut self, lab: &Lab) -> PathBuf {
        let w = self.dir.to_str().unwrap().to_string();
        let scan_conf = lab.root.join("scan.toml");
        let mut exclude = Vec::new();
        for keep in ["/usr/bin", "/usr/sbin", w.as_str()] {
            exclude_siblings(Path::new(keep), &mut exclude);
        }
        let keep = [
            Path::new("/usr/bin"),
            Path::new("/usr/sbin"),
            self.dir.as_path(),
        ];
        exclude.retain(|e| !keep.iter().any(|k| k.starts_with(e)));
        exclude.sort();
        exclude.dedup();
        let list: Vec<String> = exclude.iter().map(|p| toml_str(p)).collect();
        fs::write(
            &scan_conf,
            format!(
                "protected = [{}]\nexclude = [{}]\n\n[metadata]\nname = \"device\"\n\
                 device_class = \"lab\"\nserial = 1\n",
                toml_str(&self.dir.join("etc")),
                list.join(", ")
            ),
        )
        .unwrap();
        let scanned = lab.root.join("scanned.toml");
        ok(Command::new(picket())
            .args(["baseline", "scan", "--root", "/", "--config"])
            .arg(&scan_conf)
            .arg("--out")
            .arg(&scanned));
        // Which files are sensitive is the manufacturer's decision, made before learning so
        // that learning finds their readers.
        let mut policy = fs::read_to_string(&scanned).unwrap();
        let _ = write!(
            policy,
            "\n[[behaviour.sensitive]]\npath = \"{w}/etc/device.key\"\nreaders = []\n\n\
             [[behaviour.sensitive]]\npath = \"{w}/etc/shadow\"\nreaders = []\n"
        );
        fs::write(&scanned, policy).unwrap();

        let draft = lab.root.join("draft.toml");
        let args = [
            OsStr::new("baseline"),
            OsStr::new("learn"),
            OsStr::new("--for"),
            OsStr::new("8s"),
            OsStr::new("--merge"),
            scanned.as_os_str(),
            OsStr::new("--out"),
            draft.as_os_str(),
        ];
        let learn = picket_test_support::Agent::start(picket(), &args, "learning for");
        self.boot();
        // The device at work: its cron jobs run each second; requests from outside.
        for _ in 0..10 {
            self.get("/").unwrap();
            self.get("/cgi-bin/status").unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = learn.wait(Duration::from_secs(60));
        assert!(
            out.status.expect("learn exited").success(),
            "learn failed: {}",
            out.describe()
        );
        let learned = fs::read_to_string(&draft).unwrap();
        let mut policy = review(&learned, &w, self.port);
        // By hand, by design: the interpreters (learning names those it saw run code), the
        // append-only logs and their rotator, the world's configuration and the root account's
        // files where any change, new files included, is a deviation.
        add_interpreters(
            &mut policy,
            &[
                &format!("{w}/bin/sh"),
                "/usr/bin/dash",
                "/usr/bin/bash",
                "/usr/bin/python3.11",
                "/usr/bin/perl",
                "/usr/bin/mawk",
            ],
        );
        let _ = write!(
            policy,
            "\n[[behaviour.append_only]]\nglob = \"{w}/log/*.log\"\n\
             rotated_by = [\"{w}/bin/logrotate\"]\n\n\
             [[files.protected_glob]]\nglob = \"{w}/etc/**\"\n\n\
             [[files.protected_glob]]\nglob = \"{w}/root/**\"\n"
        );
        let bundle = lab.sign("device", &policy);
        // The learned behaviour of the world must be there, or the test proves nothing.
        for needed in [
            format!("child = \"{w}/sbin/httpd.py\""),
            format!("child = \"{w}/etc/cron.d/keycheck.sh\""),
            format!("parent = \"{w}/etc/cron.d/webcheck.sh\""),
            format!("\"{w}/bin/keytool\""),
        ] {
            assert!(
                policy.contains(&needed),
                "the learned baseline lacks {needed}:\n{policy}"
            );
        }
        bundle
    }
}

impl World {
    /// Stops the services (SIGKILL to init's process group and to the daemons).
    pub(crate) fn shutdown(&mut self) {
        if let Some(pgid) = self.services.take() {
            // SAFETY: kill(2) on the services' own process group.
            unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
        }
        for pid in ["httpd", "crond"]
            .iter()
            .filter_map(|s| fs::read_to_string(self.path(&format!("run/{s}.pid"))).ok())
            .filter_map(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) of the world's own services, by the pids they wrote.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for s in ["httpd", "crond"] {
            let _ = fs::remove_file(self.path(&format!("run/{s}.pid")));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Adds to `out` every entry of each directory from `/` down to `keep` that is not on the way
/// to it: only `keep` is walked below these.
fn exclude_siblings(keep: &Path, out: &mut Vec<PathBuf>) {
    let mut at = PathBuf::from("/");
    for part in keep.components().skip(1) {
        let next = at.join(part);
        for e in fs::read_dir(&at).unwrap().flatten() {
            let p = e.path();
            if p != next {
                out.push(p);
            }
        }
        at = next;
    }
}

/// The review of the learned draft. The lab is a shared machine: while learning, it also ran
/// builds and other tests that a device never runs. Their behavioural entries (lineage, peers,
/// listeners, privileged actions of programs outside the world) are left out, as a reviewer
/// leaves out what the device must not do; the executables learned stay (the scan lists the
/// device's anyway).
fn review(draft: &str, world: &str, port: u16) -> String {
    let this_test = std::env::current_exe().unwrap();
    let this_test = this_test.to_str().unwrap();
    let mut out = String::new();
    let mut block = String::new();
    let keep = |block: &str| -> bool {
        let header = block.lines().next().unwrap_or("");
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} = ")))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        match header.trim() {
            "[[behaviour.lineage]]" => {
                field("parent").is_some_and(|p| p.starts_with(world) || p == this_test)
            }
            "[[network.outbound]]" | "[[network.listen]]" => {
                field("executable").is_some_and(|e| e.starts_with(world))
                    || field("ports").or_else(|| field("port")) == Some(port.to_string())
            }
            "[[behaviour.privileged]]" => field("executable").is_some_and(|e| e.starts_with(world)),
            _ => true,
        }
    };
    for line in draft.lines() {
        if line.starts_with('[') && !block.is_empty() {
            if keep(&block) {
                out.push_str(&block);
            }
            block.clear();
        }
        block.push_str(line);
        block.push('\n');
    }
    if keep(&block) {
        out.push_str(&block);
    }
    out
}

/// Adds `paths` to `behaviour.interpreters`, creating the list when learning wrote none.
fn add_interpreters(policy: &mut String, paths: &[&str]) {
    let quoted: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
    if let Some(start) = policy.find("\ninterpreters = [") {
        let open = start + "\ninterpreters = [".len();
        policy.insert_str(open, &format!("{}, ", quoted.join(", ")));
    } else {
        let _ = write!(
            policy,
            "\n[behaviour]\ninterpreters = [{}]\n",
            quoted.join(", ")
        );
    }
}
