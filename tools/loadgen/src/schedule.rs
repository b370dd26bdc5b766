//! When messages are meant to be sent, and the phases of a run.
//!
//! Open loop: the total rate R is split over P producers by interleaving one global schedule,
//! message n of the whole run due at `start + n / R`; producer k sends the messages n = i*P + k.
//! Each intended time is computed from its index (no accumulated step), so the schedule does not
//! drift. A producer that falls behind still owes every message of its schedule, and each
//! message's latency is measured from its intended time: a stall of the broker shows up as
//! latency of every message that should have gone out meanwhile (coordinated-omission
//! correction) instead of as a lower send rate.

use serde::Serialize;

pub const NS_PER_S: u64 = 1_000_000_000;

/// The open-loop schedule of one producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSchedule {
    start_ns: u64,
    rate_msgs_per_s: u64,
    producers: u64,
    index: u64,
}

impl OpenSchedule {
    /// Producer `index` of `producers` sharing `rate_msgs_per_s` (> 0) from `start_ns`.
    pub fn new(start_ns: u64, rate_msgs_per_s: u64, producers: u32, index: u32) -> OpenSchedule {
        assert!(rate_msgs_per_s > 0, "an open-loop schedule needs a rate");
        assert!(index < producers, "producer {index} of {producers}");
        OpenSchedule {
            start_ns,
            rate_msgs_per_s,
            producers: producers.into(),
            index: index.into(),
        }
    }

    /// Intended send time of this producer's message `i` (saturating far in the future).
    pub fn intended_ns(&self, i: u64) -> u64 {
        let n = u128::from(i) * u128::from(self.producers) + u128::from(self.index);
        let offset = n * u128::from(NS_PER_S) / u128::from(self.rate_msgs_per_s);
        u64::try_from(offset)
            .ok()
            .and_then(|o| self.start_ns.checked_add(o))
            .unwrap_or(u64::MAX)
    }

    /// How many of this producer's messages are due before `end_ns`.
    pub fn count_before(&self, end_ns: u64) -> u64 {
        let span = u128::from(end_ns.saturating_sub(self.start_ns));
        // intended(n) < end  <=>  floor(n * 1e9 / R) < span  <=>  n * 1e9 < span * R
        // <=>  n < ceil(span * R / 1e9): the global messages due are 0..due.
        let due = (span * u128::from(self.rate_msgs_per_s)).div_ceil(u128::from(NS_PER_S));
        let (p, k) = (u128::from(self.producers), u128::from(self.index));
        let mine = if due > k { (due - k).div_ceil(p) } else { 0 };
        u64::try_from(mine).unwrap_or(u64::MAX)
    }
}

/// A run's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Messages are sent but not counted.
    Warmup,
    /// Messages sent now count in the histograms and throughput.
    Measure,
    /// No new messages; waiting for delivery reports and consumers.
    Drain,
}

/// The time line of a run, in ns since the base instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Producers start.
    pub start_ns: u64,
    /// Warm-up ends and the measurement begins.
    pub warmup_end_ns: u64,
    /// The measurement ends; producers send nothing due from here on.
    pub end_ns: u64,
    /// Delivery reports and consumers are waited for until here.
    pub drain_deadline_ns: u64,
}

impl Window {
    pub fn new(start_ns: u64, warmup_s: u64, duration_s: u64, drain_timeout_s: u64) -> Window {
        let warmup_end_ns = start_ns.saturating_add(warmup_s.saturating_mul(NS_PER_S));
        let end_ns = warmup_end_ns.saturating_add(duration_s.saturating_mul(NS_PER_S));
        Window {
            start_ns,
            warmup_end_ns,
            end_ns,
            drain_deadline_ns: end_ns.saturating_add(drain_timeout_s.saturating_mul(NS_PER_S)),
        }
    }

    /// A message meant to be sent at `send_ns` counts in the results.
    pub fn measured(&self, send_ns: u64) -> bool {
        (self.warmup_end_ns..self.end_ns).contains(&send_ns)
    }

