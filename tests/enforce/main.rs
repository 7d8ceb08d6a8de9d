//! End-to-end tests of enforcement: with the signed policy in `enforce` mode, an exec of a file
//! the baseline does not allow fails with `EPERM` before it runs, a connection or bind the
//! policy does not allow is refused, and each raises a `blocked_*` alert with the process
//! context; in `alert` mode nothing is refused and each such decision is reported as
//! `would_block`; a killed agent leaves the machine able to run and connect.
//!
//! Runs as root, with the real eBPF sensors and fanotify. The tests run one at a time: an
//! enforcing agent judges the whole machine's execs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod exec;
mod net;
mod support;
mod update;
