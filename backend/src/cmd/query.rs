//! The query commands (`devices`, `alerts`, `gaps`, `presence`, `refused`, `policy results`):
//! read the
//! store, print a table ([`super::tables`]) or JSON.

use std::io::Write;
use std::path::Path;

use crate::config::Config;
use crate::export::ocsf;
use crate::store::{self, AlertFilter, Store};

use super::tables;

/// The store the query commands read (the SQLite database `db` if given, else the one of the
/// configuration), and the configuration (its defaults when only `db` is given).
pub fn open(config: Option<&Path>, db: Option<&Path>) -> anyhow::Result<(Box<dyn Store>, Config)> {
    let config = if db.is_some() && config.is_none() {
        None
    } else {
        super::load_config(config, true)?
    };
    let config = match config {
        Some(c) => c,
        None => Config::parse("")?,
    };
    let store = store::open(&config.store, db, false)?;
    Ok((store, config))
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// How the alerts are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertFormat {
    Table,
    Json,
    /// One JSON array of OCSF Detection Findings.
    Ocsf,
}

pub fn devices(store: &mut dyn Store, config: &Config, json: bool) -> anyhow::Result<()> {
    let devices = store.devices(crate::ingest::now_ms(), config.devices.heartbeat_timeout)?;
    if json {
        print_json(&devices)
    } else {
        print!("{}", tables::devices_table(&devices));
        Ok(())
    }
}

pub fn alerts(
    store: &mut dyn Store,
    filter: &AlertFilter,
    format: AlertFormat,
) -> anyhow::Result<()> {
    let alerts = store.alerts(filter)?;
    match format {
        AlertFormat::Ocsf => print_json(&alerts.iter().map(ocsf::finding).collect::<Vec<_>>()),
        AlertFormat::Json => print_json(&alerts),
        AlertFormat::Table => {
            print!("{}", tables::alerts_table(&alerts));
            Ok(())
        }
    }
}

pub fn gaps(store: &mut dyn Store, device: Option<&str>, json: bool) -> anyhow::Result<()> {
    let gaps = store.gaps(device)?;
    if json {
        print_json(&gaps)
    } else {
        print!("{}", tables::gaps_table(&gaps));
        Ok(())
    }
}

pub fn presence(
    store: &mut dyn Store,
    device: Option<&str>,
    limit: u64,
    json: bool,
) -> anyhow::Result<()> {
    let changes = store.presence_changes(device, limit)?;
    if json {
        print_json(&changes)
    } else {
        print!("{}", tables::presence_table(&changes));
        Ok(())
    }
}

pub fn refused(store: &mut dyn Store, json: bool) -> anyhow::Result<()> {
    let refused = store.refused()?;
    if json {
        print_json(&refused)
    } else {
        print!("{}", tables::refused_table(&refused));
        Ok(())
    }
}

pub fn policy_results(
    store: &mut dyn Store,
    device: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let results = store.policy_results(device)?;
    if json {
        print_json(&results)
    } else {
        print!("{}", tables::policy_results_table(&results));
        Ok(())
    }
}
