//! The executed file, as the kernel opened it: a fanotify `FAN_OPEN_EXEC` listener.
//!
//! When a process executes a file, the kernel opens it for the exec; fanotify queues an event
//! for that open with the process's PID and, once the event is read, an open descriptor of that
//! very inode in the reader. The identity (device, inode, ctime, whether it is deleted) and the
//! bytes that ran are then read from the descriptor, race-free: the process may have exited in
//! the meantime, the path may have been replaced or unlinked, the descriptor still names the file
//! that ran. The ELF interpreter (`ld.so`) and a script's interpreter are opened the same way,
//! after the file itself.
//!
//! Every mounted filesystem is marked (`FAN_MARK_FILESYSTEM`, or per mount where that is not
//! supported), and a thread marks the filesystems mounted later (it waits for the mount tables
//! to change). A filesystem mark covers every mount of that filesystem, in every mount
//! namespace. The mounts of init's namespace are marked too (through `/proc/1/root`): a service
//! manager may give the agent a namespace of its own (systemd's `PrivateDevices=` hides the
//! system's `/dev/shm`). Pseudo filesystems hold no executables and are skipped.
//! Memory files (`memfd_create`) live on an internal filesystem that cannot be marked: their
//! execs bring no event (the process table knows them from `memfd_create`).
//!
//! Needs Linux 5.0 (`FAN_OPEN_EXEC`) and `CAP_SYS_ADMIN`; without them [`ExecWatch::start`]
//! fails and the agent reads `/proc/PID/exe` instead (racy for processes that exit at once).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags},
};

/// Filesystem types that hold no executables (or whose files cannot be executed).
const PSEUDO: [&str; 20] = [
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "efivarfs",
    "rpc_pipefs",
    "nsfs",
    "hugetlbfs",
    "selinuxfs",
];

/// One exec open: the process that exec'd and the file it opened.
#[derive(Debug)]
pub struct Opened {
    pub pid: u32,
    pub file: File,
}

/// A fanotify group with every filesystem marked for one mask, kept so as filesystems are
/// mounted and unmounted. Dropping it stops the mount watcher and closes the group.
pub struct MarkedGroup {
    pub group: Arc<Fanotify>,
    /// Devices (`major:minor`) of the filesystems marked.
    marked: Arc<Mutex<HashSet<String>>>,
    /// Closing this wakes the mount watcher, which then exits.
    stop: Option<OwnedFd>,
    /// Closed by the mount watcher when it ends.
    ended: Option<std::sync::mpsc::Receiver<()>>,
}

/// How long dropping a group waits for its mount watcher.
const WATCHER_END: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for MarkedGroup {
    /// Waits (a while) for the mount watcher to end: it holds the group, which closes only once
    /// no one does. A group of permission events left open after its reader is gone would hold
    /// every exec (or open) it marks until then. A watcher stuck in the kernel (marking a
    /// filesystem whose server is gone) is left to end on its own.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(ended) = self.ended.take() {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(WATCHER_END)
            {
                log::warn!(
                    "fanotify: the mount watcher did not end within {WATCHER_END:?}; its group \
                     closes when it does"
                );
            }
        }
    }
}

/// A new fanotify group with `init` flags (and close-on-exec), whose events hold read-only
/// descriptors.
pub fn init_group(init: InitFlags) -> io::Result<Arc<Fanotify>> {
    let group = Fanotify::init(
        init | InitFlags::FAN_CLOEXEC,
        EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
    )?;
    Ok(Arc::new(group))
}

