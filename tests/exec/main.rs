//! End-to-end tests of what an exec is reported as: every form of exec (paths, symbolic
//! links, descriptors, `execveat`, deleted files, memfds, scripts), done by a process that
//! exits at once, must be resolved to the file that ran, with its SHA-256 and flags, every
//! time (`picket monitor`); and `picket run` must raise no alert for a burst of baselined
//! execs, and exactly the right one when a baselined binary is replaced or swapped.
//!
//! Runs as root, with the real eBPF sensors. The agent sees the whole machine, so events and
//! alerts are selected by the pids and paths the test itself caused. A test does all its
//! execs, then checks them all, and fails with a table of every miss rather than at the first.
//! The tests run one at a time (each agent would handle the others' execs too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod forms;
mod run;
mod support;
