//! The tests of bench/agent.sh's report (`agent.rs`).

use super::*;
use crate::report::test_env;

const SAMPLES: &str = "smoke no\nrounds 2\nexecs 5000\nwrites 20000\nconnects 5000
reads 100000\nread_files 1000\nceiling_seconds 2\nhash_mib 512
exec_without_ns 7632400000\nexec_with_ns 7136900000\nexec_cpu_ns_before 1000\nexec_cpu_ns_after 468451000
exec_stopped 15359 19
exec_without_ns 7640000000\nexec_with_ns 7137000000\nexec_cpu_ns_before 0\nexec_cpu_ns_after 468451000
exec_stopped 15361 21
write_without_ns 323000000\nwrite_with_ns 387000000\nwrite_cpu_ns_before 0\nwrite_cpu_ns_after 95085000
write_stopped 20231 22
connect_without_ns 598000000\nconnect_with_ns 647000000\nconnect_cpu_ns_before 0\nconnect_cpu_ns_after 147133000
connect_stopped 10289 27
read_without_ns 500000000\nread_with_ns 510000000\nread_cpu_ns_before 0\nread_cpu_ns_after 2000000
read_stopped 40 3
idle_rss_kib 8908\nbpf_maps 15 3774873 1056768
step 10000 20000 2.000100 0 0
step 0 1000000 2.672 0 3
lost_end 3\nstartup_peak_kib 21913\nload_rss_kib 9830
hash_file 1 512\nhash_file 16 32
hash_1_picket_ns 400000000\nhash_1_openssl_ns 380000000\nhash_16_picket_ns 420000000\nhash_16_openssl_ns 400000000
hash_blocks_picket_bps 1500000000\nopenssl_kbs 1500000.00
hash_1_picket_ns 410000000\nhash_1_openssl_ns 370000000\nhash_16_picket_ns 410000000\nhash_16_openssl_ns 410000000
hash_blocks_picket_bps 1400000000\nopenssl_kbs 1600000.00\nstripped_bytes 4277500\ncross_sizes /nonexistent/sizes.tsv
";

#[test]
fn agent_sections() {
    let r = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
    let titles: Vec<_> = r.sections.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        titles,
        [
            "Agent cost",
            "Event-rate ceiling and memory",
            "Hashing and size"
        ]
    );
    let cost = &r.sections[0].1;
    assert!(cost.starts_with("## Agent cost\n\nMeasured by `bench/agent.sh` (2 rounds, medians) on 2026-11-22: 2 cores, 24 GiB, kernel 6.1.0, commit abc1234.\n"), "{cost}");
    assert!(cost.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms (7632–7640) | 7136.5 ms (7136–7137) | 0.93 (met; rounds 0.93–0.94) | 15360 (15000) | 20 | 30.5 µs (**missed**; rounds 30.5–30.5) |\n"), "{cost}");
    assert!(cost.contains("\n| 20000 opens for writing (python) | 323 ms | 387 ms | 1.20 (**missed**) | 20231 (20000) | 22 | 4.7 µs (met) |\n"), "{cost}");
    assert!(cost.contains("\n| 100000 read-only opens of 1000 files (python) | 500 ms | 510 ms | 1.02 (met) | 40 (0) | 3 | 50.0 µs (no target: the storm sends none) |\n"), "{cost}");
    assert!(cost.contains("\n\nEvery judged figure (slowdowns, CPU per record) is steady: its rounds spread over at most 20 % of its median (highest less lowest).\n\n"), "{cost}");
    assert!(cost.ends_with("\n\nTargets missed: exec CPU per record 30.5 µs; write storm slowdown 1.20; connect storm slowdown 1.08; connect CPU per record 14.3 µs; idle RSS 8.7 MiB;\n"), "{cost}");
    let ceiling = &r.sections[1].1;
    assert!(ceiling.contains("\n| 10000 | 9999 | 20000 | 0 | 0.0 |\n| as fast as possible | 374251 | 1000000 | 3 | 0.0 |\n"), "{ceiling}");
    assert!(
        ceiling.contains("Highest rate without loss: **9999 opens/s**.\n"),
        "{ceiling}"
    );
    assert!(ceiling.contains("| RSS under load (highest of samples every 50 ms through the ceiling steps) | 9.6 MiB | < 16 MiB (met) |"));
    assert!(ceiling.contains("| BPF maps, 15 maps (memlock, from `/proc/PID/fdinfo`) | 3.6 MiB, of which the ring buffer 1.0 MiB |"));
    let hashing = &r.sections[2].1;
    assert!(hashing.contains("\n| a 1 MiB file in memory (tmpfs), hashed 512 times in one process: the agent's `digest_of_file`; `openssl dgst -sha256` with the file 512 times | 1326 MB/s (1309–1342) | 1432 MB/s (1413–1451) | 0.93 (**missed**; rounds 0.90–0.95) |\n"), "{hashing}");
    assert!(hashing.contains("\n| a 16 MiB file in memory (tmpfs), hashed 32 times in one process: the agent's `digest_of_file`; `openssl dgst -sha256` with the file 32 times | 1294 MB/s (1278–1309) | 1326 MB/s (1309–1342) | 0.98 (met; rounds 0.95–1.00) |\n"), "{hashing}");
    assert!(hashing.contains("\n| one 16 KiB block in memory, over and over: the agent's `sha256_chunks`; `openssl speed -evp sha256 -bytes 16384` | 1450 MB/s (1400–1500) | 1550 MB/s (1500–1600) | 0.94 (**missed**; rounds 0.88–1.00) |\n"), "{hashing}");
    assert!(hashing.contains("(x86_64, release): 4177 KiB."));
    assert!(hashing.ends_with(
        ":\n\n    not built (run `scripts/cross.sh build`, which writes target/cross/sizes.tsv)\n"
    ));
    assert_eq!(r.printed, format!("{cost}\n{ceiling}\n{hashing}"));
}

