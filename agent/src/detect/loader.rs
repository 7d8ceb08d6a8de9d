//! Dynamic loader variables in an exec's environment (`loader_environment`): code injected into a
//! program through the loader (`LD_PRELOAD`, `LD_AUDIT`) or libraries taken from a place an
//! attacker controls (`LD_LIBRARY_PATH`), MITRE ATT&CK T1574.006.
//!
//! The kernel keeps only those variables of the environment (see `ExecEvent::env`). What
//! raises the alert, to stay quiet on a healthy device:
//! - `LD_PRELOAD` and `LD_AUDIT` with anything to load (a value that is empty or only
//!   separators loads nothing: scripts set it so to clear it);
//! - `LD_LIBRARY_PATH` only when one of its directories is one where someone other than root
//!   can put a library: relative or empty (the working directory), in a shared temporary
//!   location, owned by a user other than root, world-writable, or writable by a group other
//!   than root's. The process's own user is not exempt: a library it can write lets it run code
//!   the executable baseline does not list inside an executable it does. A vendor launch
//!   script pointing at its own libraries (`/opt/vendor/lib`, root's) raises nothing.
//!   Directories that do not exist are skipped (the loader skips them too); directories are
//!   looked up in the agent's mount namespace.
//!
//! One alert per exec lists every loader variable found, each with the reason it is suspicious
//! (none for a harmless one).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use super::{draft, Detector};
use crate::{
    alert::{Draft, Kind, Severity},
    enrich::{Detail, Event, Record},
    paths,
    sensors::decode::LoaderVar,
};

/// The temporary locations ([`super::TEMPORARY`]) shared by every user or memory-backed. Home
/// directories are judged by their owner instead: root's is root's alone.
const SHARED_TEMPORARY: [&str; 4] = ["/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/"];

/// Raises `loader_environment` for the exec `r` of `exe` when its loader variables say so.
pub(super) fn check(
    detector: &Detector,
    event: &Event,
    r: &Record,
    exe: &str,
    out: &mut Vec<Draft>,
) {
    if !detector.behaviour_checked() {
        return;
    }
    let Detail::Exec {
        loader_env,
        loader_env_truncated,
        env_unexamined,
        ..
    } = &r.detail
    else {
        return;
    };
    // `$ORIGIN` in a library path is the executable's directory.
    let origin = Path::new(exe).parent();
    if let Some(details) = judge(
        loader_env,
        *loader_env_truncated || *env_unexamined,
        origin,
        directory_owner_mode,
    ) {
        out.push(draft(
            Kind::LoaderEnvironment,
            Severity::High,
            "behaviour",
            exe,
            details,
            event,
        ));
    }
}

/// The alert's details when one of `vars` is suspicious: every
/// variable as `{variable, value, reason}` (`reason` only on suspicious ones; `value_hex` when
/// the value is not UTF-8, `truncated` when it was cut), and `incomplete` when the environment
/// was not fully seen. `stat` gives a directory's owner, group and mode.
fn judge(
    vars: &[LoaderVar],
    incomplete: bool,
    origin: Option<&Path>,
    stat: impl Fn(&Path) -> Option<Stat>,
) -> Option<Value> {
    let mut suspicious = false;
    let variables: Vec<Value> = vars
        .iter()
        .map(|v| {
            let mut o = v.json();
            if let Some(reason) = reason(v, origin, &stat) {
                suspicious = true;
                o.insert("reason".into(), reason.into());
            }
            Value::Object(o)
        })
        .collect();
    if !suspicious {
        return None;
    }
    let mut details = json!({ "variables": variables });
    if incomplete {
        details["incomplete"] = true.into();
    }
    Some(details)
}

/// Why `var` is suspicious, if it is.
fn reason(
    var: &LoaderVar,
    origin: Option<&Path>,
    stat: &impl Fn(&Path) -> Option<Stat>,
) -> Option<String> {
    match var.name {
        // glibc splits LD_PRELOAD on spaces and colons, LD_AUDIT on colons.
        "LD_PRELOAD" | "LD_AUDIT" => var
            .value
            .iter()
            .any(|b| !matches!(b, b' ' | b':' | b'\t'))
            .then(|| format!("{} loads code into the program", var.name)),
        "LD_LIBRARY_PATH" => library_path_reason(&var.value, origin, stat),
        _ => None,
    }
}

