//! End-to-end tests of each sensor of `picket monitor`: every test starts its own monitor with
//! the real eBPF programs, causes one action (an exec, a connection, a file change, ...) and
//! asserts that the matching JSON event names the right process and the right absolute path.
//!
//! Runs as root. Tests run in parallel and every monitor sees the whole machine, so events are
//! selected by pid, path or port.
#![allow(clippy::unwrap_used)]

use std::ffi::{CString, OsStr};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use picket_test_support::agent::is_file_op;
use picket_test_support::bin::picket;
use picket_test_support::process::{
    exec_memfd, fork_child, run, spawn_fresh_executable, wait_child,
};
use picket_test_support::{hex, sha256_file, unique, Event, Monitor, TempDir};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Process sensor
// ---------------------------------------------------------------------------------------------

#[test]
fn exec_of_known_binary_with_arguments() {
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let marker = unique("picket");
    let pid = run(Command::new("/bin/echo").args(["hello", &marker]));

    let ev = mon.wait_for_pid(&format!("exec of /bin/echo by pid {pid}"), pid, |e| {
        e.kind() == "exec"
    });
    // /bin is a symlink to /usr/bin here; the kernel's path is the one that was passed.
    let canonical = std::fs::canonicalize("/bin/echo").unwrap();
    let exe = ev
        .str_field("exe")
        .unwrap_or_else(|| panic!("exec without exe: {ev}"));
    assert!(
        exe == "/bin/echo" || Path::new(exe) == canonical,
        "exe should be /bin/echo or {}: {ev}",
        canonical.display()
    );
    assert_eq!(ev.str_field("filename"), Some("/bin/echo"), "{ev}");
    assert_eq!(ev.argv(), ["/bin/echo", "hello", marker.as_str()], "{ev}");
    assert_eq!(ev["argv_truncated"], false, "{ev}");
    assert_eq!(
        ev.str_field("sha256"),
        Some(sha256_file(&canonical).as_str()),
        "{ev}"
    );
    assert_eq!(ev.str_field("comm"), Some("echo"), "{ev}");
    assert_eq!(
        ev.u64_field("uid"),
        Some(u64::from(unsafe { libc::getuid() })),
        "{ev}"
    );
    assert_eq!(
        ev.u64_field("ppid"),
        Some(u64::from(std::process::id())),
        "{ev}"
    );
    assert!(ev.u64_field("time_ns").is_some_and(|t| t > 0), "{ev}");
    assert!(
        ev.get("interpreter").is_none(),
        "a native binary has no interpreter: {ev}"
    );
    assert_eq!(ev["fileless"], false, "{ev}");
    assert_eq!(ev["execveat"], false, "{ev}");

    // Parent first: this test process, then its own parent.
    let ancestry = ev["ancestry"]
        .as_array()
        .unwrap_or_else(|| panic!("no ancestry: {ev}"));
    let pids: Vec<u64> = ancestry.iter().filter_map(|a| a["pid"].as_u64()).collect();
    assert!(
        pids.len() >= 2,
        "ancestry should reach past the test process: {ev}"
    );
    assert_eq!(pids[0], u64::from(std::process::id()), "{ev}");
    assert_eq!(
        pids[1],
        u64::from(std::os::unix::process::parent_id()),
        "{ev}"
    );
}

#[test]
fn argv_past_the_limit_is_marked_truncated() {
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let marker = unique("picket-argv");
    // 40 arguments: more than the 32 the kernel side copies.
    let args: Vec<String> = (0..40).map(|i| format!("{marker}-{i}")).collect();
    let pid = run(Command::new("/bin/true").args(&args));
    let ev = mon.wait_for_pid(&format!("exec of /bin/true by pid {pid}"), pid, |e| {
        e.kind() == "exec"
    });
    assert_eq!(ev["argv_truncated"], true, "{ev}");
    let argv = ev.argv();
    assert!(
        argv.len() < 41 && argv[1..] == args[..argv.len() - 1],
        "argv must be the first arguments, in order: {ev}"
    );
}

