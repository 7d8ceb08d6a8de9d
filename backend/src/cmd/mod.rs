//! The commands of `picket-backend` (its arguments are parsed in `main.rs`): `serve`
//! ([`serve`]), the queries ([`query`], printed by [`tables`]), `policy push` ([`push`]) and
//! the users of the HTTP API ([`user`]).

pub mod push;
pub mod query;
pub mod serve;
pub mod tables;
pub mod user;

use std::path::Path;

use crate::config::Config;

/// The configuration file when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/picket-backend/backend.toml";

/// The configuration `path`, else [`DEFAULT_CONFIG`] if it exists or `required` (then its
/// absence is an error).
pub fn load_config(path: Option<&Path>, required: bool) -> anyhow::Result<Option<Config>> {
    match path {
        Some(p) => Config::load(p).map(Some),
        None if required || Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG)).map(Some)
        }
        None => Ok(None),
    }
}
