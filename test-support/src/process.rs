//! Processes a test starts or causes: stopping a child, forked children that make raw
//! syscalls, executables written a moment ago, a fileless exec, and every form of exec the
//! agent must resolve to the file that ran ([`ExecForms`]).

use std::ffi::CString;
use std::os::fd::AsRawFd as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// SIGTERM, then reap; `None` if the child was still running after `timeout`.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `child` (our own, not yet reaped); panics if kill(2) fails.
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: plain kill(2) of our own, not yet reaped, child.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal}) failed", child.id());
}

/// Runs `body` in a forked child, which exits with its return value; returns the child's pid.
///
/// The test process is multithreaded: `body` may only make async-signal-safe calls (raw
/// syscalls on data prepared before the fork), must not allocate, and must not panic.
pub fn fork_child(body: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `body`, which the caller keeps async-signal-safe, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = body();
        // SAFETY: leaves the child without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Reaps child `pid` and returns its exit code (panics if it was killed).
pub fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let got = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        got,
        pid,
        "waitpid({pid}): {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFEXITED(status),
        "child {pid} did not exit normally (status {status:#x})"
    );
    libc::WEXITSTATUS(status)
}

/// Spawns `cmd`, retrying while the kernel reports ETXTBSY: an executable written a moment ago
/// can still be open for writing in a child that another test thread is forking.
pub fn spawn_fresh_executable(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot spawn {cmd:?}: {e}"),
        }
    }
}

/// Runs `cmd` to completion (output discarded) and returns its pid; panics unless it succeeded.
pub fn run(cmd: &mut Command) -> u32 {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "{cmd:?} failed: {status}");
    pid
}