#[test]
fn filter_reports_only_the_kinds_asked_for() {
    let mon = Monitor::start(picket(), &["--filter", "net"]);
    let me = std::process::id();
    let (dir, file) = file_in_temp_dir();
    std::fs::write(&file, "changed\n").unwrap();
    let pid = run(Command::new("/bin/true").arg(unique("picket-filter")));
    // Then a connection, which is reported: once it arrived, the rest would have too.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    mon.wait_for_pid(&format!("tcp_connect to port {port}"), me, |e| {
        is_net(e, "tcp_connect") && e.u64_field("remote_port") == Some(u64::from(port))
    });
    let other: Vec<Value> = mon
        .events()
        .into_iter()
        .filter(|e| e.kind() == "exec" || e.kind() == "file")
        .collect();
    assert!(
        other.is_empty(),
        "--filter net reported other kinds (exec of pid {pid}, {} written): {other:?}",
        dir.path().display()
    );
}

#[test]
fn exec_by_relative_path_reports_absolute_exe() {
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let dir = TempDir::new();
    let copy = dir.join("true");
    std::fs::copy("/bin/true", &copy).unwrap();

    let mut child = spawn_fresh_executable(Command::new("./true").current_dir(dir.path()));
    let pid = child.id();
    assert!(child.wait().unwrap().success());

    let ev = mon.wait_for_pid(&format!("exec of ./true by pid {pid}"), pid, |e| {
        e.kind() == "exec"
    });
    assert_eq!(ev.str_field("filename"), Some("./true"), "{ev}");
    assert_eq!(
        ev.str_field("exe").map(Path::new),
        Some(copy.as_path()),
        "{ev}"
    );
    assert_eq!(
        ev.str_field("sha256"),
        Some(sha256_file(&copy).as_str()),
        "{ev}"
    );
}

