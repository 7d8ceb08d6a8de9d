use super::{
    event::{mode_text, open_flags},
    process::{Ancestor, Image},
    *,
};
use crate::sensors::decode::{Comm, Task};

fn task(known: bool) -> Task {
    Task {
        pid: 42,
        tid: 43,
        uid: 1000,
        gid: 100,
        boot_ns: 7,
        cgroup_id: 9,
        comm: Comm::new(b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
        known,
    }
}

fn context(exe: &[u8]) -> Option<Context> {
    let parent = Arc::new(Image {
        exe: Some("/bin/init".into()),
        ..Image::default()
    });
    Some(Context {
        ppid: Some(1),
        image: Arc::new(Image {
            exe: Some(paths::from_bytes(exe)),
            sha256: Some([0xab; 32]),
            argv: vec![b"sh".to_vec(), b"-c\xff".to_vec()],
            code: None,
            script_sha256: None,
            applet: None,
        }),
        ancestry: vec![Ancestor {
            pid: 1,
            image: parent,
        }],
    })
}

/// The line printed for `r`, checked to be the same both ways it can be produced.
fn printed(r: &Record) -> String {
    let mut direct = Vec::new();
    r.write_json(&mut direct).unwrap();
    let direct = String::from_utf8(direct).unwrap();
    assert_eq!(direct, serde_json::to_string(&r.to_json()).unwrap());
    direct
}

#[test]
fn prints_events_with_fields_in_their_order() {
    prints_an_exec_with_its_process_context();
    prints_a_net_event_without_a_process();
    prints_file_events_with_their_paths_flags_and_mode();
    prints_an_exit_with_its_code_and_signal();
}

/// An exec: the whole line, with a path and an argument that are not UTF-8.
fn prints_an_exec_with_its_process_context() {
    let exec = Record {
        task: task(true),
        process: context(b"/tmp/\xffsh"),
        detail: Detail::Exec {
            filename: "/tmp/x".into(),
            argv_truncated: false,
            argv_missing: true,
            interpreter: Some("/bin/sh".into()),
            fileless: false,
            deleted: false,
            execveat: false,
            file: None,
            hash_error: None,
            name_used: None,
            loader_env: vec![],
            loader_env_truncated: false,
            env_unexamined: false,
            killed: false,
        },
    };
    let sha = "ab".repeat(32);
    assert_eq!(
        printed(&exec),
        format!(
            r#"{{"event":"exec","time_ns":7,"pid":42,"tid":43,"ppid":1,"uid":1000,"gid":100,"comm":"sh","exe":"/tmp/�sh","sha256":"{sha}","argv":["sh","-c�"],"ancestry":[{{"pid":1,"exe":"/bin/init"}}],"cgroup_id":9,"exe_hex":"2f746d702fff7368","filename":"/tmp/x","argv_truncated":false,"argv_missing":true,"interpreter":"/bin/sh","fileless":false,"deleted":false,"execveat":false}}"#
        )
    );
}

/// An accept with no pid: the whole line, the process fields null or empty.
fn prints_a_net_event_without_a_process() {
    let accept = Record {
        task: Task {
            pid: 0,
            ..task(false)
        },
        process: None,
        detail: Detail::Net {
            op: NetOp::TcpAccept,
            pid_source: "unknown",
            local: ("::1".parse().unwrap(), 22),
            remote: ("::1".parse().unwrap(), 40000),
            socket_type: None,
            guard: None,
        },
    };
    assert_eq!(
        printed(&accept),
        r#"{"event":"net","time_ns":7,"pid":null,"tid":null,"ppid":null,"uid":null,"gid":null,"comm":"sh","exe":null,"sha256":null,"argv":[],"ancestry":[],"cgroup_id":9,"op":"tcp_accept","pid_source":"unknown","family":"ipv6","local_addr":"::1","local_port":22,"remote_addr":"::1","remote_port":40000}"#
    );
}

/// A rename to a path that is not UTF-8, and an open with no path, flags and a mode: the
/// ends of their lines.
fn prints_file_events_with_their_paths_flags_and_mode() {
    let rename = Record {
        task: task(true),
        process: context(b"/bin/mv"),
        detail: Detail::File {
            op: FileOp::Rename,
            path: Some(paths::from_bytes(b"/a/\xfe")),
            resolved: true,
            second: Some(("new_path", "/b".into())),
            symlink_target: None,
            flags: 0,
            mode: 0,
            owner: 0,
            group: 0,
            length: 0,
        },
    };
    let line = printed(&rename);
    assert!(
        line.ends_with(r#""cgroup_id":9,"op":"rename","path":"/a/�","path_hex":"2f612ffe","path_resolved":true,"new_path":"/b"}"#),
        "{line}"
    );
    let open = Record {
        task: task(true),
        process: context(b"/bin/sh"),
        detail: Detail::File {
            op: FileOp::Open,
            path: None,
            resolved: false,
            second: None,
            symlink_target: None,
            flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
            mode: 0o100640,
            owner: 0,
            group: 0,
            length: 0,
        },
    };
    let line = printed(&open);
    assert!(
        line.ends_with(r#""op":"open","path":null,"path_resolved":false,"flags":["O_WRONLY","O_CREAT"],"mode":"0640"}"#),
        "{line}"
    );
}

/// An exit: the end of its line, the code cut to its low 8 bits.
fn prints_an_exit_with_its_code_and_signal() {
    let exit = Record {
        task: task(true),
        process: context(b"/bin/sh"),
        detail: Detail::Exit {
            code: Some(0x1ff),
            signal: None,
        },
    };
    assert!(printed(&exit).ends_with(r#""exit_code":255,"signal":null}"#));
}

#[test]
fn recognises_own_exe_links() {
    assert!(names_own_exe(Path::new("/proc/self/exe"), 7));
    assert!(names_own_exe(Path::new("/proc/thread-self/exe"), 7));
    assert!(names_own_exe(Path::new("/proc/7/exe"), 7));
    assert!(!names_own_exe(Path::new("/proc/8/exe"), 7));
    assert!(!names_own_exe(Path::new("/proc/self/fd/3"), 7));
    assert!(!names_own_exe(Path::new("/bin/busybox"), 7));
    assert!(!names_own_exe(Path::new("/proc/self/exe/x"), 7));
}

#[test]
fn names_open_flags() {
    let f = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32;
    assert_eq!(open_flags(f), vec!["O_WRONLY", "O_CREAT", "O_TRUNC"]);
    assert_eq!(open_flags(libc::O_RDWR as u32), vec!["O_RDWR"]);
    assert_eq!(mode_text(0o100644), "0644");
}
