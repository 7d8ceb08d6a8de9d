use super::*;

fn seen(path: &str, shebang: Option<&str>, elf_interp: Option<&str>) -> Seen {
    Seen {
        path: PathBuf::from(path),
        dev: 1,
        ino: path.len() as u64,
        ctime_ns: 0,
        mtime_ns: 0,
        size: 1,
        nlink: u64::from(!path.ends_with(" (deleted)")),
        digest: Ok(Digest {
            sha256: [path.len() as u8; 32],
            shebang: shebang.map(PathBuf::from),
            elf_interp: elf_interp.map(PathBuf::from),
        }),
    }
}

/// Files with these names exist on no machine: `canonical` leaves them as they are.
const LD: &str = "/nonexistent/ld.so";
const SH: &str = "/nonexistent/sh";

fn files(pid: u32, queue: Vec<Seen>) -> ExecFiles {
    let mut f = ExecFiles::new(None);
    f.total = queue.len();
    f.pending.insert(pid, queue.into());
    f
}

fn left(f: &ExecFiles, pid: u32) -> Vec<String> {
    let q = f.pending.get(&pid).map(|q| q.iter().collect::<Vec<_>>());
    q.unwrap_or_default()
        .iter()
        .map(|s| s.path.display().to_string())
        .collect()
}

#[test]
fn takes_the_named_file_and_its_loader_and_drops_failed_attempts() {
    let mut hashes = HashCache::new(4);
    let mut f = files(
        7,
        vec![
            seen("/nonexistent/too-many-args", None, Some(LD)),
            seen("/nonexistent/prog", None, Some(LD)),
            seen(LD, None, None),
            seen("/nonexistent/next", None, None),
        ],
    );
    let ran = f
        .take(
            7,
            Name::Path(Path::new("/nonexistent/prog")),
            0,
            &mut hashes,
        )
        .unwrap();
    assert_eq!(ran.path, Path::new("/nonexistent/prog"));
    assert_eq!(ran.interpreter, None);
    assert_eq!(left(&f, 7), ["/nonexistent/next"]);
    assert_eq!(f.total, 1);
    assert!(f.loaders.contains(Path::new(LD)));
}

#[test]
fn a_script_takes_its_interpreter_and_the_interpreters_loader() {
    let mut hashes = HashCache::new(4);
    let mut f = files(
        3,
        vec![
            seen("/nonexistent/s.sh", Some(SH), None),
            seen(SH, None, Some(LD)),
            seen(LD, None, None),
        ],
    );
    let ran = f
        .take(
            3,
            Name::Path(Path::new("/nonexistent/s.sh")),
            0,
            &mut hashes,
        )
        .unwrap();
    assert_eq!(ran.interpreter.as_deref(), Some(Path::new(SH)));
    assert!(left(&f, 3).is_empty());
    assert_eq!(f.total, 0);
    // What the process runs is the interpreter: `/proc/self/exe` is that file.
    let own = f.take(3, Name::OwnExe, 0, &mut hashes).unwrap();
    assert_eq!(
        (own.ino, own.path.as_path()),
        (SH.len() as u64, Path::new(SH))
    );
}

#[test]
fn a_file_unlinked_after_its_exec_by_path_keeps_its_name_and_is_not_deleted() {
    let mut hashes = HashCache::new(4);
    let mut f = files(5, vec![seen("/nonexistent/gone (deleted)", None, None)]);
    let ran = f
        .take(
            5,
            Name::Path(Path::new("/nonexistent/gone")),
            0,
            &mut hashes,
        )
        .unwrap();
    // Opened by that name, it was linked then: replaced since (an upgrade), not deleted.
    assert!(!ran.deleted);
    assert_eq!(ran.path, Path::new("/nonexistent/gone"));
    // Through a descriptor, an unlinked file is what ran.
    let mut f = files(5, vec![seen("/nonexistent/gone (deleted)", None, None)]);
    let ran = f.take(5, Name::Fd(None), 0, &mut hashes).unwrap();
    assert!(ran.deleted);
    assert_eq!(ran.path, Path::new("/nonexistent/gone (deleted)"));
}

#[test]
fn a_file_renamed_after_its_exec_by_path_is_its_processs_first_program() {
    let mut hashes = HashCache::new(4);
    let mut f = files(
        6,
        vec![
            seen(LD, None, None),
            seen("/nonexistent/swapped", None, None),
        ],
    );
    f.loaders.insert(PathBuf::from(LD));
    let ran = f
        .take(6, Name::Path(Path::new("/nonexistent/run")), 0, &mut hashes)
        .unwrap();
    assert_eq!(ran.path, Path::new("/nonexistent/run"));
    assert_eq!(ran.ino, "/nonexistent/swapped".len() as u64);
    // A file untouched since long before the exec (the process's next exec, read ahead)
    // is not taken for it.
    let mut f = files(6, vec![seen("/nonexistent/next", None, None)]);
    let exec_ns = 10_000_000_000;
    let run = Name::Path(Path::new("/nonexistent/run"));
    assert!(f.take(6, run, exec_ns, &mut hashes).is_none());
    assert_eq!(left(&f, 6), ["/nonexistent/next"]);
}

