//! Samples and their summaries: medians with min–max for whole-process runs, percentiles for
//! in-process latencies.

use std::time::Duration;

use serde::Serialize;

/// A set of timings of one thing.
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn summary(&self) -> Summary {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            let i = ((v.len() - 1) as f64 * q).round() as usize;
            v[i]
        };
        Summary {
            n: v.len(),
            median_ms: at(0.5),
            min_ms: v.first().copied().unwrap_or(f64::NAN),
            max_ms: v.last().copied().unwrap_or(f64::NAN),
            p99_ms: at(0.99),
        }
    }
}

/// What a table row shows of a set of samples, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub p99_ms: f64,
}
