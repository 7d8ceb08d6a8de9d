//! `picket baseline scan`: walks a root filesystem and writes a draft policy.
//!
//! Every executable file (any execute bit) becomes an `[[executable]]` with its SHA-256; every
//! regular file under a protected path, and every setuid or setgid executable, becomes a
//! `[[files.protected]]` with its SHA-256, owner, group and mode. Paths are recorded as the device
//! will see them (relative to `--root`), where they are: a protected path behind a directory
//! link (`/lib/systemd/system` on a merged-/usr system) is resolved inside the root and its
//! files recorded under their canonical path (`/usr/lib/systemd/system/...`), the form the agent
//! compares every event's path in. What cannot be recorded (unreadable, not UTF-8, ...) is
//! listed at the top of the output and on stderr, and does not fail the scan: a baseline of a
//! real rootfs always has a few such files, and the author decides what to do about them.
//!
//! The walk runs on one thread (it is dominated by metadata lookups); the hashing, which reads
//! every byte, runs on every CPU. See [`super::config`] for the configuration file.

use std::{
    fmt::Write as _,
    io::IsTerminal,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use picket_policy::{
    model::{Executable, FileMode, Metadata, ProtectedFile, Sha256, Timestamp},
    Policy,
};

use super::{
    config::ScanConfig,
    hasher::{self, mib, Hashed},
    walk::{self, Found, Rules, Skipped},
};

/// Arguments of `picket baseline scan`.
#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// Root of the filesystem to scan: `/` on a device, an image's rootfs directory on a build
    /// host. Paths are recorded relative to it, as they will be on the device.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// Scan configuration (protected paths, exclusions, metadata); see docs/POLICY.md.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where to write the policy (TOML).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// At most this many skipped entries are logged one by one; the output file lists them all.
const SKIPPED_LOGGED: usize = 20;

/// Runs the scan.
pub fn run(args: ScanArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = &args.root;
    let (config, rules, notes) = prepare(&args)?;
    let tty = std::io::stderr().is_terminal();

    let walked = walk_root(root, &rules, tty)?;
    let mut skipped = walked.skipped;
    skipped.extend(notes);

    let (results, totals) = hasher::hash_all(&walked.files, tty)?;

    let mut policy = draft_policy(&config, &walked.files, results, &mut skipped)?;
    // The loaders of the programs listed, even where the image does not mark them executable.
    for note in super::add_loaders(&mut policy, root) {
        log::info!("{note}");
    }
    let policy = picket_policy::canonicalize(policy)
        .map_err(|e| anyhow::anyhow!("the scanned policy is inconsistent: {e}"))?;
    skipped.sort();
    skipped.dedup();

    let out = &args.out;
    write_policy(out, &skipped, &policy)?;
    log_skipped(&skipped, out);
    log::info!(
        "scanned {}: wrote {} ({} executables, {} protected files); hashed {} files, {:.1} MiB in {:.2} s; {} skipped",
        root.display(),
        out.display(),
        policy.executables.len(),
        policy.files.protected.len(),
        totals.files,
        mib(totals.bytes),
        started.elapsed().as_secs_f64(),
        skipped.len()
    );
    Ok(())
}

/// Checks the scan root is a directory and loads the configuration and the walk's rules, the
/// protected paths resolved inside the root; also the notes about protected paths that will
/// protect nothing.
fn prepare(args: &ScanArgs) -> anyhow::Result<(ScanConfig, Rules, Vec<Skipped>)> {
    let root = &args.root;
    // The root itself may be a link (a mounted image under a stable name): follow that one.
    let meta = std::fs::metadata(root).with_context(|| format!("scan root {}", root.display()))?;
    if !meta.is_dir() {
        bail!("scan root {} is not a directory", root.display());
    }
    let config = match &args.config {
        Some(path) => ScanConfig::load(path)?,
        None => ScanConfig::default(),
    };
    let excluded = to_paths(config.excluded_paths()?);
    let (protected, notes) =
        walk::resolve_protected(root, &to_paths(config.protected_paths()?), &excluded);
    let rules = Rules {
        protected,
        excluded,
    };
    Ok((config, rules, notes))
}

/// Walks the root, drawing a progress line on a terminal.
fn walk_root(root: &Path, rules: &Rules, tty: bool) -> anyhow::Result<walk::Walked> {
    let mut last_drawn = Instant::now();
    let mut walk_progress = |entries: u64| {
        if tty && last_drawn.elapsed() >= Duration::from_millis(100) {
            last_drawn = Instant::now();
            eprint!("\rwalking: {entries} entries\x1b[K");
        }
    };
    walk::walk(root, rules, &mut walk_progress)
}

/// The canonical draft policy from what was hashed; files that could not be hashed go to
/// `skipped`, under every name they have.
fn draft_policy(
    config: &ScanConfig,
    files: &[Found],
    results: Vec<Result<Hashed, String>>,
    skipped: &mut Vec<Skipped>,
) -> anyhow::Result<Policy> {
    let mut policy = Policy {
        metadata: metadata(config)?,
        modes: Default::default(),
        executables: Vec::new(),
        executable_globs: Vec::new(),
        network: Default::default(),
        files: Default::default(),
        behaviour: Default::default(),
    };
    for (found, result) in files.iter().zip(results) {
        match result {
            Ok(hashed) => add_file(&mut policy, found, &hashed),
            Err(reason) => {
                for name in &found.names {
                    skipped.push(Skipped::new(Path::new(name.path.as_str()), reason.clone()));
                }
            }
        }
    }
    picket_policy::canonicalize(policy)
        .map_err(|e| anyhow::anyhow!("the scanned policy is inconsistent: {e}"))
}

/// Lists every name of one hashed file: as an executable if any execute bit is set, as a
/// protected file if under a protected path or setuid/setgid.
fn add_file(policy: &mut Policy, found: &Found, hashed: &Hashed) {
    let mode = hashed.meta.mode() & 0o7777;
    let executable = mode & 0o111 != 0;
    // A changed setuid/setgid bit, owner or group is a privilege change: protect those too.
    let privileged = executable && mode & 0o6000 != 0;
    let sha256 = Sha256(hashed.sha256);
    for name in &found.names {
        if executable {
            policy.executables.push(Executable {
                path: name.path.clone(),
                sha256,
            });
        }
        if name.protected || privileged {
            policy.files.protected.push(ProtectedFile {
                path: name.path.clone(),
                sha256,
                owner: Some(hashed.meta.uid()),
                group: Some(hashed.meta.gid()),
                mode: Some(FileMode(mode)),
            });
        }
    }
}

/// Writes the skipped list and the policy to `out`, after checking the text reads back as
/// exactly this policy.
fn write_policy(out: &Path, skipped: &[Skipped], policy: &Policy) -> anyhow::Result<()> {
    let text = format!("{}{}", header(skipped), picket_policy::to_toml(policy));
    // Cheap insurance: what is written must read back as exactly this policy.
    let reread = picket_policy::load_toml(&text, &out.display().to_string())
        .context("the scanned policy does not read back (a bug in picket)")?;
    if reread != *policy {
        bail!("the scanned policy reads back differently (a bug in picket)");
    }
    std::fs::write(out, &text).with_context(|| format!("writing the policy to {}", out.display()))
}

/// Logs the first [`SKIPPED_LOGGED`] skipped entries, and how many more `out` lists.
fn log_skipped(skipped: &[Skipped], out: &Path) {
    for s in skipped.iter().take(SKIPPED_LOGGED) {
        log::warn!("skipped: {}: {}", walk::display(&s.path), s.reason);
    }
    if skipped.len() > SKIPPED_LOGGED {
        log::warn!(
            "... and {} more skipped, all listed at the top of {}",
            skipped.len() - SKIPPED_LOGGED,
            out.display()
        );
    }
}

fn to_paths(paths: Vec<picket_policy::model::AbsPath>) -> Vec<PathBuf> {
    paths.iter().map(|p| PathBuf::from(p.as_str())).collect()
}

/// The comment block at the top of the output: what it is and what it does not list.
fn header(skipped: &[Skipped]) -> String {
    let mut s = String::from(
        "# Draft baseline written by `picket baseline scan`: review it before signing.\n",
    );
    if !skipped.is_empty() {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "# {} skipped (not listed below):", skipped.len());
        for k in skipped {
            let _ = writeln!(s, "# skipped: {}: {}", walk::display(&k.path), k.reason);
        }
    }
    s.push('\n');
    s
}

/// The policy's metadata: the configuration's, or the defaults.
fn metadata(config: &ScanConfig) -> anyhow::Result<Metadata> {
    let m = &config.metadata;
    let created = match &m.created {
        Some(t) => t.clone(),
        None => Timestamp::for_new_policy().map_err(|e| anyhow::anyhow!("creation time: {e}"))?,
    };
    Ok(Metadata {
        name: m.name.clone().unwrap_or_else(|| "baseline".into()),
        device_class: m.device_class.clone().unwrap_or_else(|| "unknown".into()),
        serial: m.serial.unwrap_or(1),
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lists_every_skipped_path_on_its_own_line() {
        let h = header(&[Skipped::new(
            Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/etc/a\nb")),
            "why",
        )]);
        assert!(h.contains("# skipped: /etc/a\\nb: why\n"), "{h}");
        assert!(h.lines().all(|l| l.is_empty() || l.starts_with('#')), "{h}");
    }
}
