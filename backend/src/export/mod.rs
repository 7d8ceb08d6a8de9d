//! Alerts in other formats: OCSF Detection Findings ([`ocsf`]), for the CLI and the HTTP API.

pub mod ocsf;
