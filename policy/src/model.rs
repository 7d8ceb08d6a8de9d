//! The policy itself: what a healthy device runs, talks to and never changes.
//!
//! One set of types serves both forms of a policy. Read from TOML (the authoring format, see
//! `docs/POLICY.md`) every value is parsed into a type that can only hold a valid value (a
//! [`Sha256`] is 32 bytes, a [`Ports`] range is ordered, a path is absolute), so a bad value is
//! refused by the TOML reader with its line and column. Written with postcard, the same types
//! give the compact canonical form that is signed.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A baseline policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub metadata: Metadata,
    /// What to do with deviations, per rule category.
    #[serde(default)]
    pub modes: Modes,
    /// Executables allowed to run, each with the hash it must have.
    #[serde(default, rename = "executable")]
    pub executables: Vec<Executable>,
    /// Directories of scripts allowed by path pattern alone: weaker, no hash is checked.
    #[serde(default, rename = "executable_glob")]
    pub executable_globs: Vec<ExecutableGlob>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub files: Files,
    /// What normally happens beyond which files run: lineage, scripts, sensitive reads,
    /// append-only files, privileged actions. Learned by `picket baseline learn`. Absent, none
    /// of the behavioural checks runs (the privilege and loader signals included); present, even
    /// empty, they all do. Needs bundle format 2.
    #[serde(default)]
    pub behaviour: Option<Behaviour>,
}

/// Who the policy is for and which version it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    /// The kind of device the policy applies to; a device refuses a policy for another class.
    pub device_class: String,
    /// Monotonic version: a device never goes back to a lower serial (anti-rollback).
    pub serial: u64,
    /// When the policy was made (RFC 3339).
    pub created: Timestamp,
}

/// Per-category modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modes {
    #[serde(default)]
    pub executables: Mode,
    #[serde(default)]
    pub network: Mode,
    #[serde(default)]
    pub files: Mode,
    /// The behavioural checks: lineage, scripts, sensitive reads, append-only files, privileged
    /// actions.
    #[serde(default)]
    pub behaviour: Mode,
}

impl Default for Modes {
    fn default() -> Self {
        Self {
            executables: Mode::Alert,
            network: Mode::Alert,
            files: Mode::Alert,
            behaviour: Mode::Alert,
        }
    }
}

/// What a rule category does with a deviation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Not checked.
    Off,
    /// Every deviation raises an alert; what `enforce` would refuse is also reported
    /// (`would_block`): the dry run of enforcement.
    #[default]
    Alert,
    /// Deviations are refused before they happen (executables and network only) and raise
    /// `blocked_*` alerts. Needs bundle format 3.
    Enforce,
}

impl Mode {
    /// The mode as written in a policy.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Alert => "alert",
            Mode::Enforce => "enforce",
        }
    }
}

/// An executable allowed to run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executable {
    pub path: AbsPath,
    pub sha256: Sha256,
}

/// Executables allowed by path pattern, without a hash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutableGlob {
    pub glob: Glob,
    /// Must be `true`: the author acknowledges that matching files are not hash-checked.
    pub weak: Acknowledged,
}

/// Expected network activity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Peers the device may connect or send to.
    #[serde(default)]
    pub outbound: Vec<Outbound>,
    /// Ports the device may listen on.
    #[serde(default)]
    pub listen: Vec<Listen>,
}

/// An allowed outbound destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    pub cidr: Cidr,
    pub ports: Ports,
    #[serde(default)]
    pub protocol: Protocol,
    /// Only this executable may use the rule; any executable when absent.
    #[serde(default)]
    pub executable: Option<AbsPath>,
}

/// An allowed listening port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub port: Port,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub executable: Option<AbsPath>,
}

/// Transport protocol of a network rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Any,
}

