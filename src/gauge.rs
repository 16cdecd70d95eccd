//! A live count of in-flight work (streams, uploads, chat members) that tests and operators
//! can read or await, so "the server stopped working for a client that left" is observed,
//! not slept on. A [`GaugeGuard`] lives inside the task or file it counts, so the gauge
//! falls back only once that work has really ended. A gauge can also mirror its count into a
//! Prometheus gauge of [`crate::metrics`], so operators see the same figure.

use std::sync::Arc;

use tokio::sync::watch;

/// A count of live things that can be read now or awaited until it reaches a value.
#[derive(Debug, Clone, Default)]
pub struct Gauge {
    /// A watch channel rather than an atomic, so a waiter is woken on each change instead
    /// of polling. Shared: the service, its tasks and observers all hold the same gauge.
    count: Arc<watch::Sender<usize>>,
    /// The Prometheus gauge that follows this count, if any.
    exported: Option<prometheus::IntGauge>,
}

impl Gauge {
    /// A gauge whose count `metric` follows too (every guard raises both).
    pub fn exported(metric: prometheus::IntGauge) -> Self {
        Self {
            count: Arc::default(),
            exported: Some(metric),
        }
    }

    /// Counts one more live thing until the returned guard is dropped.
    pub fn enter(&self) -> GaugeGuard {
        self.count.send_modify(|count| *count += 1);
        if let Some(metric) = &self.exported {
            metric.inc();
        }
        GaugeGuard {
            count: Arc::clone(&self.count),
            exported: self.exported.clone(),
        }
    }

    /// The count now.
    pub fn get(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until the count satisfies `condition` (returns at once if it already does).
    pub async fn wait_until(&self, condition: impl FnMut(&usize) -> bool) -> usize {
        let mut receiver = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        match receiver.wait_for(condition).await {
            Ok(count) => *count,
            Err(_) => self.get(),
        }
    }
}

/// Holds one unit of a [`Gauge`]; dropping it gives the unit back.
#[derive(Debug)]
pub struct GaugeGuard {
    count: Arc<watch::Sender<usize>>,
    exported: Option<prometheus::IntGauge>,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.count
            .send_modify(|count| *count = count.saturating_sub(1));
        if let Some(metric) = &self.exported {
            metric.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard raises the gauge for exactly its own lifetime, and waiters see the change.
    #[tokio::test]
    async fn guard_counts_its_lifetime() {
        let gauge = Gauge::default();
        let first = gauge.enter();
        let second = gauge.enter();
        assert_eq!(gauge.get(), 2);
        drop(first);
        assert_eq!(gauge.get(), 1);
        let waiter = {
            let gauge = gauge.clone();
            tokio::spawn(async move { gauge.wait_until(|count| *count == 0).await })
        };
        drop(second);
        assert_eq!(waiter.await.expect("waiter"), 0);
    }
}
