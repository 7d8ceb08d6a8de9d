//! SHA-256 of executed files, cached by (device, inode, size, ctime) so a binary is hashed once
//! until it changes. Any write to a file changes its ctime (which no user can set back), so a
//! stale hash is not served, short of a same-size rewrite within one tick of the coarse clock
//! that stamps files.
//! The same read also notes a script's `#!` interpreter and an ELF program's interpreter
//! (`PT_INTERP`, the dynamic loader).

use std::{
    collections::{HashMap, VecDeque},
    fs::{File, Metadata},
    io::{self, Read},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use ring::digest::{Context, SHA256};

/// Files larger than this are not hashed (reported as such): hashing them would stall the event
/// path for too long.
pub const MAX_HASHED_BYTES: u64 = 256 << 20;

/// What identifies one version of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: i64,
    ctime_nsec: i64,
}

/// What reading a file once tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub sha256: [u8; 32],
    /// The interpreter named on a `#!` first line, for scripts.
    pub shebang: Option<PathBuf>,
    /// The program interpreter (`PT_INTERP`) of a dynamically linked ELF executable.
    pub elf_interp: Option<PathBuf>,
}

impl Digest {
    /// What the kernel opens next when it executes this file: a script's interpreter or an
    /// ELF program's loader.
    pub fn interpreter(&self) -> Option<&Path> {
        self.shebang.as_deref().or(self.elf_interp.as_deref())
    }
}

/// Longest `#!` line considered (the kernel's own limit is 256 bytes).
const SHEBANG_MAX: usize = 256;

/// Bytes of a file's start kept to find its interpreter: the ELF program headers and the
/// `PT_INTERP` string sit within the first page in every linker's output.
const HEAD_MAX: usize = 4096;

/// A bounded cache of file digests. Evicts the oldest entry when full.
pub struct HashCache {
    entries: HashMap<FileKey, Digest>,
    order: VecDeque<FileKey>,
    capacity: usize,
    hits: u64,
    misses: u64,
}

impl HashCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity.min(1024)),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            hits: 0,
            misses: 0,
        }
    }

    /// The digest of the file at `path` (which may be a `/proc/PID/exe` link: it is followed to
    /// the very inode the process runs, even if deleted or a memfd).
    ///
    /// A cached file costs one `stat`; the file is opened only when its digest is not cached.
    pub fn digest(&mut self, path: &Path) -> io::Result<Digest> {
        let key = checked_key(&std::fs::metadata(path)?)?;
        if let Some(digest) = self.entries.get(&key) {
            self.hits += 1;
            return Ok(digest.clone());
        }
        // Without blocking: the path may have been swapped for a FIFO or a device since the
        // `stat`, whose open would wait (for a writer, a carrier) and hold up every event.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        // The key of what was opened: the file may have changed since the `stat` (and the
        // check refuses anything but a regular file).
        let key = checked_key(&file.metadata()?)?;
        if let Some(digest) = self.entries.get(&key) {
            self.hits += 1;
            return Ok(digest.clone());
        }
        self.misses += 1;
        let digest = read_digest(&mut file)?;
        self.insert(key, &digest);
        Ok(digest)
    }

    /// The digest of the open `file` (`meta` is its `fstat`), read from its start whatever its
    /// offset: for a descriptor of the very file an exec ran. A file written while it is read
    /// gives an error rather than a digest of neither version.
    pub fn digest_file(&mut self, file: &File, meta: &Metadata) -> io::Result<Digest> {
        if let Some(digest) = self.cached(meta)? {
            return Ok(digest);
        }
        let digest = digest_of_file(file, meta)?;
        self.store(meta, &digest);
        Ok(digest)
    }

    /// The digest of the file whose `fstat` is `meta`, if cached (counted as a hit or miss);
    /// an error for a file that is not hashed (not regular, too large).
    pub fn cached(&mut self, meta: &Metadata) -> io::Result<Option<Digest>> {
        let key = checked_key(meta)?;
        let found = self.entries.get(&key).cloned();
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        Ok(found)
    }

    /// Keeps `digest` of the file whose `fstat` (before it was read) is `meta`.
    pub fn store(&mut self, meta: &Metadata, digest: &Digest) {
        if let Ok(key) = checked_key(meta) {
            self.insert(key, digest);
        }
    }

    fn insert(&mut self, key: FileKey, digest: &Digest) {
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
        if self.entries.insert(key, digest.clone()).is_none() {
            self.order.push_back(key);
        }
    }

    /// The SHA-256 of the file at `path`.
    pub fn sha256(&mut self, path: &Path) -> io::Result<[u8; 32]> {
        self.digest(path).map(|d| d.sha256)
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

/// The digest of the open `file` (`meta` is its `fstat`), read from its start whatever its
/// offset, without a cache. A file written while it is read gives an error rather than a
/// digest of neither version.
pub fn digest_of_file(file: &File, meta: &Metadata) -> io::Result<Digest> {
    checked_key(meta)?;
    // Renaming a file changes its ctime, not its content: what would make this digest of
    // neither version is a write, which changes the modification time or the size.
    let content = |m: &Metadata| (m.mtime(), m.mtime_nsec(), m.len());
    let digest = read_digest(&mut ReadFrom { file, at: 0 })?;
    if content(&file.metadata()?) != content(meta) {
        return Err(io::Error::other("the file was written while it was hashed"));
    }
    Ok(digest)
}

/// Reads a file from an offset of its own, whatever the descriptor's.
struct ReadFrom<'a> {
    file: &'a File,
    at: u64,
}