/// Files that must not change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    /// Files whose content (and, when given, owner and mode) must not change.
    #[serde(default)]
    pub protected: Vec<ProtectedFile>,
    /// Paths where any change, including a new file, is a deviation.
    #[serde(default)]
    pub protected_glob: Vec<ProtectedGlob>,
    /// Paths whose content may change but whose owner, group or mode may not.
    #[serde(default)]
    pub attributes: Vec<Attributes>,
}

/// A file that must keep its content.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedFile {
    pub path: AbsPath,
    pub sha256: Sha256,
    #[serde(default)]
    pub owner: Option<u32>,
    #[serde(default)]
    pub group: Option<u32>,
    #[serde(default)]
    pub mode: Option<FileMode>,
}

/// A pattern of paths that must not change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedGlob {
    pub glob: Glob,
}

/// Ownership and permissions that must not change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attributes {
    pub path: AbsPath,
    #[serde(default)]
    pub owner: Option<u32>,
    #[serde(default)]
    pub group: Option<u32>,
    #[serde(default)]
    pub mode: Option<FileMode>,
}

/// What a healthy device normally does, beyond which files it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Programs that run scripts (`/usr/bin/dash`, `/usr/bin/python3*`): a script file one of
    /// them runs is judged like an executable.
    #[serde(default)]
    pub interpreters: Vec<Glob>,
    /// Which executable normally starts which. When the list is empty lineage is not checked.
    #[serde(default)]
    pub lineage: Vec<Lineage>,
    /// Files whose reading is itself a signal, each with the executables allowed to read it.
    #[serde(default)]
    pub sensitive: Vec<Sensitive>,
    /// Files that may grow but never be truncated, renamed away or deleted (logs), except by
    /// the executables that rotate them.
    #[serde(default)]
    pub append_only: Vec<AppendOnly>,
    /// Executables allowed a privileged action (loading a kernel module, mounting, ...).
    #[serde(default)]
    pub privileged: Vec<Privileged>,
}

/// A parent executable starting a child. For an interpreter running a script file, the script
/// stands for the interpreter on either side; code given inline (`sh -c`) is the interpreter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    pub parent: AbsPath,
    pub child: AbsPath,
}

/// A file whose reading is a signal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sensitive {
    pub path: AbsPath,
    /// Executables allowed to read it.
    #[serde(default)]
    pub readers: Vec<AbsPath>,
}

/// Files that may only grow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendOnly {
    pub glob: Glob,
    /// Executables allowed to truncate, rename or delete them (log rotation).
    #[serde(default)]
    pub rotated_by: Vec<AbsPath>,
}

/// An executable allowed a privileged action.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privileged {
    pub action: Action,
    pub executable: AbsPath,
}

/// A privileged action whose every occurrence is a signal unless the policy allows its actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Loading a kernel module.
    Module,
    /// Mounting, remounting or unmounting a filesystem.
    Mount,
    /// Attaching to another process or writing its memory (`ptrace`, `process_vm_writev`).
    Ptrace,
    /// Setting the setuid or setgid bit on a file.
    Setuid,
    /// Setting file capabilities (`security.capability`).
    Capability,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Module => "module",
            Action::Mount => "mount",
            Action::Ptrace => "ptrace",
            Action::Setuid => "setuid",
            Action::Capability => "capability",
        }
    }
}

/// An absolute path, normalised (no `.`, `..` or repeated `/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsPath(String);

impl AbsPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AbsPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.starts_with('/') {
            return Err(format!("path `{s}` is not absolute"));
        }
        if s.contains('\0') {
            return Err("a path cannot contain NUL".into());
        }
        let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(format!("path `{s}` must not contain `.` or `..`"));
        }
        Ok(AbsPath(format!("/{}", parts.join("/"))))
    }
}

/// A path pattern (`*`, `?`, `[...]`, `**`), absolute.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Glob(String, glob::Pattern);