/// `/proc/self/exe` (what busybox does to run its applets): the shell executes itself again,
/// right after its own exec, and exits at once. 20 times: the exec is named as the file that
/// runs, with its SHA-256 (the two execs of one file by one process may come as one exec
/// event from the kernel's listener: the second is the first's file again).
#[test]
fn exec_of_proc_self_exe_names_the_running_file() {
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let shell = std::fs::canonicalize("/bin/sh").unwrap();
    let sha = sha256_file(&shell);
    let pids: Vec<u32> = (0..20)
        .map(|_| run(Command::new("/bin/sh").args(["-c", "exec /proc/self/exe -c true"])))
        .collect();
    let mut wrong = Vec::new();
    for pid in pids {
        let ev = mon.wait_for_pid(&format!("exec of /proc/self/exe by pid {pid}"), pid, |e| {
            e.kind() == "exec" && e.str_field("filename") == Some("/proc/self/exe")
        });
        let right = ev.str_field("exe").map(Path::new) == Some(shell.as_path())
            && ev.str_field("sha256") == Some(sha.as_str());
        if !right {
            wrong.push(ev.to_string());
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 20 wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn exec_of_script_reports_script_and_interpreter() {
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let dir = TempDir::new();
    let script = dir.join("script.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut child = spawn_fresh_executable(&mut Command::new(&script));
    let pid = child.id();
    assert!(child.wait().unwrap().success());

    let ev = mon.wait_for_pid(
        &format!("exec of {} by pid {pid}", script.display()),
        pid,
        |e| e.kind() == "exec",
    );
    assert_eq!(
        ev.str_field("exe").map(Path::new),
        Some(script.as_path()),
        "{ev}"
    );
    assert_eq!(
        ev.str_field("sha256"),
        Some(sha256_file(&script).as_str()),
        "{ev}"
    );
    let interpreter = ev
        .str_field("interpreter")
        .unwrap_or_else(|| panic!("no interpreter: {ev}"));
    assert!(
        interpreter.starts_with('/') && interpreter.ends_with("sh"),
        "{ev}"
    );
}

#[test]
fn execveat_of_memfd_is_fileless() {
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let (pid, fd) = exec_memfd("picket-memfd", "picket-memfd-true");

    let ev = mon.wait_for_pid(&format!("exec of the memfd by pid {pid}"), pid, |e| {
        e.kind() == "exec"
    });
    assert_eq!(ev["fileless"], true, "{ev}");
    assert_eq!(ev["execveat"], true, "{ev}");
    let exe = ev
        .str_field("exe")
        .unwrap_or_else(|| panic!("no exe: {ev}"));
    assert!(exe.starts_with("/memfd:picket-memfd"), "{ev}");
    assert_eq!(
        ev.str_field("filename"),
        Some(format!("/dev/fd/{fd}").as_str()),
        "{ev}"
    );
    assert_eq!(ev.argv(), ["picket-memfd-true"], "{ev}");
}

#[test]
fn fork_and_exit_code() {
    let mon = Monitor::start(picket(), &[]);
    let pid = {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id();
        assert_eq!(child.wait().unwrap().code(), Some(7));
        pid
    };
    let me = std::process::id();

    let fork = mon.wait_for_pid(&format!("fork of child {pid} by pid {me}"), me, |e| {
        e.kind() == "fork" && e.u64_field("child_pid") == Some(u64::from(pid))
    });
    assert_eq!(fork.pid(), Some(me), "{fork}");
    let exit = mon.wait_for_pid(&format!("exit of pid {pid}"), pid, |e| e.kind() == "exit");
    assert_eq!(exit["exit_code"], 7, "{exit}");
    assert_eq!(exit["signal"], Value::Null, "{exit}");
}

#[test]
fn exit_by_signal() {
    let mon = Monitor::start(picket(), &[]);
    let mut child = Command::new("/bin/sh")
        .args(["-c", "kill -KILL $$"])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(!child.wait().unwrap().success());

    let exit = mon.wait_for_pid(&format!("exit of pid {pid}"), pid, |e| e.kind() == "exit");
    assert_eq!(exit["signal"], libc::SIGKILL, "{exit}");
    assert_eq!(exit["exit_code"], Value::Null, "{exit}");
}

#[test]
fn agent_does_not_report_itself() {
    let mon = Monitor::start(picket(), &[]);
    let monitor_pid = mon.pid();
    // Make sure the stream is live before judging what it holds.
    let marker = unique("picket-self");
    let pid = run(Command::new("/bin/true").arg(&marker));
    mon.wait_for_pid(&format!("exec of /bin/true {marker}"), pid, |e| {
        e.argv().contains(&marker)
    });

    let out = mon.stop();
    assert!(
        out.bad_lines.is_empty(),
        "stdout lines that are not JSON objects: {:?}",
        out.bad_lines
    );
    let own: Vec<&Value> = out
        .events
        .iter()
        .filter(|e| e.pid() == Some(monitor_pid))
        .collect();
    assert!(
        own.is_empty(),
        "the monitor (pid {monitor_pid}) reported its own activity: {own:?}"
    );
    let summary = out.summary();
    assert_eq!(summary["undecodable"], 0, "{summary}");
    let printed = out
        .events
        .iter()
        .filter(|e| !matches!(e.kind(), "lost" | "summary"))
        .count();
    let received = summary["received"]
        .as_u64()
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        printed as u64 <= received,
        "printed {printed} events but received {received}"
    );
}

// ---------------------------------------------------------------------------------------------
// Network sensor
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_listen_connect_and_accept_on_loopback() {
    let mon = Monitor::start(picket(), &["--filter", "net"]);
    tcp_round_trip(&mon, "127.0.0.1:0".parse().unwrap(), "ipv4", "127.0.0.1");
    ipv6_loopback();
    tcp_round_trip(&mon, "[::1]:0".parse().unwrap(), "ipv6", "::1");
}

/// The IPv6 half of the network tests needs the IPv6 loopback; without it they fail, saying so.
fn ipv6_loopback() {
    if let Err(e) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        panic!("the IPv6 loopback is unavailable ({e}): the IPv6 events cannot be tested here");
    }
}

#[test]
fn tcp_listener_is_reported() {
    let mon = Monitor::start(picket(), &["--filter", "net"]);
    ipv6_loopback();
    let (listener, family, addr) = (
        TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap(),
        "ipv6",
        "::1",
    );
    let port = listener.local_addr().unwrap().port();
    let me = std::process::id();
    let ev = mon.wait_for_pid(&format!("tcp_listen on {addr} port {port}"), me, |e| {
        is_net(e, "tcp_listen") && e.u64_field("local_port") == Some(u64::from(port))
    });
    assert_eq!(ev.str_field("family"), Some(family), "{ev}");
    assert_eq!(ev.str_field("local_addr"), Some(addr), "{ev}");
    assert_eq!(ev.str_field("pid_source"), Some("task"), "{ev}");
}

#[test]
fn udp_bind_send_once_per_destination_and_connect() {
    let mon = Monitor::start(picket(), &["--filter", "net"]);
    let me = std::process::id();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender_port = sender.local_addr().unwrap().port();
    let dest = receiver.local_addr().unwrap();

    let bind = mon.wait_for_pid(&format!("udp_bind of port {sender_port}"), me, |e| {
        is_net(e, "udp_bind") && e.u64_field("local_port") == Some(u64::from(sender_port))
    });
    assert_eq!(bind.str_field("family"), Some("ipv4"), "{bind}");

    // Two datagrams to one destination: only the first is news.
    sender.send_to(b"one", dest).unwrap();
    sender.send_to(b"two", dest).unwrap();
    let to_dest = |e: &Value| {
        is_net(e, "udp_send")
            && e.pid() == Some(me)
            && e.str_field("remote_addr") == Some("127.0.0.1")
            && e.u64_field("remote_port") == Some(u64::from(dest.port()))
    };
    let send = mon.wait_for_pid(&format!("udp_send to {dest}"), me, to_dest);
    assert_eq!(send.str_field("pid_source"), Some("task"), "{send}");
    let sends = mon.matching_after(Duration::from_secs(2), to_dest);
    assert_eq!(
        sends.len(),
        1,
        "one udp_send per (process, destination) expected: {sends:?}"
    );

    let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected.connect(dest).unwrap();
    let ev = mon.wait_for_pid(&format!("udp_connect to {dest}"), me, |e| {
        is_net(e, "udp_connect") && e.u64_field("remote_port") == Some(u64::from(dest.port()))
    });
    assert_eq!(ev.str_field("remote_addr"), Some("127.0.0.1"), "{ev}");
    assert_eq!(
        ev.u64_field("local_port"),
        Some(u64::from(connected.local_addr().unwrap().port())),
        "{ev}"
    );
}

// ---------------------------------------------------------------------------------------------
// File sensor
// ---------------------------------------------------------------------------------------------

#[test]
fn file_written_by_relative_path_after_chdir() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let dir = TempDir::new();
    let script = format!("cd '{}' && echo hi > rel.txt", dir.path().display());
    let pid = run(Command::new("/bin/sh").args(["-c", &script]));
    let path = dir.join("rel.txt");

    let ev = mon.wait_for_pid(
        &format!("open of {} by pid {pid}", path.display()),
        pid,
        |e| is_file_op(e, "open", &path),
    );
    assert!(ev.has_flag("O_WRONLY") && ev.has_flag("O_CREAT"), "{ev}");
    assert_eq!(ev["path_resolved"], true, "{ev}");
}

#[test]
fn openat_relative_to_directory_fd() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let dir = TempDir::new();
    let dir_c = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
    // The agent resolves the directory through the process's open descriptors (documented:
    // once they are gone the path stays relative), so the child keeps its directory open
    // until the test has seen the event (a byte on `done`), or 10 s.
    let mut done = [0 as libc::c_int; 2];
    // SAFETY: `done` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(done.as_mut_ptr()) }, 0);
    let pid = fork_child(|| {
        // SAFETY: raw syscalls on data prepared before the fork.
        unsafe {
            let dirfd = libc::open(dir_c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            if dirfd < 0 {
                return 1;
            }
            let fd = libc::openat(
                dirfd,
                c"viadirfd.txt".as_ptr(),
                libc::O_WRONLY | libc::O_CREAT,
                0o644,
            );
            if fd < 0 {
                return 2;
            }
            let mut wait = libc::pollfd {
                fd: done[0],
                events: libc::POLLIN,
                revents: 0,
            };
            libc::poll(&mut wait, 1, 10_000);
        }
        0
    });
    let path = dir.join("viadirfd.txt");
    let ev = mon.wait_for_pid(
        &format!("open of {} by pid {pid}", path.display()),
        pid as u32,
        |e| is_file_op(e, "open", &path),
    );
    // SAFETY: writes one byte from a live buffer to our end of the pipe, then closes both.
    unsafe {
        libc::write(done[1], c"x".as_ptr().cast(), 1);
        libc::close(done[0]);
        libc::close(done[1]);
    }
    assert_eq!(wait_child(pid), 0, "the openat child failed");
    assert!(ev.has_flag("O_WRONLY") && ev.has_flag("O_CREAT"), "{ev}");
    assert_eq!(ev.str_field("mode"), Some("0644"), "{ev}");
    assert_eq!(ev["path_resolved"], true, "{ev}");
}

#[test]
fn rename_over_protected_file() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let dir = TempDir::new();
    let (old, new) = (dir.join("new.conf"), dir.join("protected.conf"));
    std::fs::write(&new, "original\n").unwrap();
    std::fs::write(&old, "replacement\n").unwrap();
    let pid = run(Command::new("mv").arg(&old).arg(&new));

    let ev = mon.wait_for_pid(
        &format!("rename of {} by pid {pid}", old.display()),
        pid,
        |e| is_file_op(e, "rename", &old),
    );
    assert_eq!(
        ev.str_field("new_path").map(Path::new),
        Some(new.as_path()),
        "{ev}"
    );
}

