//! The paired bootstrap over test patches (docs/results.md, "Comparing two jobs"): the same
//! resample of patches is scored for both jobs, so what the two have in common (hard and easy
//! patches) cancels out of their difference.
//!
//! Resample r of B draws, with the counter-based generator below, first S seed pairs (with
//! replacement, from the S paired seeds) and then N patches (with replacement, from the N test
//! patches); its difference is the mean over the drawn seed pairs of metric(A) − metric(B) on
//! the drawn patches. With one seed pair this is the plain paired bootstrap; with several, the
//! seeds' spread enters the interval too (a two-level bootstrap). The interval is the 2.5 and
//! 97.5 percentiles of the B differences (linear interpolation, numpy's default), and the
//! share of resamples where A is better is the share of differences above 0.
//!
//! The generator is SplitMix64 used as a counter: draw j of resample r is
//! `mix(key_r + j)` with `key_r = mix(seed + r)`, `mix(x)` SplitMix64's output for state x
//! (all arithmetic modulo 2^64), and a draw x picks item `((x >> 32) · n) >> 32` of n. Any
//! implementation reproduces it exactly (tests/python/test_results.py does in numpy).

use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::metrics::Counts;
use lossbench_core::ranking::{average_precision_sorted, descending};
use serde::Serialize;

/// The metrics compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    MicroF1,
    MacroF1,
    SamplesF1,
    MapMacro,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::MicroF1,
        Metric::MacroF1,
        Metric::SamplesF1,
        Metric::MapMacro,
    ];

    /// The name of the metric's column in the tables.
    pub fn column(self) -> &'static str {
        match self {
            Metric::MicroF1 => "micro_f1",
            Metric::MacroF1 => "macro_f1",
            Metric::SamplesF1 => "samples_f1",
            Metric::MapMacro => "map_macro",
        }
    }
}

pub use lossbench_core::splitmix::mix;

/// Item of `n` (below 2^32) picked by draw `x`.
fn pick(x: u64, n: usize) -> usize {
    (((x >> 32) * n as u64) >> 32) as usize
}

/// One run's test outcome, prepared for scoring resamples.
pub struct Scored {
    truth: Vec<u8>,
    decisions: Vec<u8>,
    /// Per class: patch order by descending score, the scores in that order, and whether each
    /// is a positive.
    classes: Vec<(Vec<u32>, Vec<f32>, Vec<bool>)>,
}

impl Scored {
    /// From row-major `[N, 19]` true labels, scores and decisions.
    pub fn new(truth: Vec<u8>, scores: &[f32], decisions: Vec<u8>) -> Scored {
        let n = truth.len() / NUM_CLASSES;
        let classes = (0..NUM_CLASSES)
            .map(|c| {
                let column: Vec<f32> = (0..n).map(|i| scores[i * NUM_CLASSES + c]).collect();
                let order = descending(&column);
                let sorted = order.iter().map(|&i| column[i as usize]).collect();
                let positive = order
                    .iter()
                    .map(|&i| truth[i as usize * NUM_CLASSES + c] != 0)
                    .collect();
                (order, sorted, positive)
            })
            .collect();
        Scored {
            truth,
            decisions,
            classes,
        }
    }

    pub fn patches(&self) -> usize {
        self.truth.len() / NUM_CLASSES
    }

    /// Every metric of the patches drawn `weights[i]` times each (NaN for a macro mAP without
    /// a class with a positive).
    pub fn values(&self, weights: &[u32]) -> [f64; 4] {
        let mut counts = Counts::default();
        for (i, &w) in weights.iter().enumerate().filter(|(_, w)| **w > 0) {
            let row = i * NUM_CLASSES..(i + 1) * NUM_CLASSES;
            counts.add_patch(&self.truth[row.clone()], &self.decisions[row], u64::from(w));
        }
        let m = counts.metrics();
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let (mut ap_sum, mut defined) = (0.0, 0usize);
        for (order, sorted, positive) in &self.classes {
            pos.clear();
            neg.clear();
            for (&i, &p) in order.iter().zip(positive) {
                let w = f64::from(weights[i as usize]);
                pos.push(if p { w } else { 0.0 });
                neg.push(if p { 0.0 } else { w });
            }
            if let Some(ap) = average_precision_sorted(sorted, &pos, &neg) {
                ap_sum += ap;
                defined += 1;
            }
        }
        let map = if defined > 0 {
            ap_sum / defined as f64
        } else {
            f64::NAN
        };
        [m.micro.f1, m.macro_avg.f1, m.samples.f1, map]
    }
}

/// Runs of the two jobs with the same seed, on the same test patches.
pub struct Pair<'a> {
    pub seed: u64,
    pub a: &'a Scored,
    pub b: &'a Scored,
}

/// The difference A − B of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Difference {
    pub metric: Metric,
    /// On the test split as it is, averaged over the seed pairs.
    pub observed: f64,
    /// The 95% percentile interval.
    pub low: f64,
    pub high: f64,
    /// Share of resamples with A better (a difference above 0), and with B better.
    pub a_better: f64,
    pub b_better: f64,
}

impl Difference {
    /// The interval excludes 0: A and B differ beyond the test set's (and seeds') noise.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// The linear-interpolation quantile `q` of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
}

