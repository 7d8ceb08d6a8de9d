//! The scan configuration: `picket baseline scan --config scan.toml`.
//!
//! Every key is optional; without a file (or with an empty one) the scan protects `/etc` and
//! names the policy `baseline` for device class `unknown`, serial 1.
//!
//! ```toml
//! # Top-level keys come first: in TOML, keys written after a [table] header belong to it.
//!
//! # Directories or files (as on the device) whose regular files are recorded as
//! # [[files.protected]] with their SHA-256, owner, group and mode. Default: ["/etc"].
//! # An empty list protects nothing (executables are still recorded).
//! protected = ["/etc", "/opt/app/config"]
//!
//! # Directories or files (as on the device) that are not walked at all. /proc, /sys, /dev,
//! # /run and /tmp are never walked, whatever this says. An exclusion wins over `protected`.
//! exclude = ["/var", "/home"]
//!
//! [metadata]
//! name = "gateway"            # default "baseline"
//! device_class = "acme-gw"    # default "unknown"
//! serial = 7                  # default 1
//! created = "2026-11-22T10:00:00Z"  # default: $SOURCE_DATE_EPOCH if set, else now (UTC)
//! ```
//!
//! Unknown keys are refused with their line and column, as in a policy: a misspelt
//! `exclude` must not silently walk a tree the author meant to leave out.

use std::path::Path;

use anyhow::Context;
use picket_policy::model::{AbsPath, Timestamp};
use serde::Deserialize;

/// Directories never walked: pseudo filesystems and volatile state, not part of the image.
pub const ALWAYS_EXCLUDED: [&str; 5] = ["/proc", "/sys", "/dev", "/run", "/tmp"];

/// What is protected when the configuration does not say.
pub const DEFAULT_PROTECTED: [&str; 1] = ["/etc"];

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    /// `None` (key absent) means [`DEFAULT_PROTECTED`]; `Some(vec![])` protects nothing.
    #[serde(default)]
    pub protected: Option<Vec<AbsPath>>,
    #[serde(default)]
    pub exclude: Vec<AbsPath>,
    #[serde(default)]
    pub metadata: MetadataConfig,
}

/// `[metadata]` of the policy to write; absent keys take the documented defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    pub name: Option<String>,
    pub device_class: Option<String>,
    pub serial: Option<u64>,
    pub created: Option<Timestamp>,
}

impl ScanConfig {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scan config {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` (the file name) prefixes any error.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| {
            let message = e.to_string();
            // The classic TOML trap: top-level keys written after `[metadata]` land in it.
            let hint = if e.message().contains("unknown field `protected`")
                || e.message().contains("unknown field `exclude`")
            {
                "\n(`protected` and `exclude` are top-level keys: write them before [metadata])"
            } else {
                ""
            };
            anyhow::anyhow!("{origin}: {}{hint}", message.trim_end())
        })
    }

    /// The protected paths in effect.
    pub fn protected_paths(&self) -> anyhow::Result<Vec<AbsPath>> {
        match &self.protected {
            Some(paths) => Ok(paths.clone()),
            None => DEFAULT_PROTECTED
                .iter()
                .map(|p| p.parse().map_err(anyhow::Error::msg))
                .collect(),
        }
    }

    /// The excluded paths in effect: the configured ones and [`ALWAYS_EXCLUDED`].
    pub fn excluded_paths(&self) -> anyhow::Result<Vec<AbsPath>> {
        let mut paths = self.exclude.clone();
        for p in ALWAYS_EXCLUDED {
            paths.push(p.parse().map_err(anyhow::Error::msg)?);
        }
        paths.sort();
        paths.dedup();
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let c = ScanConfig::parse("", "c.toml").unwrap();
        let protected = c.protected_paths().unwrap();
        assert_eq!(protected.len(), 1);
        assert_eq!(protected[0].as_str(), "/etc");
        assert_eq!(c.excluded_paths().unwrap().len(), ALWAYS_EXCLUDED.len());
        let c = ScanConfig::parse("protected = []\nexclude = [\"/var\"]", "c.toml").unwrap();
        assert!(c.protected_paths().unwrap().is_empty());
        assert!(c
            .excluded_paths()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == "/var"));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err = ScanConfig::parse("[metadata]\nname = \"x\"\nnmae = \"y\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml: "), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("unknown field `nmae`"), "{err}");
        let err = ScanConfig::parse("protected = [\"etc\"]", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not absolute"), "{err}");
    }

    #[test]
    fn top_level_keys_after_a_table_get_a_hint() {
        let err = ScanConfig::parse("[metadata]\nname = \"x\"\nexclude = [\"/var\"]\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("before [metadata]"), "{err}");
    }
}
