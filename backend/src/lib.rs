//! The fleet backend as a library: what `picket-backend` (`src/main.rs`) runs. Documented in
//! `docs/BACKEND.md`.

#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod config;
pub mod ingest;
pub mod ocsf;
pub mod pgstore;
pub mod push;
pub mod query;
pub mod store;
pub mod tls;
