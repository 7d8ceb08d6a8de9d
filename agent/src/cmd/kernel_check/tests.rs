use super::*;

const CONFIG: &str = "\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_BPF=y
CONFIG_BPF_SYSCALL=y
CONFIG_FANOTIFY=m
# CONFIG_FANOTIFY_ACCESS_PERMISSIONS is not set
CONFIG_LOCALVERSION=\"-acme\"
CONFIG_LOG_BUF_SHIFT=17
not a line of a configuration
";

#[test]
fn parses_assignments_and_not_set() {
    let c = KernelConfig::parse(CONFIG);
    assert!(c.enabled("CONFIG_BPF_SYSCALL"));
    assert!(c.enabled("CONFIG_FANOTIFY"), "a module counts");
    assert!(!c.enabled("CONFIG_FANOTIFY_ACCESS_PERMISSIONS"));
    assert!(
        !c.enabled("CONFIG_CGROUP_BPF"),
        "an option not listed is not set"
    );
    assert!(!c.enabled("CONFIG_LOG_BUF_SHIFT"), "a number is not y or m");
    assert_eq!(c.describe("CONFIG_FANOTIFY"), "CONFIG_FANOTIFY=m");
    assert_eq!(
        c.describe("CONFIG_LOCALVERSION"),
        "CONFIG_LOCALVERSION=-acme"
    );
    assert_eq!(
        c.describe("CONFIG_FANOTIFY_ACCESS_PERMISSIONS"),
        "CONFIG_FANOTIFY_ACCESS_PERMISSIONS is not set"
    );
    assert_eq!(
        c.describe("CONFIG_CGROUP_BPF"),
        "CONFIG_CGROUP_BPF is not set"
    );
}

#[test]
fn reads_plain_and_gzip_files_and_refuses_others() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("picket-kconfig-test.{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("config");
    fs::write(&plain, CONFIG).unwrap();
    assert!(KernelConfig::read(&plain).unwrap().enabled("CONFIG_BPF"));
    let gz = dir.join("config.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(CONFIG.as_bytes()).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    let c = KernelConfig::read(&gz).unwrap();
    assert!(c.enabled("CONFIG_FANOTIFY"));
    assert!(!c.enabled("CONFIG_FANOTIFY_ACCESS_PERMISSIONS"));
    let other = dir.join("other");
    fs::write(&other, "hello\n").unwrap();
    let err = KernelConfig::read(&other).unwrap_err().to_string();
    assert!(err.contains("not a kernel configuration"), "{err}");
    let truncated = dir.join("truncated.gz");
    fs::write(&truncated, &fs::read(&gz).unwrap()[..20]).unwrap();
    let err = format!("{:#}", KernelConfig::read(&truncated).unwrap_err());
    assert!(err.contains("decompressing"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_probe_wins_and_the_configuration_fills_in() {
    let c = KernelConfig::parse(CONFIG);
    let opts = ["CONFIG_FANOTIFY_ACCESS_PERMISSIONS"];
    // No probe answer: the configuration's.
    let v = judge(Some(&c), &opts, &Evidence::unknown("EPERM"));
    assert_eq!(v.status, Status::Missing);
    assert_eq!(
        v.text,
        "CONFIG_FANOTIFY_ACCESS_PERMISSIONS is not set; not probed: EPERM"
    );
    // A probe that saw it: present, whatever the file says.
    let v = judge(Some(&c), &opts, &Evidence::present("a mark"));
    assert_eq!(v.status, Status::Present);
    // Configured, but the running kernel refuses: missing.
    let v = judge(
        Some(&c),
        &["CONFIG_BPF_SYSCALL"],
        &Evidence::missing("ENOSYS"),
    );
    assert_eq!(v.status, Status::Missing);
    assert_eq!(v.text, "CONFIG_BPF_SYSCALL=y; ENOSYS");
    // Every option is needed.
    let v = judge(
        Some(&c),
        &["CONFIG_BPF", "CONFIG_CGROUP_BPF"],
        &Evidence::unknown("?"),
    );
    assert_eq!(v.status, Status::Missing);
    // Neither: unknown.
    let v = judge(None, &opts, &Evidence::unknown("EPERM"));
    assert_eq!(v.status, Status::Unknown);
    assert_eq!(v.text, "not probed: EPERM");
}

#[test]
fn exit_status_follows_the_required_features() {
    let required = &FEATURES[0];
    let optional = FEATURES.iter().find(|f| !f.required).unwrap();
    assert!(required.required);
    let p = || Evidence::present("");
    assert_eq!(
        exit_status(&[(required, p()), (optional, Evidence::missing(""))]),
        0
    );
    assert_eq!(
        exit_status(&[(required, Evidence::missing("")), (optional, p())]),
        1
    );
    assert_eq!(
        exit_status(&[(required, Evidence::unknown("")), (optional, p())]),
        2
    );
    assert_eq!(
        exit_status(&[
            (required, Evidence::unknown("")),
            (required, Evidence::missing(""))
        ]),
        1
    );
}

#[test]
fn versions_and_filesystems() {
    assert_eq!(parse_version("5.10.0-28-arm64"), Some((5, 10)));
    assert_eq!(parse_version("vendor"), None);
    let list = "nodev\tsysfs\nnodev\ttracefs\n\text4\n";
    assert!(filesystem_listed(list, "tracefs"));
    assert!(filesystem_listed(list, "ext4"));
    assert!(!filesystem_listed(list, "cgroup2"));
}

#[test]
fn probe_programs_are_well_formed() {
    let prog = calling(&SENSOR_HELPERS[..3], 0);
    // Two no-argument calls (mov, call) and one with a buffer (4 movs, call), then mov, exit.
    assert_eq!(prog.len(), 2 + 2 + 5 + 2);
    assert_eq!(std::mem::size_of::<Insn>(), 8);
    let last = prog.last().unwrap();
    assert_eq!((last.code, last.imm), (0x95, 0));
    let stack = &prog[4];
    assert_eq!(
        (stack.code, stack.regs),
        (
            0xbf,
            if cfg!(target_endian = "little") {
                0xa1
            } else {
                0x1a
            }
        )
    );
}

/// Every helper the sensors call (a `bpf_…` name in ebpf/src) is in the probe's list, so
/// that `kernel-check` loads what the sensors need.
#[test]
fn the_probe_calls_every_helper_of_the_sensors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf/src");
    let mut used = std::collections::BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("bpf_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let boundary = at == 0
                || !rest[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if boundary {
                used.insert(name.clone());
            }
            rest = &rest[at + name.len()..];
        }
    }
    // aya's wrappers, by the helper they call; names that are not helpers.
    let wrapper = |n: &str| match n {
        "bpf_probe_read_kernel_str_bytes" => "bpf_probe_read_kernel_str".to_string(),
        "bpf_probe_read_user_str_bytes" => "bpf_probe_read_user_str".to_string(),
        other => other.to_string(),
    };
    let not_helpers = ["bpf_target_arch"];
    assert!(used.contains("bpf_probe_read_user"), "scan found {used:?}");
    for name in used.iter().filter(|n| !not_helpers.contains(&n.as_str())) {
        let helper = wrapper(name);
        assert!(
            SENSOR_HELPERS.iter().any(|h| h.name == helper),
            "ebpf/src calls {name}, which kernel-check's SENSOR_HELPERS does not probe"
        );
    }
}
