//! Privileged actions (`setuid_bit_set`, `file_capability_set`, `kernel_module_loaded`,
//! `process_injection`, `mount_changed`): each done for real on this machine's kernel, with the
//! real sensors, then exactly the alerts it must raise; the allowed actor of
//! `behaviour.privileged` and `modes.behaviour = "off"` raise none, nor does a healthy
//! workload, nor mounts in a mount namespace of their own.

use super::*;
use serde_json::json;

/// The alert kinds of privileged actions.
const KINDS: [&str; 5] = [
    "setuid_bit_set",
    "file_capability_set",
    "kernel_module_loaded",
    "process_injection",
    "mount_changed",
];

const PYTHON: &str = "/usr/bin/python3";

/// Attaches to process `argv[1]` with PTRACE_ATTACH, waits for it to stop, detaches.
const PTRACE_ATTACH: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = int(sys.argv[1])
if libc.ptrace(16, pid, None, None) != 0:
    sys.exit("PTRACE_ATTACH: errno %d" % ctypes.get_errno())
os.waitpid(pid, 0x40000000)
if libc.ptrace(17, pid, None, None) != 0:
    sys.exit("PTRACE_DETACH: errno %d" % ctypes.get_errno())
"#;

/// Writes back into process `argv[1]` (or this process with `self`) the 8 bytes found at the
/// start of its first writable mapping, with process_vm_writev: nothing changes in it.
const VM_WRITE: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = os.getpid() if sys.argv[1] == "self" else int(sys.argv[1])
for line in open("/proc/%d/maps" % pid):
    addr, perms = line.split()[:2]
    if perms.startswith("rw"):
        start = int(addr.split("-")[0], 16)
        break
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local = Iov(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = Iov(start, 8)
for call, name in ((libc.process_vm_readv, "readv"), (libc.process_vm_writev, "writev")):
    call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if call(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) != 8:
        sys.exit("process_vm_%s: errno %d" % (name, ctypes.get_errno()))
"#;

/// Mounts a tmpfs at `argv[1]` through the new mount API (fsopen, fsconfig, fsmount,
/// move_mount), makes it read-only then writable again with mount_setattr, and reconfigures it
/// through fspick: what util-linux 2.39 and later do.
const NEW_MOUNT_API: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
sc = libc.syscall
sc.restype = ctypes.c_long
def check(r, what):
    if r < 0:
        sys.exit("%s: errno %d" % (what, ctypes.get_errno()))
    return r
class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]
target = sys.argv[1].encode()
fs = check(sc(430, b"tmpfs", 0), "fsopen")
check(sc(431, fs, 1, b"source", b"picket-new-api", 0), "fsconfig source")
check(sc(431, fs, 6, None, None, 0), "fsconfig create")
mnt = check(sc(432, fs, 0, 0), "fsmount")
check(sc(429, mnt, b"", -100, target, 4), "move_mount")
check(sc(442, -100, target, 0, ctypes.byref(Attr(1, 0, 0, 0)), 32), "mount_setattr ro")
check(sc(442, -100, target, 0, ctypes.byref(Attr(0, 1, 0, 0)), 32), "mount_setattr rw")
pick = check(sc(433, -100, target, 0), "fspick")
check(sc(431, pick, 7, None, None, 0), "fsconfig reconfigure")
"#;

/// Sets extended attribute `argv[2]` on file `argv[1]`, its value the bytes written in hex in
/// `argv[3]`.
const SETXATTR: &str = r#"
import os, sys
os.setxattr(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]))
"#;

/// Calls finit_module on file `argv[1]` (not a module: the kernel refuses it) and prints the
/// errno.
const FINIT_MODULE: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
r = libc.syscall(313, fd, b"", 0)
print(ctypes.get_errno() if r < 0 else 0)
"#;

