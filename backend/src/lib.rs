//! The fleet backend as a library: what `picket-backend` (`src/main.rs`) runs. Documented in
//! `docs/BACKEND.md`. An alert goes, in folders: [`ingest`] (the MQTT subscription, each
//! message checked or refused) → [`store`] (SQLite or PostgreSQL) → [`api`] (the HTTP JSON
//! API) and [`cmd`] (the commands: `serve`, the queries, `policy push`), with [`export`] (OCSF)
//! for both; [`broker`] configures and runs the managed Mosquitto.

#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod cmd;
pub mod config;
pub mod console;
pub mod export;
pub mod forward;
pub mod ingest;
pub mod store;
pub mod tls;