#[test]
fn every_target_met_and_no_loss() {
    let text = SAMPLES
        .replace("exec_cpu_ns_after 468451000", "exec_cpu_ns_after 46845100")
        .replace("write_with_ns 387000000", "write_with_ns 330000000")
        .replace("connect_with_ns 647000000", "connect_with_ns 600000000")
        .replace(
            "connect_cpu_ns_after 147133000",
            "connect_cpu_ns_after 14713300",
        )
        .replace("idle_rss_kib 8908", "idle_rss_kib 7000")
        .replace("lost_end 3", "lost_end 0");
    let r = report(&Samples::parse(&text), &test_env()).unwrap();
    assert!(
        r.sections[0].1.ends_with("\n\nEvery target is met.\n"),
        "{}",
        r.sections[0].1
    );
    assert!(r.sections[1]
        .1
        .contains("**9999 opens/s**. Nothing was lost at any step"));
}

#[test]
fn rounds_spread_past_the_limit_are_called_too_noisy() {
    // The second round of the exec storm ran with the agent 50 % slower, its CPU doubled.
    let text = SAMPLES
        .replace("exec_with_ns 7137000000", "exec_with_ns 11460000000")
        .replace(
            "exec_cpu_ns_before 0\nexec_cpu_ns_after 468451000",
            "exec_cpu_ns_before 0\nexec_cpu_ns_after 936902000",
        );
    let r = report(&Samples::parse(&text), &test_env()).unwrap();
    let cost = &r.sections[0].1;
    assert!(cost.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms (7632–7640) | 9298 ms (7136–11460) | 1.22 (**missed**; rounds 0.94–1.50, noisy) | 15360 (15000) | 20 | 45.7 µs (**missed**; rounds 30.5–61.0, noisy) |\n"), "{cost}");
    assert!(cost.contains("\n\n**Too noisy to trust** (rounds spread over more than 20 % of the median, highest less lowest; the machine's other work varied between rounds): exec storm slowdown (rounds 0.94–1.50: 46 %); exec CPU per record (rounds 30.5–61.0 µs: 67 %). Their verdicts say little;"), "{cost}");
    // One round has no spread to judge.
    let one = SAMPLES.replace(
        "exec_without_ns 7640000000\nexec_with_ns 7137000000\nexec_cpu_ns_before 0\nexec_cpu_ns_after 468451000\nexec_stopped 15361 21\n",
        "",
    );
    assert_ne!(one, SAMPLES);
    let r = report(&Samples::parse(&one), &test_env()).unwrap();
    assert!(
        r.sections[0]
            .1
            .contains("\n\nOne round: no spread to judge the noise by.\n\n"),
        "{}",
        r.sections[0].1
    );
}

/// What `BEFORE=... bench/agent.sh` adds to [`SAMPLES`]: the earlier agent's readings.
const BEFORE: &str = "before_commit f100d4e
exec_before_ns 7900000000\nexec_before_cpu_ns_before 0\nexec_before_cpu_ns_after 921600000
exec_before_stopped 15360 30
exec_before_ns 7800000000\nexec_before_cpu_ns_before 1000\nexec_before_cpu_ns_after 921601000
exec_before_stopped 15360 30
write_before_ns 400000000\nwrite_before_cpu_ns_before 0\nwrite_before_cpu_ns_after 190170000
write_before_stopped 20231 22
connect_before_ns 700000000\nconnect_before_cpu_ns_before 0
connect_before_cpu_ns_after 102890000\nconnect_before_stopped 10289 27
read_before_ns 505000000\nread_before_cpu_ns_before 0\nread_before_cpu_ns_after 1000000
read_before_stopped 50 3
";

#[test]
fn without_an_earlier_agent_there_is_no_before_and_after_table() {
    let r = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
    assert!(
        !r.sections[0].1.contains("Before and after"),
        "{}",
        r.sections[0].1
    );
    assert!(!r.sections[0].1.contains("earlier"), "{}", r.sections[0].1);
}

#[test]
fn an_earlier_agent_gets_a_before_and_after_table() {
    let without = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
    let r = report(&Samples::parse(&format!("{SAMPLES}{BEFORE}")), &test_env()).unwrap();
    let cost = &r.sections[0].1;
    // The storms' table and the targets are those of this agent, as without BEFORE; the
    // comparison follows them.
    let table = cost
        .strip_prefix(without.sections[0].1.as_str())
        .unwrap_or_else(|| panic!("{cost}"));
    assert!(table.starts_with("\n### Before and after (same run)\n\nAn earlier agent (`f100d4e`) ran every storm too (`BEFORE=/path/to/picket bench/agent.sh`):\n"), "{table}");
    assert!(table.contains("\n| storm | without agent | with the earlier agent | with this agent | slowdown, earlier | slowdown, this | CPU per record, earlier | CPU per record, this | CPU per record, this / earlier |\n"), "{table}");
    assert!(table.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms | 7850 ms | 7136.5 ms | 1.03 (rounds 1.02–1.04) | 0.93 (rounds 0.93–0.94) | 60.0 µs | 30.5 µs | 0.51 (rounds 0.51–0.51) |\n"), "{table}");
    assert!(table.contains("\n| 20000 opens for writing (python) | 323 ms | 400 ms | 387 ms | 1.24 | 1.20 | 9.4 µs | 4.7 µs | 0.50 |\n"), "{table}");
    assert!(table.contains("\n| 5000 TCP connections to a loopback listener (python) | 598 ms | 700 ms | 647 ms | 1.17 | 1.08 | 10.0 µs | 14.3 µs | 1.43 |\n"), "{table}");
    assert!(table.ends_with("\n| 100000 read-only opens of 1000 files (python) | 500 ms | 505 ms | 510 ms | 1.01 | 1.02 | 20.0 µs | 50.0 µs | 2.50 |\n"), "{table}");
    // The other sections do not change.
    assert_eq!(r.sections[1..], without.sections[1..]);
}

/// What this agent's runs with the policy without its behavioural section add.
const PLAIN: &str =
    "exec_plain_ns 7400000000\nexec_plain_cpu_ns_before 0\nexec_plain_cpu_ns_after 437000000
exec_plain_stopped 15360 19
exec_plain_ns 7400000000\nexec_plain_cpu_ns_before 0\nexec_plain_cpu_ns_after 437000000
exec_plain_stopped 15360 19
write_plain_ns 380000000\nwrite_plain_cpu_ns_before 0\nwrite_plain_cpu_ns_after 95085000
write_plain_stopped 20231 22
connect_plain_ns 640000000\nconnect_plain_cpu_ns_before 0\nconnect_plain_cpu_ns_after 147133000
connect_plain_stopped 10289 27
read_plain_ns 505000000\nread_plain_cpu_ns_before 0\nread_plain_cpu_ns_after 2000000
read_plain_stopped 40 3
";

#[test]
fn runs_without_the_behavioural_section_get_their_table() {
    let without = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
    assert!(
        !without.sections[0].1.contains("behavioural section costs"),
        "{}",
        without.sections[0].1
    );
    let r = report(&Samples::parse(&format!("{SAMPLES}{PLAIN}")), &test_env()).unwrap();
    let cost = &r.sections[0].1;
    let table = cost
        .strip_prefix(without.sections[0].1.as_str())
        .unwrap_or_else(|| panic!("{cost}"));
    assert!(
        table.starts_with("\n### What the behavioural section costs (same run)\n\n"),
        "{table}"
    );
    assert!(table.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms | 7400 ms | 7136.5 ms | 0.97 (rounds 0.97–0.97) | 0.93 (rounds 0.93–0.94) | 437.0 ms | 468.5 ms | 28.5 µs | 30.5 µs | 1.07 (rounds 1.07–1.07) |\n"), "{table}");
    assert!(table.ends_with("\n| 100000 read-only opens of 1000 files (python) | 500 ms | 505 ms | 510 ms | 1.01 | 1.02 | 2.0 ms | 2.0 ms | 50.0 µs | 50.0 µs | 1.00 |\n"), "{table}");
    // With an earlier agent too, its table follows.
    let r = report(
        &Samples::parse(&format!("{SAMPLES}{PLAIN}{BEFORE}")),
        &test_env(),
    )
    .unwrap();
    let cost = &r.sections[0].1;
    let costs = cost.find("### What the behavioural section costs").unwrap();
    let before = cost.find("### Before and after").unwrap();
    assert!(costs < before, "{cost}");
    let text = format!("{SAMPLES}{PLAIN}").replace("read_plain_stopped", "other");
    let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
    assert!(format!("{err:#}").contains("read_plain_stopped"), "{err:#}");
}

/// What this agent's enforcing runs add, for the exec and connect storms only.
const ENFORCE: &str = "exec_enforce_ns 8000000000\nexec_enforce_cpu_ns_before 0
exec_enforce_cpu_ns_after 500000000\nexec_enforce_stopped 15370 4\nexec_enforce_judged 10200
exec_enforce_ns 8100000000\nexec_enforce_cpu_ns_before 1000\nexec_enforce_cpu_ns_after 520001000
exec_enforce_stopped 15370 4\nexec_enforce_judged 10000
connect_enforce_ns 610000000\nconnect_enforce_cpu_ns_before 0\nconnect_enforce_cpu_ns_after 140000000
connect_enforce_stopped 10000 4
connect_enforce_ns 620000000\nconnect_enforce_cpu_ns_before 0\nconnect_enforce_cpu_ns_after 140000000
connect_enforce_stopped 10000 4
enforce_refused 0
";

#[test]
fn enforcing_runs_get_their_table() {
    let without = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
    assert!(
        !without.sections[0].1.contains("Enforcement"),
        "{}",
        without.sections[0].1
    );
    let r = report(&Samples::parse(&format!("{SAMPLES}{ENFORCE}")), &test_env()).unwrap();
    let cost = &r.sections[0].1;
    // The exec storm meets the enforcing target: the targets are those without the runs,
    // and the table follows them.
    let head = &without.sections[0].1;
    let table = cost
        .strip_prefix(head.as_str())
        .and_then(|t| t.strip_prefix("\n### Enforcement (same run)\n\n"))
        .unwrap_or_else(|| panic!("{cost}"));
    assert!(table.contains("\n| storm | without agent | alert (dry run) | enforce | slowdown, alert | slowdown, enforce | enforce / alert | agent CPU, alert | agent CPU, enforce | CPU per record, alert | CPU per record, enforce | decisions (the storm's) | agent CPU per decision, enforce |\n"), "{table}");
    assert!(table.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms | 7136.5 ms | 8050 ms | 0.93 (rounds 0.93–0.94) | 1.05 (target ≤ 1.10: met; rounds 1.05–1.06) | 1.13 (rounds 1.12–1.13) | 468.5 ms | 510.0 ms | 30.5 µs | 33.2 µs | 10100 judged (10000) | 50.5 µs |\n"), "{table}");
    // Without the agent's count, the storm's decisions.
    let text = format!("{SAMPLES}{ENFORCE}")
        .replace("exec_enforce_judged 10200", "exec_enforce_judged")
        .replace("exec_enforce_judged 10000", "exec_enforce_judged");
    let r = report(&Samples::parse(&text), &test_env()).unwrap();
    assert!(
        r.sections[0]
            .1
            .contains(" | 30.5 µs | 33.2 µs | 10000 (the storm's; not counted) | 51.0 µs |\n"),
        "{}",
        r.sections[0].1
    );
    assert!(table.contains("\n| 5000 TCP connections to a loopback listener (python) | 598 ms | 647 ms | 615 ms | 1.08 | 1.03 | 0.95 | 147.1 ms | 140.0 ms | 14.3 µs | 14.0 µs | 5001 in the kernel (each connect, and the listener's bind) | none: the kernel judges |\n"), "{table}");
    // Only the storms that ran enforcing have a row.
    assert!(!table.contains("opens for writing"), "{table}");
    assert!(!table.contains("read-only opens"), "{table}");
    assert!(table.ends_with("\n\nNothing on the machine was refused during the enforcing runs, and both guards were in force.\n"), "{table}");
    // The other sections do not change.
    assert_eq!(r.sections[1..], without.sections[1..]);
}

#[test]
fn enforcing_past_its_target_or_refusing_is_reported() {
    let text = format!("{SAMPLES}{ENFORCE}")
        .replace("exec_enforce_ns 8000000000", "exec_enforce_ns 9000000000")
        .replace("exec_enforce_ns 8100000000", "exec_enforce_ns 9100000000")
        .replace("enforce_refused 0", "enforce_refused 2");
    let r = report(&Samples::parse(&text), &test_env()).unwrap();
    let cost = &r.sections[0].1;
    assert!(
        cost.contains(" connect CPU per record 14.3 µs; exec storm slowdown enforcing 1.19; idle RSS 8.7 MiB;\n"),
        "{cost}"
    );
    assert!(
        cost.contains(" | 1.19 (target ≤ 1.10: **missed**; rounds 1.18–1.19) | "),
        "{cost}"
    );
    assert!(cost.contains("\n\n**2 alerts** during the enforcing runs say that something on the machine was refused"), "{cost}");
    let text = format!("{SAMPLES}{ENFORCE}").replace("connect_enforce_stopped", "other");
    let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
    assert!(
        format!("{err:#}").contains("connect_enforce_stopped"),
        "{err:#}"
    );
}

#[test]
fn missing_samples_of_the_earlier_agent_are_an_error() {
    let text = format!("{SAMPLES}{BEFORE}").replace("write_before_stopped", "other");
    let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
    assert!(
        format!("{err:#}").contains("write_before_stopped"),
        "{err:#}"
    );
    let text = format!("{SAMPLES}{BEFORE}").replace("before_commit", "other");
    let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
    assert!(format!("{err:#}").contains("before_commit"), "{err:#}");
}

#[test]
fn missing_samples_are_an_error() {
    let text = SAMPLES.replace("write_with_ns", "other");
    let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
    assert!(format!("{err:#}").contains("write_with_ns"), "{err:#}");
}

#[test]
fn without_openssl_the_hashing_has_no_reference() {
    let text: String = SAMPLES
        .lines()
        .flat_map(|l| l.split("\\n"))
        .filter(|l| !l.contains("openssl"))
        .map(|l| format!("{l}\n"))
        .collect();
    let r = report(&Samples::parse(&text), &test_env()).unwrap();
    let hashing = &r.sections[2].1;
    assert!(hashing.contains(" hashed 512 times in one process: the agent's `digest_of_file`; `openssl dgst -sha256` with the file 512 times | 1326 MB/s (1309–1342) | not measured | |\n"), "{hashing}");
    assert!(hashing.contains(" `openssl speed -evp sha256 -bytes 16384` | 1450 MB/s (1400–1500) | not measured | |\n"), "{hashing}");
    // A file size without its rounds is an error naming the samples.
    let text = SAMPLES.replace("hash_16_picket_ns", "other");
    let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
    assert!(format!("{err:#}").contains("hash_file"), "{err:#}");
}