/// Runs /usr/bin/true from a memfd named `name` (memfd_create, then execveat(fd, "",
/// AT_EMPTY_PATH) in a forked child, with `argv0` as its only argument): a fileless exec.
/// Returns the child's pid, once it has exited successfully, and the memfd's fd number.
pub fn exec_memfd(name: &str, argv0: &str) -> (u32, i32) {
    use std::io::Write as _;
    use std::os::fd::{AsRawFd, FromRawFd};
    let c_name = CString::new(name).unwrap();
    // SAFETY: plain syscall; no MFD_CLOEXEC so the fd stays valid through the exec.
    let fd = unsafe { libc::memfd_create(c_name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut memfd = unsafe { std::fs::File::from_raw_fd(fd) };
    memfd
        .write_all(&std::fs::read("/usr/bin/true").unwrap())
        .unwrap();
    let argv0 = CString::new(argv0).unwrap();
    let argv = [argv0.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let child = fork_child(|| {
        // SAFETY: execveat(fd, "", argv, envp, AT_EMPTY_PATH) on data prepared before the fork.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                memfd.as_raw_fd(),
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        127
    });
    assert_eq!(wait_child(child), 0, "the memfd exec failed");
    (child as u32, fd)
}

// ---------------------------------------------------------------------------------------------
// Exec forms: every way of naming the file to execute that the agent must resolve
// ---------------------------------------------------------------------------------------------

/// One way of executing a program. Each is done once by [`ExecForms::exec`], in a forked child
/// that makes the exec syscall at once; the program exits at once, so nothing can read the
/// process's `/proc` entries in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecForm {
    /// `execve("/DIR/bin/true")`.
    AbsolutePath,
    /// `chdir("/DIR/bin")`, then `execve("./true")`.
    RelativePath,
    /// `execve("/DIR/true-link")`, a symbolic link to `bin/true`.
    FileSymlink,
    /// `execve("/DIR/bin-link/true")`, through a symbolic link to the directory `bin`.
    DirSymlink,
    /// `execve("/proc/self/fd/N")` of a descriptor of the regular file.
    ProcSelfFd,
    /// `execve("/proc/PID/fd/N")`, PID being the child's own pid.
    ProcPidFd,
    /// `execve("/dev/fd/N")`.
    DevFd,
    /// `execveat(N, "", AT_EMPTY_PATH)` of a descriptor of the regular file.
    ExecveatFd,
    /// The same with an `O_PATH` descriptor.
    ExecveatOPath,
    /// A fresh copy opened, unlinked, then `execveat(N, "", AT_EMPTY_PATH)`.
    DeletedFile,
    /// A memfd named `picket-exec-…`, by `execveat(N, "", AT_EMPTY_PATH)`.
    MemfdNamedExecveat,
    /// A named memfd, by `execve("/proc/self/fd/N")`.
    MemfdNamedProcSelfFd,
    /// `memfd_create("")`, by `execveat`.
    MemfdUnnamedExecveat,
    /// `memfd_create("")`, by `execve("/proc/self/fd/N")`.
    MemfdUnnamedProcSelfFd,
    /// A named memfd sealed against writes, shrinking and growing, by `execveat`.
    MemfdSealedExecveat,
    /// A sealed memfd, by `execve("/proc/self/fd/N")`.
    MemfdSealedProcSelfFd,
    /// `execve("/DIR/script.sh")`, a `#!/bin/sh` script.
    Script,
}

impl ExecForm {
    /// Every form.
    pub const ALL: [ExecForm; 17] = [
        ExecForm::AbsolutePath,
        ExecForm::RelativePath,
        ExecForm::FileSymlink,
        ExecForm::DirSymlink,
        ExecForm::ProcSelfFd,
        ExecForm::ProcPidFd,
        ExecForm::DevFd,
        ExecForm::ExecveatFd,
        ExecForm::ExecveatOPath,
        ExecForm::DeletedFile,
        ExecForm::MemfdNamedExecveat,
        ExecForm::MemfdNamedProcSelfFd,
        ExecForm::MemfdUnnamedExecveat,
        ExecForm::MemfdUnnamedProcSelfFd,
        ExecForm::MemfdSealedExecveat,
        ExecForm::MemfdSealedProcSelfFd,
        ExecForm::Script,
    ];

    /// A short name, for tables of results.
    pub fn name(self) -> &'static str {
        match self {
            ExecForm::AbsolutePath => "absolute path",
            ExecForm::RelativePath => "relative path",
            ExecForm::FileSymlink => "file symlink",
            ExecForm::DirSymlink => "directory symlink",
            ExecForm::ProcSelfFd => "/proc/self/fd/N",
            ExecForm::ProcPidFd => "/proc/PID/fd/N",
            ExecForm::DevFd => "/dev/fd/N",
            ExecForm::ExecveatFd => "execveat fd",
            ExecForm::ExecveatOPath => "execveat O_PATH fd",
            ExecForm::DeletedFile => "deleted file",
            ExecForm::MemfdNamedExecveat => "memfd named, execveat",
            ExecForm::MemfdNamedProcSelfFd => "memfd named, /proc/self/fd",
            ExecForm::MemfdUnnamedExecveat => "memfd unnamed, execveat",
            ExecForm::MemfdUnnamedProcSelfFd => "memfd unnamed, /proc/self/fd",
            ExecForm::MemfdSealedExecveat => "memfd sealed, execveat",
            ExecForm::MemfdSealedProcSelfFd => "memfd sealed, /proc/self/fd",
            ExecForm::Script => "#! script",
        }
    }

    /// Whether the form runs a memfd (a fileless exec).
    pub fn is_memfd(self) -> bool {
        matches!(
            self,
            ExecForm::MemfdNamedExecveat
                | ExecForm::MemfdNamedProcSelfFd
                | ExecForm::MemfdUnnamedExecveat
                | ExecForm::MemfdUnnamedProcSelfFd
                | ExecForm::MemfdSealedExecveat
                | ExecForm::MemfdSealedProcSelfFd
        )
    }
}

/// What the agent must report of one exec: the file that ran, and how it was named.
#[derive(Clone, Debug)]
pub struct Exec {
    pub form: ExecForm,
    /// The exec'd process (it has exited and been reaped).
    pub pid: u32,
    /// The file that ran, in canonical form.
    pub exe: ExpectedExe,
    /// The name passed to the exec call, where the form fixes it (symbolic links: the link).
    pub filename: Option<String>,
    /// SHA-256 of the bytes that ran, lowercase hex.
    pub sha256: String,
    pub fileless: bool,
    /// Whether the file that ran had been unlinked; `None` for a memfd, which never had a
    /// link (whether it is also called deleted is not fixed, `fileless` is).
    pub deleted: Option<bool>,
    /// A script's interpreter, in canonical form.
    pub interpreter: Option<String>,
}

/// The `exe` an exec must be reported with.
#[derive(Clone, Debug)]
pub enum ExpectedExe {
    Exact(String),
    /// A memfd: `/memfd:NAME`, alone or followed by what the kernel appends (` (deleted)`).
    Prefix(String),
}

impl ExpectedExe {
    pub fn matches(&self, exe: &str) -> bool {
        match self {
            ExpectedExe::Exact(e) => exe == e,
            ExpectedExe::Prefix(p) => exe
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(" (")),
        }
    }
}