#[test]
fn unlink_is_reported() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let (_dir, file) = file_in_temp_dir();
    let pid = run(Command::new("rm").arg(&file));
    mon.wait_for_pid(
        &format!("unlink of {} by pid {pid}", file.display()),
        pid,
        |e| is_file_op(e, "unlink", &file),
    );
}

#[test]
fn mkdir_symlink_link_and_rmdir_are_reported() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let me = std::process::id();
    let dir = TempDir::new();
    let (sub, file) = (dir.join("sub"), dir.join("f"));
    let (soft, hard) = (dir.join("soft"), dir.join("hard"));
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(&file, "content\n").unwrap();
    // A relative target, reported as written.
    std::os::unix::fs::symlink("f", &soft).unwrap();
    std::fs::hard_link(&file, &hard).unwrap();
    std::fs::remove_dir(&sub).unwrap();

    mon.wait_for_pid(&format!("mkdir of {}", sub.display()), me, |e| {
        is_file_op(e, "mkdir", &sub)
    });
    let ev = mon.wait_for_pid(&format!("symlink {}", soft.display()), me, |e| {
        is_file_op(e, "symlink", &soft)
    });
    assert_eq!(ev.str_field("target"), Some("f"), "{ev}");
    let ev = mon.wait_for_pid(&format!("link {}", hard.display()), me, |e| {
        is_file_op(e, "link", &hard)
    });
    assert_eq!(
        ev.str_field("target").map(Path::new),
        Some(file.as_path()),
        "{ev}"
    );
    mon.wait_for_pid(&format!("rmdir of {}", sub.display()), me, |e| {
        is_file_op(e, "rmdir", &sub)
    });
}