impl MarkedGroup {
    /// Marks every mounted filesystem for `mask` in `group` and starts the mount watcher;
    /// `what` names the group's purpose in the log.
    pub fn start(group: Arc<Fanotify>, mask: MaskFlags, what: &'static str) -> io::Result<Self> {
        let marked = Arc::new(Mutex::new(HashSet::new()));
        let n = mark_mounts(&group, &marked, mask, what)?;
        if n == 0 {
            return Err(io::Error::other("no filesystem could be marked"));
        }
        log::info!("{what}: {n} filesystems watched");
        let (wake, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (g, m) = (Arc::clone(&group), Arc::clone(&marked));
        let (done, ended) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("picket-mounts".into())
            .spawn(move || {
                watch_mounts(&g, &m, &wake, mask, what);
                // The group first, then the word that it is gone.
                drop(g);
                drop(done);
            })?;
        Ok(Self {
            group,
            marked,
            stop: Some(stop),
            ended: Some(ended),
        })
    }

    /// Whether the filesystem of device `dev` is marked.
    pub fn watches(&self, dev: u64) -> bool {
        let key = format!("{}:{}", libc::major(dev), libc::minor(dev));
        let marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        marked.contains(&key)
    }
}

/// The listener. Dropping it stops the mount watcher and closes the group.
pub struct ExecWatch {
    marked: MarkedGroup,
    buf: Vec<u64>,
    /// Events lost: the kernel's queue overflowed, or it could not give the agent a
    /// descriptor (out of descriptors: the kernel drops that event).
    pub lost: u64,
}

impl ExecWatch {
    /// Creates the group, marks every mounted filesystem and starts the mount watcher.
    pub fn start() -> io::Result<Self> {
        let group = init_group(
            InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_NONBLOCK | InitFlags::FAN_UNLIMITED_QUEUE,
        )?;
        let marked = MarkedGroup::start(
            group,
            MaskFlags::FAN_OPEN_EXEC,
            "exec identity (fanotify FAN_OPEN_EXEC)",
        )?;
        Ok(Self {
            marked,
            buf: vec![0; 512],
            lost: 0,
        })
    }

    /// Whether execs of files on device `dev` bring events (its filesystem is marked).
    pub fn watches(&self, dev: u64) -> bool {
        self.marked.watches(dev)
    }

    /// Stops events for the file at `path` (an inode ignore mark), until it is written to.
    pub fn ignore(&self, path: &Path) -> nix::Result<()> {
        self.marked.group.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_IGNORED_MASK,
            MaskFlags::FAN_OPEN_EXEC,
            None,
            Some(path),
        )
    }

    /// Reads the events queued now (without waiting), at most `max` (checked per read), and
    /// hands each to `seen` as it is read (each holds a descriptor: handled and closed one read
    /// at a time); returns how many were handed.
    pub fn drain(&mut self, max: usize, seen: impl FnMut(Opened)) -> usize {
        read_events(&self.marked.group, &mut self.buf, &mut self.lost, max, seen)
    }
}

/// Reads the events of `group` queued now (without waiting), at most `max` (checked per read),
/// and hands each to `seen`; counts the lost ones in `lost`; returns how many were handed.
pub fn read_events(
    group: &Fanotify,
    buf: &mut [u64],
    lost: &mut u64,
    max: usize,
    mut seen: impl FnMut(Opened),
) -> usize {
    let meta = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut handed = 0;
    while handed < max {
        let bytes = buf.len() * 8;
        // SAFETY: the buffer is valid for `bytes` bytes and outlives the call.
        let n = unsafe { libc::read(group.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return handed,
                // The event could not be given a descriptor (EMFILE, ENFILE, ...): the
                // kernel dropped it.
                _ => {
                    *lost += 1;
                    log::warn!("fanotify listener: an event was lost: {e}");
                    return handed;
                }
            }
        };
        if n == 0 {
            return handed;
        }
        let mut offset = 0;
        while offset + meta <= n {
            // SAFETY: the kernel wrote a whole `fanotify_event_metadata` at `offset`
            // (checked above); `read_unaligned` does not need alignment.
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<u8>().add(offset).cast()) };
            if m.event_len == 0 {
                break;
            }
            offset += m.event_len as usize;
            if m.fd < 0 {
                if m.mask & libc::FAN_Q_OVERFLOW != 0 {
                    *lost += 1;
                }
                continue;
            }
            // SAFETY: the kernel created this descriptor for us; nothing else owns it.
            let file = unsafe { File::from_raw_fd(m.fd) };
            if m.vers != libc::FANOTIFY_METADATA_VERSION {
                continue;
            }
            handed += 1;
            seen(Opened {
                pid: u32::try_from(m.pid).unwrap_or(0),
                file,
            });
        }
    }
    handed
}

/// Opens of a few named files (sensitive ones), by inode marks: no other open on the device
/// costs anything more. A file replaced under its name (written to a new file renamed over it,
/// as `passwd` does) is a new inode: [`OpenWatch::refresh`] marks it, and until then its opens
/// are not seen.
pub struct OpenWatch {
    group: Fanotify,
    buf: Vec<u64>,
    /// The paths to watch, each with the identity (device, inode) last marked.
    wanted: Vec<(PathBuf, Option<(u64, u64)>)>,
    /// Identities marked → the path they were marked under.
    marked: HashMap<(u64, u64), PathBuf>,
    /// Events lost (queue overflow, no descriptor).
    pub lost: u64,
}

