//! Enrichment: a decoded record plus what the agent knows (process table, file hashes,
//! listeners) gives an [`Event`] with its full context: absolute paths, executable and its
//! SHA-256, arguments, ancestry.
//!
//! Records arrive in the order the kernel produced them, so the state kept here (working
//! directories, forks, execs) is the state at the time of each event, even for processes that
//! have exited since.

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use picket_common::{FileOp, NetOp, AT_FDCWD};
use serde_json::{json, Map, Value};

use crate::{
    hash::HashCache,
    paths::{self, read_proc_link},
    process::ProcessTable,
    sensors::decode::{Exec, File, Net, RawEvent, Task},
};

/// Broad category of an event, as selected by `--filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Exec,
    Net,
    File,
}

/// An enriched event, ready to print.
pub struct Event {
    pub category: Category,
    pub fields: Map<String, Value>,
}

/// Keeps the state that gives events their context.
pub struct Enricher {
    table: ProcessTable,
    hashes: HashCache,
    /// Local TCP port → process that listened on it (accepts happen in no task's context).
    listeners: HashMap<u16, u32>,
}

impl Default for Enricher {
    fn default() -> Self {
        Self::new()
    }
}

impl Enricher {
    pub fn new() -> Self {
        Self {
            table: ProcessTable::new(),
            hashes: HashCache::new(4096),
            listeners: HashMap::new(),
        }
    }

    /// Updates the state with `raw` and returns the event to report, if any (a chdir only
    /// updates state; a UDP record about what turns out to be a TCP socket is dropped).
    pub fn enrich(&mut self, raw: RawEvent) -> Option<Event> {
        match raw {
            RawEvent::Exec(e) => Some(self.exec(e)),
            RawEvent::Fork { task, child_pid } => {
                self.table.fork(task.pid, child_pid);
                let mut fields = self.common("fork", &task);
                fields.insert("child_pid".into(), json!(child_pid));
                Some(Event {
                    category: Category::Exec,
                    fields,
                })
            }
            RawEvent::Exit(e) => {
                let mut fields = self.common("exit", &e.task);
                // The kernel stores `exit_group(status)` as `status & 0xff`.
                fields.insert("exit_code".into(), json!(e.code.map(|c| c & 0xff)));
                fields.insert("signal".into(), json!(e.signal));
                self.table.exit(e.task.pid);
                self.listeners.retain(|_, pid| *pid != e.task.pid);
                Some(Event {
                    category: Category::Exec,
                    fields,
                })
            }
            RawEvent::Net(n) => self.net(n),
            RawEvent::File(f) => self.file(f),
        }
    }

    /// Number of processes in the table.
    pub fn processes(&self) -> usize {
        self.table.len()
    }

    /// (hits, misses) of the hash cache.
    pub fn hash_stats(&self) -> (u64, u64) {
        self.hashes.stats()
    }

