//! Latency samples and the few statistics the report needs: percentiles of one run's
//! samples, and the median of several runs' figures.

use std::time::Duration;

/// Latencies of one run, in nanoseconds, gathered unsorted and sorted once when read.
///
/// A sorted `Vec` rather than a histogram: a run records at most a few million samples
/// (8 bytes each), and exact percentiles need no bucket-precision caveats in the report.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    nanos: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    /// An empty set with room for `capacity` samples.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            nanos: Vec::with_capacity(capacity),
            sorted: true,
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, latency: Duration) {
        // Saturates at ~584 years, which no call reaches.
        self.nanos
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Latencies) {
        self.nanos.extend(other.nanos);
        self.sorted = false;
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nanos.is_empty()
    }

    /// The `quantile` (0.0..=1.0) by the nearest-rank method, in microseconds; 0 if empty.
    pub fn quantile_us(&mut self, quantile: f64) -> f64 {
        if self.nanos.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.nanos.sort_unstable();
            self.sorted = true;
        }
        let count = self.nanos.len();
        // Nearest rank: the smallest sample with at least `quantile` of all at or below it.
        let rank = (quantile.clamp(0.0, 1.0) * count as f64).ceil() as usize;
        let index = rank.clamp(1, count) - 1;
        self.nanos[index] as f64 / 1_000.0
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 if empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Events per second, guarding against a zero-length interval.
pub fn per_second(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentiles pick real samples: p50 of 1..=100 ms is 50 ms, p99 is 99 ms.
    #[test]
    fn nearest_rank_percentiles() {
        let mut latencies = Latencies::default();
        for millis in (1..=100).rev() {
            latencies.record(Duration::from_millis(millis));
        }
        assert_eq!(latencies.quantile_us(0.5), 50_000.0);
        assert_eq!(latencies.quantile_us(0.99), 99_000.0);
        assert_eq!(latencies.quantile_us(1.0), 100_000.0);
        assert_eq!(Latencies::default().quantile_us(0.5), 0.0);
    }

    /// The median of an odd count is the middle value, of an even count the middle pair's mean.
    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
