//! Picket's agent: eBPF sensors watch process execution, network connections and file changes;
//! what they see is enriched, checked against the signed baseline policy, raised as alerts,
//! spooled on disk and reported to the fleet over MQTT/TLS.
//!
//! The modules follow the path of an event (docs/ARCHITECTURE.md has the map):
//!
//! | module | step |
//! | --- | --- |
//! | [`sensors`] | kernel → raw record: load and attach the eBPF programs, read and decode the ring buffer |
//! | [`enrich`] | raw record → event: process table, executable hashes, paths, sockets |
//! | [`detect`] | event → draft alert: policy checks, integrity scans, the sensor canary |
//! | [`enforce`] | exec / connect → allowed or refused before it happens: the exec guard (fanotify permission events), the network guard's modes |
//! | [`alert`] | draft → alert: sequence numbers, aggregation, sinks |
//! | [`spool`] | alert → disk: the crash-safe spool (format, recovery, compaction) |
//! | [`report`] | spool → MQTT/TLS: the link state machine, the event loop, the spool writer |
//! | [`cmd`] | the subcommands that put the steps together: run, monitor, policy, baseline |
//!
//! `main.rs` parses the command line and calls into [`cmd`].

pub mod alert;
pub mod cmd;
pub mod config;
pub mod counters;
pub mod detect;
pub mod enforce;
pub mod enrich;
pub mod paths;
pub mod report;
pub mod sensors;
pub mod spool;
