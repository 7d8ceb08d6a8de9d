//! Picket's sensors: tracepoint programs that turn process, network and file activity into
//! records in one ring buffer, in the order the kernel saw them.
//!
//! Tracepoints only (no kprobes, fentry, LSM or BTF): their record layout is a stable interface,
//! and the agent reads it from tracefs at load time into [`LAYOUT`], so this one object serves
//! 32- and 64-bit kernels of any version the agent supports. Beside them, the network guard's
//! cgroup `sock_addr` programs (`guard.rs`), attached only when the agent enforces.
#![no_std]
#![no_main]

mod context;
mod file;
mod guard;
mod maps;
mod net;
mod privilege;
mod process;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}