/// Why a directory of the `LD_LIBRARY_PATH` value `value` is one where someone other than root
/// can put a library, for the first such directory. The loader splits the value on `:` and
/// `;`; an empty value is unset.
/// A directory starting with `$ORIGIN` (or `${ORIGIN}`) is under `origin`, the executable's
/// directory, as the loader expands it.
fn library_path_reason(
    value: &[u8],
    origin: Option<&Path>,
    stat: &impl Fn(&Path) -> Option<Stat>,
) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    for dir in value.split(|&b| b == b':' || b == b';') {
        let shown = String::from_utf8_lossy(dir);
        let rest = dir
            .strip_prefix(b"$ORIGIN")
            .or_else(|| dir.strip_prefix(b"${ORIGIN}"));
        let expanded;
        let dir = match (rest, origin) {
            (Some(rest), Some(origin)) => {
                expanded = [origin.as_os_str().as_encoded_bytes(), rest].concat();
                &expanded[..]
            }
            _ => dir,
        };
        if !dir.starts_with(b"/") {
            return Some(format!(
                "relative directory {shown:?} (the working directory)"
            ));
        }
        // Lexically normalised: `$ORIGIN/../lib` of `/opt/app/bin` is `/opt/app/lib`.
        let dir = paths::normalize(&paths::from_bytes(dir));
        let canonical = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if in_shared_temporary(&dir) || in_shared_temporary(&canonical) {
            return Some(format!("{shown} is in a temporary location"));
        }
        let Some(Stat { uid, gid, mode }) = stat(&canonical) else {
            continue;
        };
        if uid != 0 {
            return Some(format!("{shown} is owned by uid {uid}"));
        }
        if mode & 0o002 != 0 {
            return Some(format!("{shown} is world-writable"));
        }
        if mode & 0o020 != 0 && gid != 0 {
            return Some(format!("{shown} is writable by gid {gid}"));
        }
    }
    None
}

fn in_shared_temporary(dir: &Path) -> bool {
    let mut with_slash = PathBuf::from(dir).into_os_string();
    with_slash.push("/");
    let text = with_slash.to_string_lossy();
    SHARED_TEMPORARY.iter().any(|t| text.starts_with(t))
}

/// A directory's owner, group and mode.
#[derive(Clone, Copy)]
struct Stat {
    uid: u32,
    gid: u32,
    mode: u32,
}

