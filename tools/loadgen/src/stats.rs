//! Latency histograms (HdrHistogram, microseconds) and their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest latency told apart from zero, µs.
pub const LATENCY_US_LOWEST: u64 = 1;
/// Highest latency tracked, µs (60 s); longer ones are recorded as 60 s.
pub const LATENCY_US_HIGHEST: u64 = 60_000_000;
/// Significant decimal digits kept (0.1 % relative error).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram: 1 µs .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LATENCY_US_LOWEST, LATENCY_US_HIGHEST, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|e| panic!("the latency histogram bounds are constants and valid: {e}"))
}

/// Records a latency given in ns (rounded down to µs, clamped to the histogram's range).
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns / 1_000);
}

/// Percentiles of one latency histogram, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub p99_99_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// The summary of `h`; all zero if it is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            samples: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p99_9_us: h.value_at_quantile(0.999),
            p99_99_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        }
    }

    /// The percentiles in order, ending with the maximum.
    pub fn ordered(&self) -> [u64; 6] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p99_9_us,
            self.p99_99_us,
            self.max_us,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_histogram_summarizes_to_zero() {
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn summary_of_a_known_distribution() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            record_ns(&mut h, us * 1_000 + 999);
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.samples, 10_000);
        let within = |got: u64, want: u64| got.abs_diff(want) <= want / 500 + 1;
        assert!(within(s.p50_us, 5_000), "{s:?}");
        assert!(within(s.p90_us, 9_000), "{s:?}");
        assert!(within(s.p99_us, 9_900), "{s:?}");
        assert!(within(s.max_us, 10_000), "{s:?}");
        assert!(s.ordered().windows(2).all(|w| w[0] <= w[1]), "{s:?}");
    }

    #[test]
    fn out_of_range_latencies_are_clamped() {
        let mut h = new_histogram();
        record_ns(&mut h, 0);
        record_ns(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 0);
        assert!(h.max() >= LATENCY_US_HIGHEST && h.max() <= LATENCY_US_HIGHEST * 1001 / 1000);
    }
}