#[test]
fn read_only_opens_and_failed_changes_are_not_reported() {
    // The file is written before the monitor starts: only what follows is looked at.
    let (dir, file) = file_in_temp_dir();
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let me = std::process::id();
    let missing = dir.join("missing/f");
    for _ in 0..10 {
        std::fs::File::open(&file).unwrap();
    }
    // Changes that fail: nothing changed, nothing to report.
    assert!(std::fs::create_dir(dir.join("f")).is_err());
    assert!(std::fs::write(&missing, "x").is_err());
    assert!(std::fs::remove_file(dir.join("absent")).is_err());
    // Then a change that is reported: the ring buffer is read in order, so once it arrived
    // anything the actions above had put there has been read.
    let sentinel = dir.join("sentinel");
    std::fs::write(&sentinel, "x").unwrap();
    mon.wait_for_pid("the sentinel's open", me, |e| {
        is_file_op(e, "open", &sentinel)
    });
    let unwanted: Vec<Value> = mon
        .events()
        .into_iter()
        .filter(|e| {
            e.kind() == "file"
                && e.pid() == Some(me)
                && e.str_field("path").is_some_and(|p| {
                    let p = Path::new(p);
                    p == file || p == missing || p == dir.join("absent")
                })
        })
        .collect();
    assert!(
        unwanted.is_empty(),
        "read-only opens or failed changes reported: {unwanted:?}"
    );
}

#[test]
fn chmod_is_reported_with_mode() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let (_dir, file) = file_in_temp_dir();
    let pid = run(Command::new("chmod").arg("600").arg(&file));
    let ev = mon.wait_for_pid(
        &format!("chmod of {} by pid {pid}", file.display()),
        pid,
        |e| is_file_op(e, "chmod", &file),
    );
    assert_eq!(ev.str_field("mode"), Some("0600"), "{ev}");
}

#[test]
fn chown_is_reported_with_owner_and_group() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let (_dir, file) = file_in_temp_dir();
    let pid = run(Command::new("chown").arg("1234:5678").arg(&file));
    let ev = mon.wait_for_pid(
        &format!("chown of {} by pid {pid}", file.display()),
        pid,
        |e| is_file_op(e, "chown", &file),
    );
    assert_eq!(ev["owner"], 1234, "{ev}");
    assert_eq!(ev["group"], 5678, "{ev}");
}

#[test]
fn truncate_through_fd_is_reported_with_path() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let (_dir, file) = file_in_temp_dir();
    // GNU truncate opens the file and calls ftruncate: the agent must name the fd's file.
    let pid = run(Command::new("truncate").args(["-s", "10"]).arg(&file));
    let ev = mon.wait_for_pid(
        &format!("truncate of {} by pid {pid}", file.display()),
        pid,
        |e| is_file_op(e, "truncate", &file),
    );
    assert_eq!(ev["length"], 10, "{ev}");
}

