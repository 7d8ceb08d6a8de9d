//! `picket baseline`: producing a baseline policy from what a device is or does.

mod config;
mod hasher;
pub mod learn;
pub mod scan;
mod walk;

/// `picket baseline ...`
#[derive(clap::Subcommand, Debug)]
pub enum BaselineCommand {
    /// Walk a root filesystem and write a policy listing its executables and protected files
    /// with their SHA-256.
    Scan(scan::ScanArgs),
    /// Run the sensors for a while and write what the device did as a draft policy.
    Learn(learn::LearnArgs),
}

/// Runs a `picket baseline` subcommand.
pub async fn run(command: BaselineCommand) -> anyhow::Result<()> {
    match command {
        BaselineCommand::Scan(args) => scan::run(args),
        BaselineCommand::Learn(args) => learn::run(args).await,
    }
}

/// Adds to `policy` the dynamic loader (`PT_INTERP`) of every ELF executable it lists, when it
/// does not list it already: the kernel opens the loader for the exec as it opens the program,
/// and enforcement judges both (without it, every dynamic program would be refused). Paths are
/// those of the device, found under `root` (`/` on the device itself, the image's root when
/// scanning one); the loader is listed by its canonical path on the device. Returns a note for
/// each loader added or that could not be.
pub fn add_loaders(
    policy: &mut picket_policy::Policy,
    root: &std::path::Path,
) -> std::collections::BTreeSet<String> {
    use std::collections::BTreeSet;
    let mut notes = BTreeSet::new();
    let listed: BTreeSet<String> = policy
        .executables
        .iter()
        .filter_map(|e| within(root, e.path.as_str()))
        .collect();
    let mut loaders: BTreeSet<String> = BTreeSet::new();
    for e in &policy.executables {
        let on_disk = root.join(e.path.as_str().trim_start_matches('/'));
        let Some(interp) = crate::enrich::hash::elf_interp_of(&on_disk) else {
            continue;
        };
        let Some(interp) = interp.to_str().and_then(|i| within(root, i)) else {
            notes.insert(format!(
                "the loader {} of {} is not on this system: not listed",
                interp.display(),
                e.path.as_str()
            ));
            continue;
        };
        if !listed.contains(&interp) {
            loaders.insert(interp);
        }
    }
    let mut hashes = crate::enrich::hash::HashCache::new(16);
    for loader in loaders {
        let on_disk = root.join(loader.trim_start_matches('/'));
        match (loader.parse(), hashes.sha256(&on_disk)) {
            (Ok(path), Ok(sha)) => {
                notes.insert(format!("listed {loader}: the loader of listed programs"));
                policy.executables.push(picket_policy::model::Executable {
                    path,
                    sha256: picket_policy::model::Sha256(sha),
                });
            }
            (_, Err(e)) => {
                notes.insert(format!("the loader {loader} could not be hashed: {e}"));
            }
            (Err(e), _) => {
                notes.insert(format!("the loader {loader} is not a policy path: {e}"));
            }
        }
    }
    notes
}

/// The canonical form of the device path `path` (absolute) of the system whose root is `root`:
/// symbolic links resolved inside that root (an absolute target is relative to it). `None`
/// when it does not resolve to a file there.
fn within(root: &std::path::Path, path: &str) -> Option<String> {
    use std::path::{Component, PathBuf};
    let mut resolved = PathBuf::from("/");
    let mut rest: Vec<std::ffi::OsString> = std::path::Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = rest.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&part);
        let on_disk = root.join(next.strip_prefix("/").ok()?);
        let meta = std::fs::symlink_metadata(&on_disk).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = std::fs::read_link(&on_disk).ok()?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            let parts: Vec<std::ffi::OsString> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_os_string()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            rest.extend(parts.into_iter().rev());
        } else {
            resolved = next;
        }
    }
    resolved.to_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_resolved_inside_the_root() {
        let root = std::env::temp_dir().join(format!("picket-within-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/ld-2.so"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/ld-2.so", root.join("usr/lib/ld.so.1")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("usr/lib/up")).unwrap();
        assert_eq!(
            within(&root, "/lib/ld.so.1").as_deref(),
            Some("/usr/lib/ld-2.so")
        );
        // `..` never climbs out of the root.
        assert_eq!(
            within(&root, "/usr/lib/up/usr/lib/ld-2.so").as_deref(),
            Some("/usr/lib/ld-2.so")
        );
        assert_eq!(within(&root, "/lib/missing"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_loader_of_a_listed_program_is_listed_once() {
        let mut policy = picket_policy::load_toml(
            r#"
[metadata]
name = "t"
device_class = "c"
serial = 1
created = "2026-12-07T10:00:00Z"
"#,
            "t.toml",
        )
        .unwrap();
        let true_sha = crate::enrich::hash::HashCache::new(1)
            .sha256(std::path::Path::new("/usr/bin/true"))
            .unwrap();
        for path in ["/usr/bin/true", "/usr/bin/false"] {
            policy.executables.push(picket_policy::model::Executable {
                path: path.parse().unwrap(),
                sha256: picket_policy::model::Sha256(true_sha),
            });
        }
        let interp = crate::enrich::hash::elf_interp_of(std::path::Path::new("/usr/bin/true"))
            .expect("a dynamically linked /usr/bin/true");
        let canonical = std::fs::canonicalize(interp).unwrap();
        let notes = add_loaders(&mut policy, std::path::Path::new("/"));
        let loaders: Vec<_> = policy
            .executables
            .iter()
            .filter(|e| std::path::Path::new(e.path.as_str()) == canonical)
            .collect();
        assert_eq!(loaders.len(), 1, "{notes:?}");
        let want = crate::enrich::hash::HashCache::new(1)
            .sha256(&canonical)
            .unwrap();
        assert_eq!(loaders[0].sha256.0, want);
        // Listed already: not again.
        assert!(add_loaders(&mut policy, std::path::Path::new("/")).is_empty());
    }
}