impl Read for ReadFrom<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The cache key of a file, if it is one that is hashed.
fn checked_key(meta: &std::fs::Metadata) -> io::Result<FileKey> {
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_HASHED_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_HASHED_BYTES} bytes, not hashed"
        )));
    }
    Ok(FileKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        ctime: meta.ctime(),
        ctime_nsec: meta.ctime_nsec(),
    })
}

/// SHA-256 of everything `reader` yields, and the `#!` interpreter its first bytes name.
fn read_digest(reader: &mut impl Read) -> io::Result<Digest> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut head: Vec<u8> = Vec::new();
    let sha256 = sha256_chunks(reader, &mut buf, |chunk| {
        if head.len() < HEAD_MAX {
            let take = chunk.len().min(HEAD_MAX - head.len());
            head.extend_from_slice(&chunk[..take]);
        }
    })?;
    Ok(Digest {
        sha256,
        shebang: shebang(&head[..head.len().min(SHEBANG_MAX)]),
        elf_interp: elf_interp(&head),
    })
}

/// The `PT_INTERP` path of the ELF file at `path`, if it has one (read from its first page).
pub fn elf_interp_of(path: &Path) -> Option<PathBuf> {
    let mut head = vec![0u8; HEAD_MAX];
    let mut file = File::open(path).ok()?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    elf_interp(&head[..n])
}

/// The `PT_INTERP` path of an ELF file whose first bytes are `head` (32 or 64 bits, either byte
/// order), if it has one within them.
fn elf_interp(head: &[u8]) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    if head.get(..4)? != b"\x7fELF" {
        return None;
    }
    let wide = match head.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = *head.get(5)? == 2;
    let int = |at: usize, len: usize| -> Option<u64> {
        let b = head.get(at..at.checked_add(len)?)?;
        Some(b.iter().enumerate().fold(0u64, |v, (i, &x)| {
            let shift = if big { (len - 1 - i) * 8 } else { i * 8 };
            v | (u64::from(x) << shift)
        }))
    };
    let word = if wide { 8 } else { 4 };
    let (phoff, phentsize, phnum) = if wide {
        (int(32, 8)?, int(54, 2)?, int(56, 2)?)
    } else {
        (int(28, 4)?, int(42, 2)?, int(44, 2)?)
    };
    for i in 0..phnum.min(64) {
        let ph = usize::try_from(phoff.checked_add(i.checked_mul(phentsize)?)?).ok()?;
        if int(ph, 4)? != u64::from(PT_INTERP) {
            continue;
        }
        // p_offset follows p_type (and p_flags, in 64-bit headers); p_filesz is 2 words on.
        let (offset, size) = if wide {
            (int(ph + 8, word)?, int(ph + 32, word)?)
        } else {
            (int(ph + 4, word)?, int(ph + 16, word)?)
        };
        let start = usize::try_from(offset).ok()?;
        let bytes = head.get(start..start.checked_add(usize::try_from(size).ok()?)?)?;
        let name = bytes.split(|&b| b == 0).next()?;
        return (!name.is_empty()).then(|| crate::paths::from_bytes(name));
    }
    None
}