/// Owner, group and mode of directory `dir` (links followed), `None` when it is not one.
fn directory_owner_mode(dir: &Path) -> Option<Stat> {
    let m = std::fs::metadata(dir).ok()?;
    m.is_dir().then(|| Stat {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &'static str, value: &str) -> LoaderVar {
        LoaderVar {
            name,
            value: value.as_bytes().to_vec(),
            cut: false,
        }
    }

    /// Directories: `/opt/vendor/lib` root's 0755, `/opt/shared/lib` root:root 0775,
    /// `/home/app/lib` uid 1000's 0755, `/srv/drop` root's 01777, `/srv/team` root:50 0775;
    /// nothing else exists.
    fn stat(dir: &Path) -> Option<Stat> {
        let (uid, gid, mode) = match dir.to_str()? {
            "/opt/vendor/lib" => (0, 0, 0o40755),
            "/opt/shared/lib" => (0, 0, 0o40775),
            "/home/app/lib" => (1000, 1000, 0o40755),
            "/srv/drop" => (0, 0, 0o41777),
            "/srv/team" => (0, 50, 0o40775),
            _ => return None,
        };
        Some(Stat { uid, gid, mode })
    }

    fn judge_one(v: LoaderVar) -> Option<Value> {
        judge(&[v], false, None, stat)
    }

    #[test]
    fn preload_and_audit_always_alert_unless_they_load_nothing() {
        let d = judge_one(var("LD_PRELOAD", "/tmp/x.so")).unwrap();
        assert_eq!(
            d,
            json!({"variables": [{
                "variable": "LD_PRELOAD", "value": "/tmp/x.so",
                "reason": "LD_PRELOAD loads code into the program"
            }]})
        );
        assert!(judge_one(var("LD_AUDIT", "/usr/lib/libaudit.so")).is_some());
        assert!(judge_one(var("LD_PRELOAD", "libc.so.6")).is_some());
        for nothing in ["", " ", ":", " : "] {
            assert_eq!(judge_one(var("LD_PRELOAD", nothing)), None, "{nothing:?}");
            assert_eq!(judge_one(var("LD_AUDIT", nothing)), None, "{nothing:?}");
        }
    }

    #[test]
    fn a_library_path_alerts_only_for_a_directory_an_attacker_controls() {
        let reason = |value: &str| {
            judge_one(var("LD_LIBRARY_PATH", value))
                .map(|d| d["variables"][0]["reason"].as_str().unwrap().to_string())
        };
        // Vendor libraries, root's (group root may write), and missing directories: quiet.
        assert_eq!(reason("/opt/vendor/lib"), None);
        // $ORIGIN is the executable's directory: /opt/vendor/bin/app's ../lib is root's.
        let origin = |value: &str| {
            library_path_reason(value.as_bytes(), Some(Path::new("/opt/vendor/bin")), &stat)
        };
        assert_eq!(origin("$ORIGIN/../lib"), None);
        assert_eq!(origin("${ORIGIN}/../lib"), None);
        let in_tmp = library_path_reason(b"$ORIGIN/lib", Some(Path::new("/tmp/x")), &stat);
        assert_eq!(in_tmp.unwrap(), "$ORIGIN/lib is in a temporary location");
        let owned = library_path_reason(b"$ORIGIN/../lib", Some(Path::new("/home/app/bin")), &stat);
        assert_eq!(owned.unwrap(), "$ORIGIN/../lib is owned by uid 1000");
        assert_eq!(
            library_path_reason(b"$ORIGIN/../lib", None, &stat).unwrap(),
            "relative directory \"$ORIGIN/../lib\" (the working directory)"
        );
        assert_eq!(reason("/opt/vendor/lib:/opt/shared/lib"), None);
        assert_eq!(reason("/opt/vendor/lib:/nonexistent/lib"), None);
        assert_eq!(reason(""), None);
        // A user's directory (whoever runs), a world-writable one, one another group may write,
        // a temporary location, the working directory (relative, or an empty element).
        assert_eq!(
            reason("/opt/vendor/lib:/home/app/lib").unwrap(),
            "/home/app/lib is owned by uid 1000"
        );
        assert_eq!(reason("/srv/drop").unwrap(), "/srv/drop is world-writable");
        assert_eq!(
            reason("/srv/team").unwrap(),
            "/srv/team is writable by gid 50"
        );
        assert_eq!(
            reason("/tmp/.x").unwrap(),
            "/tmp/.x is in a temporary location"
        );
        assert_eq!(
            reason("/dev/shm").unwrap(),
            "/dev/shm is in a temporary location"
        );
        assert!(reason("lib").unwrap().starts_with("relative directory"));
        assert!(reason("/opt/vendor/lib:")
            .unwrap()
            .starts_with("relative directory \"\""));
        assert!(reason("/opt/vendor/lib;.")
            .unwrap()
            .starts_with("relative directory"));
    }

    #[test]
    fn every_variable_is_listed_and_an_incomplete_environment_said() {
        let cut = LoaderVar {
            cut: true,
            ..var("LD_LIBRARY_PATH", "/opt/vendor/lib")
        };
        let d = judge(&[cut, var("LD_AUDIT", "/tmp/a.so")], true, None, stat).unwrap();
        assert_eq!(
            d,
            json!({
                "variables": [
                    {"variable": "LD_LIBRARY_PATH", "value": "/opt/vendor/lib", "truncated": true},
                    {"variable": "LD_AUDIT", "value": "/tmp/a.so",
                     "reason": "LD_AUDIT loads code into the program"},
                ],
                "incomplete": true,
            })
        );
        // A value that is not UTF-8 is also given as hex.
        let raw = LoaderVar {
            name: "LD_PRELOAD",
            value: b"/x\xff.so".to_vec(),
            cut: false,
        };
        let d = judge(&[raw], false, None, stat).unwrap();
        assert_eq!(d["variables"][0]["value_hex"], "2f78ff2e736f");
        // Nothing suspicious, nothing raised, even when the environment was not fully seen.
        assert_eq!(
            judge(
                &[var("LD_LIBRARY_PATH", "/opt/vendor/lib")],
                true,
                None,
                stat
            ),
            None
        );
    }
}