impl Glob {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` matches the pattern (`*` does not cross `/`; `**` does).
    pub fn matches(&self, path: &str) -> bool {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.1.matches_with(path, options)
    }
}

impl FromStr for Glob {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.starts_with('/') {
            return Err(format!("pattern `{s}` is not absolute"));
        }
        // Compiled once here: matching runs per event.
        let pattern = glob::Pattern::new(s).map_err(|e| format!("pattern `{s}`: {e}"))?;
        Ok(Glob(s.to_string(), pattern))
    }
}

/// A SHA-256 digest: 64 hex digits in TOML, 32 bytes in the canonical form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Sha256 {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "sha256 must be 64 hex digits, got `{s}` ({} characters)",
                s.chars().count()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
        }
        Ok(Sha256(out))
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => s
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| format!("`{s}` is not an address or a CIDR network"))?,
        };
        if net.network() != net.addr() {
            return Err(format!(
                "`{s}` has host bits set; did you mean `{}`?",
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u16);

fn port_from_u64(v: u64) -> Result<u16, String> {
    match u16::try_from(v) {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {v} is over 65535")),
    }
}

/// A port range: `443`, or `"8000-8100"`, or `"any"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for Ports {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "any" {
            return Ok(Ports {
                first: 1,
                last: 65535,
            });
        }
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let parse = |x: &str| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{s}` is not a port, a range `first-last` or `any`"))
                .and_then(port_from_u64)
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("port range `{s}` is backwards"));
        }
        Ok(Ports { first, last })
    }
}

/// Permission bits, written in octal (`"0644"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileMode(pub u32);

impl FromStr for FileMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = u32::from_str_radix(s, 8)
            .map_err(|_| format!("mode `{s}` is not an octal number like \"0644\""))?;
        if v > 0o7777 {
            return Err(format!("mode `{s}` has bits beyond 07777"));
        }
        Ok(FileMode(v))
    }
}

/// RFC 3339 date and time (`2026-11-22T10:00:00Z`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(String);

impl FromStr for Timestamp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an RFC 3339 time like 2026-11-22T10:00:00Z");
        let b = s.as_bytes();
        let digits =
            |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
        let shape = b.len() >= 20
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && matches!(b[10], b'T' | b't' | b' ')
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19);
        if !shape {
            return Err(bad());
        }
        let mut rest = &s[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return Err(bad());
            }
            rest = &frac[n..];
        }
        let zone_ok = matches!(rest, "Z" | "z")
            || (rest.len() == 6
                && matches!(rest.as_bytes()[0], b'+' | b'-')
                && rest.as_bytes()[3] == b':'
                && rest[1..3]
                    .bytes()
                    .chain(rest[4..6].bytes())
                    .all(|d| d.is_ascii_digit()));
        if !zone_ok {
            return Err(bad());
        }
        Ok(Timestamp(s.to_string()))
    }
}

impl Timestamp {
    /// Seconds since the epoch, in UTC (`2026-11-22T10:00:00Z`).
    pub fn from_unix_seconds(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
        // Howard Hinnant's civil_from_days: proleptic Gregorian calendar, eras of 400 years.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Timestamp(format!(
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"
        ))
    }

    /// When a policy made now was created: `$SOURCE_DATE_EPOCH` when set (reproducible image
    /// builds), otherwise the current time.
    pub fn for_new_policy() -> Result<Self, String> {
        let secs = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("SOURCE_DATE_EPOCH `{v}` is not a number of seconds"))?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| "the system clock is before 1970".to_string())?
                .as_secs(),
        };
        Ok(Self::from_unix_seconds(secs))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `true`, and nothing else: an explicit acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acknowledged;

impl Serialize for Acknowledged {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

impl<'de> Deserialize<'de> for Acknowledged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if bool::deserialize(d)? {
            Ok(Acknowledged)
        } else {
            Err(de::Error::custom(
                "a glob entry checks no hash: set `weak = true` to acknowledge that",
            ))
        }
    }
}

/// Serde for types that are strings in both forms.
macro_rules! text_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&Text(self))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}

/// How each string-like type prints.
struct Text<'a, T>(&'a T);