/// SHA-256 of everything `reader` yields, read through `buf`; `seen` gets each chunk too.
pub fn sha256_chunks(
    reader: &mut impl Read,
    buf: &mut [u8],
    mut seen: impl FnMut(&[u8]),
) -> io::Result<[u8; 32]> {
    let mut ctx = Context::new(&SHA256);
    loop {
        match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                seen(&buf[..n]);
                ctx.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// The interpreter of a `#!` line: its first word, as the kernel takes it.
fn shebang(head: &[u8]) -> Option<PathBuf> {
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let interpreter = line
        .split(|&b| b == b' ' || b == b'\t')
        .find(|word| !word.is_empty())?;
    Some(crate::paths::from_bytes(interpreter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hashes_and_rehashes_only_after_a_change() {
        let dir = std::env::temp_dir().join(format!("picket-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"abc").unwrap();
        let mut cache = HashCache::new(8);
        let first = cache.sha256(&path).unwrap();
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            crate::paths::hex(&first),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(cache.sha256(&path).unwrap(), first);
        assert_eq!(cache.stats(), (1, 1));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"d").unwrap();
        drop(f);
        let second = cache.sha256(&path).unwrap();
        assert_ne!(second, first);
        assert_eq!(cache.stats(), (1, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The digest of `path` as coreutils' `sha256sum` gives it.
    fn sha256sum(path: &Path) -> String {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("sha256sum runs");
        assert!(out.status.success(), "sha256sum {}", path.display());
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }

    #[test]
    fn digests_equal_sha256sum_on_real_files() {
        let dir = std::env::temp_dir().join(format!("picket-hash-real-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Crosses the 64 KiB read buffer and ends mid-block: 16 MiB + 1 MiB + 12345 bytes.
        let big = dir.join("big");
        let bytes: Vec<u8> = (0..(17 << 20) + 12_345u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&big, &bytes).unwrap();
        // And this test's own executable, a real binary of several MiB.
        let me = std::env::current_exe().unwrap();
        for path in [big.as_path(), me.as_path()] {
            let file = File::open(path).unwrap();
            let meta = file.metadata().unwrap();
            let digest = digest_of_file(&file, &meta).unwrap();
            assert_eq!(
                crate::paths::hex(&digest.sha256),
                sha256sum(path),
                "{}",
                path.display()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_the_interpreter_of_scripts_only() {
        assert_eq!(
            shebang(b"#!/bin/sh\nexit 0\n"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            shebang(b"#! \t/usr/bin/env python3\n"),
            Some(PathBuf::from("/usr/bin/env"))
        );
        assert_eq!(shebang(b"\x7fELF\x02\x01"), None);
        assert_eq!(shebang(b"#!\n"), None);
    }

    #[test]
    fn reads_the_loader_of_dynamic_elf_programs() {
        // This test's own executable is linked like the agent's: dynamic on glibc targets.
        let me = std::fs::read("/proc/self/exe").unwrap();
        let head = &me[..me.len().min(HEAD_MAX)];
        #[cfg(target_env = "gnu")]
        {
            let interp = elf_interp(head).expect("PT_INTERP of a glibc program");
            assert!(
                interp.to_string_lossy().contains("ld-linux"),
                "{}",
                interp.display()
            );
        }
        let _ = head;
        assert_eq!(elf_interp(b"#!/bin/sh\n"), None);
        assert_eq!(elf_interp(b"\x7fELF\x02\x01\x01"), None);
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(elf_interp(&sh[..sh.len().min(HEAD_MAX)]).is_some());
    }

    #[test]
    fn digests_an_open_file_from_its_start() {
        let dir = std::env::temp_dir().join(format!("picket-hash-fd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"abc").unwrap();
        let mut file = File::open(&path).unwrap();
        let mut skip = [0u8; 2];
        file.read_exact(&mut skip).unwrap();
        let mut cache = HashCache::new(8);
        let meta = file.metadata().unwrap();
        let d = cache.digest_file(&file, &meta).unwrap();
        assert_eq!(d.sha256, cache.sha256(&path).unwrap());
        assert_eq!(cache.stats(), (1, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn evicts_when_full() {
        let dir = std::env::temp_dir().join(format!("picket-hash-evict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cache = HashCache::new(2);
        for i in 0..3 {
            let p = dir.join(i.to_string());
            std::fs::write(&p, i.to_string()).unwrap();
            cache.sha256(&p).unwrap();
        }
        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.order.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
