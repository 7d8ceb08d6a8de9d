//! The binaries under test. `cargo xtask e2e` builds them, then runs the end-to-end tests with
//! their paths in `PICKET_BIN` and `PICKET_BACKEND_BIN`: a test never runs a binary older than
//! the code it tests.

use std::{path::Path, sync::OnceLock};

/// The agent, `picket`.
pub fn picket() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| from_env("PICKET_BIN"))
}

/// The backend, `picket-backend`.
pub fn backend() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| from_env("PICKET_BACKEND_BIN"))
}

fn from_env(var: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the end-to-end tests run the built binaries; run them with \
             `cargo xtask e2e [--test NAME] [-- TEST ARGS]`, which builds the binaries first"
        )
    });
    assert!(
        Path::new(&path).is_file(),
        "{var}={path}: no such file (run the tests with `cargo xtask e2e`)"
    );
    path
}