impl OpenWatch {
    /// Creates the group, with nothing marked yet.
    pub fn start() -> io::Result<Self> {
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )?;
        Ok(Self {
            group,
            buf: vec![0; 512],
            wanted: Vec::new(),
            marked: HashMap::new(),
            lost: 0,
        })
    }

    /// Watches `paths` from now on, instead of those watched before.
    pub fn set(&mut self, paths: Vec<PathBuf>) {
        if let Err(e) = self.group.mark(
            MarkFlags::FAN_MARK_FLUSH,
            MaskFlags::empty(),
            None,
            None::<&Path>,
        ) {
            log::warn!("sensitive files: clearing the marks: {e}");
        }
        self.marked.clear();
        self.wanted = paths.into_iter().map(|p| (p, None)).collect();
        self.refresh();
    }

    /// Marks what each watched path names now when that is not what was marked (a file
    /// created since, or replaced). Costs one `stat` per path.
    pub fn refresh(&mut self) {
        for (path, last) in &mut self.wanted {
            let Ok(meta) = std::fs::metadata(&*path) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            if *last == Some(id) {
                continue;
            }
            match self.group.mark(
                MarkFlags::FAN_MARK_ADD,
                MaskFlags::FAN_OPEN,
                None,
                Some(&*path),
            ) {
                Ok(()) => {
                    *last = Some(id);
                    self.marked.insert(id, path.clone());
                }
                Err(e) => {
                    if last.is_none() {
                        log::warn!("sensitive file {}: cannot watch it: {e}", path.display());
                    }
                    // Said once: the next tries stay quiet.
                    *last = Some((u64::MAX, u64::MAX));
                }
            }
        }
    }

    /// Reads the opens queued now, at most `max`: (pid, path as watched) for each.
    pub fn drain(&mut self, max: usize) -> Vec<(u32, PathBuf)> {
        let mut out = Vec::new();
        let marked = &self.marked;
        read_events(&self.group, &mut self.buf, &mut self.lost, max, |o| {
            let Ok(meta) = o.file.metadata() else {
                return;
            };
            if let Some(path) = marked.get(&(meta.dev(), meta.ino())) {
                out.push((o.pid, path.clone()));
            }
        });
        out
    }
}

impl AsRawFd for OpenWatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.group.as_fd().as_raw_fd()
    }
}

/// The mount tables read, and how their mount points are reached from the agent's namespace.
const TABLES: [(&str, &str); 2] = [
    ("/proc/self/mountinfo", ""),
    ("/proc/1/mountinfo", "/proc/1/root"),
];

/// Marks every filesystem of the mount tables not marked yet; returns how many are marked.
fn mark_mounts(
    group: &Fanotify,
    marked: &Mutex<HashSet<String>>,
    mask: MaskFlags,
    what: &str,
) -> io::Result<usize> {
    let own = std::fs::read_to_string(TABLES[0].0)?;
    // Init's table is a bonus: unreadable without CAP_SYS_PTRACE, the same as ours usually.
    let init = std::fs::read_to_string(TABLES[1].0).unwrap_or_default();
    let mut marked = marked.lock().unwrap_or_else(|e| e.into_inner());
    let lines: Vec<(&str, &str)> = own
        .lines()
        .map(|l| (l, TABLES[0].1))
        .chain(init.lines().map(|l| (l, TABLES[1].1)))
        .collect();
    // A filesystem unmounted since took its mark with it, and its device number may come back
    // for another one: only what is mounted now counts as marked.
    let present: HashSet<String> = lines
        .iter()
        .filter_map(|(l, _)| parse_mountinfo(l).map(|m| m.device))
        .collect();
    marked.retain(|d| present.contains(d));
    for (line, root) in lines {
        let Some(mount) = parse_mountinfo(line) else {
            continue;
        };
        if PSEUDO.contains(&mount.fstype.as_str()) || marked.contains(&mount.device) {
            continue;
        }
        let point = if root.is_empty() {
            mount.point.clone()
        } else {
            let mut p = PathBuf::from(root).into_os_string();
            p.push(mount.point.as_os_str());
            PathBuf::from(p)
        };
        match mark(group, &point, mask) {
            Ok(()) => {
                marked.insert(mount.device);
            }
            Err(e) => log::debug!(
                "{what}: {} ({}) not marked: {e}",
                mount.point.display(),
                mount.fstype
            ),
        }
    }
    Ok(marked.len())
}

