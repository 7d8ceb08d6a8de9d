//! bench/scan.sh: `picket baseline scan` against `find | xargs -P sha256sum`, cold and warm
//! cache, and the verification of a signed policy of 10,000 entries. The "Integrity scan"
//! section.
//!
//! Samples: `files`, `rounds`, `nproc`, `bytes` (of the tree), `cold` (yes when the page cache
//! could be dropped); per round `cold_picket_ns`, `cold_sha256sum_ns`, `warm_picket_ns`,
//! `warm_sha256sum_ns`, `verify_ns`, `version_ns`.

use super::{ms, range_in_parens, rounds_of, us, Env, Report};
use crate::samples::Samples;
use crate::stats::{median, num, ratio, Spread};
use anyhow::{Context, Result};

pub fn report(s: &Samples, env: &Env) -> Result<Report> {
    let files = s.text("files")?;
    let nproc = s.text("nproc")?;
    let mib = format!("{:.0}", s.num("bytes")? / 1_048_576.0);
    let mut table =
        "| measure | picket | baseline | ratio (baseline / picket; > 1 means picket is faster) |
| --- | --- | --- | --- |"
            .to_string();
    for cache in ["cold", "warm"] {
        let picket = ms(&s.nums(&format!("{cache}_picket_ns"))?);
        if picket.is_empty() {
            continue;
        }
        let p = median(&picket).context(format!("{cache}_picket_ns"))?;
        let baseline = ms(&s.nums(&format!("{cache}_sha256sum_ns"))?);
        let b = median(&baseline).context(format!("{cache}_sha256sum_ns"))?;
        table += &format!(
            "\n| scan, {cache} cache ({files} files, {mib} MiB) | {} ms{} | {} ms{} (`find \\| xargs -P{nproc} sha256sum`) | {}{} |",
            num(p),
            range_in_parens(&picket, 0),
            num(b),
            range_in_parens(&baseline, 0),
            ratio(p, b),
            match rounds_of(Spread::of_ratios(&picket, &baseline), 2, "") {
                r if r.is_empty() => r,
                r => format!(" ({r})"),
            },
        );
    }
    let verify = median(&us(&s.nums("verify_ns")?)).context("verify_ns")?;
    let start = median(&us(&s.nums("version_ns")?)).context("version_ns")?;
    table += &format!(
        "\n| verify a signed policy of 10,000 entries | {} µs | {} µs (`picket --version`: process start) | verification itself: {} µs |",
        num(verify),
        num(start),
        num((verify - start).max(0.0))
    );
    if !s.yes("cold") {
        table += "\n\n\nCold-cache figures are missing: dropping the page cache needs root.";
    }
    let section = format!(
        "## Integrity scan

Measured by `bench/scan.sh` ({rounds} rounds, medians; in parentheses the lowest and highest of the rounds, and of the rounds' own ratios) on {today}: {machine}.

{table}
",
        rounds = s.text("rounds")?,
        today = env.today,
        machine = env.machine,
    );
    Ok(Report {
        printed: table,
        sections: vec![("Integrity scan", section)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_env;

    const SAMPLES: &str = "files 20000\nrounds 1\nnproc 2\nbytes 1691353088\ncold yes
cold_picket_ns 5354100000\ncold_sha256sum_ns 20112900000
warm_picket_ns 2584000000\nwarm_sha256sum_ns 17338000000
verify_ns 17424900\nversion_ns 3546100
";

    #[test]
    fn integrity_scan_section() {
        let r = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
        assert_eq!(
            r.sections[0].1,
            "## Integrity scan

Measured by `bench/scan.sh` (1 rounds, medians; in parentheses the lowest and highest of the rounds, and of the rounds' own ratios) on 2026-11-22: 2 cores, 24 GiB, kernel 6.1.0, commit abc1234.

| measure | picket | baseline | ratio (baseline / picket; > 1 means picket is faster) |
| --- | --- | --- | --- |
| scan, cold cache (20000 files, 1613 MiB) | 5354 ms | 20112 ms (`find \\| xargs -P2 sha256sum`) | 3.76 |
| scan, warm cache (20000 files, 1613 MiB) | 2584 ms | 17338 ms (`find \\| xargs -P2 sha256sum`) | 6.71 |
| verify a signed policy of 10,000 entries | 17424 µs | 3546 µs (`picket --version`: process start) | verification itself: 13878 µs |
"
        );
        assert!(r.sections[0].1.ends_with(&format!("{}\n", r.printed)));
    }

    #[test]
    fn rounds_show_their_lowest_and_highest() {
        let text = format!(
            "{SAMPLES}cold_picket_ns 5454100000\ncold_sha256sum_ns 10112900000\nwarm_picket_ns 2600000000\nwarm_sha256sum_ns 17000000000\n"
        );
        let r = report(&Samples::parse(&text), &test_env()).unwrap();
        assert!(r.printed.contains("\n| scan, cold cache (20000 files, 1613 MiB) | 5404 ms (5354–5454) | 15112 ms (10112–20112) (`find \\| xargs -P2 sha256sum`) | 2.80 (rounds 1.85–3.76, noisy) |\n"), "{}", r.printed);
        assert!(r.printed.contains("\n| scan, warm cache (20000 files, 1613 MiB) | 2592 ms (2584–2600) | 17169 ms (17000–17338) (`find \\| xargs -P2 sha256sum`) | 6.62 (rounds 6.54–6.71) |\n"), "{}", r.printed);
    }

    #[test]
    fn without_root_the_cold_figures_are_left_out_and_said_to_be() {
        let text = "files 200\nrounds 1\nnproc 2\nbytes 1000\ncold no
warm_picket_ns 2000000\nwarm_sha256sum_ns 3000000\nverify_ns 3000\nversion_ns 5000\n";
        let r = report(&Samples::parse(text), &test_env()).unwrap();
        assert!(!r.printed.contains("cold cache ("), "{}", r.printed);
        assert!(r
            .printed
            .contains("| scan, warm cache (200 files, 0 MiB) | 2 ms | 3 ms"));
        assert!(r.printed.contains("verification itself: 0 µs |"));
        assert!(r.printed.ends_with(
            "|\n\n\nCold-cache figures are missing: dropping the page cache needs root."
        ));
    }
}