impl std::fmt::Display for ExpectedExe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedExe::Exact(e) => write!(f, "{e}"),
            ExpectedExe::Prefix(p) => write!(f, "{p}…"),
        }
    }
}

/// The files the exec forms run, in a directory of the caller's (canonical path): `bin/true`
/// (a copy of /usr/bin/true), `true-link` → `bin/true`, `bin-link` → `bin`, and `script.sh`
/// (`#!/bin/sh`, `exit 0`).
pub struct ExecForms {
    dir: std::path::PathBuf,
    true_copy: std::path::PathBuf,
    true_sha256: String,
    true_bytes: Vec<u8>,
    script: std::path::PathBuf,
    script_sha256: String,
    /// What /bin/sh resolves to.
    sh: String,
}

/// Exit code of a forked child whose exec call failed: 100 + errno, within 100..=199 for the
/// errors an exec can give.
const EXEC_FAILED: i32 = 100;

impl ExecForms {
    /// Writes the files into `dir`, which must exist and be given by its canonical path.
    pub fn new(dir: &std::path::Path) -> ExecForms {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let true_copy = bin.join("true");
        let true_bytes = std::fs::read("/usr/bin/true").unwrap();
        std::fs::write(&true_copy, &true_bytes).unwrap();
        std::fs::set_permissions(&true_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&true_copy, dir.join("true-link")).unwrap();
        std::os::unix::fs::symlink(&bin, dir.join("bin-link")).unwrap();
        let script = dir.join("script.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        ExecForms {
            dir: dir.to_path_buf(),
            true_sha256: crate::sha256_file(&true_copy),
            true_copy,
            true_bytes,
            script_sha256: crate::sha256_file(&script),
            script,
            sh: sh.to_str().unwrap().to_string(),
        }
    }

    /// The copy of /usr/bin/true that the file forms run.
    pub fn true_copy(&self) -> &std::path::Path {
        &self.true_copy
    }

    /// Its SHA-256 (also that of what the memfd forms run).
    pub fn true_sha256(&self) -> &str {
        &self.true_sha256
    }

    /// Executes once in `form`, in a child that exits at once; returns what the agent must
    /// report of it once the child has exited successfully. An exec refused with ETXTBSY (a
    /// file written a moment ago can still be open for writing in a child another test
    /// thread is forking) is tried again: a refused exec is no exec.
    pub fn exec(&self, form: ExecForm) -> Exec {
        let mut tries = 0;
        loop {
            match self.try_exec(form) {
                Ok(exec) => return exec,
                Err(errno) if errno == libc::ETXTBSY && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(errno) => panic!(
                    "exec form {}: the exec failed: {}",
                    form.name(),
                    std::io::Error::from_raw_os_error(errno)
                ),
            }
        }
    }

