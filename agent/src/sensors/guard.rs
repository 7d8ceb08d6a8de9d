//! The network guard: the cgroup `sock_addr` programs of the sensors' object (`guard.rs` there),
//! attached to the root of the cgroup v2 hierarchy, and the rule maps they read.
//!
//! The programs judge every TCP and UDP `connect`, unconnected UDP send and `bind` on the
//! machine (the agent's own excepted) against the policy's `[network]` rules, as detection does
//! but without the `executable` restriction, which the kernel side cannot know: a destination
//! allowed to one executable is allowed to every executable here (detection still reports the
//! others). In [`GuardMode::Enforce`] a refused call fails with `EPERM`; in
//! [`GuardMode::DryRun`] it goes through; either way a record with `NET_FLAG_BLOCKED` or
//! `NET_FLAG_WOULD_BLOCK` comes through the ring buffer.
//!
//! The programs are attached through bpf links: when the agent dies, even by `SIGKILL`, the
//! kernel closes them and detaches the programs, and the machine connects freely again.
//!
//! Rules live in two slots; [`NetGuard::apply`] writes the inactive one, then switches mode and
//! slot with one store, so a program never sees half a policy.

use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    programs::{cgroup_sock_addr::CgroupSockAddrLink, links::CgroupAttachMode, CgroupSockAddr},
    util::KernelVersion,
    Ebpf,
};
use picket_common::guard::{
    listen_key, NetRule, PortRange, ALLOW_ALL, KEY_BYTES, KEY_HEADER_BITS, LISTEN_ENTRIES_MAX,
    MODE_DRY_RUN, MODE_ENFORCE, MODE_OFF, NET_ENTRIES_MAX, PROTO_TCP, PROTO_UDP, RANGES_MAX,
    SLOT_SHIFT,
};
use picket_policy::model::{Network, Protocol};

pub use crate::enforce::GuardMode;

use super::{load_error, take_map, SensorError};

/// Where the agent mounts a cgroup v2 hierarchy of its own when none is mounted (a machine with
/// cgroup v1 only: the v2 hierarchy exists beside it, every process in its root).
pub const OWN_CGROUP2: &str = "/run/picket/cgroup2";

/// The six programs, by name in the object.
const PROGRAMS: [&str; 6] = [
    "guard_connect4",
    "guard_connect6",
    "guard_sendmsg4",
    "guard_sendmsg6",
    "guard_bind4",
    "guard_bind6",
];

/// The value of `mode` in `GUARD_STATE`.
fn mode_value(mode: GuardMode) -> u32 {
    match mode {
        GuardMode::Off => MODE_OFF,
        GuardMode::DryRun => MODE_DRY_RUN,
        GuardMode::Enforce => MODE_ENFORCE,
    }
}

/// A `GUARD_NETS` key: prefix length and data.
type NetKey = (u32, [u8; KEY_BYTES]);

/// The attached programs and the rule maps. Dropping it detaches the programs.
pub struct NetGuard {
    _links: Vec<CgroupSockAddrLink>,
    state: Array<MapData, u32>,
    nets: LpmTrie<MapData, [u8; KEY_BYTES], NetRule>,
    listen: HashMap<MapData, u32, u8>,
    /// The slot the programs read.
    active: usize,
    /// The keys written in each slot, to clear it before it is written again.
    written: [(Vec<NetKey>, Vec<u32>); 2],
    cgroup: PathBuf,
}