#[test]
fn non_utf8_path_is_reported_in_hex() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let dir = TempDir::new();
    let path = dir.join(OsStr::from_bytes(b"bad-\xff-name"));
    std::fs::File::create(&path).unwrap();
    let want = hex(path.as_os_str().as_bytes());
    let me = std::process::id();

    let ev = mon.wait_for_pid(
        &format!("open of {} (path_hex {want})", path.display()),
        me,
        |e| {
            e.kind() == "file"
                && e.str_field("op") == Some("open")
                && e.str_field("path_hex") == Some(&want)
        },
    );
    let lossy = ev
        .str_field("path")
        .unwrap_or_else(|| panic!("no path: {ev}"));
    assert!(lossy.starts_with(dir.path().to_str().unwrap()), "{ev}");
}

#[test]
fn path_of_maximum_length() {
    let mon = Monitor::start(picket(), &["--filter", "file"]);
    let dir = TempDir::new();
    let path = path_of_length(dir.path(), libc::PATH_MAX as usize - 1);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(&path).unwrap();
    let me = std::process::id();

    mon.wait_for_pid(
        &format!(
            "open of the {}-byte path {}",
            path.as_os_str().len(),
            path.display()
        ),
        me,
        |e| is_file_op(e, "open", &path),
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn is_net(event: &Value, op: &str) -> bool {
    event.kind() == "net" && event.str_field("op") == Some(op)
}

/// Listens on `bind`, connects to it from this process, and checks listen, connect and accept.
fn tcp_round_trip(mon: &Monitor, bind: SocketAddr, family: &str, addr: &str) {
    let me = std::process::id();
    let listener = TcpListener::bind(bind).unwrap();
    let port = listener.local_addr().unwrap().port();
    let on_port =
        |e: &Value, op: &str| is_net(e, op) && e.u64_field("local_port") == Some(u64::from(port));

    let listen = mon.wait_for_pid(&format!("tcp_listen on {addr} port {port}"), me, |e| {
        on_port(e, "tcp_listen")
    });
    assert_eq!(listen.str_field("family"), Some(family), "{listen}");

    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _server_side = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();

    let connect = mon.wait_for_pid(&format!("tcp_connect to {addr} port {port}"), me, |e| {
        is_net(e, "tcp_connect") && e.u64_field("remote_port") == Some(u64::from(port))
    });
    assert_eq!(connect.str_field("family"), Some(family), "{connect}");
    assert_eq!(connect.str_field("remote_addr"), Some(addr), "{connect}");
    // The kernel picks the source port just after SYN_SENT; the agent asks the socket, which
    // this test keeps open.
    assert_eq!(
        connect.u64_field("local_port"),
        Some(u64::from(client_port)),
        "{connect}"
    );
    assert_eq!(connect.str_field("pid_source"), Some("task"), "{connect}");

    // The accept completes in softirq context: the agent names the listener's process.
    let accept = mon.wait_for(
        &format!("tcp_accept on {addr} port {port} from port {client_port}"),
        |e| on_port(e, "tcp_accept") && e.u64_field("remote_port") == Some(u64::from(client_port)),
    );
    assert_eq!(accept.str_field("family"), Some(family), "{accept}");
    assert_eq!(accept.str_field("local_addr"), Some(addr), "{accept}");
    assert_eq!(accept.str_field("remote_addr"), Some(addr), "{accept}");
    assert_eq!(accept.pid(), Some(me), "{accept}");
    assert_eq!(accept.str_field("pid_source"), Some("listener"), "{accept}");
}

/// A fresh temp dir holding one regular file `f`.
fn file_in_temp_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let file = dir.join("f");
    std::fs::write(&file, "content\n").unwrap();
    (dir, file)
}

/// A path under `base` exactly `len` bytes long, made of components of at most 255 bytes.
fn path_of_length(base: &Path, len: usize) -> PathBuf {
    let mut path = base.as_os_str().as_bytes().to_vec();
    assert!(path.len() + 2 <= len);
    while len - path.len() > 256 {
        path.push(b'/');
        path.extend(std::iter::repeat_n(b'd', 200));
    }
    path.push(b'/');
    let rest = len - path.len();
    path.extend(std::iter::repeat_n(b'f', rest));
    assert_eq!(path.len(), len);
    PathBuf::from(OsStr::from_bytes(&path))
}
