//! tracefs: finding (or mounting) it, and reading tracepoint record layouts from its `format`
//! files. Those layouts are a stable kernel interface; reading them at run time is what lets one
//! eBPF object work on every kernel version and word size.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where tracefs usually lives; the first one is also where we mount it when it is missing.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors about tracefs.
#[derive(Debug, Error)]
pub enum TracefsError {
    /// tracefs is not mounted and mounting it failed.
    #[error(
        "tracefs is not mounted and mounting it at {path} failed ({source}); \
         the kernel needs CONFIG_TRACING (CONFIG_FTRACE), and mounting needs root \
         (try: mount -t tracefs nodev {path})"
    )]
    Mount {
        path: String,
        #[source]
        source: nix::Error,
    },
    /// A tracepoint's format file could not be read.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A tracepoint's format file lacks a field the sensors need.
    #[error("tracepoint {tracepoint} has no field `{field}` (kernel too old or too new?)")]
    MissingField { tracepoint: String, field: String },
}

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds a mounted tracefs, mounting one at `/sys/kernel/tracing` when there is none.
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        if let Some(root) = CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").is_dir())
        {
            return Ok(Self { root });
        }
        let path = CANDIDATES[0];
        nix::mount::mount(
            Some("nodev"),
            path,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| TracefsError::Mount {
            path: path.to_string(),
            source,
        })?;
        log::info!("mounted tracefs at {path}");
        Ok(Self {
            root: PathBuf::from(path),
        })
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the tracepoint `category:name` exists on this kernel.
    pub fn exists(&self, category: &str, name: &str) -> bool {
        self.root.join("events").join(category).join(name).is_dir()
    }

    /// Reads the record layout of `category:name`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Format {
            tracepoint: format!("{category}:{name}"),
            fields: parse_fields(&text),
        })
    }
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of a tracepoint record.
#[derive(Debug, Clone)]
pub struct Format {
    tracepoint: String,
    fields: Vec<Field>,
}

impl Format {
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Result<&Field, TracefsError> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.tracepoint.clone(),
                field: name.to_string(),
            })
    }

    /// The offset of the field called `name`.
    pub fn offset(&self, name: &str) -> Result<u32, TracefsError> {
        self.field(name).map(|f| f.offset)
    }

    /// The offset of `name`, or 0 when this kernel's record has no such field.
    pub fn optional_offset(&self, name: &str) -> u32 {
        self.field(name).map(|f| f.offset).unwrap_or(0)
    }

    /// All fields, in record order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }
}

/// Parses the `field:` lines of a format file, e.g.
/// `field:__data_loc char[] filename; offset:8; size:4; signed:0;` (tab-separated).
fn parse_fields(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?;
            let mut parts = decl.split(';').map(str::trim);
            let declaration = parts.next()?;
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // The name is the declaration's last word, without an array suffix.
            let name = declaration.rsplit(' ').next()?;
            let name = name.split('[').next()?.to_string();
            Some(Field {
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork
ID: 316
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d child_comm=%s child_pid=%d\"
";

    const FORK_6_1: &str = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    #[test]
    fn parses_both_fork_layouts() {
        let new = Format {
            tracepoint: "sched:sched_process_fork".into(),
            fields: parse_fields(FORK_6_18),
        };
        assert_eq!(new.offset("child_pid").unwrap(), 20);
        assert_eq!(new.field("parent_comm").unwrap().size, 4);
        let old = Format {
            tracepoint: "sched:sched_process_fork".into(),
            fields: parse_fields(FORK_6_1),
        };
        assert_eq!(old.offset("child_pid").unwrap(), 44);
        assert_eq!(old.field("child_comm").unwrap().size, 16);
        assert_eq!(old.optional_offset("group_dead"), 0);
        assert!(matches!(
            old.offset("nope"),
            Err(TracefsError::MissingField { .. })
        ));
    }
}