    pub fn phase(&self, now_ns: u64) -> Phase {
        if now_ns < self.warmup_end_ns {
            Phase::Warmup
        } else if now_ns < self.end_ns {
            Phase::Measure
        } else {
            Phase::Drain
        }
    }

    /// Seconds of the measurement.
    pub fn measured_s(&self) -> f64 {
        (self.end_ns - self.warmup_end_ns) as f64 / NS_PER_S as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_producer_is_evenly_spaced() {
        let s = OpenSchedule::new(1_000, 4, 1, 0);
        let t: Vec<u64> = (0..5).map(|i| s.intended_ns(i)).collect();
        assert_eq!(t, [1_000, 250_001_000, 500_001_000, 750_001_000, 1_000_001_000]);
    }

    #[test]
    fn producers_interleave_into_one_uniform_schedule() {
        // 3 producers sharing 7 msgs/s: merged, the sends are the global schedule n/7 s.
        let producers = 3;
        let scheds: Vec<OpenSchedule> = (0..producers)
            .map(|k| OpenSchedule::new(0, 7, producers, k))
            .collect();
        let mut merged: Vec<u64> = scheds
            .iter()
            .flat_map(|s| (0..10).map(move |i| s.intended_ns(i)))
            .collect();
        merged.sort_unstable();
        let global: Vec<u64> = (0..30u64).map(|n| n * NS_PER_S / 7).collect();
        assert_eq!(merged, global);
    }

    #[test]
    fn the_schedule_does_not_drift() {
        // A rate whose interval is not a whole number of ns: after a million messages the
        // intended time is within 1 ns of the exact one.
        let s = OpenSchedule::new(0, 3, 1, 0);
        assert_eq!(s.intended_ns(3_000_000), 1_000_000 * NS_PER_S);
        assert_eq!(s.intended_ns(1), 333_333_333);
    }

    #[test]
    fn count_before_matches_the_schedule() {
        for (rate, producers) in [(1, 1), (7, 3), (1000, 2), (99_991, 5), (3, 4)] {
            for k in 0..producers {
                let s = OpenSchedule::new(500, rate, producers, k);
                for end in [
                    0,
                    499,
                    500,
                    501,
                    1_000_000,
                    NS_PER_S,
                    NS_PER_S + 500,
                    3 * NS_PER_S + 7,
                ] {
                    let brute = (0..10_000_000u64).take_while(|&i| s.intended_ns(i) < end).count() as u64;
                    assert_eq!(
                        s.count_before(end),
                        brute,
                        "rate {rate} producer {k}/{producers} end {end}"
                    );
                }
            }
        }
    }

    #[test]
    fn far_future_saturates() {
        let s = OpenSchedule::new(u64::MAX - 10, 1, 1, 0);
        assert_eq!(s.intended_ns(1), u64::MAX);
    }

    #[test]
    fn window_phases() {
        let w = Window::new(100, 2, 3, 4);
        assert_eq!(w.warmup_end_ns, 100 + 2 * NS_PER_S);
        assert_eq!(w.end_ns, 100 + 5 * NS_PER_S);
        assert_eq!(w.drain_deadline_ns, 100 + 9 * NS_PER_S);
        assert_eq!(w.phase(100), Phase::Warmup);
        assert_eq!(w.phase(w.warmup_end_ns), Phase::Measure);
        assert_eq!(w.phase(w.end_ns - 1), Phase::Measure);
        assert_eq!(w.phase(w.end_ns), Phase::Drain);
        assert!(!w.measured(w.warmup_end_ns - 1));
        assert!(w.measured(w.warmup_end_ns));
        assert!(!w.measured(w.end_ns));
        assert_eq!(w.measured_s(), 3.0);
        let no_warmup = Window::new(0, 0, 1, 1);
        assert_eq!(no_warmup.phase(0), Phase::Measure);
    }
}