impl fmt::Display for Text<'_, AbsPath> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0 .0)
    }
}
impl fmt::Display for Text<'_, Glob> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0 .0)
    }
}
impl fmt::Display for Text<'_, Cidr> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0 .0.fmt(f)
    }
}
impl fmt::Display for Text<'_, FileMode> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0 .0)
    }
}
impl fmt::Display for Text<'_, Timestamp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0 .0)
    }
}

text_serde!(AbsPath);
text_serde!(Glob);
text_serde!(Cidr);
text_serde!(FileMode);
text_serde!(Timestamp);

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(Sha256)
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The binary form holds exactly what `serialize` wrote; TOML integers are i64.
        if !d.is_human_readable() {
            let v = u16::deserialize(d)?;
            return port_from_u64(u64::from(v))
                .map(Port)
                .map_err(de::Error::custom);
        }
        let v = i64::deserialize(d)?;
        let v = u64::try_from(v).map_err(|_| de::Error::custom(format!("port {v} is negative")))?;
        port_from_u64(v).map(Port).map_err(de::Error::custom)
    }
}

impl Serialize for Ports {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return (self.first, self.last).serialize(s);
        }
        match (self.first, self.last) {
            (1, 65535) => s.serialize_str("any"),
            (a, b) if a == b => s.serialize_u16(a),
            (a, b) => s.collect_str(&format_args!("{a}-{b}")),
        }
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            let (first, last) = <(u16, u16)>::deserialize(d)?;
            if first == 0 || first > last {
                return Err(de::Error::custom("invalid port range"));
            }
            return Ok(Ports { first, last });
        }
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Ports;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (443), a range (\"8000-8100\") or \"any\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ports, E> {
                let v = u64::try_from(v).map_err(|_| E::custom(format!("port {v} is negative")))?;
                self.visit_u64(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ports, E> {
                let p = port_from_u64(v).map_err(E::custom)?;
                Ok(Ports { first: p, last: p })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ports, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_or_says_why_not() {
        assert_eq!(
            "/usr//bin/./x".parse::<AbsPath>().unwrap_err(),
            "path `/usr//bin/./x` must not contain `.` or `..`"
        );
        assert_eq!(
            "/usr//bin/x".parse::<AbsPath>().unwrap().as_str(),
            "/usr/bin/x"
        );
        assert!("usr/bin".parse::<AbsPath>().is_err());
        assert!("ab"
            .parse::<Sha256>()
            .unwrap_err()
            .contains("64 hex digits"));
        assert!("10.0.0.1/8"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert_eq!(
            "192.0.2.7".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert!("70000".parse::<Ports>().unwrap_err().contains("over 65535"));
        assert_eq!(
            "8000-8100".parse::<Ports>().unwrap(),
            Ports {
                first: 8000,
                last: 8100
            }
        );
        assert!("9-8".parse::<Ports>().is_err());
        assert_eq!("0644".parse::<FileMode>().unwrap(), FileMode(0o644));
        assert!("0999".parse::<FileMode>().is_err());
        assert!("2026-11-22T10:00:00Z".parse::<Timestamp>().is_ok());
        assert!("2026-11-22T10:00:00.5+01:00".parse::<Timestamp>().is_ok());
        assert!("2026-11-22".parse::<Timestamp>().is_err());
        assert!("relative/*".parse::<Glob>().is_err());
    }

    #[test]
    fn formats_utc_dates() {
        let t = |s| Timestamp::from_unix_seconds(s).to_string();
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(t(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(t(4_107_542_399), "2100-02-28T23:59:59Z");
        assert!(t(1_700_000_000).parse::<Timestamp>().is_ok());
    }

    #[test]
    fn globs_do_not_cross_directories_with_a_single_star() {
        let g: Glob = "/opt/scripts/*.sh".parse().unwrap();
        assert!(g.matches("/opt/scripts/a.sh"));
        assert!(!g.matches("/opt/scripts/sub/a.sh"));
        let g: Glob = "/opt/**/*.sh".parse().unwrap();
        assert!(g.matches("/opt/scripts/sub/a.sh"));
    }
}