    fn try_exec(&self, form: ExecForm) -> Result<Exec, i32> {
        let path_str = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let true_path = path_str(&self.true_copy);
        let mut exec = Exec {
            form,
            pid: 0,
            exe: ExpectedExe::Exact(true_path.clone()),
            filename: None,
            sha256: self.true_sha256.clone(),
            fileless: false,
            deleted: Some(false),
            interpreter: None,
        };
        let pid = match form {
            ExecForm::AbsolutePath => {
                exec.filename = Some(true_path.clone());
                exec_path(None, &true_path)
            }
            ExecForm::RelativePath => {
                exec.filename = Some("./true".into());
                exec_path(Some(&path_str(&self.dir.join("bin"))), "./true")
            }
            ExecForm::FileSymlink => {
                let link = path_str(&self.dir.join("true-link"));
                exec.filename = Some(link.clone());
                exec_path(None, &link)
            }
            ExecForm::DirSymlink => {
                let through = path_str(&self.dir.join("bin-link/true"));
                exec.filename = Some(through.clone());
                exec_path(None, &through)
            }
            ExecForm::ProcSelfFd | ExecForm::ProcPidFd | ExecForm::DevFd => {
                let file = open(&self.true_copy, libc::O_RDONLY);
                let fd = file.as_raw_fd();
                match form {
                    ExecForm::ProcSelfFd => exec_path(None, &format!("/proc/self/fd/{fd}")),
                    ExecForm::DevFd => exec_path(None, &format!("/dev/fd/{fd}")),
                    _ => exec_proc_pid_fd(fd),
                }
            }
            ExecForm::ExecveatFd => exec_fd(open(&self.true_copy, libc::O_RDONLY).as_raw_fd()),
            ExecForm::ExecveatOPath => exec_fd(open(&self.true_copy, libc::O_PATH).as_raw_fd()),
            ExecForm::DeletedFile => {
                use std::os::unix::fs::PermissionsExt;
                let path = self.dir.join(crate::unique("deleted"));
                std::fs::write(&path, &self.true_bytes).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
                let file = open(&path, libc::O_RDONLY);
                std::fs::remove_file(&path).unwrap();
                exec.exe = ExpectedExe::Exact(format!("{} (deleted)", path_str(&path)));
                exec.deleted = Some(true);
                exec_fd(file.as_raw_fd())
            }
            ExecForm::MemfdNamedExecveat
            | ExecForm::MemfdNamedProcSelfFd
            | ExecForm::MemfdUnnamedExecveat
            | ExecForm::MemfdUnnamedProcSelfFd
            | ExecForm::MemfdSealedExecveat
            | ExecForm::MemfdSealedProcSelfFd => {
                let name = match form {
                    ExecForm::MemfdUnnamedExecveat | ExecForm::MemfdUnnamedProcSelfFd => {
                        String::new()
                    }
                    _ => crate::unique("picket-exec"),
                };
                let sealed = matches!(
                    form,
                    ExecForm::MemfdSealedExecveat | ExecForm::MemfdSealedProcSelfFd
                );
                let memfd = memfd_with(&name, &self.true_bytes, sealed);
                exec.exe = ExpectedExe::Prefix(format!("/memfd:{name}"));
                exec.fileless = true;
                exec.deleted = None;
                let fd = memfd.as_raw_fd();
                match form {
                    ExecForm::MemfdNamedExecveat
                    | ExecForm::MemfdUnnamedExecveat
                    | ExecForm::MemfdSealedExecveat => exec_fd(fd),
                    _ => exec_path(None, &format!("/proc/self/fd/{fd}")),
                }
            }
            ExecForm::Script => {
                let script = path_str(&self.script);
                exec.exe = ExpectedExe::Exact(script.clone());
                exec.filename = Some(script.clone());
                exec.sha256 = self.script_sha256.clone();
                exec.interpreter = Some(self.sh.clone());
                exec_path(None, &script)
            }
        }?;
        exec.pid = pid;
        Ok(exec)
    }
}

/// `path` opened with `flags` and O_CLOEXEC (the exec resolves it before closing it).
fn open(path: &std::path::Path, flags: libc::c_int) -> std::fs::File {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just opened and is owned by nothing else.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// A memfd named `name` holding `bytes`, close-on-exec; sealed against writes, shrinking and
/// growing (and further seals) if `sealed`.
fn memfd_with(name: &str, bytes: &[u8], sealed: bool) -> std::fs::File {
    use std::io::Write as _;
    use std::os::fd::FromRawFd;
    let c_name = CString::new(name).unwrap();
    let mut flags = libc::MFD_CLOEXEC;
    if sealed {
        flags |= libc::MFD_ALLOW_SEALING;
    }
    // SAFETY: plain syscall on a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c_name.as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut memfd = unsafe { std::fs::File::from_raw_fd(fd) };
    memfd.write_all(bytes).unwrap();
    if sealed {
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl(2) on our own memfd.
        let rc = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) };
        assert_eq!(rc, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    }
    memfd
}