/// The lab for these tests: a directory of files to chmod and setcap, mount points, and the
/// helper scripts.
struct Bench {
    lab: Lab,
    files: PathBuf,
    scripts: PathBuf,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let lab = Lab::new(tag);
        let files = lab.dir("files");
        let scripts = lab.dir("scripts");
        for (name, text) in [
            ("ptrace_attach.py", PTRACE_ATTACH),
            ("vm_write.py", VM_WRITE),
            ("new_mount_api.py", NEW_MOUNT_API),
            ("setxattr.py", SETXATTR),
            ("finit_module.py", FINIT_MODULE),
        ] {
            fs::write(scripts.join(name), text).unwrap();
        }
        Bench {
            lab,
            files,
            scripts,
        }
    }

    /// A new file of mode 0644 in the bench.
    fn file(&self, name: &str) -> PathBuf {
        let f = self.files.join(name);
        fs::write(&f, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        f
    }

    /// A new, empty mount point.
    fn mount_point(&self, name: &str) -> PathBuf {
        self.lab.dir(name)
    }

    fn python(&self, script: &str) -> Command {
        let mut c = Command::new(PYTHON);
        c.arg(self.scripts.join(script));
        c
    }

    /// Starts an agent enforcing a policy with `extra` added.
    fn agent(&self, extra: &str) -> Agent {
        let mut policy = PolicyText::new(1);
        // The section turns the privilege signals on (empty: no action allowed).
        policy.raw("[behaviour]\n");
        policy.raw(extra);
        let bundle = self.lab.sign("privilege", &policy.text());
        Agent::start(&self.lab.config(&bundle, None))
    }
}

/// Unmounts `target` (the test's own mounts, so that nothing outlives it).
fn umount(target: &Path) -> u32 {
    run_ok(Command::new("umount").arg(target))
}

fn mount_tmpfs(source: &str, target: &Path) -> u32 {
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", source])
            .arg(target),
    )
}

/// Alerts of privileged actions by the processes `pids` or about a path under one of `under`.
fn privilege_alerts(agent: &Agent, pids: &BTreeSet<u32>, under: &[&Path]) -> Vec<Value> {
    agent
        .alerts()
        .into_iter()
        .filter(|a| KINDS.contains(&kind(a)))
        .filter(|a| {
            pid(a).is_some_and(|p| pids.contains(&p))
                || path(a).is_some_and(|p| under.iter().any(|u| Path::new(p).starts_with(u)))
        })
        .collect()
}

