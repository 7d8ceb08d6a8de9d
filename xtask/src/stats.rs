//! The arithmetic of the benchmarks: medians, ratios, percentiles, verdicts against targets, and
//! numbers printed the way the figures in docs/PERFORMANCE.md have always been printed.

use anyhow::{bail, Result};

/// The median of `values`: the middle one, or the mean of the two middle ones for an even count.
pub fn median(values: &[f64]) -> Result<f64> {
    if values.is_empty() {
        bail!("no samples to take a median of");
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Ok(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// A figure's rounds are too noisy to trust when they spread over more than this share of their
/// median: (highest − lowest) / median. Past it, a verdict against a target says little.
pub const NOISE_LIMIT: f64 = 0.20;

/// The lowest, median and highest of a figure's rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// How many rounds.
    pub rounds: usize,
}

impl Spread {
    /// The spread of `values`; an error when there are none.
    pub fn of(values: &[f64]) -> Result<Self> {
        let median = median(values)?;
        Ok(Spread {
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            median,
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            rounds: values.len(),
        })
    }

    /// The spread of the rounds' own ratios `b[i] / a[i]` (rounds whose `a` is not positive
    /// left out); `None` when no round has one.
    pub fn of_ratios(a: &[f64], b: &[f64]) -> Option<Self> {
        let ratios: Vec<f64> = a
            .iter()
            .zip(b)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, b)| b / a)
            .collect();
        Self::of(&ratios).ok()
    }

    /// (highest − lowest) / median: 0 with one round; infinite when the median is not positive
    /// and the rounds differ.
    pub fn width(&self) -> f64 {
        let range = self.max - self.min;
        if range == 0.0 {
            0.0
        } else if self.median > 0.0 {
            range / self.median
        } else {
            f64::INFINITY
        }
    }

    /// More than one round, spread wider than [`NOISE_LIMIT`].
    pub fn noisy(&self) -> bool {
        self.rounds > 1 && self.width() > NOISE_LIMIT
    }

    /// "LO–HI" with `decimals` decimals.
    pub fn range(&self, decimals: usize) -> String {
        format!("{:.decimals$}–{:.decimals$}", self.min, self.max)
    }

    /// The width as a whole percentage of the median ("56 %").
    pub fn width_percent(&self) -> String {
        format!("{:.0} %", 100.0 * self.width())
    }
}

/// `b / a` with two decimals; "0.00" when `a` is not positive.
pub fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}", if a > 0.0 { b / a } else { 0.0 })
}

/// `100 * part / whole` with no decimals; "0" when `whole` is not positive.
pub fn percent(part: f64, whole: f64) -> String {
    format!(
        "{:.0}",
        if whole > 0.0 {
            100.0 * part / whole
        } else {
            0.0
        }
    )
}

/// The value at quantile `q` (0..=1) of `sorted` (ascending): the element at `q * len`, rounded
/// down, the last one at most.
pub fn percentile(sorted: &[f64], q: f64) -> Result<f64> {
    if sorted.is_empty() {
        bail!("no samples to take a percentile of");
    }
    let i = ((q * sorted.len() as f64) as usize).min(sorted.len() - 1);
    Ok(sorted[i])
}

/// "met" when the figure as printed (`shown`) is at most `target`, else "**missed**": the verdict
/// is on the rounded figure the reader sees.
pub fn verdict(shown: &str, target: f64) -> &'static str {
    if shown.trim().parse::<f64>().unwrap_or(0.0) <= target {
        "met"
    } else {
        "**missed**"
    }
}

/// A number printed as the figures always were: whole numbers in full, others with six
/// significant digits (C's `%.6g`), as a median of an even count can be.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let exponent = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&exponent) {
        let s = format!("{v:.5e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim_zeros(mantissa), exp.abs());
    }
    let decimals = (5 - exponent).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// A figure shown with `decimals` decimals, and the value the reader sees (later figures and
/// verdicts are computed from the rounded one, as they always were).
pub fn rounded(v: f64, decimals: usize) -> (String, f64) {
    let shown = format!("{v:.decimals$}");
    let value = shown.parse().unwrap_or(v);
    (shown, value)
}