/// The child's exit code after its exec call returned: 100 + errno.
fn exec_failed() -> i32 {
    // SAFETY: reads this thread's errno.
    EXEC_FAILED + unsafe { *libc::__errno_location() }.clamp(0, 99)
}

/// Reaps `pid`: its pid if it ran successfully, the errno of its failed exec otherwise.
fn reap_exec(pid: libc::pid_t) -> Result<u32, i32> {
    match wait_child(pid) {
        0 => Ok(pid as u32),
        code if (EXEC_FAILED..EXEC_FAILED + 100).contains(&code) => Err(code - EXEC_FAILED),
        code => panic!("the exec'd program exited with {code}"),
    }
}

/// `execve(path)` in a child (after `chdir(cwd)` if given), argv `[path]`, no environment.
fn exec_path(cwd: Option<&str>, path: &str) -> Result<u32, i32> {
    let cwd = cwd.map(|c| CString::new(c).unwrap());
    let c_path = CString::new(path).unwrap();
    let argv = [c_path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let pid = fork_child(|| {
        if let Some(cwd) = &cwd {
            // SAFETY: chdir(2) on a string prepared before the fork.
            if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
                return exec_failed();
            }
        }
        // SAFETY: execve(2) on data prepared before the fork.
        unsafe { libc::execve(c_path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        exec_failed()
    });
    reap_exec(pid)
}

/// `execveat(fd, "", AT_EMPTY_PATH)` in a child, argv `["exec-form"]`, no environment.
fn exec_fd(fd: libc::c_int) -> Result<u32, i32> {
    let argv = [c"exec-form".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let pid = fork_child(|| {
        // SAFETY: execveat(2) on data prepared before the fork.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        exec_failed()
    });
    reap_exec(pid)
}

/// `execve("/proc/PID/fd/N")` in a child, PID being its own pid (written into a buffer on the
/// child's stack: it may not allocate).
fn exec_proc_pid_fd(fd: libc::c_int) -> Result<u32, i32> {
    let argv = [c"exec-form".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let pid = fork_child(|| {
        let mut buf = [0u8; 64];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            buf[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        put(b"/proc/");
        // SAFETY: getpid(2) cannot fail.
        put_decimal(&mut put, unsafe { libc::getpid() } as u64);
        put(b"/fd/");
        put_decimal(&mut put, fd as u64);
        // `buf` is zeroed: the path is NUL-terminated.
        // SAFETY: execve(2) on a NUL-terminated path on the stack and data prepared before.
        unsafe { libc::execve(buf.as_ptr().cast(), argv.as_ptr(), envp.as_ptr()) };
        exec_failed()
    });
    reap_exec(pid)
}

/// Writes `n` in decimal through `put`, without allocating.
fn put_decimal(put: &mut impl FnMut(&[u8]), n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exec_form_runs_its_program() {
        let dir = crate::TempDir::new();
        let forms = ExecForms::new(dir.path());
        for form in ExecForm::ALL {
            let exec = forms.exec(form);
            assert!(exec.pid > 0, "{}", form.name());
            assert_eq!(exec.fileless, form.is_memfd(), "{}", form.name());
        }
    }

    #[test]
    fn a_memfd_name_matches_only_itself() {
        let named = ExpectedExe::Prefix("/memfd:a-1".into());
        assert!(named.matches("/memfd:a-1 (deleted)"));
        assert!(named.matches("/memfd:a-1"));
        assert!(!named.matches("/memfd:a-12 (deleted)"));
        let unnamed = ExpectedExe::Prefix("/memfd:".into());
        assert!(unnamed.matches("/memfd: (deleted)"));
        assert!(!unnamed.matches("/memfd:a-1 (deleted)"));
    }

    #[test]
    fn decimals_are_written_without_allocating() {
        let mut buf = Vec::new();
        for n in [0, 7, 10, 4_194_304, u64::MAX] {
            buf.clear();
            put_decimal(&mut |b: &[u8]| buf.extend_from_slice(b), n);
            assert_eq!(buf, n.to_string().as_bytes());
        }
    }
}
