//! The detection tests, by concern: [`alerts`] (what an alert carries), [`policy`] (each
//! category against the policy), [`spellings`] (paths under any spelling: links, own files),
//! [`behaviour`] (scripts, lineage, append-only and sensitive files), [`guard`] (the guards'
//! judgements). Here: the fixtures they share (a test policy, events built from JSON).

use super::*;
use crate::enrich::process::{Ancestor, Image};
use crate::enrich::script::code_of;
use crate::enrich::{Category, Context, Fields, Record};
use crate::sensors::decode::{Comm, Task};
use std::net::IpAddr;
use std::sync::Arc;

fn detector() -> Detector {
    let policy = picket_policy::load_toml(
        r#"
[metadata]
name = "t"
device_class = "c"
serial = 1
created = "2026-11-22T10:00:00Z"

[[executable]]
path = "/usr/bin/app"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

[[executable_glob]]
glob = "/opt/scripts/*.sh"
weak = true

[[network.outbound]]
cidr = "10.0.0.0/8"
ports = 443
executable = "/usr/bin/app"

[[network.listen]]
port = 22

[[files.protected]]
path = "/etc/app.conf"
sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

[[files.protected_glob]]
glob = "/etc/init.d/*"
"#,
        "t.toml",
    )
    .unwrap();
    let modes = policy.modes;
    Detector::new(policy, modes, vec![PathBuf::from("/etc/picket")])
}

/// A typed event with what `fields` gives (the keys a test uses), the rest empty.
fn event(fields: Value) -> Event {
    let process = process_context(&fields);
    let (category, detail) = match text(&fields, "event").unwrap() {
        "exec" => (Category::Exec, exec_detail(&fields)),
        "net" => (Category::Net, net_detail(&fields)),
        "file" => (Category::File, file_detail(&fields)),
        "read" => (
            Category::File,
            Detail::Read {
                path: PathBuf::from(text(&fields, "path").unwrap()),
            },
        ),
        other => panic!("no event {other} in these tests"),
    };
    Event {
        category,
        fields: Fields::new_for_test(Record {
            task: test_task(),
            process,
            detail,
        }),
    }
}

/// The string at `k` in `fields`, if any.
fn text<'a>(fields: &'a Value, k: &str) -> Option<&'a str> {
    fields.get(k).and_then(Value::as_str)
}

/// Whether `k` in `fields` is `true`.
fn flag(fields: &Value, k: &str) -> bool {
    fields.get(k).and_then(Value::as_bool) == Some(true)
}

/// The port at `k` in `fields`, or 0.
fn port(fields: &Value, k: &str) -> u16 {
    fields
        .get(k)
        .and_then(Value::as_u64)
        .map_or(0, |p| p as u16)
}

/// The 32 bytes written as 64 hex digits in `hex`.
fn digest(hex: &str) -> [u8; 32] {
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
    }
    d
}

/// The process context: `exe`, `sha256` (hex) and `argv` from `fields` (the code an
/// interpreter runs found from them, relative to `/work`), its parent from `parent` (an
/// object with `exe` and `argv`) when given.
fn process_context(fields: &Value) -> Option<Context> {
    let sha256 = text(fields, "sha256").map(digest);
    let image = Image {
        exe: text(fields, "exe").map(PathBuf::from),
        sha256,
        argv: fields
            .get("argv")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap().as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default(),
        code: None,
        script_sha256: None,
        applet: None,
    };
    let code = image
        .exe
        .as_deref()
        .and_then(|e| code_of(e, &image.argv, Some(Path::new("/work"))));
    let script_sha256 = text(fields, "script_sha256").map(|hex| Ok(digest(hex)));
    let applet = image
        .exe
        .as_deref()
        .and_then(|e| crate::enrich::script::applet_of(e, &image.argv));
    let image = Image {
        code,
        script_sha256,
        applet,
        ..image
    };
    let ancestry = fields
        .get("parent")
        .and_then(process_context)
        .map(|parent| Ancestor {
            pid: 1,
            image: parent.image,
        })
        .into_iter()
        .collect();
    Some(Context {
        ppid: None,
        image: Arc::new(image),
        ancestry,
    })
}

/// An exec, `fileless` and `deleted` from `fields`.
fn exec_detail(fields: &Value) -> Detail {
    Detail::Exec {
        filename: PathBuf::new(),
        argv_truncated: false,
        argv_missing: false,
        interpreter: None,
        fileless: flag(fields, "fileless"),
        deleted: flag(fields, "deleted"),
        execveat: false,
        file: None,
        hash_error: fields["hash_error"].as_str().map(str::to_string),
        name_used: text(fields, "name_used").map(PathBuf::from),
        loader_env: vec![],
        loader_env_truncated: false,
        env_unexamined: false,
        killed: flag(fields, "killed"),
    }
}

/// A network operation: `op`, `local_port`, `remote_addr` and `remote_port` from `fields`.
fn net_detail(fields: &Value) -> Detail {
    let net_op = |op: &str| match op {
        "tcp_connect" => NetOp::TcpConnect,
        "tcp_listen" => NetOp::TcpListen,
        "tcp_bind" => NetOp::TcpBind,
        "udp_send" => NetOp::UdpSend,
        "udp_connect" => NetOp::UdpConnect,
        "udp_bind" => NetOp::UdpBind,
        other => panic!("no net op {other} in these tests"),
    };
    let any: IpAddr = "0.0.0.0".parse().unwrap();
    Detail::Net {
        op: net_op(text(fields, "op").unwrap()),
        pid_source: "task",
        local: (any, port(fields, "local_port")),
        remote: (
            text(fields, "remote_addr").map_or(any, |a| a.parse().unwrap()),
            port(fields, "remote_port"),
        ),
        socket_type: None,
        guard: match text(fields, "guard") {
            Some("blocked") => Some(Guard::Blocked),
            Some("would_block") => Some(Guard::WouldBlock),
            _ => None,
        },
    }
}

/// A file operation: `op`, `path` and `new_path` from `fields`.
fn file_detail(fields: &Value) -> Detail {
    let file_op = |op: &str| match op {
        "open" => FileOp::Open,
        "rename" => FileOp::Rename,
        "unlink" => FileOp::Unlink,
        "chmod" => FileOp::Chmod,
        "symlink" => FileOp::Symlink,
        "truncate" => FileOp::Truncate,
        other => panic!("no file op {other} in these tests"),
    };
    Detail::File {
        op: file_op(text(fields, "op").unwrap()),
        path: text(fields, "path").map(PathBuf::from),
        resolved: true,
        second: text(fields, "new_path").map(|p| ("new_path", PathBuf::from(p))),
        symlink_target: None,
        flags: fields.get("flags").and_then(Value::as_u64).unwrap_or(0) as u32,
        mode: 0,
        owner: 0,
        group: 0,
        length: 0,
    }
}

/// The task every test event comes from: pid 7, root, known.
fn test_task() -> Task {
    Task {
        pid: 7,
        tid: 7,
        uid: 0,
        gid: 0,
        boot_ns: 0,
        cgroup_id: 0,
        comm: Comm::new(&[0; 16]),
        known: true,
    }
}

fn kinds(d: &Detector, fields: Value) -> Vec<Kind> {
    d.check(&event(fields))
        .into_iter()
        .map(|a| a.kind)
        .collect()
}
mod alerts;
mod behaviour;
mod guard;
mod policy;
mod spellings;
