//! Small eBPF programs and maps made with the raw `bpf()` system call: whether the kernel has
//! the map types, program types and helpers the agent uses (the programs are loaded, never
//! attached).

use super::*;

pub(super) const BPF_MAP_CREATE: libc::c_int = 0;
pub(super) const BPF_PROG_LOAD: libc::c_int = 5;
pub(super) const BPF_MAP_TYPE_RINGBUF: u32 = 27;
pub(super) const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
pub(super) const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub(super) const BPF_CGROUP_INET4_CONNECT: u32 = 10;

/// A helper a program calls, and how the probe calls it.
#[derive(Clone, Copy)]
pub(super) struct Helper {
    pub(super) name: &'static str,
    pub(super) id: i32,
    /// Takes a stack buffer and its size as its first two arguments.
    pub(super) buffer: bool,
}

pub(super) const fn helper(name: &'static str, id: i32, buffer: bool) -> Helper {
    Helper { name, id, buffer }
}

/// The helpers the sensors' tracepoint programs call (ebpf/src; ring buffer helpers come with
/// the ring buffer): a unit test keeps this list complete.
pub(super) const SENSOR_HELPERS: &[Helper] = &[
    helper("bpf_get_current_pid_tgid", 14, false),
    helper("bpf_get_current_uid_gid", 15, false),
    helper("bpf_get_current_comm", 16, true),
    helper("bpf_get_current_cgroup_id", 80, false),
    helper("bpf_send_signal", 109, false),
    helper("bpf_probe_read_user", 112, true),
    helper("bpf_probe_read_kernel", 113, true),
    helper("bpf_probe_read_user_str", 114, true),
    helper("bpf_probe_read_kernel_str", 115, true),
    helper("bpf_ktime_get_boot_ns", 125, false),
];

/// The helpers the network guard's sock_addr programs call to know the calling process.
pub(super) const GUARD_HELPERS: &[Helper] = &[
    helper("bpf_get_current_pid_tgid", 14, false),
    helper("bpf_get_current_uid_gid", 15, false),
    helper("bpf_get_current_comm", 16, true),
    helper("bpf_get_current_cgroup_id", 80, false),
    helper("bpf_ktime_get_boot_ns", 125, false),
];

/// One BPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Insn {
    pub(super) code: u8,
    pub(super) regs: u8,
    pub(super) off: i16,
    pub(super) imm: i32,
}

pub(super) const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    // The register nibbles follow the byte order's bitfield layout.
    let regs = if cfg!(target_endian = "little") {
        dst | (src << 4)
    } else {
        (dst << 4) | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}
pub(super) const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm) // BPF_ALU64 | BPF_MOV | BPF_K
}
pub(super) const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0) // BPF_ALU64 | BPF_MOV | BPF_X
}
pub(super) const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm) // BPF_ALU64 | BPF_ADD | BPF_K
}
pub(super) const fn call(id: i32) -> Insn {
    insn(0x85, 0, 0, 0, id) // BPF_JMP | BPF_CALL
}
pub(super) const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0) // BPF_JMP | BPF_EXIT
}

/// A program that calls each helper once and returns `ret`.
pub(super) fn calling(helpers: &[Helper], ret: i32) -> Vec<Insn> {
    let mut prog = Vec::new();
    for h in helpers {
        if h.buffer {
            // r1 = a 16-byte stack buffer, r2 = its size, r3 = an (unused) source address.
            prog.extend([
                mov_reg(1, 10),
                add_imm(1, -16),
                mov_imm(2, 16),
                mov_imm(3, 0),
            ]);
        } else {
            prog.push(mov_imm(1, 0));
        }
        prog.push(call(h.id));
    }
    prog.extend([mov_imm(0, ret), exit()]);
    prog
}

/// Loads a program calling `helpers`; on refusal, names the helpers the verifier did not know.
pub(super) fn helpers_probe(
    prog_type: u32,
    attach: u32,
    helpers: &[Helper],
    what: &str,
) -> Evidence {
    let names = || {
        helpers
            .iter()
            .map(|h| h.name.trim_start_matches("bpf_"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ret = i32::from(prog_type == BPF_PROG_TYPE_CGROUP_SOCK_ADDR);
    match prog_load(prog_type, attach, &calling(helpers, ret)) {
        Ok(_) => Evidence::present(format!("{what} program calling {} was loaded", names())),
        Err((e @ (Errno::EINVAL | Errno::EACCES), log)) => {
            let refused: Vec<&str> = helpers
                .iter()
                .filter(|h| log.contains(&format!("{}#{}", h.name, h.id)))
                .map(|h| h.name)
                .collect();
            let why = if refused.is_empty() {
                format!("{e}, verifier: {}", last_line(&log))
            } else {
                format!("{e}, not offered: {}", refused.join(", "))
            };
            Evidence::missing(format!(
                "{what} program calling the helpers was refused ({why})"
            ))
        }
        Err((e, _)) => Evidence::unknown(format!("loading {what} program: {e}")),
    }
}

pub(super) fn last_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no log)")
}

pub(super) fn put_u32(attr: &mut [u8], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}
pub(super) fn put_u64(attr: &mut [u8], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

/// `bpf(cmd, attr)`: the new descriptor, closed when dropped.
pub(super) fn bpf(cmd: libc::c_int, attr: &[u8; 128]) -> Result<OwnedFd, Errno> {
    // SAFETY: the kernel reads at most `attr.len()` bytes of `attr`, and any addresses in it
    // point to buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

/// `BPF_PROG_LOAD`: the program's descriptor, or the error and the verifier's log.
pub(super) fn prog_load(
    prog_type: u32,
    attach: u32,
    insns: &[Insn],
) -> Result<OwnedFd, (Errno, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    put_u32(&mut attr, 68, attach); // expected_attach_type
    bpf(BPF_PROG_LOAD, &attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        (e, String::from_utf8_lossy(&log[..end]).into_owned())
    })
}

/// `perf_event_open` of tracepoint `id` on CPU 0 for every process, as the agent attaches.
pub(super) fn perf_event_open_tracepoint(id: u64) -> Result<OwnedFd, Errno> {
    const PERF_TYPE_TRACEPOINT: u32 = 2;
    const PERF_ATTR_SIZE_VER0: u32 = 64;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, PERF_TYPE_TRACEPOINT);
    put_u32(&mut attr, 4, PERF_ATTR_SIZE_VER0);
    put_u64(&mut attr, 8, id);
    // SAFETY: the kernel reads `size` (64) bytes of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}
