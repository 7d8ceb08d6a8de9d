//! The raw measurements a benchmark script records while it runs, one `KEY VALUE` line each
//! (`sample` in bench/lib.sh), read back by `xtask bench-report` to make the figures. A key can
//! be recorded many times (one value per round).

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Default)]
pub struct Samples {
    values: BTreeMap<String, Vec<String>>,
}

impl Samples {
    pub fn parse(text: &str) -> Self {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            if !key.is_empty() {
                values
                    .entry(key.to_string())
                    .or_default()
                    .push(value.trim().to_string());
            }
        }
        Samples { values }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the samples {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Every value recorded under `key`, empty ones left out.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.values
            .get(key)
            .map(|v| {
                v.iter()
                    .map(String::as_str)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last value recorded under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }

    pub fn text(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| anyhow!("no sample {key:?} was recorded"))
    }

    pub fn num(&self, key: &str) -> Result<f64> {
        number(self.text(key)?).with_context(|| format!("sample {key:?}"))
    }

    /// Every value of `key` as a number.
    pub fn nums(&self, key: &str) -> Result<Vec<f64>> {
        self.all(key)
            .into_iter()
            .map(|v| number(v).with_context(|| format!("sample {key:?}")))
            .collect()
    }

    /// Every value of `key`, split into whitespace-separated fields.
    pub fn rows(&self, key: &str) -> Vec<Vec<&str>> {
        self.all(key)
            .into_iter()
            .map(|v| v.split_whitespace().collect())
            .collect()
    }

    pub fn yes(&self, key: &str) -> bool {
        self.get(key) == Some("yes")
    }
}

pub fn number(s: &str) -> Result<f64> {
    s.trim()
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_collect_every_value_in_order() {
        let s =
            Samples::parse("rounds 3\nexec_ms 12\nexec_ms 10\npath /tmp/a b\nempty \nexec_ms 11\n");
        assert_eq!(s.nums("exec_ms").unwrap(), vec![12.0, 10.0, 11.0]);
        assert_eq!(s.num("rounds").unwrap(), 3.0);
        assert_eq!(s.text("path").unwrap(), "/tmp/a b");
        assert!(s.all("empty").is_empty());
        assert!(s.num("missing").is_err());
    }

    #[test]
    fn a_value_that_is_not_a_number_is_an_error() {
        let s = Samples::parse("x 12ms\n");
        assert!(s.nums("x").is_err());
    }

    #[test]
    fn rows_split_fields() {
        let s = Samples::parse("step 10000 20000 2.000 0 0\n");
        assert_eq!(
            s.rows("step"),
            vec![vec!["10000", "20000", "2.000", "0", "0"]]
        );
    }
}
