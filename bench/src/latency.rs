//! Latency histograms: one per task (no sharing in the hot loop), merged at the end.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly, in µs; slower samples saturate at it (and still
/// show as "max = 60 s", which is what a user needs to know).
const HIGHEST_US: u64 = 60_000_000;

/// Significant digits: 0.1 % error, as kafka-producer-perf-test and nats bench report.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in microseconds.
///
/// `u32` counts: every loop and consumer task owns one, and with 32-bit counters a
/// histogram over 1 µs..60 s at 3 digits is about 70 KB instead of 140 KB; no bucket of
/// one run comes near 4 billion samples.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u32>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram covering 1 µs to 60 s.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts; a failure here is a bug in
        // this file, not a condition of the run.
        let hist = Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Latency { hist }
    }

    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one sample given in µs (clamped into the histogram's range).
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, HIGHEST_US));
    }

    /// Adds another task's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so addition cannot fail; saturate if it ever did.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of samples.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles the table and the report show.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        let q = |q: f64| self.hist.value_at_quantile(q);
        LatencySummary {
            samples: self.hist.len(),
            mean_us: self.hist.mean(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: self.hist.max(),
        }
    }
}

/// Percentiles of one histogram, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples behind the figures (0 = no figures).
    pub samples: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest sample.
    pub max_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_merged_histograms() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=500u64 {
            a.record_us(us * 10);
        }
        for us in 501..=1000u64 {
            b.record_us(us * 10);
        }
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.samples, 1000);
        assert!((4990..=5010).contains(&s.p50_us), "p50 {}", s.p50_us);
        assert!((9890..=9910).contains(&s.p99_us), "p99 {}", s.p99_us);
        assert!((9995..=10010).contains(&s.max_us), "max {}", s.max_us);
    }

    #[test]
    fn empty_histogram_reports_zero_samples() {
        assert_eq!(Latency::new().summary().samples, 0);
    }
}