#[test]
fn an_exec_through_a_descriptor_skips_known_loaders_and_memory_files_match_nothing() {
    let mut hashes = HashCache::new(4);
    // A memory file brings no event of its own: the loader is not taken for it.
    let mut f = files(9, vec![seen(LD, None, None)]);
    f.loaders.insert(PathBuf::from(LD));
    let memfd = Path::new("/memfd:x (deleted)");
    assert!(f.take(9, Name::Fd(Some(memfd)), 0, &mut hashes).is_none());
    // What the table knows of a descriptor may be stale: the file the kernel opened wins.
    let mut f = files(
        9,
        vec![seen(LD, None, None), seen("/nonexistent/p", None, None)],
    );
    f.loaders.insert(PathBuf::from(LD));
    let ran = f.take(9, Name::Fd(Some(memfd)), 0, &mut hashes).unwrap();
    assert_eq!(ran.path, Path::new("/nonexistent/p"));
    let mut f = files(9, vec![seen("/nonexistent/p", None, None)]);
    // A descriptor the table does not know: the first program.
    let ran = f.take(9, Name::Fd(None), 0, &mut hashes).unwrap();
    assert_eq!(ran.path, Path::new("/nonexistent/p"));
    // Nothing of another process is taken.
    let mut f = files(9, vec![seen("/nonexistent/p", None, None)]);
    assert!(f.take(8, Name::Fd(None), 0, &mut hashes).is_none());
    assert_eq!(left(&f, 9), ["/nonexistent/p"]);
}

#[test]
fn a_second_exec_of_the_same_file_merged_into_the_first_event_reuses_it() {
    let mut hashes = HashCache::new(4);
    let dir = std::env::temp_dir().join(format!("picket-merged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("prog");
    std::fs::write(&prog, "x").unwrap();
    let meta = std::fs::metadata(&prog).unwrap();
    let event = || {
        let mut s = seen(prog.to_str().unwrap(), None, None);
        (s.dev, s.ino, s.ctime_ns, s.size) = (meta.dev(), meta.ino(), ctime_ns(&meta), meta.len());
        s
    };
    let mut f = files(2, vec![event()]);
    let first = f.take(2, Name::Path(&prog), 0, &mut hashes).unwrap();
    let again = f.take(2, Name::Path(&prog), 0, &mut hashes).unwrap();
    assert_eq!((again.dev, again.ino), (first.dev, first.ino));
    // `/proc/self/exe` is the process's own file again.
    let own = f.take(2, Name::OwnExe, 0, &mut hashes).unwrap();
    assert_eq!((own.dev, own.ino), (first.dev, first.ino));
    assert!(f.take(3, Name::OwnExe, 0, &mut hashes).is_none());
    // Another link to the same file (a busybox applet after another): the same file.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&prog, &link).unwrap();
    let applet = f.take(2, Name::Path(&link), 0, &mut hashes).unwrap();
    assert_eq!((applet.dev, applet.ino), (first.dev, first.ino));
    assert_eq!(applet.path, prog);
    // A path to another file: nothing, and what the process runs is not known any more.
    assert!(f
        .take(2, Name::Path(Path::new("/nonexistent/q")), 0, &mut hashes)
        .is_none());
    assert!(f.take(2, Name::OwnExe, 0, &mut hashes).is_none());
    // The file changed since: nothing.
    let mut f = files(2, vec![event()]);
    f.take(2, Name::Path(&prog), 0, &mut hashes).unwrap();
    std::fs::write(&prog, "changed").unwrap();
    assert!(f.take(2, Name::Path(&prog), 0, &mut hashes).is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_exited_process_leaves_nothing() {
    let mut f = files(4, vec![seen("/nonexistent/p", None, None)]);
    f.exited(3);
    assert_eq!(f.total, 1);
    f.exited(4);
    assert_eq!(f.total, 0);
    assert!(f.pending.is_empty());
}

#[test]
fn a_file_written_after_its_exec_has_no_digest() {
    let mut hashes = HashCache::new(4);
    let at = |mtime_ns: i64| {
        let mut s = seen("/nonexistent/p", None, None);
        s.mtime_ns = mtime_ns;
        files(1, vec![s])
    };
    let exec_ns = 1_000_000_000;
    let path = Name::Path(Path::new("/nonexistent/p"));
    // Stamped before the exec, or within how far its wall-clock time may be off: before.
    for stamp in [exec_ns - 10_000_000, exec_ns + 1_000_000] {
        let ran = at(stamp)
            .take(
                1,
                Name::Path(Path::new("/nonexistent/p")),
                exec_ns,
                &mut hashes,
            )
            .unwrap();
        assert!(ran.digest.is_ok());
    }
    let ran = at(exec_ns + 100_000_000)
        .take(1, path, exec_ns, &mut hashes)
        .unwrap();
    let error = ran.digest.unwrap_err();
    assert!(error.starts_with("written 100 ms after"), "{error}");
}

#[test]
fn a_hard_link_is_matched_by_identity() {
    let mut hashes = HashCache::new(4);
    let dir = std::env::temp_dir().join(format!("picket-hardlink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, link) = (dir.join("file"), dir.join("link"));
    std::fs::write(&file, "x").unwrap();
    std::fs::hard_link(&file, &link).unwrap();
    let meta = std::fs::metadata(&file).unwrap();
    // The kernel named the file by its other link.
    let mut s = seen(file.to_str().unwrap(), None, None);
    (s.dev, s.ino) = (meta.dev(), meta.ino());
    let mut f = files(1, vec![s]);
    let ran = f.take(1, Name::Path(&link), 0, &mut hashes).unwrap();
    assert_eq!(ran.path, link);
    assert_eq!(ran.ino, meta.ino());
    std::fs::remove_dir_all(&dir).unwrap();
}