impl NetGuard {
    /// Loads the guard's programs of `ebpf` and attaches them to the cgroup `cgroup`, mode off.
    pub(super) fn attach(ebpf: &mut Ebpf, cgroup: &Path) -> Result<Self, SensorError> {
        // Without bpf links (Linux < 5.7) the programs would stay attached after the agent died.
        let version = KernelVersion::current().map_err(|e| SensorError::Guard(e.to_string()))?;
        if version < KernelVersion::new(5, 7, 0) {
            return Err(SensorError::Guard(format!(
                "it needs bpf links (Linux 5.7 or later), this kernel is {version:?}"
            )));
        }
        let dir = fs::File::open(cgroup).map_err(|e| {
            SensorError::Guard(format!("opening the cgroup {}: {e}", cgroup.display()))
        })?;
        let state = take_map(ebpf, "GUARD_STATE")?;
        let nets = take_map(ebpf, "GUARD_NETS")?;
        let listen = take_map(ebpf, "GUARD_LISTEN")?;
        let mut links = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(SensorError::MissingProgram(name))?
                .try_into()
                .map_err(|source| load_error(name, source))?;
            prog.load().map_err(|source| load_error(name, source))?;
            // A bpf link always lets other programs run beside it on the cgroup: the kernel
            // refuses any attach flag with one (AllowMultiple gives EINVAL).
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| load_error(name, source))?;
            links.push(
                prog.take_link(id)
                    .map_err(|source| load_error(name, source))?,
            );
        }
        log::debug!("network guard attached to {}", cgroup.display());
        Ok(NetGuard {
            _links: links,
            state,
            nets,
            listen,
            active: 0,
            written: Default::default(),
            cgroup: cgroup.to_path_buf(),
        })
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Puts `network`'s rules in force with `mode`, replacing the previous ones at once. On an
    /// error the previous rules and mode stay in force.
    pub fn apply(&mut self, mode: GuardMode, network: &Network) -> anyhow::Result<()> {
        let rules = Rules::build(network)?;
        for net in &rules.fail_open {
            log::warn!(
                "network guard: the rules for {net} need more than {RANGES_MAX} port ranges; \
                 every port of {net} is let through (detection still judges them)"
            );
        }
        let next = self.active ^ 1;
        let slot = next as u8;
        // What this slot held two policies ago: no program reads it since the last switch.
        // A key recorded before its insert failed is not there (ENOENT): nothing to clear. The
        // record is kept until every key is cleared, so that a failure half-way is retried.
        let gone = |e: &aya::maps::MapError| {
            matches!(e, aya::maps::MapError::KeyNotFound)
                || matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
        };
        while let Some(&(prefix, data)) = self.written[next].0.last() {
            match self.nets.remove(&Key::new(prefix, data)) {
                Err(e) if !gone(&e) => {
                    return Err(e).context("clearing the guard's previous outbound rules")
                }
                _ => {
                    self.written[next].0.pop();
                }
            }
        }
        while let Some(&key) = self.written[next].1.last() {
            match self.listen.remove(&key) {
                Err(e) if !gone(&e) => {
                    return Err(e).context("clearing the guard's previous listen rules")
                }
                _ => {
                    self.written[next].1.pop();
                }
            }
        }
        for entry in &rules.nets {
            let (prefix, data) = entry.key(slot);
            // Recorded first: a failure half-way leaves the slot known, to be cleared next time.
            self.written[next].0.push((prefix, data));
            self.nets
                .insert(&Key::new(prefix, data), entry.rule, 0)
                .context("writing the guard's outbound rules")?;
        }
        for &(proto, port) in &rules.listen {
            let key = listen_key(u32::from(slot), proto, port);
            self.written[next].1.push(key);
            self.listen
                .insert(key, 1, 0)
                .context("writing the guard's listen rules")?;
        }
        self.state
            .set(0, mode_value(mode) | u32::from(slot) << SLOT_SHIFT, 0)
            .context("switching the guard's mode and rules")?;
        self.active = next;
        log::debug!(
            "network guard: {mode:?}, {} destination entries, {} listen entries",
            rules.nets.len(),
            rules.listen.len()
        );
        Ok(())
    }
}

