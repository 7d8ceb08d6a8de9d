//! End to end: a real `picket run` (real sensors in the running kernel) reporting to a real
//! Mosquitto over mutual TLS, with certificates made for the test. Alerts are caused by real
//! execs of binaries the policy does not list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    ops::Deref,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use picket_proto::{
    topic::{self, Channel},
    Alert, AlertKind, Heartbeat, PolicyOutcome, PolicyResult, Presence, Status,
};
use picket_test_support::bin::picket;
use picket_test_support::mosquitto::Options as BrokerOptions;
use picket_test_support::{
    hex, sha256_file, unique, Identity, Message, Mosquitto, Pki, Subscriber,
};

// The tests: delivery (order, formats, outages, restarts), policies over MQTT, the MQTT
// version (`auto` falling back to 3.1.1), a full spool, a damaged spool, sensor data lost.
// The fleet (PKI, broker, subscriber) and the agent they report from are in `support`.
mod data_loss;
mod delivery;
mod full_spool;
mod policy;
mod protocol;
mod support;
mod torn_spool;

use support::*;
