//! Order statistics, growth fits and number formatting for the benchmark
//! tables.
#![allow(dead_code)]

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Median, min and max of `xs` (any unit). Panics on an empty slice: a
/// benchmark with no samples is a bug in the harness.
pub fn summary(xs: &[f64]) -> Summary {
    assert!(!xs.is_empty(), "no samples");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Summary {
        n: v.len(),
        median,
        min: v[0],
        max: v[v.len() - 1],
    }
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A time in seconds, in the unit that reads best: `812 µs`, `2.41 ms`.
pub fn fmt_time(s: f64) -> String {
    if s < 1e-8 {
        format!("{:.1} ns", s * 1e9)
    } else if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Bytes as KiB or MiB.
pub fn fmt_bytes(b: f64) -> String {
    if b < 1024.0 * 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    }
}

/// The exponent `k` in `t ∝ n^k` between two measurements.
pub fn exponent(n1: f64, t1: f64, n2: f64, t2: f64) -> f64 {
    (t2 / t1).ln() / (n2 / n1).ln()
}

/// The exponent `n log n` itself shows between `n1` and `n2`: slightly above
/// 1 (1.13 from 1,000 to 10,000). Growth within it is "no faster than
/// n log n".
pub fn nlogn_exponent(n1: f64, n2: f64) -> f64 {
    let f = |n: f64| n * n.max(2.0).ln();
    exponent(n1, f(n1), n2, f(n2))
}

/// The `p`-th percentile (0 to 100) of `xs`, nearest rank: a value that
/// was measured. Panics on an empty slice.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    assert!(!xs.is_empty(), "no samples");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
