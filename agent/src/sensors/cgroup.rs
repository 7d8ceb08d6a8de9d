//! Names of cgroups: the records carry the cgroup v2 id of the acting task, which is the inode
//! number of the cgroup's directory in the cgroup v2 hierarchy (on 32-bit kernels, the inode
//! number is the id's low half).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Directories looked at, at most, to name one cgroup (a hierarchy this big is not a device's).
const WALK_MAX: usize = 20_000;

/// Finds the names of cgroups by their id, remembering those it found (an id is never reused).
#[derive(Debug, Default)]
pub struct CgroupNames {
    /// The cgroup v2 mount, looked for on first use.
    root: Option<Option<PathBuf>>,
    known: HashMap<u64, String>,
    /// Ids looked for and not found: gone, or not in this hierarchy (not looked for again).
    unknown: std::collections::HashSet<u64>,
}

impl CgroupNames {
    /// The path of cgroup `id` from the root of the hierarchy (`/system.slice/x.service`, `/`
    /// for the root); `None` when no cgroup v2 hierarchy is mounted here or no cgroup has that
    /// id now (removed since).
    pub fn name(&mut self, id: u64) -> Option<String> {
        // 0: no task (work done in interrupt context).
        if id == 0 || self.unknown.contains(&id) {
            return None;
        }
        if let Some(name) = self.known.get(&id) {
            return Some(name.clone());
        }
        let root = self
            .root
            .get_or_insert_with(|| {
                let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
                mountinfo.lines().find_map(super::guard::cgroup2_mount)
            })
            .as_deref()?;
        let Some(name) = find(root, id) else {
            self.unknown.insert(id);
            return None;
        };
        self.known.insert(id, name.clone());
        Some(name)
    }
}

/// Walks the hierarchy under `root` breadth first for the directory whose inode is `id`.
fn find(root: &Path, id: u64) -> Option<String> {
    // On 32-bit kernels the inode number is the id's low half.
    let matches = |ino: u64| ino == id || ino == id & u64::from(u32::MAX);
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > WALK_MAX {
            return None;
        }
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        if matches(meta.ino()) {
            let rel = dir.strip_prefix(root).ok()?;
            return Some(format!("/{}", rel.to_string_lossy()));
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(entry.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_directory_by_its_inode() {
        let root = std::env::temp_dir().join(format!("picket-cgroup-names-{}", std::process::id()));
        let deep = root.join("system.slice/x.service");
        fs::create_dir_all(&deep).unwrap();
        let ino = fs::metadata(&deep).unwrap().ino();
        assert_eq!(find(&root, ino).as_deref(), Some("/system.slice/x.service"));
        assert_eq!(
            find(&root, fs::metadata(&root).unwrap().ino()).as_deref(),
            Some("/")
        );
        assert_eq!(find(&root, u64::MAX - 1), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