    fn exec(&mut self, e: Exec) -> Event {
        let pid = e.task.pid;
        let filename = paths::from_bytes(&e.filename);
        // Read while the process may still live: it can be gone by the next record.
        let running = read_proc_link(pid, "exe");
        let proc_exe = PathBuf::from(format!("/proc/{pid}/exe"));
        // `execveat(fd, ...)` shows as `/dev/fd/N[/path]`: the kernel's link names the file, or
        // else what the process table knows of that fd (a memfd it created, a file it wrote).
        let by_fd = e.execveat.is_some() && filename.starts_with("/dev/fd/");
        let exe = if by_fd {
            running
                .clone()
                .or_else(|| self.fd_path(pid, &filename))
                .unwrap_or_else(|| filename.clone())
        } else if names_own_exe(&filename, pid) {
            // `/proc/self/exe`: the process runs its own executable again (busybox does for
            // its applets). The link is the file itself, not a path to report: name the file,
            // as running now, or else as the process table knew it before the exec.
            running
                .clone()
                .or_else(|| self.table.get(pid).exe.clone())
                .unwrap_or_else(|| filename.clone())
        } else {
            let cwd = self.table.cwd(pid).unwrap_or_else(|| PathBuf::from("/"));
            paths::absolute(&cwd, &filename)
        };
        // A script runs under an interpreter: the running binary is another file than the one
        // exec'd. Hash the file exec'd; for a binary, the very inode running when still there.
        let interpreted_live = running.is_some() && !by_fd && !same_file(&exe, &proc_exe);
        let hash_from = if running.is_some() && !interpreted_live {
            proc_exe.as_path()
        } else {
            exe.as_path()
        };
        let digest = self.hashes.digest(hash_from).ok();
        let interpreter = if interpreted_live {
            running.clone()
        } else {
            digest.as_ref().and_then(|d| d.shebang.clone())
        };
        let sha256 = digest.map(|d| d.sha256);
        let exe_text = exe.as_os_str().as_bytes();
        let fileless = exe_text.starts_with(b"/memfd:");
        let deleted = exe_text.ends_with(b" (deleted)");

        self.table.exec(pid, Some(exe), sha256, e.argv);
        let mut fields = self.common("exec", &e.task);
        insert_path(&mut fields, "filename", &filename);
        fields.insert("argv_truncated".into(), json!(e.argv_truncated));
        if e.argv_missing {
            fields.insert("argv_missing".into(), json!(true));
        }
        if let Some(interp) = interpreter {
            insert_path(&mut fields, "interpreter", &interp);
        }
        fields.insert("fileless".into(), json!(fileless));
        fields.insert("deleted".into(), json!(deleted));
        fields.insert("execveat".into(), json!(e.execveat.is_some()));
        Event {
            category: Category::Exec,
            fields,
        }
    }

    /// What `fd` of `pid` is, per the process table, for a `/dev/fd/N` exec path.
    fn fd_path(&mut self, pid: u32, filename: &Path) -> Option<PathBuf> {
        let fd: i32 = filename
            .strip_prefix("/dev/fd")
            .ok()?
            .components()
            .next()?
            .as_os_str()
            .to_str()?
            .parse()
            .ok()?;
        self.table.get(pid).file(fd).cloned()
    }

    fn net(&mut self, n: Net) -> Option<Event> {
        let mut task = n.task.clone();
        let mut pid_source = "task";
        match n.op {
            NetOp::TcpListen => {
                self.listeners.insert(n.local.1, task.pid);
            }
            NetOp::TcpAccept => match self.listeners.get(&n.local.1) {
                Some(&pid) => {
                    task.pid = pid;
                    pid_source = "listener";
                }
                None => pid_source = "unknown",
            },
            _ => {}
        }
        let mut socket_type = None;
        let mut local = n.local;
        let udp = !matches!(
            n.op,
            NetOp::TcpConnect | NetOp::TcpAccept | NetOp::TcpListen
        );
        if n.op == NetOp::TcpConnect && local.1 == 0 && n.fd >= 0 {
            // The kernel picks the local port right after SYN_SENT: ask the socket, if it still
            // is the one that connected to this peer.
            if let Some(SocketInfo {
                local: Some(addr),
                peer,
                ..
            }) = socket_info(task.pid, n.fd)
            {
                if peer.is_none_or(|p| p.ip() == n.remote.0 && p.port() == n.remote.1) {
                    local = (addr.ip(), addr.port());
                }
            }
        }
        // For UDP, the kernel side saw the syscall's arguments only: the socket's type when it
        // predates the sensors, and the local port the kernel picked, are asked of the socket.
        if udp && (n.sock_type_unknown || local.1 == 0) {
            let info = socket_info(task.pid, n.fd);
            match &info {
                // TCP connects are reported from the TCP state machine.
                Some(i) if i.kind == libc::SOCK_STREAM => return None,
                None if n.sock_type_unknown => socket_type = Some("unknown"),
                _ => {}
            }
            if let Some(addr) = info.and_then(|i| i.local) {
                if local.1 == 0 {
                    local = (addr.ip(), addr.port());
                }
            }
        }
        let op = match n.op {
            NetOp::TcpConnect => "tcp_connect",
            NetOp::TcpAccept => "tcp_accept",
            NetOp::TcpListen => "tcp_listen",
            NetOp::UdpConnect => "udp_connect",
            NetOp::UdpSend => "udp_send",
            NetOp::UdpBind => "udp_bind",
        };
        let mut fields = if task.pid == 0 {
            self.common_without_process("net", &task)
        } else {
            self.common("net", &task)
        };
        fields.insert("op".into(), json!(op));
        fields.insert("pid_source".into(), json!(pid_source));
        let family = if local.0.is_ipv6() || n.remote.0.is_ipv6() {
            "ipv6"
        } else {
            "ipv4"
        };
        fields.insert("family".into(), json!(family));
        fields.insert("local_addr".into(), json!(ip_text(local.0)));
        fields.insert("local_port".into(), json!(local.1));
        fields.insert("remote_addr".into(), json!(ip_text(n.remote.0)));
        fields.insert("remote_port".into(), json!(n.remote.1));
        if let Some(t) = socket_type {
            fields.insert("socket_type".into(), json!(t));
        }
        Some(Event {
            category: Category::Net,
            fields,
        })
    }