/// The root of the cgroup v2 hierarchy: a `cgroup2` mount of its root in
/// `/proc/self/mountinfo`, else one the agent mounts at [`OWN_CGROUP2`].
pub fn cgroup2_root() -> Result<PathBuf, SensorError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| SensorError::Guard(format!("reading /proc/self/mountinfo: {e}")))?;
    if let Some(point) = mountinfo.lines().find_map(cgroup2_mount) {
        return Ok(point);
    }
    let own = Path::new(OWN_CGROUP2);
    fs::create_dir_all(own)
        .map_err(|e| SensorError::Guard(format!("creating {OWN_CGROUP2}: {e}")))?;
    nix::mount::mount(
        Some("cgroup2"),
        own,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        SensorError::Guard(format!(
            "no cgroup v2 hierarchy is mounted and mounting one at {OWN_CGROUP2} failed: {e} \
             (the kernel needs CONFIG_CGROUPS and CONFIG_CGROUP_BPF)"
        ))
    })?;
    Ok(own.to_path_buf())
}

/// The mount point of a mountinfo line that mounts the root of a cgroup v2 hierarchy.
pub fn cgroup2_mount(line: &str) -> Option<PathBuf> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let fstype = after.split(' ').next()?;
    let point = fields.get(4)?;
    (fstype == "cgroup2" && fields.get(3) == Some(&"/")).then(|| PathBuf::from(unescape(point)))
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], digits) {
            let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One destination network and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NetEntry {
    v6: bool,
    /// The network's address, IPv4 in the first 4 bytes.
    addr: [u8; 16],
    prefix_len: u8,
    rule: NetRule,
}

impl NetEntry {
    /// The trie key of this entry in `slot`.
    fn key(&self, slot: u8) -> NetKey {
        let mut data = [0u8; KEY_BYTES];
        data[0] = slot;
        data[1] = if self.v6 { 6 } else { 4 };
        data[4..].copy_from_slice(&self.addr);
        (KEY_HEADER_BITS + u32::from(self.prefix_len), data)
    }
}

/// The maps' contents for one policy.
#[derive(Debug, Default)]
struct Rules {
    nets: Vec<NetEntry>,
    /// `(protocol bit, port)` of each allowed listener.
    listen: Vec<(u16, u16)>,
    /// Networks whose rules need more than [`RANGES_MAX`] ranges: stored as [`ALLOW_ALL`].
    fail_open: Vec<String>,
}

fn proto_bits(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Any => PROTO_TCP | PROTO_UDP,
    }
}

fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            a
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Rules {
    /// One trie entry per distinct network of the outbound rules, carrying the port ranges of
    /// every rule whose network contains it: the trie answers with the longest matching prefix,
    /// and every rule whose network holds an address holds that prefix, so the answer is exact.
    fn build(network: &Network) -> anyhow::Result<Rules> {
        let mut rules = Rules::default();
        let nets: BTreeSet<(bool, [u8; 16], u8)> = network
            .outbound
            .iter()
            .map(|r| {
                let n = r.cidr.0;
                (n.network().is_ipv6(), octets(n.network()), n.prefix_len())
            })
            .collect();
        if nets.len() > NET_ENTRIES_MAX as usize {
            bail!(
                "the policy's outbound rules name {} networks; the network guard holds at most \
                 {NET_ENTRIES_MAX}",
                nets.len()
            );
        }
        for (v6, addr, prefix_len) in nets {
            let ip = if v6 {
                IpAddr::from(addr)
            } else {
                IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
            };
            let ranges: Vec<(u16, u16, u16)> = network
                .outbound
                .iter()
                .filter(|r| {
                    r.cidr.0.network().is_ipv6() == v6
                        && r.cidr.0.prefix_len() <= prefix_len
                        && r.cidr.contains(&ip)
                })
                .map(|r| (r.ports.first, r.ports.last, proto_bits(r.protocol)))
                .collect();
            let merged = merge(&ranges);
            let rule = if merged.len() > RANGES_MAX {
                rules.fail_open.push(format!("{ip}/{prefix_len}"));
                NetRule {
                    count: ALLOW_ALL,
                    _pad0: 0,
                    ranges: [PortRange::default(); RANGES_MAX],
                }
            } else {
                let mut rule = NetRule {
                    count: merged.len() as u32,
                    _pad0: 0,
                    ranges: [PortRange::default(); RANGES_MAX],
                };
                rule.ranges[..merged.len()].copy_from_slice(&merged);
                rule
            };
            rules.nets.push(NetEntry {
                v6,
                addr,
                prefix_len,
                rule,
            });
        }
        let listen: BTreeSet<(u16, u16)> = network
            .listen
            .iter()
            .flat_map(|l| {
                let bits = proto_bits(l.protocol);
                [PROTO_TCP, PROTO_UDP]
                    .into_iter()
                    .filter(move |b| bits & b != 0)
                    .map(move |b| (b, l.port.0))
            })
            .collect();
        if listen.len() > LISTEN_ENTRIES_MAX as usize {
            bail!(
                "the policy's listen rules name {} ports and protocols; the network guard holds \
                 at most {LISTEN_ENTRIES_MAX}",
                listen.len()
            );
        }
        rules.listen = listen.into_iter().collect();
        Ok(rules)
    }
}

