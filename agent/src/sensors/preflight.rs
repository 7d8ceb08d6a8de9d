//! Start-up checks that turn the usual reasons eBPF cannot load into sentences a user can act
//! on: not privileged, no `bpf()` syscall, a kernel too old for the ring buffer. On kernels that
//! charge BPF maps to `RLIMIT_MEMLOCK` (before 5.11) it raises that limit.

use std::fs;

use thiserror::Error;

/// Capabilities that allow loading tracing programs without being root (kernel >= 5.8).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why the sensors cannot start here.
#[derive(Debug, Error)]
pub enum PreflightError {
    #[error(
        "picket needs root, or the capabilities CAP_BPF and CAP_PERFMON (plus CAP_SYS_PTRACE \
         and CAP_DAC_READ_SEARCH to read other processes' /proc entries); run it with sudo, or \
         grant them: setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep $(which picket)"
    )]
    NotPrivileged,
    #[error(
        "the bpf() syscall is not available (ENOSYS): the kernel was built without \
         CONFIG_BPF_SYSCALL, or this is an emulator without eBPF (qemu-user); run on a kernel \
         with CONFIG_BPF_SYSCALL=y"
    )]
    NoBpfSyscall,
    #[error(
        "the bpf() syscall is refused ({0}): unprivileged or restricted by a security module \
         (check kernel.unprivileged_bpf_disabled and any seccomp profile around picket)"
    )]
    BpfRefused(nix::Error),
    #[error("kernel {0} is too old: picket's sensors need Linux 5.8 or later (BPF ring buffer)")]
    KernelTooOld(String),
}

/// Runs every check, first failure wins.
pub fn check() -> Result<(), PreflightError> {
    check_privileges()?;
    check_kernel_version()?;
    check_bpf_syscall()?;
    raise_memlock();
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`, whose usual 64 KiB refuses the
/// sensors' first map (`EPERM`): raise it there (root or `CAP_SYS_RESOURCE` may). Later kernels
/// charge the memory cgroup and ignore the limit.
fn raise_memlock() {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    if parse_version(&release).is_some_and(|v| v >= (5, 11)) {
        return;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `unlimited` is a valid rlimit that the kernel only reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return;
    }
    let error = std::io::Error::last_os_error();
    // Without the privilege to raise the hard limit, the soft one up to it.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes the one struct passed, which `setrlimit` then only reads.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) == 0
        }
    };
    let now = if raised {
        format!("{} bytes, its hard limit", limit.rlim_cur)
    } else {
        "unchanged".to_string()
    };
    log::warn!(
        "kernel {release} charges BPF maps to RLIMIT_MEMLOCK and raising it to unlimited failed \
         ({error}; now {now}): the sensors' maps may be refused with EPERM; run picket as root, \
         grant it CAP_SYS_RESOURCE, or raise the limit (systemd: LimitMEMLOCK=infinity)"
    );
}

fn check_privileges() -> Result<(), PreflightError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let caps = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged)
    }
}

/// `CapEff` from `/proc/self/status`.
fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn check_kernel_version() -> Result<(), PreflightError> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    match parse_version(&release) {
        Some(v) if v < (5, 8) => Err(PreflightError::KernelTooOld(release)),
        // Unparseable versions (vendor strings) get the benefit of the doubt.
        _ => Ok(()),
    }
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Calls `bpf()` with an invalid request: EINVAL means it exists and we may call it.
fn check_bpf_syscall() -> Result<(), PreflightError> {
    let attr = [0u8; 128];
    // BPF_MAP_CREATE with a zeroed attribute block is always invalid.
    // SAFETY: the kernel reads at most `attr.len()` bytes from `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0 as libc::c_int,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc >= 0 {
        // Should not happen; close what we were given.
        // SAFETY: `rc` is a new fd we own.
        unsafe { libc::close(rc as libc::c_int) };
        return Ok(());
    }
    match nix::errno::Errno::last() {
        nix::errno::Errno::ENOSYS => Err(PreflightError::NoBpfSyscall),
        e @ nix::errno::Errno::EPERM => Err(PreflightError::BpfRefused(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(parse_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_version("5.4.0-rt"), Some((5, 4)));
        assert_eq!(parse_version("vendor"), None);
    }
}