    fn file(&mut self, f: File) -> Option<Event> {
        let pid = f.task.pid;
        if f.op == FileOp::MemfdCreate {
            if let Ok(fd) = i32::try_from(f.ret) {
                let mut name = b"/memfd:".to_vec();
                name.extend_from_slice(&f.path);
                name.extend_from_slice(b" (deleted)");
                self.table.get(pid).opened(fd, paths::from_bytes(&name));
            }
            return None;
        }
        if f.op == FileOp::Chdir {
            let cwd = if f.fd_only {
                read_proc_link(pid, "cwd")
            } else {
                self.resolve(pid, AT_FDCWD, &f.path).0
            };
            if let Some(cwd) = cwd {
                self.table.set_cwd(pid, cwd);
            }
            return None;
        }
        let (op, main, main_dirfd, second) = match f.op {
            FileOp::Open => ("open", &f.path, f.dirfd, None),
            FileOp::Rename => (
                "rename",
                &f.path,
                f.dirfd,
                Some(("new_path", &f.path2, f.dirfd2)),
            ),
            FileOp::Unlink => ("unlink", &f.path, f.dirfd, None),
            FileOp::Rmdir => ("rmdir", &f.path, f.dirfd, None),
            FileOp::Mkdir => ("mkdir", &f.path, f.dirfd, None),
            // The new link is what changed; the existing file is its target.
            FileOp::Link => (
                "link",
                &f.path2,
                f.dirfd2,
                Some(("target", &f.path, f.dirfd)),
            ),
            FileOp::Symlink => ("symlink", &f.path2, f.dirfd2, None),
            FileOp::Chmod => ("chmod", &f.path, f.dirfd, None),
            FileOp::Chown => ("chown", &f.path, f.dirfd, None),
            FileOp::Truncate => ("truncate", &f.path, f.dirfd, None),
            FileOp::Chdir | FileOp::MemfdCreate => return None,
        };
        let (path, resolved) = if f.fd_only {
            // /proc is right while the process lives; after that, what it opened for writing.
            let path = read_proc_link(pid, &format!("fd/{}", f.dirfd))
                .or_else(|| self.table.get(pid).file(f.dirfd).cloned());
            let resolved = path.is_some();
            (path, resolved)
        } else {
            let (p, ok) = self.resolve(pid, main_dirfd, main);
            (p.or_else(|| Some(paths::from_bytes(main))), ok)
        };
        if let (FileOp::Open, Some(p), true) = (f.op, &path, resolved) {
            if let Ok(fd) = i32::try_from(f.ret) {
                self.table.get(pid).opened(fd, p.clone());
            }
        }
        let mut fields = self.common("file", &f.task);
        fields.insert("op".into(), json!(op));
        match &path {
            Some(p) => insert_path(&mut fields, "path", p),
            None => {
                fields.insert("path".into(), Value::Null);
            }
        }
        fields.insert("path_resolved".into(), json!(resolved));
        if let Some((name, raw, dirfd)) = second {
            let (p, _) = self.resolve(pid, dirfd, raw);
            insert_path(
                &mut fields,
                name,
                &p.unwrap_or_else(|| paths::from_bytes(raw)),
            );
        }
        if f.op == FileOp::Symlink {
            // The target of a symlink is stored as written, never resolved.
            insert_path(&mut fields, "target", &paths::from_bytes(&f.path));
        }
        match f.op {
            FileOp::Open => {
                fields.insert("flags".into(), json!(open_flags(f.op_flags)));
                if f.op_flags & (libc::O_CREAT as u32) != 0 {
                    fields.insert("mode".into(), json!(mode_text(f.mode)));
                }
            }
            FileOp::Mkdir | FileOp::Chmod => {
                fields.insert("mode".into(), json!(mode_text(f.mode)));
            }
            FileOp::Chown => {
                // -1 means "leave unchanged".
                let id = |v: u32| (v != u32::MAX).then_some(v);
                fields.insert("owner".into(), json!(id(f.owner)));
                fields.insert("group".into(), json!(id(f.group)));
            }
            FileOp::Truncate => {
                fields.insert("length".into(), json!(f.length));
            }
            _ => {}
        }
        Some(Event {
            category: Category::File,
            fields,
        })
    }