/// The fewest ranges, each with one set of protocols, that allow exactly what `ranges`
/// (first, last, protocol bits) allow together.
fn merge(ranges: &[(u16, u16, u16)]) -> Vec<PortRange> {
    // Every port where what is allowed may change.
    let mut bounds: BTreeSet<u32> = BTreeSet::new();
    for &(first, last, _) in ranges {
        bounds.insert(u32::from(first));
        bounds.insert(u32::from(last) + 1);
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut out: Vec<PortRange> = Vec::new();
    for pair in bounds.windows(2) {
        let (start, end) = (pair[0], pair[1] - 1);
        let protocols = ranges
            .iter()
            .filter(|&&(f, l, _)| u32::from(f) <= start && end <= u32::from(l))
            .fold(0, |acc, &(_, _, p)| acc | p);
        if protocols == 0 {
            continue;
        }
        // Both ends fit a u16: they lie between a rule's first and last port.
        let (start, end) = (start as u16, end as u16);
        match out.last_mut() {
            Some(prev)
                if prev.protocols == protocols && u32::from(prev.last) + 1 == u32::from(start) =>
            {
                prev.last = end;
            }
            _ => out.push(PortRange {
                first: start,
                last: end,
                protocols,
                _pad0: 0,
            }),
        }
    }
    out
}

/// The decision the programs make with `rules` (for the tests: the same lookups in user space).
#[cfg(test)]
fn judge(rules: &Rules, ip: IpAddr, port: u16, proto: u16) -> bool {
    let ip = ip.to_canonical();
    let v6 = ip.is_ipv6();
    let bytes = octets(ip);
    let bits = if v6 { 128 } else { 32 };
    let best = rules
        .nets
        .iter()
        .filter(|e| e.v6 == v6 && e.prefix_len <= bits && prefix_eq(&e.addr, &bytes, e.prefix_len))
        .max_by_key(|e| e.prefix_len);
    match best {
        None => false,
        Some(e) if e.rule.count == ALLOW_ALL => true,
        Some(e) => e.rule.ranges[..e.rule.count as usize]
            .iter()
            .any(|r| r.protocols & proto != 0 && r.first <= port && port <= r.last),
    }
}

#[cfg(test)]
fn prefix_eq(a: &[u8; 16], b: &[u8; 16], len: u8) -> bool {
    (0..usize::from(len)).all(|bit| (a[bit / 8] ^ b[bit / 8]) & (0x80 >> (bit % 8)) == 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::{
        fs::File,
        net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket},
        os::fd::AsRawFd,
    };

    use picket_common::NetOp;
    use picket_policy::model::{Cidr, Listen, Outbound, Port, Ports};

    use super::*;
    use crate::{
        enrich::Guard,
        sensors::{
            decode::{decode, RawEvent},
            SensorSet, Sensors, DEFAULT_RING_BUFFER_BYTES,
        },
    };

    fn outbound(cidr: &str, first: u16, last: u16, protocol: Protocol) -> Outbound {
        Outbound {
            cidr: cidr.parse().unwrap(),
            ports: Ports { first, last },
            protocol,
            executable: None,
        }
    }

    #[test]
    fn merges_port_ranges_by_protocol() {
        let r = merge(&[
            (80, 80, PROTO_TCP),
            (81, 90, PROTO_TCP),
            (85, 100, PROTO_UDP),
            (1000, 2000, PROTO_TCP | PROTO_UDP),
            (1500, 1600, PROTO_TCP),
        ]);
        let got: Vec<(u16, u16, u16)> = r.iter().map(|r| (r.first, r.last, r.protocols)).collect();
        assert_eq!(
            got,
            [
                (80, 84, PROTO_TCP),
                (85, 90, PROTO_TCP | PROTO_UDP),
                (91, 100, PROTO_UDP),
                (1000, 2000, PROTO_TCP | PROTO_UDP),
            ]
        );
        let all = merge(&[(1, 65535, PROTO_TCP)]);
        assert_eq!((all[0].first, all[0].last, all.len()), (1, 65535, 1));
    }

    /// A small deterministic generator (xorshift), so that a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// An address near the few networks the rules use, so that they overlap and nest.
    fn address(rng: &mut Rng, v6: bool) -> IpAddr {
        let bits = rng.next();
        if v6 {
            let mut o = [0u8; 16];
            o[0] = 0x20;
            o[1] = 0x01;
            o[2] = (bits & 3) as u8;
            o[3] = ((bits >> 2) & 0x81) as u8;
            o[15] = (bits >> 10) as u8 & 7;
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                10,
                (bits & 3) as u8,
                ((bits >> 2) & 0x83) as u8,
                (bits >> 10) as u8 & 7,
            ))
        }
    }

    fn random_rule(rng: &mut Rng) -> Outbound {
        let v6 = rng.below(4) == 0;
        let addr = address(rng, v6);
        let max = if v6 { 128 } else { 32 };
        let len = match rng.below(4) {
            0 => rng.below(u64::from(max) + 1) as u8,
            _ => max - 12 + rng.below(13) as u8,
        };
        // The network of `addr`: its host bits cleared.
        let mut o = octets(addr);
        for bit in usize::from(len)..128 {
            o[bit / 8] &= !(0x80 >> (bit % 8));
        }
        let network = if v6 {
            IpAddr::from(o)
        } else {
            IpAddr::from([o[0], o[1], o[2], o[3]])
        };
        let net: Cidr = format!("{network}/{len}").parse().unwrap();
        let first = 1 + rng.below(40) as u16;
        let last = if rng.below(8) == 0 {
            65535
        } else {
            first + rng.below(30) as u16
        };
        let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Any][rng.below(3) as usize];
        Outbound {
            cidr: net,
            ports: Ports { first, last },
            protocol,
            executable: None,
        }
    }

    /// The builder's trie, looked up as the programs do, against `any(rule matches)` over many
    /// random policies and destinations (IPv4, IPv6 and IPv4-mapped IPv6).
    #[test]
    fn the_trie_answers_exactly_what_the_rules_allow() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        let mut allowed = 0;
        for _ in 0..300 {
            let n = 1 + rng.below(12) as usize;
            let network = Network {
                outbound: (0..n).map(|_| random_rule(&mut rng)).collect(),
                listen: vec![],
            };
            let rules = Rules::build(&network).unwrap();
            assert!(rules.fail_open.is_empty(), "{network:?}");
            for _ in 0..300 {
                let v6 = rng.below(3) == 0;
                let mut ip = address(&mut rng, v6);
                if let (IpAddr::V4(v4), 0) = (ip, rng.below(4)) {
                    ip = IpAddr::V6(v4.to_ipv6_mapped());
                }
                let port = 1 + rng.below(60) as u16;
                let (proto, policy_proto) = if rng.below(2) == 0 {
                    (PROTO_TCP, Protocol::Tcp)
                } else {
                    (PROTO_UDP, Protocol::Udp)
                };
                let canonical = ip.to_canonical();
                let naive = network.outbound.iter().any(|r| {
                    r.cidr.contains(&canonical)
                        && r.ports.contains(port)
                        && (r.protocol == Protocol::Any || r.protocol == policy_proto)
                });
                assert_eq!(
                    judge(&rules, ip, port, proto),
                    naive,
                    "{ip} port {port} proto {proto} with {network:#?}"
                );
                checked += 1;
                allowed += usize::from(naive);
            }
        }
        // The generator makes both answers common, or the comparison proves little.
        assert!(
            allowed > checked / 10 && allowed < checked * 9 / 10,
            "{allowed}/{checked}"
        );
    }

    /// A network whose rules need more ranges than an entry holds lets every port through
    /// (never refuses what a rule allows); the others stay exact.
    #[test]
    fn too_many_ranges_fail_open_for_that_network_only() {
        let mut outbound: Vec<Outbound> = (0..=RANGES_MAX as u16)
            .map(|i| outbound("10.1.0.0/16", 100 + 10 * i, 100 + 10 * i, Protocol::Tcp))
            .collect();
        outbound.push(outbound_rule_for_other_net());
        let network = Network {
            outbound,
            listen: vec![],
        };
        let rules = Rules::build(&network).unwrap();
        assert_eq!(rules.fail_open, ["10.1.0.0/16"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(judge(&rules, ip("10.1.2.3"), 100, PROTO_TCP));
        assert!(judge(&rules, ip("10.1.2.3"), 101, PROTO_UDP));
        assert!(judge(&rules, ip("10.2.0.1"), 53, PROTO_UDP));
        assert!(!judge(&rules, ip("10.2.0.1"), 54, PROTO_UDP));
        assert!(!judge(&rules, ip("10.3.0.1"), 100, PROTO_TCP));
    }

    fn outbound_rule_for_other_net() -> Outbound {
        outbound("10.2.0.0/16", 53, 53, Protocol::Udp)
    }

    #[test]
    fn listen_rules_by_protocol() {
        let network = Network {
            outbound: vec![],
            listen: vec![
                Listen {
                    port: Port(22),
                    protocol: Protocol::Tcp,
                    executable: None,
                },
                Listen {
                    port: Port(53),
                    protocol: Protocol::Any,
                    executable: Some("/usr/sbin/dnsmasq".parse().unwrap()),
                },
            ],
        };
        let rules = Rules::build(&network).unwrap();
        assert_eq!(
            rules.listen,
            [(PROTO_TCP, 22), (PROTO_TCP, 53), (PROTO_UDP, 53)]
        );
    }

    #[test]
    fn finds_the_cgroup2_root_in_mountinfo() {
        let v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";
        let unified = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let inner = "41 31 0:38 /system.slice /mnt/cg rw - cgroup2 cgroup2 rw";
        let spaced = "41 31 0:38 / /mnt/my\\040cg rw shared:5 - cgroup2 none rw";
        assert_eq!(cgroup2_mount(v1), None);
        assert_eq!(cgroup2_mount(inner), None);
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/my cg")));
    }

    /// A cgroup of its own for the kernel test, so that only its processes are judged.
    struct TestCgroup(PathBuf);
    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }

    #[derive(Clone, Copy)]
    enum Call {
        Connect,
        SendTo,
        Bind,
    }

    /// Runs `call` on a new socket in a child process moved into the cgroup whose `cgroup.procs`
    /// is `procs`; returns the child's pid and the call's errno (0 on success).
    fn probe(procs: &File, call: Call, tcp: bool, addr: IpAddr, port: u16) -> (u32, i32) {
        // Built before the fork: the child only makes system calls.
        let (family, sa, sa_len) = sockaddr(addr, port);
        let kind = if tcp {
            libc::SOCK_STREAM
        } else {
            libc::SOCK_DGRAM
        };
        let procs = procs.as_raw_fd();
        // SAFETY: the child makes only async-signal-safe calls (write, socket, connect, sendto,
        // bind, _exit) on memory prepared before the fork.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(200);
                }
                let fd = libc::socket(family, kind, 0);
                if fd < 0 {
                    libc::_exit(201);
                }
                let sa = (&raw const sa).cast::<libc::sockaddr>();
                let r = match call {
                    Call::Connect => libc::connect(fd, sa, sa_len),
                    Call::SendTo => libc::sendto(fd, b"x".as_ptr().cast(), 1, 0, sa, sa_len) as i32,
                    Call::Bind => libc::bind(fd, sa, sa_len),
                };
                let errno = if r < 0 { *libc::__errno_location() } else { 0 };
                libc::_exit(errno);
            },
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                let nix::sys::wait::WaitStatus::Exited(_, code) = status else {
                    panic!("probe {status:?}");
                };
                assert!(code < 200, "probe could not run ({code})");
                (child.as_raw() as u32, code)
            }
        }
    }

    fn sockaddr(addr: IpAddr, port: u16) -> (i32, libc::sockaddr_in6, libc::socklen_t) {
        // SAFETY: all-zero is a valid sockaddr_in6 (and sockaddr_in, which it is larger than).
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        match addr {
            IpAddr::V4(v4) => {
                let sin = (&raw mut sa).cast::<libc::sockaddr_in>();
                // SAFETY: sockaddr_in fits in the zeroed sockaddr_in6.
                unsafe {
                    (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                    (*sin).sin_port = port.to_be();
                    (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                }
                (
                    libc::AF_INET,
                    sa,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            IpAddr::V6(v6) => {
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = port.to_be();
                sa.sin6_addr.s6_addr = v6.octets();
                (
                    libc::AF_INET6,
                    sa,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    }

    /// `(pid, op, guard, address, port)` of the records in the ring buffer.
    type Seen = (u32, NetOp, Option<Guard>, IpAddr, u16);

    fn drain(ring: &mut aya::maps::RingBuf<MapData>) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some(item) = ring.next() {
            if let Ok(RawEvent::Net(n)) = decode(&item) {
                let (addr, port) = match n.op {
                    NetOp::TcpBind | NetOp::UdpBind => n.local,
                    _ => n.remote,
                };
                seen.push((n.task.pid, n.op, n.guard, addr, port));
            }
        }
        seen
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// The real programs on the running kernel, attached to a cgroup of the test's own: enforce
    /// refuses with EPERM what the rules do not allow and reports it, dry run refuses nothing
    /// and reports the same, and the kernel detaches everything once no process holds the
    /// links (the last holder killed with SIGKILL). Needs root and the built-in eBPF object.
    #[test]
    fn refuses_and_reports_on_the_running_kernel() {
        let mut sensors = Sensors::load(None, DEFAULT_RING_BUFFER_BYTES, SensorSet::empty())
            .expect("loading the sensors (run as root, with the eBPF object built in)");
        let mut ring = sensors.take_ring().unwrap();
        let cgroup = TestCgroup(
            cgroup2_root()
                .unwrap()
                .join(format!("picket-guard-test-{}", std::process::id())),
        );
        fs::create_dir(&cgroup.0).unwrap();
        let mut guard = sensors.net_guard_at(&cgroup.0).unwrap();
        let procs = File::options()
            .write(true)
            .open(cgroup.0.join("cgroup.procs"))
            .unwrap();

        // Peers outside the cgroup: the test process itself is not judged.
        let tcp_peer = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_port = tcp_peer.local_addr().unwrap().port();
        let udp_peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp_peer.local_addr().unwrap().port();
        let listen_port = free_port();
        let other_port = free_port();
        let network = Network {
            outbound: vec![
                outbound("127.0.0.1/32", tcp_port, tcp_port, Protocol::Tcp),
                outbound("127.0.0.0/8", udp_port, udp_port, Protocol::Udp),
            ],
            listen: vec![Listen {
                port: Port(listen_port),
                protocol: Protocol::Tcp,
                executable: None,
            }],
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let denied: IpAddr = "127.0.0.3".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();

        guard.apply(GuardMode::Enforce, &network).unwrap();
        assert!(drain(&mut ring).is_empty());
        let eperm = libc::EPERM;
        // Allowed: no record.
        assert_eq!(probe(&procs, Call::Connect, true, lo, tcp_port).1, 0);
        assert_eq!(probe(&procs, Call::Connect, true, mapped, tcp_port).1, 0);
        assert_eq!(probe(&procs, Call::Connect, false, lo, udp_port).1, 0);
        assert_eq!(probe(&procs, Call::SendTo, false, lo, udp_port).1, 0);
        // The /8 rule, under the /32 entry's longer prefix.
        assert_eq!(probe(&procs, Call::SendTo, false, denied, udp_port).1, 0);
        assert_eq!(probe(&procs, Call::Bind, true, any, listen_port).1, 0);
        assert_eq!(probe(&procs, Call::Bind, true, any, 0).1, 0);
        assert_eq!(probe(&procs, Call::Bind, false, any, 0).1, 0);
        assert_eq!(drain(&mut ring), []);
        // Refused: EPERM and one record each, of that process.
        let blocked = Some(Guard::Blocked);
        let cases = [
            (Call::Connect, true, denied, tcp_port, NetOp::TcpConnect),
            (Call::Connect, true, lo, udp_port, NetOp::TcpConnect),
            (Call::Connect, true, lo6, tcp_port, NetOp::TcpConnect),
            (Call::Connect, false, denied, tcp_port, NetOp::UdpConnect),
            (Call::SendTo, false, denied, udp_port + 1, NetOp::UdpSend),
            (Call::SendTo, false, lo, tcp_port, NetOp::UdpSend),
            (Call::Bind, true, any, other_port, NetOp::TcpBind),
            (Call::Bind, false, any, listen_port, NetOp::UdpBind),
        ];
        for (call, tcp, addr, port, op) in cases {
            let (pid, errno) = probe(&procs, call, tcp, addr, port);
            assert_eq!(errno, eperm, "{op:?} to {addr} port {port}");
            assert_eq!(drain(&mut ring), [(pid, op, blocked, addr, port)]);
        }

        // Dry run: the same calls go through (a TCP connect to no listener is refused by the
        // peer, not the guard) and are reported as what enforcing would have refused.
        guard.apply(GuardMode::DryRun, &network).unwrap();
        let would = Some(Guard::WouldBlock);
        let (pid, errno) = probe(&procs, Call::Connect, true, denied, tcp_port);
        assert_eq!(errno, libc::ECONNREFUSED);
        assert_eq!(
            drain(&mut ring),
            [(pid, NetOp::TcpConnect, would, denied, tcp_port)]
        );
        let (pid, errno) = probe(&procs, Call::Connect, false, denied, tcp_port);
        assert_eq!(errno, 0);
        assert_eq!(
            drain(&mut ring),
            [(pid, NetOp::UdpConnect, would, denied, tcp_port)]
        );
        let (pid, errno) = probe(&procs, Call::Bind, true, any, other_port);
        assert_eq!(errno, 0);
        assert_eq!(
            drain(&mut ring),
            [(pid, NetOp::TcpBind, would, any, other_port)]
        );

        // Off: nothing refused, nothing said.
        guard.apply(GuardMode::Off, &network).unwrap();
        assert_eq!(probe(&procs, Call::Connect, false, denied, tcp_port).1, 0);
        assert_eq!(drain(&mut ring), []);

        // A process holding the links keeps the guard in force after the agent's own handles
        // are gone; once it is killed with SIGKILL, the kernel detaches the programs.
        guard.apply(GuardMode::Enforce, &network).unwrap();
        // SAFETY: the child only waits to be killed.
        let holder = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => loop {
                // SAFETY: async-signal-safe.
                unsafe { libc::pause() };
            },
            nix::unistd::ForkResult::Parent { child } => child,
        };
        drop(guard);
        drop(sensors);
        assert_eq!(
            probe(&procs, Call::Connect, false, denied, tcp_port).1,
            eperm
        );
        nix::sys::signal::kill(holder, nix::sys::signal::Signal::SIGKILL).unwrap();
        nix::sys::wait::waitpid(holder, None).unwrap();
        assert_eq!(probe(&procs, Call::Connect, false, denied, tcp_port).1, 0);
        assert_eq!(probe(&procs, Call::Bind, true, any, other_port).1, 0);
    }
}
