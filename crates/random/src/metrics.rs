//! What the stream producers report about themselves, so a test can observe on the server
//! side that a cancelled stream stopped generating, instead of sleeping and hoping.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use grpc_suite::gauge::{Gauge, GaugeGuard};

/// A cheap, cloneable handle on the producers' counters. Every clone sees the same values.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    inner: Arc<Counters>,
}

#[derive(Debug)]
struct Counters {
    /// Numbers drawn so far, over all streams.
    generated: AtomicU64,
    /// Producers running now.
    active: Gauge,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Counters {
                generated: AtomicU64::new(0),
                active: Gauge::exported(grpc_suite::metrics::RANDOM_STREAMS_OPEN.clone()),
            }),
        }
    }
}

impl StreamMetrics {
    /// How many numbers the producers have drawn, over all streams so far.
    pub fn numbers_generated(&self) -> u64 {
        self.inner.generated.load(Ordering::Relaxed)
    }

    /// How many producers are running now.
    pub fn active_streams(&self) -> usize {
        self.inner.active.get()
    }

    /// Resolves once exactly `count` producers are running (at once if they already are).
    pub async fn wait_for_active_streams(&self, count: usize) {
        self.inner.active.wait_until(|&now| now == count).await;
    }

    /// Counts one drawn number.
    pub(crate) fn record_generated(&self) {
        self.inner.generated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a producer as running until the returned guard is dropped, however the
    /// producer ends (finished, client gone, shutdown, or a panic unwinding).
    pub(crate) fn stream_started(&self) -> ActiveStream {
        self.inner.active.enter()
    }
}

/// Held by a running producer; see [`StreamMetrics::stream_started`].
pub(crate) type ActiveStream = GaugeGuard;

#[cfg(test)]
mod tests {
    use super::*;

    /// The active-stream gauge follows the guards, and a waiter sees it reach zero.
    #[tokio::test]
    async fn guards_drive_the_active_gauge() {
        let metrics = StreamMetrics::default();
        let first = metrics.stream_started();
        let second = metrics.stream_started();
        assert_eq!(metrics.active_streams(), 2);
        drop(first);
        assert_eq!(metrics.active_streams(), 1);
        let waiter = tokio::spawn({
            let metrics = metrics.clone();
            async move { metrics.wait_for_active_streams(0).await }
        });
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken in time")
            .expect("waiter task");
        metrics.record_generated();
        assert_eq!(metrics.numbers_generated(), 1);
    }
}