/// The executable `name` as events name it (its canonical path).
fn exe(name: &str) -> String {
    fs::canonicalize(name)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// An expected alert: `alert_kind` by `pid` about `path`, with exactly `details`.
fn exactly(alert_kind: &'static str, pid: u32, about: &str, details: Value) -> Expected {
    let about = about.to_string();
    Expected::new(
        format!("{alert_kind} by pid {pid} about {about}: {details}"),
        pid,
        move |a| {
            kind(a) == alert_kind && path(a) == Some(about.as_str()) && a["details"] == details
        },
    )
}

/// Checks that each expected alert came exactly once and nothing else among `seen`.
fn check_exactly(agent: &Agent, expected: &[Expected], seen: &[Value]) {
    let mut problems = String::new();
    for e in expected {
        let n = seen.iter().filter(|a| e.matches(a)).count();
        if n != 1 {
            let _ = writeln!(problems, "expected once, seen {n} times: {}", e.what);
        }
    }
    for a in seen {
        if !expected.iter().any(|e| e.matches(a)) {
            let _ = writeln!(problems, "unexpected alert: {a}");
        }
    }
    assert!(
        problems.is_empty(),
        "{problems}\nalerts:\n{}\n{}",
        lines(seen),
        agent.describe()
    );
}

/// A `mount_changed` alert by `pid` about `target` whose details (their `target` being
/// `target`) also match `pred`.
fn mount_alert(
    target: &Path,
    what: &str,
    pid: u32,
    pred: impl Fn(&Value) -> bool + 'static,
) -> Expected {
    let about = target.to_str().unwrap().to_string();
    Expected::new(
        format!("mount_changed ({what}) of {about} by pid {pid}"),
        pid,
        move |a| {
            kind(a) == "mount_changed"
                && path(a) == Some(about.as_str())
                && a["details"]["target"] == about.as_str()
                && pred(&a["details"])
        },
    )
}

fn has_flag(details: &Value, flag: &str) -> bool {
    details["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

fn is_umount(d: &Value) -> bool {
    d["op"] == "umount"
        && d["source"] == Value::Null
        && d["fstype"] == Value::Null
        && d["flags"] == serde_json::json!([])
        && d["remount"] == false
}

#[test]
fn privileged_actions_raise_exactly_their_alerts() {
    let bench = Bench::new("privilege");
    let agent = bench.agent("");
    let mut expected: Vec<Expected> = Vec::new();
    let mut pids: BTreeSet<u32> = BTreeSet::new();

    // Setuid and setgid bits set by chmod.
    let tool = bench.file("tool");
    let tool_text = tool.to_str().unwrap();
    let p = run_ok(Command::new("chmod").arg("6755").arg(&tool));
    expected.push(exactly(
        "setuid_bit_set",
        p,
        tool_text,
        json!({"op": "chmod", "mode": "6755", "bits": ["setuid", "setgid"]}),
    ));
    pids.insert(p);

    // File capabilities, by setcap and by a plain setxattr of security.capability.
    let ping = bench.file("ping");
    let ping_text = ping.to_str().unwrap();
    let p = run_ok(Command::new("setcap").arg("cap_net_raw+ep").arg(&ping));
    expected.push(exactly(
        "file_capability_set",
        p,
        ping_text,
        json!({"capabilities": ["cap_net_raw"], "effective": true, "revision": 2}),
    ));
    pids.insert(p);
    // A `struct vfs_cap_data`, little-endian: VFS_CAP_REVISION_2 without the effective bit,
    // cap_net_bind_service (10) permitted.
    let value = format!("00000002{}{}", "00040000", "00000000".repeat(3));
    let raw_cap = bench.file("raw-cap");
    let p = run_ok(
        bench
            .python("setxattr.py")
            .arg(&raw_cap)
            .arg("security.capability")
            .arg(value),
    );
    expected.push(exactly(
        "file_capability_set",
        p,
        raw_cap.to_str().unwrap(),
        json!({"capabilities": ["cap_net_bind_service"], "effective": false, "revision": 2}),
    ));
    pids.insert(p);

    // ptrace attach, and a write into another process's memory.
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let target = sleeper.id();
    let sleep_exe = exe("/usr/bin/sleep");
    let p = run_ok(bench.python("ptrace_attach.py").arg(target.to_string()));
    expected.push(exactly(
        "process_injection",
        p,
        &sleep_exe,
        json!({"op": "ptrace", "request": "PTRACE_ATTACH", "target_pid": target,
               "target_exe": sleep_exe}),
    ));
    pids.insert(p);
    let p = run_ok(bench.python("vm_write.py").arg(target.to_string()));
    expected.push(exactly(
        "process_injection",
        p,
        &sleep_exe,
        json!({"op": "process_vm_writev", "bytes": 8, "target_pid": target,
               "target_exe": sleep_exe}),
    ));
    pids.insert(p);

    // Mounts in the host's namespace: a tmpfs, remounted read-only then writable, unmounted.
    let mnt = bench.mount_point("mnt");
    let p = mount_tmpfs("picket-test", &mnt);
    expected.push(mount_alert(&mnt, "mount", p, |d| {
        d["op"] == "mount"
            && d["source"] == "picket-test"
            && d["fstype"] == "tmpfs"
            && d["flags"] == json!([])
            && d["remount"] == false
            && d["bind"] == false
            && d["writable"] == Value::Null
    }));
    pids.insert(p);
    let p = run_ok(Command::new("mount").args(["-o", "remount,ro"]).arg(&mnt));
    expected.push(mount_alert(&mnt, "remount read-only", p, |d| {
        d["op"] == "mount"
            && d["fstype"] == "tmpfs"
            && has_flag(d, "MS_REMOUNT")
            && has_flag(d, "MS_RDONLY")
            && d["remount"] == true
            && d["writable"] == false
    }));
    pids.insert(p);
    let p = run_ok(Command::new("mount").args(["-o", "remount,rw"]).arg(&mnt));
    expected.push(mount_alert(&mnt, "remount writable", p, |d| {
        d["op"] == "mount"
            && has_flag(d, "MS_REMOUNT")
            && !has_flag(d, "MS_RDONLY")
            && d["remount"] == true
            && d["writable"] == true
    }));
    pids.insert(p);
    let p = umount(&mnt);
    expected.push(mount_alert(&mnt, "umount", p, is_umount));
    pids.insert(p);

    // The same through the new mount API, then unmounted.
    let p = run_ok(bench.python("new_mount_api.py").arg(&mnt));
    expected.push(mount_alert(&mnt, "move_mount", p, |d| {
        d["op"] == "move_mount"
            && d["source"].as_str().is_some_and(|s| s.starts_with("fd "))
            && d["remount"] == false
            && d["writable"] == Value::Null
    }));
    expected.push(mount_alert(&mnt, "mount_setattr read-only", p, |d| {
        d["op"] == "mount_setattr"
            && d["flags"] == json!(["MOUNT_ATTR_RDONLY"])
            && d["remount"] == true
            && d["writable"] == false
    }));
    expected.push(mount_alert(&mnt, "mount_setattr writable", p, |d| {
        d["op"] == "mount_setattr"
            && d["flags"] == json!(["-MOUNT_ATTR_RDONLY"])
            && d["remount"] == true
            && d["writable"] == true
    }));
    expected.push(mount_alert(&mnt, "reconfigure", p, |d| {
        d["op"] == "reconfigure" && d["remount"] == true && d["writable"] == Value::Null
    }));
    pids.insert(p);
    // Lazily, so that it is not the same alert as the first umount (aggregated).
    let p = run_ok(Command::new("umount").arg("-l").arg(&mnt));
    expected.push(mount_alert(&mnt, "lazy umount after the new API", p, |d| {
        d["op"] == "umount" && d["flags"] == json!(["MNT_DETACH"]) && d["remount"] == false
    }));
    pids.insert(p);

    // Mounts in a mount namespace of their own (a sandboxed service's): not the device's.
    let private = bench.mount_point("mnt-private");
    let script = format!(
        "mount -t tmpfs picket-private {0} && mount -o remount,ro {0} && umount {0}",
        private.display()
    );
    let unshared = run_ok(Command::new("unshare").args(["-m", "sh", "-c", &script]));
    let unshared_new_api = run_ok(
        Command::new("unshare")
            .arg("-m")
            .arg(PYTHON)
            .arg(bench.scripts.join("new_mount_api.py"))
            .arg(&private),
    );
    pids.extend([unshared, unshared_new_api]);

    // Modules: finit_module of a file that is no module fails, and a failed call is no alert.
    let not_a_module = bench.file("not-a-module.ko");
    let out = bench
        .python("finit_module.py")
        .arg(&not_a_module)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let errno: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let modules = Path::new("/sys/kernel/tracing/events/syscalls/sys_enter_finit_module").exists()
        || Path::new("/sys/kernel/debug/tracing/events/syscalls/sys_enter_finit_module").exists();
    if modules {
        assert_ne!(
            errno, 0,
            "finit_module of a file that is no module succeeded"
        );
    } else {
        // A kernel without loadable modules: no module can be loaded, the sensor's programs
        // for them are skipped, and the call is refused outright.
        assert_eq!(errno, libc::ENOSYS, "finit_module without CONFIG_MODULES");
    }

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    for e in &expected {
        agent.wait_for(&e.what, Some(e.pid), |a| e.matches(a));
    }
    agent.barrier(&bench.lab, "after the privileged actions");
    let seen = privilege_alerts(&agent, &pids, &[&bench.files, &mnt, &private]);
    check_exactly(&agent, &expected, &seen);
    for a in &seen {
        check_envelope(a);
        assert_eq!(a["rule"], "behaviour.privileged", "{a}");
        assert_eq!(a["severity"], "high", "{a}");
        assert!(a["process"]["exe"].as_str().is_some(), "{a}");
    }
    let out = agent.stop();
    assert_seq_increasing(&out.alerts, "the privileged actions");
}

#[test]
fn a_healthy_workload_raises_no_privilege_alert() {
    let bench = Bench::new("privilege-healthy");
    let agent = bench.agent("");
    let mut pids: BTreeSet<u32> = BTreeSet::new();
    let f = bench.file("script");
    let dir = bench.lab.dir("shared");
    // Modes without setuid or setgid; a directory's setgid bit (files in it take its group).
    pids.insert(run_ok(Command::new("chmod").arg("0755").arg(&f)));
    pids.insert(run_ok(Command::new("chmod").arg("u+x,g-w").arg(&f)));
    pids.insert(run_ok(Command::new("chmod").arg("2775").arg(&dir)));
    pids.insert(run_ok(
        Command::new("mkdir")
            .args(["-m", "2775"])
            .arg(dir.join("sub")),
    ));
    // Other extended attributes.
    pids.insert(run_ok(
        bench
            .python("setxattr.py")
            .arg(&f)
            .arg("user.picket")
            .arg("6e6f7465"),
    ));
    // Reading the mount table, and a process writing its own memory.
    pids.insert(run_ok(Command::new("findmnt").arg("/")));
    pids.insert(run_ok(&mut Command::new("mount")));
    pids.insert(run_ok(bench.python("vm_write.py").arg("self")));
    agent.barrier(&bench.lab, "after the healthy workload");
    let seen = privilege_alerts(&agent, &pids, &[&bench.files, &dir]);
    assert!(
        seen.is_empty(),
        "a healthy workload raised:\n{}\n{}",
        lines(&seen),
        agent.describe()
    );
    agent.stop();
}

#[test]
fn the_allowed_actor_and_behaviour_off_raise_nothing() {
    let bench = Bench::new("privilege-allowed");
    let mount = exe("/usr/bin/mount");
    let chmod = exe("/usr/bin/chmod");
    let allowed = format!(
        "[[behaviour.privileged]]\naction = \"mount\"\nexecutable = {}\n\n\
         [[behaviour.privileged]]\naction = \"setuid\"\nexecutable = {}\n",
        toml_str(Path::new(&mount)),
        toml_str(Path::new(&chmod)),
    );
    let mnt = bench.mount_point("mnt");
    let tool = bench.file("tool");

    // Allowed: mount and chmod u+s by the listed executables. Not allowed: umount.
    let agent = bench.agent(&allowed);
    let mount_pid = mount_tmpfs("picket-allowed", &mnt);
    let chmod_pid = run_ok(Command::new("chmod").arg("u+s").arg(&tool));
    let umount_pid = umount(&mnt);
    let umount_alert = agent.wait_for(
        &format!("mount_changed by umount (pid {umount_pid})"),
        Some(umount_pid),
        |a| kind(a) == "mount_changed" && pid(a) == Some(umount_pid),
    );
    assert_eq!(umount_alert["details"]["op"], "umount", "{umount_alert}");
    agent.barrier(&bench.lab, "after the allowed actions");
    let pids = BTreeSet::from([mount_pid, chmod_pid]);
    let seen = privilege_alerts(&agent, &pids, &[]);
    assert!(
        seen.is_empty(),
        "the allowed actors raised:\n{}\n{}",
        lines(&seen),
        agent.describe()
    );
    agent.stop();

    // modes.behaviour = "off": nothing at all (a lab of its own: its policy has serial 1 too).
    let bench = Bench::new("privilege-off");
    let mnt = bench.mount_point("mnt");
    let tool = bench.file("tool");
    let agent = bench.agent("[modes]\nbehaviour = \"off\"\n");
    let mut pids = BTreeSet::new();
    pids.insert(mount_tmpfs("picket-off", &mnt));
    pids.insert(run_ok(Command::new("chmod").arg("6755").arg(&tool)));
    pids.insert(run_ok(
        Command::new("setcap").arg("cap_net_raw+ep").arg(&tool),
    ));
    pids.insert(umount(&mnt));
    agent.barrier(&bench.lab, "with behaviour off");
    let seen = privilege_alerts(&agent, &pids, &[&mnt, &bench.files]);
    assert!(
        seen.is_empty(),
        "modes.behaviour = \"off\" raised:\n{}\n{}",
        lines(&seen),
        agent.describe()
    );
    agent.stop();
}