/// Kibibytes as mebibytes with one decimal.
pub fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// The civil date (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's
/// algorithm).
pub fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_count_is_the_middle_value() {
        assert_eq!(median(&[5.0, 1.0, 3.0]).unwrap(), 3.0);
        assert_eq!(median(&[7.0]).unwrap(), 7.0);
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 10.0]).unwrap(), 3.5);
        assert_eq!(median(&[2.0, 4.0]).unwrap(), 3.0);
    }

    #[test]
    fn median_sorts_numerically_not_as_text() {
        assert_eq!(median(&[100.0, 9.0, 20.0]).unwrap(), 20.0);
    }

    #[test]
    fn median_of_nothing_is_an_error() {
        assert!(median(&[]).is_err());
    }

    #[test]
    fn ratio_has_two_decimals_and_zero_for_a_zero_base() {
        assert_eq!(ratio(7632.0, 7136.0), "0.94");
        assert_eq!(ratio(2584.0, 17338.0), "6.71");
        assert_eq!(ratio(0.0, 5.0), "0.00");
    }

    #[test]
    fn percent_rounds_and_guards_zero() {
        assert_eq!(percent(1.23, 2.1), "59");
        assert_eq!(percent(3.0, 0.0), "0");
    }

    #[test]
    fn percentiles_pick_an_element_without_interpolation() {
        let lat: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&lat, 0.5).unwrap(), 51.0);
        assert_eq!(percentile(&lat, 0.99).unwrap(), 100.0);
        assert_eq!(percentile(&[3.0, 8.0], 0.99).unwrap(), 8.0);
        assert_eq!(percentile(&[3.0], 0.5).unwrap(), 3.0);
        assert!(percentile(&[], 0.5).is_err());
    }

    #[test]
    fn verdicts_are_on_the_figure_as_shown() {
        assert_eq!(verdict("1.05", 1.05), "met");
        assert_eq!(verdict("1.06", 1.05), "**missed**");
        assert_eq!(verdict("9.99", 9.99), "met");
        assert_eq!(verdict("10.0", 9.99), "**missed**");
    }

    #[test]
    fn numbers_print_whole_or_with_six_significant_digits() {
        assert_eq!(num(7632.0), "7632");
        assert_eq!(num(7636.5), "7636.5");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(1_234_567.5), "1.23457e+06");
        assert_eq!(num(2.25), "2.25");
        assert_eq!(num(1.0 / 3.0), "0.333333");
    }

    #[test]
    fn rounding_is_half_to_even_as_printf() {
        assert_eq!(rounded(0.125, 2).0, "0.12");
        assert_eq!(rounded(2.5, 0).0, "2");
        assert_eq!(rounded(1.049, 1), ("1.0".to_string(), 1.0));
    }

    #[test]
    fn mebibytes_have_one_decimal() {
        assert_eq!(mib(8908.8), "8.7");
        assert_eq!(mib(0.0), "0.0");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_819), (2027, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }

    #[test]
    fn spread_is_lowest_median_highest() {
        let s = Spread::of(&[12.0, 10.0, 11.0, 30.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.rounds), (10.0, 11.5, 30.0, 4));
        assert_eq!(s.range(1), "10.0–30.0");
        assert!((s.width() - 20.0 / 11.5).abs() < 1e-12);
        assert_eq!(s.width_percent(), "174 %");
        assert!(s.noisy());
        assert!(Spread::of(&[]).is_err());
    }

    #[test]
    fn noise_is_judged_against_the_stated_limit() {
        // 20 % of the median exactly is not past the limit; a hair more is.
        assert!(!Spread::of(&[4.0, 5.0, 5.0]).unwrap().noisy());
        assert!(Spread::of(&[4.0, 5.0, 5.01]).unwrap().noisy());
        // One round has no spread to judge, however odd its value.
        let one = Spread::of(&[5.0]).unwrap();
        assert_eq!(one.width(), 0.0);
        assert!(!one.noisy());
        // Identical rounds at zero are steady; differing rounds around a zero median are not.
        assert!(!Spread::of(&[0.0, 0.0]).unwrap().noisy());
        assert!(Spread::of(&[-1.0, 0.0, 1.0]).unwrap().noisy());
    }

    #[test]
    fn spread_of_ratios_pairs_rounds_and_skips_a_zero_base() {
        let s = Spread::of_ratios(&[100.0, 0.0, 200.0, 50.0], &[97.0, 5.0, 302.0, 60.0]).unwrap();
        assert_eq!(s.rounds, 3);
        assert_eq!(s.range(2), "0.97–1.51");
        assert_eq!(s.median, 1.2);
        assert!(s.noisy());
        assert!(Spread::of_ratios(&[0.0], &[1.0]).is_none());
        assert!(Spread::of_ratios(&[], &[]).is_none());
    }
}
