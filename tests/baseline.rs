//! `picket baseline scan` end to end: the real binary scans a small rootfs built from real files
//! (hard links, symbolic links, setuid, FIFOs, names that are not UTF-8, unreadable files) and
//! the policy it writes must list exactly what a device would need, with the right hashes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fs,
    os::unix::{
        ffi::OsStrExt,
        fs::{symlink, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use picket_policy::{model::FileMode, Policy};
use picket_test_support::bin::picket;
use picket_test_support::sha256_file;

/// A fresh directory under /tmp, traversable by everyone (one test scans as `nobody`).
fn tempdir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "picket-baseline-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o755);
    dir
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `content` at `root/rel` with `mode`, creating directories (0755) on the way.
fn file(root: &Path, rel: &str, content: &[u8], mode: u32) -> PathBuf {
    let path = root.join(rel);
    mkdirs(path.parent().unwrap());
    fs::write(&path, content).unwrap();
    chmod(&path, mode);
    path
}

fn mkdirs(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut d = dir;
    // create_dir_all honours the umask; make every level traversable for the `nobody` test.
    while d.metadata().unwrap().permissions().mode() & 0o755 != 0o755 {
        chmod(d, 0o755);
        d = d.parent().unwrap();
    }
}

fn scan(root: &Path, config: Option<&Path>, out: &Path) -> Command {
    let mut cmd = Command::new(picket());
    cmd.args(["baseline", "scan", "--root"]).arg(root);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.arg("--out").arg(out);
    cmd.env("RUST_LOG", "info");
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn load(out: &Path) -> (String, Policy) {
    let text = fs::read_to_string(out).unwrap();
    let policy = picket_policy::load_toml(&text, &out.display().to_string()).unwrap();
    (text, policy)
}

fn executables(policy: &Policy) -> BTreeSet<&str> {
    policy.executables.iter().map(|e| e.path.as_str()).collect()
}

/// The rootfs of the main tests. Returns the root.
fn build_tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    mkdirs(&root);
    let tool = root.join("usr/bin/tool");
    mkdirs(tool.parent().unwrap());
    fs::copy("/bin/true", &tool).unwrap();
    chmod(&tool, 0o755);
    fs::hard_link(&tool, root.join("usr/bin/hardlink")).unwrap();
    symlink("tool", root.join("usr/bin/link")).unwrap();
    // A link out of the root: following it would scan the build host.
    symlink("/", root.join("host")).unwrap();
    // Merged /usr: /lib/firmware is really /usr/lib/firmware.
    file(&root, "usr/lib/firmware/fw.bin", b"firmware", 0o644);
    symlink("usr/lib", root.join("lib")).unwrap();
    file(
        &root,
        "usr/sbin/suid",
        b"#!/bin/sh\necho privileged\n",
        0o4755,
    );
    let config = file(&root, "etc/config", b"key = value\n", 0o644);
    std::os::unix::fs::chown(&config, Some(1000), Some(1001)).unwrap();
    file(&root, "etc/secret", b"hunter2\n", 0o600);
    file(&root, "etc/init.d/rcS", b"#!/bin/sh\nexit 0\n", 0o755);
    nix::unistd::mkfifo(
        &root.join("etc/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let bad = root.join(OsStr::from_bytes(b"etc/bad\xffname"));
    fs::write(&bad, b"x").unwrap();
    chmod(&bad, 0o644);
    let bad_dir = root.join(OsStr::from_bytes(b"opt/\xfe"));
    mkdirs(&bad_dir);
    fs::write(bad_dir.join("run"), b"#!/bin/sh\n").unwrap();
    chmod(&bad_dir.join("run"), 0o755);
    file(&root, "usr/share/doc.txt", b"documentation\n", 0o644);
    file(&root, "var/junk", b"#!/bin/sh\n", 0o755);
    file(&root, "proc/fake", b"#!/bin/sh\n", 0o755);
    root
}

#[test]
fn records_executables_and_protected_files_as_on_the_device() {
    let dir = tempdir("main");
    let root = build_tree(&dir);
    let cfg = write_scan_config(&dir);
    let out_path = dir.join("policy.toml");
    let out = scan(&root, Some(&cfg), &out_path).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "stderr: {err}");
    let (text, policy) = load(&out_path);

    assert_eq!(policy.metadata.name, "gateway");
    assert_eq!(policy.metadata.device_class, "acme-gw");
    assert_eq!(policy.metadata.serial, 7);
    assert_eq!(policy.metadata.created.to_string(), "2026-11-22T10:00:00Z");

    check_the_executables(&policy, &root, &text);
    check_the_protected_files(&policy, &root, &text);

    // What was left out, and why: at the top of the file and on stderr.
    check_what_was_skipped(&text, &err);
    fs::remove_dir_all(&dir).unwrap();
}

/// Writes `scan.toml` in `dir`: protected paths (one missing, one under a symbolic link),
/// /var excluded, and the metadata; returns its path.
fn write_scan_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("scan.toml");
    fs::write(
        &cfg,
        r#"
protected = ["/etc", "/opt/missing", "/lib/firmware"]
exclude = ["/var"]

[metadata]
name = "gateway"
device_class = "acme-gw"
serial = 7
created = "2026-11-22T10:00:00Z"
"#,
    )
    .unwrap();
    cfg
}

/// The executables are exactly those of the tree, each with the hash of its file under `root`.
fn check_the_executables(policy: &Policy, root: &Path, text: &str) {
    // Not the symlinks, not doc.txt, not the excluded /var or /proc, nothing of the host.
    assert_eq!(
        executables(policy),
        BTreeSet::from([
            "/etc/init.d/rcS",
            "/usr/bin/hardlink",
            "/usr/bin/tool",
            "/usr/sbin/suid"
        ]),
        "{text}"
    );
    let want = |path: &str| sha256_file(&root.join(path.trim_start_matches('/')));
    for e in &policy.executables {
        assert_eq!(
            e.sha256.to_string(),
            want(e.path.as_str()),
            "{}",
            e.path.as_str()
        );
    }
    let tool = policy
        .executables
        .iter()
        .find(|e| e.path.as_str() == "/usr/bin/tool")
        .unwrap();
    assert_eq!(tool.sha256.to_string(), sha256_file(Path::new("/bin/true")));
}

/// The protected files are those under /etc and the setuid binary, each with its owner,
/// group, mode and the hash of its file under `root`.
fn check_the_protected_files(policy: &Policy, root: &Path, text: &str) {
    let want = |path: &str| sha256_file(&root.join(path.trim_start_matches('/')));
    let protected: Vec<_> = policy
        .files
        .protected
        .iter()
        .map(|p| (p.path.as_str(), p.owner, p.group, p.mode))
        .collect();
    assert_eq!(
        protected,
        vec![
            ("/etc/config", Some(1000), Some(1001), Some(FileMode(0o644))),
            ("/etc/init.d/rcS", Some(0), Some(0), Some(FileMode(0o755))),
            ("/etc/secret", Some(0), Some(0), Some(FileMode(0o600))),
            // Protected as /lib/firmware, behind the /lib link: recorded where it is.
            (
                "/usr/lib/firmware/fw.bin",
                Some(0),
                Some(0),
                Some(FileMode(0o644))
            ),
            ("/usr/sbin/suid", Some(0), Some(0), Some(FileMode(0o4755))),
        ],
        "{text}"
    );
    for p in &policy.files.protected {
        assert_eq!(
            p.sha256.to_string(),
            want(p.path.as_str()),
            "{}",
            p.path.as_str()
        );
    }
}

/// The policy `text` and the scan's stderr `err` name the 3 paths left out and why; the
/// draft has its header and nothing of /var or the FIFO. The protected path behind a link is
/// not left out: the log says where it was recorded.
fn check_what_was_skipped(text: &str, err: &str) {
    for note in [
        "# skipped: /etc/bad\\xffname: name is not valid UTF-8 (policy paths are UTF-8)",
        "# skipped: /opt/\\xfe/run: name is not valid UTF-8 (policy paths are UTF-8)",
        "# skipped: /opt/missing: protected path does not exist under the scan root",
    ] {
        assert!(text.contains(note), "missing `{note}` in:\n{text}");
        assert!(
            err.contains(&note[2..]),
            "missing `{note}` in stderr: {err}"
        );
    }
    assert!(text.starts_with("# Draft baseline"), "{text}");
    assert!(text.contains("# 3 skipped"), "{text}");
    assert!(err.contains("3 skipped"), "{err}");
    assert!(!text.contains("# skipped: /lib/firmware"), "{text}");
    assert!(
        err.contains("protected path /lib/firmware is /usr/lib/firmware under the scan root"),
        "{err}"
    );
    assert!(!text.contains("junk") && !text.contains("fifo"), "{text}");
}

#[test]
fn defaults_protect_etc_and_walk_everything_but_pseudo_filesystems() {
    let dir = tempdir("defaults");
    let root = build_tree(&dir);
    let out_path = dir.join("policy.toml");
    let out = scan(&root, None, &out_path)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let (text, policy) = load(&out_path);
    assert_eq!(policy.metadata.name, "baseline");
    assert_eq!(policy.metadata.device_class, "unknown");
    assert_eq!(policy.metadata.serial, 1);
    assert_eq!(policy.metadata.created.to_string(), "2023-11-14T22:13:20Z");
    let exes = executables(&policy);
    assert!(exes.contains("/var/junk"), "{text}");
    assert!(
        !exes
            .iter()
            .any(|p| p.starts_with("/proc") || p.starts_with("/host")),
        "{text}"
    );
    assert!(
        policy
            .files
            .protected
            .iter()
            .any(|p| p.path.as_str() == "/etc/secret"),
        "{text}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_files_are_skipped_with_the_reason_and_the_scan_succeeds() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs the scan as nobody: it needs root (as every end-to-end test: cargo xtask e2e)"
    );
    let dir = tempdir("nobody");
    let root = dir.join("root");
    let ok = file(&root, "usr/bin/ok", b"#!/bin/sh\n", 0o755);
    file(&root, "usr/bin/exec-only", b"#!/bin/sh\n", 0o711);
    file(&root, "etc/unreadable", b"secret\n", 0o000);
    file(&root, "etc/private/key", b"secret\n", 0o644);
    chmod(&root.join("etc/private"), 0o700);
    let outdir = dir.join("out");
    mkdirs(&outdir);
    std::os::unix::fs::chown(&outdir, Some(65534), Some(65534)).unwrap();
    let out_path = outdir.join("policy.toml");

    let out = scan(&root, None, &out_path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "stderr: {err}");
    let (text, policy) = load(&out_path);
    assert_eq!(
        executables(&policy),
        BTreeSet::from(["/usr/bin/ok"]),
        "{text}"
    );
    assert_eq!(policy.executables[0].sha256.to_string(), sha256_file(&ok));
    for path in ["/etc/unreadable", "/usr/bin/exec-only", "/etc/private"] {
        let note = text
            .lines()
            .find(|l| l.starts_with(&format!("# skipped: {path}: ")))
            .unwrap_or_else(|| panic!("{path} not noted in:\n{text}"));
        assert!(note.contains("Permission denied"), "{note}");
        assert!(err.contains(&note[2..]), "stderr: {err}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_root_is_named() {
    let dir = tempdir("missing");
    let out = scan(Path::new("/nonexistent/rootfs"), None, &dir.join("p.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/rootfs"), "stderr: {err}");
    assert!(err.contains("No such file"), "stderr: {err}");

    let not_dir = file(&dir, "plain", b"", 0o644);
    let out = scan(&not_dir, None, &dir.join("p.toml")).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a directory"),
        "stderr: {}",
        stderr(&out)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_config_is_refused_with_its_name_and_line() {
    let dir = tempdir("badcfg");
    let root = dir.join("root");
    mkdirs(&root);
    let cfg = file(
        &dir,
        "scan.toml",
        b"protected = [\"/etc\"]\nexclud = [\"/var\"]\n",
        0o644,
    );
    let out = scan(&root, Some(&cfg), &dir.join("p.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&cfg.display().to_string()), "stderr: {err}");
    assert!(err.contains("line 2"), "stderr: {err}");
    assert!(err.contains("unknown field `exclud`"), "stderr: {err}");
    assert!(!dir.join("p.toml").exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unwritable_output_is_named() {
    let dir = tempdir("unwritable");
    let root = dir.join("root");
    mkdirs(&root);
    let out_path = dir.join("no/such/dir/policy.toml");
    let out = scan(&root, None, &out_path).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&out_path.display().to_string()),
        "stderr: {err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}
