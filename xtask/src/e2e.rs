//! `cargo xtask e2e`: builds the agent and the backend, then runs the end-to-end tests (the
//! test targets of `picket-test-support`) against those very binaries, named to the tests in
//! `PICKET_BIN` and `PICKET_BACKEND_BIN`. The agent's tests load eBPF programs: run as root.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Builds, then runs `cargo test` on the end-to-end tests with `args` (for example
/// `--test sensors -- --test-threads=4`); returns the tests' exit code.
pub fn run(args: &[String]) -> Result<i32> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root(&cargo)?;
    let root = root.as_path();
    let built = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--locked", "--package", "picket-agent"])
        .args(["--package", "picket-backend", "--bins"])
        .status()
        .context("running cargo build")?;
    if !built.success() {
        bail!("building the agent and the backend failed ({built})");
    }
    let bin = target_dir(root).join("debug");
    // Cargo runs test binaries with LD_LIBRARY_PATH naming its target directories, which every
    // process a test starts would inherit: the agent rightly reports libraries taken from a
    // temporary location (a checkout under /tmp) as `loader_environment`. The test binaries
    // need no shared library of their own, so they run without it, as a device's programs do.
    let runner = "target.'cfg(all())'.runner = ['env', '-u', 'LD_LIBRARY_PATH']";
    let tested = Command::new(&cargo)
        .current_dir(root)
        .args(["test", "--locked", "--package", "picket-test-support"])
        .args(["--config", runner])
        .args(args)
        .env("PICKET_BIN", bin.join("picket"))
        .env("PICKET_BACKEND_BIN", bin.join("picket-backend"))
        .status()
        .context("running cargo test")?;
    Ok(tested.code().unwrap_or(1))
}

/// The workspace's directory, asked of cargo now (not where xtask was built: a checkout may
/// have moved since).
fn workspace_root(cargo: &std::ffi::OsStr) -> Result<PathBuf> {
    let out = Command::new(cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .context("running cargo locate-project")?;
    if !out.status.success() {
        bail!(
            "cargo locate-project: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let manifest = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("the workspace manifest has no directory")
}

/// Where cargo builds: `CARGO_TARGET_DIR` (relative to the current directory, as cargo reads
/// it) or the workspace's `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => env::current_dir()
            .map(|cwd| cwd.join(&dir))
            .unwrap_or_else(|_| PathBuf::from(dir)),
        None => root.join("target"),
    }
}