/// Marks the filesystem of `point`, or the mount where filesystem marks are not supported.
fn mark(group: &Fanotify, point: &Path, mask: MaskFlags) -> nix::Result<()> {
    let flags = MarkFlags::FAN_MARK_ADD;
    match group.mark(
        flags | MarkFlags::FAN_MARK_FILESYSTEM,
        mask,
        None,
        Some(point),
    ) {
        Err(nix::Error::EINVAL) => {
            group.mark(flags | MarkFlags::FAN_MARK_MOUNT, mask, None, Some(point))
        }
        other => other,
    }
}

/// Waits for the mount table to change and marks what was mounted; returns when `stop` is
/// closed (its other end is dropped).
fn watch_mounts(
    group: &Fanotify,
    marked: &Mutex<HashSet<String>>,
    stop: &OwnedFd,
    mask: MaskFlags,
    what: &str,
) {
    let own = match File::open(TABLES[0].0) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("{what}: filesystems mounted from now on are not watched: {e}");
            return;
        }
    };
    // Without init's table, ours is polled twice: harmless.
    let init = File::open(TABLES[1].0).or_else(|_| own.try_clone());
    let Ok(init) = init else {
        return;
    };
    loop {
        let mut fds = [
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(own.as_fd(), PollFlags::POLLPRI),
            PollFd::new(init.as_fd(), PollFlags::POLLPRI),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                log::warn!("{what}: watching the mount table: {e}");
                return;
            }
            Ok(_) => {}
        }
        if fds[0].any().unwrap_or(true) {
            return;
        }
        let changed = fds[1..].iter().any(|f| {
            f.revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR))
        });
        if changed {
            // Reading a table to its end re-arms its notification.
            let done = mark_mounts(group, marked, mask, what)
                .and_then(|_| drain_file(&own))
                .and_then(|()| drain_file(&init));
            if let Err(e) = done {
                log::warn!("{what}: re-reading the mount tables: {e}");
            }
        }
    }
}

/// Reads `f` to its end from the start (what re-arms a `/proc/self/mountinfo` poll).
fn drain_file(f: &File) -> io::Result<()> {
    use std::io::{Read, Seek};
    let mut f = f;
    f.seek(io::SeekFrom::Start(0))?;
    io::copy(&mut f.take(u64::MAX), &mut io::sink())?;
    Ok(())
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// `major:minor` of the filesystem.
    device: String,
    point: PathBuf,
    fstype: String,
}

/// Parses a mountinfo line: `id parent major:minor root point options [optional...] - type
/// source super-options`; the mount point's spaces and such are octal escapes (`\040`).
fn parse_mountinfo(line: &str) -> Option<Mount> {
    let mut words = line.split(' ');
    let device = words.nth(2)?.to_string();
    let point = unescape(words.nth(1)?);
    let fstype = words.skip_while(|w| *w != "-").nth(1)?.to_string();
    Some(Mount {
        device,
        point,
        fstype,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a mountinfo field.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    crate::paths::from_bytes(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let line = "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(
            parse_mountinfo(line),
            Some(Mount {
                device: "98:0".into(),
                point: PathBuf::from("/mnt/my disk"),
                fstype: "ext3".into(),
            })
        );
        let no_optional = "22 1 0:21 / /proc rw,nosuid - proc proc rw";
        assert_eq!(parse_mountinfo(no_optional).unwrap().fstype, "proc");
        assert_eq!(parse_mountinfo("garbage"), None);
    }

    /// Needs CAP_SYS_ADMIN (the tests run as root, like the agent).
    #[test]
    fn sees_the_exec_of_a_process_that_exits_at_once() {
        let mut w = ExecWatch::start().expect("fanotify listener (run as root)");
        let status = std::process::Command::new("/usr/bin/true")
            .status()
            .unwrap();
        assert!(status.success());
        let true_meta = std::fs::metadata("/usr/bin/true").unwrap();
        let mut found = false;
        w.drain(usize::MAX, |o| {
            use std::os::unix::fs::MetadataExt;
            let m = o.file.metadata().unwrap();
            found |= m.ino() == true_meta.ino() && m.dev() == true_meta.dev();
        });
        assert!(found, "no FAN_OPEN_EXEC event for /usr/bin/true");
    }
}