/// The differences of resample `r` (see the module docs).
fn resample(pairs: &[Pair], seed: u64, r: u64, weights: &mut Vec<u32>) -> [f64; 4] {
    let key = mix(seed.wrapping_add(r));
    let s = pairs.len();
    let n = pairs[0].a.patches();
    let mut times = vec![0u32; s];
    for j in 0..s {
        times[pick(mix(key.wrapping_add(j as u64)), s)] += 1;
    }
    weights.clear();
    weights.resize(n, 0);
    for j in s..s + n {
        weights[pick(mix(key.wrapping_add(j as u64)), n)] += 1;
    }
    let mut diff = [0.0; 4];
    for (pair, &t) in pairs.iter().zip(&times).filter(|(_, t)| **t > 0) {
        let (a, b) = (pair.a.values(weights), pair.b.values(weights));
        for k in 0..4 {
            diff[k] += f64::from(t) * (a[k] - b[k]) / s as f64;
        }
    }
    diff
}

/// The paired bootstrap of A − B over `pairs` (all on the same patches), `resamples` draws
/// from `seed`; resamples are spread over the machine's cores (each is a function of its
/// index alone, so the result does not depend on their number).
pub fn compare(pairs: &[Pair], resamples: usize, seed: u64) -> Vec<Difference> {
    assert!(!pairs.is_empty() && resamples > 1);
    let n = pairs[0].a.patches();
    let ones = vec![1u32; n];
    let mut observed = [0.0; 4];
    for pair in pairs {
        let (a, b) = (pair.a.values(&ones), pair.b.values(&ones));
        for k in 0..4 {
            observed[k] += (a[k] - b[k]) / pairs.len() as f64;
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(resamples);
    let mut diffs: Vec<[f64; 4]> = vec![[0.0; 4]; resamples];
    let chunk = resamples.div_ceil(threads);
    std::thread::scope(|scope| {
        for (c, out) in diffs.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                let mut weights = Vec::new();
                for (k, d) in out.iter_mut().enumerate() {
                    *d = resample(pairs, seed, (c * chunk + k) as u64, &mut weights);
                }
            });
        }
    });
    Metric::ALL
        .iter()
        .enumerate()
        .map(|(k, &metric)| {
            let mut values: Vec<f64> = diffs.iter().map(|d| d[k]).filter(|v| !v.is_nan()).collect();
            values.sort_by(f64::total_cmp);
            let (low, high) = if values.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                (quantile(&values, 0.025), quantile(&values, 0.975))
            };
            let share = |f: fn(f64) -> bool| {
                values.iter().filter(|&&v| f(v)).count() as f64 / values.len().max(1) as f64
            };
            Difference {
                metric,
                observed: observed[k],
                low,
                high,
                a_better: share(|v| v > 0.0),
                b_better: share(|v| v < 0.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose decisions are right with probability `right` per (patch, class), its scores
    /// the decisions plus noise: a synthetic classifier of known quality.
    fn synthetic(n: usize, right: f64, stream: u64) -> Scored {
        let unit = |j: u64| {
            (mix(stream.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ j) >> 11) as f64 / (1u64 << 53) as f64
        };
        let truth: Vec<u8> = (0..n * NUM_CLASSES)
            .map(|i| u8::from(mix(i as u64).is_multiple_of(4)))
            .collect();
        let decisions: Vec<u8> = truth
            .iter()
            .enumerate()
            .map(|(i, &t)| if unit(i as u64) < right { t } else { 1 - t })
            .collect();
        let scores: Vec<f32> = decisions
            .iter()
            .enumerate()
            .map(|(i, &d)| d as f32 + 0.5 * unit((i + n * NUM_CLASSES) as u64) as f32)
            .collect();
        Scored::new(truth, &scores, decisions)
    }

    #[test]
    fn a_run_against_itself_differs_by_nothing() {
        let a = synthetic(200, 0.8, 1);
        let d = compare(
            &[Pair {
                seed: 0,
                a: &a,
                b: &a,
            }],
            50,
            7,
        );
        for x in d {
            assert_eq!(
                (x.observed, x.low, x.high, x.a_better),
                (0.0, 0.0, 0.0, 0.0)
            );
        }
    }

    /// A known difference (A right 85% of the time, B 80%): the interval holds it, lies above
    /// 0 once the test set is large enough, and narrows as 1/√N: four times the patches, half
    /// the width.
    #[test]
    fn intervals_narrow_as_the_test_set_grows() {
        let width = |n: usize| {
            let (a, b) = (synthetic(n, 0.85, 1), synthetic(n, 0.80, 2));
            let d = compare(
                &[Pair {
                    seed: 0,
                    a: &a,
                    b: &b,
                }],
                400,
                3,
            );
            let micro = d[0];
            assert!(
                micro.low < micro.observed && micro.observed < micro.high,
                "{micro:?}"
            );
            (micro.high - micro.low, micro)
        };
        let (small, _) = width(250);
        let (large, d) = width(1000);
        let ratio = large / small;
        assert!(
            (0.4..0.6).contains(&ratio),
            "width {small} → {large}: ratio {ratio}"
        );
        assert!(d.excludes_zero() && d.a_better > 0.99, "{d:?}");
    }

    #[test]
    fn resamples_do_not_depend_on_the_threads() {
        let (a, b) = (synthetic(100, 0.8, 1), synthetic(100, 0.75, 2));
        let pairs = [
            Pair {
                seed: 0,
                a: &a,
                b: &b,
            },
            Pair {
                seed: 1,
                a: &b,
                b: &a,
            },
        ];
        let mut w = Vec::new();
        let one = resample(&pairs, 9, 5, &mut w);
        assert_eq!(one, resample(&pairs, 9, 5, &mut w));
        assert_eq!(compare(&pairs, 20, 9), compare(&pairs, 20, 9));
    }
}