    /// Makes `raw` absolute against `dirfd` of `pid`. Returns the path and whether that worked;
    /// `None` when `raw` is empty.
    fn resolve(&mut self, pid: u32, dirfd: i32, raw: &[u8]) -> (Option<PathBuf>, bool) {
        if raw.is_empty() {
            return (None, false);
        }
        let path = paths::from_bytes(raw);
        if path.is_absolute() {
            return (Some(paths::normalize(&path)), true);
        }
        let base = if dirfd == AT_FDCWD {
            self.table.cwd(pid)
        } else {
            read_proc_link(pid, &format!("fd/{dirfd}"))
        };
        match base {
            Some(base) => (Some(paths::absolute(&base, &path)), true),
            None => (Some(path), false),
        }
    }

    /// Fields every event carries: who did it, and that process's context.
    fn common(&mut self, kind: &str, task: &Task) -> Map<String, Value> {
        let mut fields = self.common_without_process(kind, task);
        let pid = task.pid;
        let ancestry = self.table.ancestry(pid);
        let p = self.table.get(pid);
        if p.sha256.is_none() && !p.exited && p.exe.is_some() {
            // A process that started before the agent: hash what it runs, once.
            let digest = self
                .hashes
                .sha256(Path::new(&format!("/proc/{pid}/exe")))
                .ok();
            p.sha256 = digest;
        }
        fields.insert("pid".into(), json!(pid));
        fields.insert("ppid".into(), json!(p.ppid));
        match &p.exe {
            Some(exe) => insert_path(&mut fields, "exe", exe),
            None => {
                fields.insert("exe".into(), Value::Null);
            }
        }
        fields.insert("sha256".into(), json!(p.sha256.map(|d| paths::hex(&d))));
        let argv: Vec<String> = p
            .argv
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        fields.insert("argv".into(), json!(argv));
        let ancestry: Vec<Value> = ancestry
            .iter()
            .map(|a| {
                json!({
                    "pid": a.pid,
                    "exe": a.exe.as_ref().map(|e| e.to_string_lossy()),
                })
            })
            .collect();
        fields.insert("ancestry".into(), Value::Array(ancestry));
        fields
    }

    /// Fields for an event no known process can be tied to.
    fn common_without_process(&self, kind: &str, task: &Task) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("event".into(), json!(kind));
        fields.insert("time_ns".into(), json!(task.boot_ns));
        let known = task.pid != 0;
        fields.insert(
            "pid".into(),
            if known { json!(task.pid) } else { Value::Null },
        );
        fields.insert(
            "tid".into(),
            if task.known {
                json!(task.tid)
            } else {
                Value::Null
            },
        );
        fields.insert("ppid".into(), Value::Null);
        fields.insert(
            "uid".into(),
            if task.known {
                json!(task.uid)
            } else {
                Value::Null
            },
        );
        fields.insert(
            "gid".into(),
            if task.known {
                json!(task.gid)
            } else {
                Value::Null
            },
        );
        fields.insert("comm".into(), json!(task.comm));
        fields.insert("exe".into(), Value::Null);
        fields.insert("sha256".into(), Value::Null);
        fields.insert("argv".into(), json!([]));
        fields.insert("ancestry".into(), json!([]));
        fields.insert("cgroup_id".into(), json!(task.cgroup_id));
        fields
    }
}

