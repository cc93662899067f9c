//! Samples and their summaries: medians with min–max for whole-process runs, percentiles for
//! in-process latencies, and ratios taken pair by pair.

use std::time::Duration;

use serde::Serialize;

/// Fewer samples than this and a "p99" is only the largest one or two: it is left out, and
/// min–max says what there is to say.
const P99_MIN_SAMPLES: usize = 100;

/// A set of timings of one thing, in the order they were taken (the k-th of two contenders
/// measured in the same rounds were taken in the same round).
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
        Summary {
            n: v.len(),
            median_ms: quantile(&v, 0.5),
            min_ms: v.first().copied().unwrap_or(f64::NAN),
            max_ms: v.last().copied().unwrap_or(f64::NAN),
            p99_ms: (v.len() >= P99_MIN_SAMPLES).then(|| quantile(&v, 0.99)),
        }
    }

    /// The median over rounds of this set's sample divided by `other`'s in the same round:
    /// a round in which the machine was slow slows both, and cancels out of its ratio, where
    /// a ratio of two medians may take them from different rounds. NaN when there is no pair.
    pub fn paired_ratio(&self, other: &Samples) -> f64 {
        let mut ratios: Vec<f64> = self
            .0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        quantile(&ratios, 0.5)
    }
}

/// The value at quantile `q` of sorted `v` (nearest rank); NaN when `v` is empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// What a table row shows of a set of samples, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Absent with fewer than 100 samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

impl Summary {
    /// A figure that could not be produced from its `n` samples: NaN everywhere, which the
    /// check that every figure was produced reports.
    pub fn failed(n: usize) -> Summary {
        Summary {
            n,
            median_ms: f64::NAN,
            min_ms: f64::NAN,
            max_ms: f64::NAN,
            p99_ms: None,
        }
    }
}
