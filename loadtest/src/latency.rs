//! Latency recording shared by many receiver tasks: each task buffers samples locally and
//! flushes them in batches into one of a few locked HDR histograms, merged at the end.

use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::Serialize;

const SHARDS: usize = 16;
const BATCH: usize = 256;
const HIGHEST_MICROS: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
        .expect("constant bounds 1..1h with 3 significant figures are valid")
}

/// The shared, sharded histograms.
#[derive(Clone)]
pub struct Latencies {
    shards: Arc<[Mutex<Histogram<u64>>]>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }
}

impl Latencies {
    /// A local recorder for receiver number `index`.
    pub fn recorder(&self, index: usize) -> Recorder {
        Recorder {
            shared: self.clone(),
            shard: index % SHARDS,
            buf: Vec::with_capacity(BATCH),
        }
    }

    /// Everything recorded so far (flushed samples only), merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in self.shards.iter() {
            let h = shard.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds on both sides, so adding cannot fail.
            let _ = all.add(&*h);
        }
        all
    }
}

/// One task's buffer of samples; flushes when full and when dropped.
pub struct Recorder {
    shared: Latencies,
    shard: usize,
    buf: Vec<u64>,
}

impl Recorder {
    /// Records one latency in microseconds.
    #[inline]
    pub fn record(&mut self, micros: u64) {
        self.buf.push(micros);
        if self.buf.len() >= BATCH {
            self.flush();
        }
    }

    /// Moves the buffered samples into the shared histogram.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut h = self.shared.shards[self.shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for &v in &self.buf {
            h.saturating_record(v.max(1));
        }
        drop(h);
        self.buf.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Percentiles for the report, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl LatencySummary {
    /// Summarizes a histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    /// One human line: `p50 1.2 ms  p99 …`.
    pub fn human(&self) -> String {
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.count
        )
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_flush_into_the_merged_histogram() {
        let l = Latencies::default();
        {
            let mut a = l.recorder(0);
            let mut b = l.recorder(1);
            for i in 1..=1000 {
                a.record(i);
                b.record(i);
            }
        }
        let s = LatencySummary::of(&l.merged());
        assert_eq!(s.count, 2000);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
    }
}