/// Inserts `path` under `key`, and its exact bytes under `KEY_hex` when it is not UTF-8.
fn insert_path(fields: &mut Map<String, Value>, key: &str, path: &Path) {
    let r = paths::render(path.as_os_str());
    fields.insert(key.into(), json!(r.text));
    if let Some(hex) = r.hex {
        fields.insert(format!("{key}_hex"), json!(hex));
    }
}

/// Whether two paths name the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => true,
    }
}

/// What a borrowed socket says of itself.
struct SocketInfo {
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
    kind: i32,
    /// Bound local address, if any.
    local: Option<std::net::SocketAddr>,
    /// Connected peer, if any.
    peer: Option<std::net::SocketAddr>,
}

/// Looks at socket `fd` of process `pid` by borrowing the descriptor with `pidfd_getfd`
/// (Linux >= 5.6). `None` if the process or the fd is gone.
fn socket_info(pid: u32, fd: i32) -> Option<SocketInfo> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: plain syscalls on buffers we own; every fd they return is owned right away and
    // closed on drop.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let sock = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if sock < 0 {
            return None;
        }
        let sock = OwnedFd::from_raw_fd(sock as i32);
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let rc = libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        );
        if rc != 0 {
            return None;
        }
        let name = |get: unsafe extern "C" fn(
            libc::c_int,
            *mut libc::sockaddr,
            *mut libc::socklen_t,
        ) -> libc::c_int| {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let rc = get(
                sock.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            );
            if rc == 0 {
                sockaddr_to_std(&storage)
            } else {
                None
            }
        };
        Some(SocketInfo {
            kind,
            local: name(libc::getsockname),
            peer: name(libc::getpeername),
        })
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn ip_text(ip: IpAddr) -> String {
    ip.to_string()
}

fn mode_text(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// The names of the interesting flags of an `open`.
fn open_flags(flags: u32) -> Vec<&'static str> {
    let flags = flags as i32;
    let mut out = Vec::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => out.push("O_WRONLY"),
        libc::O_RDWR => out.push("O_RDWR"),
        _ => out.push("O_RDONLY"),
    }
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_TMPFILE & !libc::O_DIRECTORY, "O_TMPFILE"),
        (libc::O_SYNC & !libc::O_DSYNC, "O_SYNC"),
        (libc::O_DSYNC, "O_DSYNC"),
    ] {
        if flags & bit == bit {
            out.push(name);
        }
    }
    out
}

/// Whether an exec path is the exec'ing process's own `/proc` link to its executable:
/// `/proc/self/exe`, `/proc/thread-self/exe` or `/proc/PID/exe` with its own PID.
fn names_own_exe(filename: &Path, pid: u32) -> bool {
    let Some(rest) = filename
        .to_str()
        .and_then(|f| f.strip_prefix("/proc/"))
        .and_then(|f| f.strip_suffix("/exe"))
    else {
        return false;
    };
    rest == "self" || rest == "thread-self" || rest.parse::<u32>().is_ok_and(|p| p == pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_own_exe_links() {
        assert!(names_own_exe(Path::new("/proc/self/exe"), 7));
        assert!(names_own_exe(Path::new("/proc/thread-self/exe"), 7));
        assert!(names_own_exe(Path::new("/proc/7/exe"), 7));
        assert!(!names_own_exe(Path::new("/proc/8/exe"), 7));
        assert!(!names_own_exe(Path::new("/proc/self/fd/3"), 7));
        assert!(!names_own_exe(Path::new("/bin/busybox"), 7));
        assert!(!names_own_exe(Path::new("/proc/self/exe/x"), 7));
    }

    #[test]
    fn names_open_flags() {
        let f = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32;
        assert_eq!(open_flags(f), vec!["O_WRONLY", "O_CREAT", "O_TRUNC"]);
        assert_eq!(open_flags(libc::O_RDWR as u32), vec!["O_RDWR"]);
        assert_eq!(mode_text(0o100644), "0644");
    }
}
