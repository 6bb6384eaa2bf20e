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

use std::collections::BTreeMap;

use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::ranking::descending;
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

/// Resamples scored together in one pass over a run's data: their patch weights lie side by
/// side (one 32-byte row per patch), so that each patch's row is read once for all of them and
/// the sums run in parallel lanes.
const LANES: usize = 32;

/// One run's test outcome, prepared for scoring resamples: what each patch adds to the F1
/// counts, and per class the patches in descending score order, cut at the positives.
pub struct Scored {
    /// Per patch: its true-positive, false-positive and false-negative classes as bits, and its
    /// own F1 (what it adds to the sample average).
    masks: Vec<[u32; 3]>,
    patch_f1: Vec<f64>,
    classes: Vec<Ranked>,
}

/// One class's patches in descending score order: the negatives and positives, in that order,
/// each group of tied scores that holds a positive closing a threshold (negatives after the last
/// positive never change AP, and are left out).
struct Ranked {
    negatives: Vec<u32>,
    positives: Vec<u32>,
    /// Per threshold: the end of its negatives and of its positives in the two lists.
    ends: Vec<(u32, u32)>,
}

impl Ranked {
    fn new(order: &[u32], sorted: &[f32], positive: &[bool]) -> Ranked {
        let (mut negatives, mut positives, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        let mut i = 0;
        while i < order.len() {
            let mut j = i + 1;
            while j < order.len() && sorted[j] == sorted[i] {
                j += 1;
            }
            let before = positives.len();
            for k in i..j {
                match positive[k] {
                    true => positives.push(order[k]),
                    false => negatives.push(order[k]),
                }
            }
            if positives.len() > before {
                ends.push((negatives.len() as u32, positives.len() as u32));
            }
            i = j;
        }
        // Negatives after the last positive: left out.
        negatives.truncate(ends.last().map_or(0, |e| e.0 as usize));
        Ranked {
            negatives,
            positives,
            ends,
        }
    }

    /// AP of each lane's resample (`None` without a drawn positive): `weights` holds a
    /// [`LANES`]-byte row per patch. AP = Σ over thresholds of Δtp · tp / (tp + fp), divided by
    /// the positives' weight, as scikit-learn's step-wise definition weighted by the draws.
    #[inline(always)]
    fn average_precision(&self, weights: &[u8]) -> [Option<f64>; LANES] {
        let (mut tp, mut fp, mut last) = ([0u32; LANES], [0u32; LANES], [0u32; LANES]);
        let mut sum = [0f64; LANES];
        let (mut neg, mut pos) = (0usize, 0usize);
        let row = |p: u32| -> &[u8; LANES] {
            let at = p as usize * LANES;
            weights[at..at + LANES]
                .try_into()
                .expect("a row of LANES bytes")
        };
        for &(neg_end, pos_end) in &self.ends {
            for &p in &self.negatives[neg..neg_end as usize] {
                let w = row(p);
                for l in 0..LANES {
                    fp[l] += u32::from(w[l]);
                }
            }
            for &p in &self.positives[pos..pos_end as usize] {
                let w = row(p);
                for l in 0..LANES {
                    tp[l] += u32::from(w[l]);
                }
            }
            (neg, pos) = (neg_end as usize, pos_end as usize);
            // Branch-free over the lanes (they vectorise): a threshold whose positives were not
            // drawn adds d = 0 exactly; with d > 0, tp > 0 and the denominator is at least 1.
            for l in 0..LANES {
                let (t, d) = (f64::from(tp[l]), f64::from(tp[l] - last[l]));
                sum[l] += d * t / (t + f64::from(fp[l])).max(1.0);
            }
            last = tp;
        }
        std::array::from_fn(|l| (tp[l] > 0).then(|| sum[l] / f64::from(tp[l])))
    }
}

/// F1 of counts, scikit-learn's convention (0 without any).
fn f1(tp: u64, fp: u64, fn_: u64) -> f64 {
    let den = 2 * tp + fp + fn_;
    if den == 0 {
        0.0
    } else {
        (2 * tp) as f64 / den as f64
    }
}

impl Scored {
    /// From row-major `[N, 19]` true labels, scores and decisions.
    pub fn new(truth: Vec<u8>, scores: &[f32], decisions: Vec<u8>) -> Scored {
        let n = truth.len() / NUM_CLASSES;
        let masks: Vec<[u32; 3]> = (0..n)
            .map(|i| {
                let mut m = [0u32; 3];
                for c in 0..NUM_CLASSES {
                    let at = i * NUM_CLASSES + c;
                    let kind = match (truth[at] != 0, decisions[at] != 0) {
                        (true, true) => 0,
                        (false, true) => 1,
                        (true, false) => 2,
                        (false, false) => continue,
                    };
                    m[kind] |= 1 << c;
                }
                m
            })
            .collect();
        let patch_f1 = masks
            .iter()
            .map(|m| m.map(|b| u64::from(b.count_ones())))
            .map(|[tp, fp, fn_]| f1(tp, fp, fn_))
            .collect();
        let classes = (0..NUM_CLASSES)
            .map(|c| {
                let column: Vec<f32> = (0..n).map(|i| scores[i * NUM_CLASSES + c]).collect();
                let order = descending(&column);
                let sorted: Vec<f32> = order.iter().map(|&i| column[i as usize]).collect();
                let positive: Vec<bool> = order
                    .iter()
                    .map(|&i| truth[i as usize * NUM_CLASSES + c] != 0)
                    .collect();
                Ranked::new(&order, &sorted, &positive)
            })
            .collect();
        Scored {
            masks,
            patch_f1,
            classes,
        }
    }

    pub fn patches(&self) -> usize {
        self.masks.len()
    }

    /// Every metric of the test split as it is (each patch once).
    pub fn observed(&self) -> [f64; 4] {
        self.values(&vec![1u8; self.patches() * LANES])[0]
    }

    /// Every metric of the [`LANES`] resamples whose weights `weights` holds (a row per patch),
    /// with the widest vectors this processor has (the same arithmetic in each lane, so the
    /// same results).
    fn values(&self, weights: &[u8]) -> [[f64; 4]; LANES] {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2, checked above.
            return unsafe { self.values_avx2(weights) };
        }
        self.values_portable(weights)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn values_avx2(&self, weights: &[u8]) -> [[f64; 4]; LANES] {
        self.values_portable(weights)
    }

    /// Micro, macro and sample F1 from the patches' class bits and own F1, macro AP from the
    /// ranked classes (NaN for a macro mAP without a class with a positive).
    #[inline(always)]
    fn values_portable(&self, weights: &[u8]) -> [[f64; 4]; LANES] {
        let mut counts = [[[0u32; LANES]; NUM_CLASSES]; 3];
        let mut samples = [0f64; LANES];
        for (i, (mask, own)) in self.masks.iter().zip(&self.patch_f1).enumerate() {
            let w: &[u8; LANES] = weights[i * LANES..(i + 1) * LANES]
                .try_into()
                .expect("a row of LANES bytes");
            for (k, bits) in mask.iter().enumerate() {
                let mut b = *bits;
                while b != 0 {
                    let c = b.trailing_zeros() as usize;
                    b &= b - 1;
                    let sums = &mut counts[k][c];
                    for l in 0..LANES {
                        sums[l] += u32::from(w[l]);
                    }
                }
            }
            if *own != 0.0 {
                for l in 0..LANES {
                    samples[l] += f64::from(w[l]) * own;
                }
            }
        }
        let mut ap_sum = [0f64; LANES];
        let mut defined = [0usize; LANES];
        for ranked in &self.classes {
            for (l, ap) in ranked.average_precision(weights).into_iter().enumerate() {
                if let Some(ap) = ap {
                    ap_sum[l] += ap;
                    defined[l] += 1;
                }
            }
        }
        let n = self.patches() as f64;
        std::array::from_fn(|l| {
            let count = |k: usize, c: usize| u64::from(counts[k][c][l]);
            let total = |k: usize| (0..NUM_CLASSES).map(|c| count(k, c)).sum::<u64>();
            let micro = f1(total(0), total(1), total(2));
            let macro_f1 = (0..NUM_CLASSES)
                .map(|c| f1(count(0, c), count(1, c), count(2, c)))
                .sum::<f64>()
                / NUM_CLASSES as f64;
            let map = match defined[l] {
                0 => f64::NAN,
                d => ap_sum[l] / d as f64,
            };
            // A resample draws N patches in all: the sample average divides by N.
            [micro, macro_f1, samples[l] / n, map]
        })
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

/// The weights of resamples `first..first + LANES` (lanes past `resamples` stay zero) of a
/// comparison over `seed_pairs` seed pairs and `n` patches, a row of [`LANES`] bytes per patch
/// (see the module docs for the draws; a patch drawn more than 255 times in one resample of
/// N ≥ 256 has a probability below 10⁻⁵⁰⁰).
fn weights(
    seed: u64,
    first: usize,
    resamples: usize,
    seed_pairs: usize,
    n: usize,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.resize(n * LANES, 0);
    for l in 0..LANES.min(resamples.saturating_sub(first)) {
        let key = mix(seed.wrapping_add((first + l) as u64));
        for j in seed_pairs..seed_pairs + n {
            let w = &mut out[pick(mix(key.wrapping_add(j as u64)), n) * LANES + l];
            *w = w.checked_add(1).expect("a patch drawn under 256 times");
        }
    }
}

/// How often resample `r` draws each of `s` seed pairs.
fn seed_draws(seed: u64, r: usize, s: usize) -> Vec<u32> {
    let key = mix(seed.wrapping_add(r as u64));
    let mut times = vec![0u32; s];
    for j in 0..s {
        times[pick(mix(key.wrapping_add(j as u64)), s)] += 1;
    }
    times
}

/// Every run's metrics under every resample (`resamples` × [f64; 4] per run) of comparisons
/// over `seed_pairs` seed pairs: each block of [`LANES`] resamples draws its weights once, for
/// all the runs, and blocks are spread over the machine's cores (each resample is a function of
/// its index alone, so the result does not depend on their number).
fn resampled(
    runs: &[&Scored],
    resamples: usize,
    seed: u64,
    seed_pairs: usize,
    progress: &lossbench_core::progress::ProgressBar,
) -> Vec<Vec<[f64; 4]>> {
    let n = runs[0].patches();
    let blocks = resamples.div_ceil(LANES);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(blocks);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut per_block: Vec<Vec<[[f64; 4]; LANES]>> = vec![Vec::new(); blocks];
    let done = std::sync::Mutex::new(&mut per_block);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut w = Vec::new();
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if b >= blocks {
                        break;
                    }
                    weights(seed, b * LANES, resamples, seed_pairs, n, &mut w);
                    let values: Vec<[[f64; 4]; LANES]> =
                        runs.iter().map(|run| run.values(&w)).collect();
                    done.lock().expect("no panics")[b] = values;
                    progress.inc(LANES.min(resamples - b * LANES) as u64);
                }
            });
        }
    });
    (0..runs.len())
        .map(|k| {
            (0..resamples)
                .map(|r| per_block[r / LANES][k][r % LANES])
                .collect()
        })
        .collect()
}

/// The paired bootstrap of A − B over `pairs` (all on the same patches), `resamples` draws
/// from `seed`.
pub fn compare(pairs: &[Pair], resamples: usize, seed: u64) -> Vec<Difference> {
    compare_all(&[pairs], resamples, seed).remove(0)
}

/// [`compare`] of several comparisons at once (the report's matrix): each run's metrics under
/// each resample are computed once, whatever the number of comparisons it enters, and the
/// weights of a resample once for all runs (per number of seed pairs, which the draws depend
/// on). A progress bar counts the resamples.
pub fn compare_all(comparisons: &[&[Pair]], resamples: usize, seed: u64) -> Vec<Vec<Difference>> {
    assert!(comparisons.iter().all(|p| !p.is_empty()) && resamples > 1);
    // The distinct runs, by address, and per number of seed pairs the runs that need it.
    let key = |s: &Scored| s as *const Scored as usize;
    let mut by_pairs: BTreeMap<usize, Vec<&Scored>> = BTreeMap::new();
    for pairs in comparisons {
        let runs = by_pairs.entry(pairs.len()).or_default();
        for p in pairs.iter() {
            for s in [p.a, p.b] {
                if !runs.iter().any(|r| key(r) == key(s)) {
                    runs.push(s);
                }
            }
        }
    }
    let total = by_pairs.len() * resamples;
    let progress = lossbench_core::progress::bar(total as u64, "resamples");
    let mut values: BTreeMap<(usize, usize), Vec<[f64; 4]>> = BTreeMap::new();
    for (&s, runs) in &by_pairs {
        let all = resampled(runs, resamples, seed, s, &progress);
        for (run, v) in runs.iter().zip(all) {
            values.insert((s, key(run)), v);
        }
    }
    progress.finish_and_clear();
    comparisons
        .iter()
        .map(|pairs| {
            let s = pairs.len();
            let of = |run: &Scored| &values[&(s, key(run))];
            let mut observed = [0.0; 4];
            for pair in pairs.iter() {
                let (a, b) = (pair.a.observed(), pair.b.observed());
                for k in 0..4 {
                    observed[k] += (a[k] - b[k]) / s as f64;
                }
            }
            let diffs: Vec<[f64; 4]> = (0..resamples)
                .map(|r| {
                    let mut diff = [0.0; 4];
                    for (pair, t) in pairs.iter().zip(seed_draws(seed, r, s)) {
                        if t == 0 {
                            continue;
                        }
                        let (a, b) = (of(pair.a)[r], of(pair.b)[r]);
                        for k in 0..4 {
                            diff[k] += f64::from(t) * (a[k] - b[k]) / s as f64;
                        }
                    }
                    diff
                })
                .collect();
            differences(&diffs, observed)
        })
        .collect()
}

/// The intervals and shares of the resampled differences.
fn differences(diffs: &[[f64; 4]], observed: [f64; 4]) -> Vec<Difference> {
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
        let (truth, scores, decisions) = raw(n, right, stream, 4, false);
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

    /// The definition before the lanes (one resample at a time, through [`Counts`] and
    /// scikit-learn's AP): the same draws give the same differences within 1e-12.
    /// A run as (truth, scores, decisions).
    type Raw = (Vec<u8>, Vec<f32>, Vec<u8>);

    mod before {
        use super::super::*;
        use super::Raw;
        use lossbench_core::metrics::Counts;
        use lossbench_core::ranking::average_precision_sorted;

        pub fn values(truth: &[u8], scores: &[f32], decisions: &[u8], weights: &[u32]) -> [f64; 4] {
            let mut counts = Counts::default();
            for (i, &w) in weights.iter().enumerate().filter(|(_, w)| **w > 0) {
                let row = i * NUM_CLASSES..(i + 1) * NUM_CLASSES;
                counts.add_patch(&truth[row.clone()], &decisions[row], u64::from(w));
            }
            let m = counts.metrics();
            let n = weights.len();
            let (mut ap_sum, mut defined) = (0.0, 0usize);
            for c in 0..NUM_CLASSES {
                let column: Vec<f32> = (0..n).map(|i| scores[i * NUM_CLASSES + c]).collect();
                let order = descending(&column);
                let sorted: Vec<f32> = order.iter().map(|&i| column[i as usize]).collect();
                let w = |i: u32| f64::from(weights[i as usize]);
                let is_pos = |i: u32| truth[i as usize * NUM_CLASSES + c] != 0;
                let pos: Vec<f64> = order
                    .iter()
                    .map(|&i| if is_pos(i) { w(i) } else { 0.0 })
                    .collect();
                let neg: Vec<f64> = order
                    .iter()
                    .map(|&i| if is_pos(i) { 0.0 } else { w(i) })
                    .collect();
                if let Some(ap) = average_precision_sorted(&sorted, &pos, &neg) {
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

        /// Resample `r`'s difference over seed pairs given as (truth, scores, decisions) of A
        /// and B.
        pub fn resample(runs: &[[Raw; 2]], seed: u64, r: u64) -> [f64; 4] {
            let key = mix(seed.wrapping_add(r));
            let s = runs.len();
            let n = runs[0][0].0.len() / NUM_CLASSES;
            let mut times = vec![0u32; s];
            for j in 0..s {
                times[pick(mix(key.wrapping_add(j as u64)), s)] += 1;
            }
            let mut weights = vec![0u32; n];
            for j in s..s + n {
                weights[pick(mix(key.wrapping_add(j as u64)), n)] += 1;
            }
            let mut diff = [0.0; 4];
            for (pair, &t) in runs.iter().zip(&times).filter(|(_, t)| **t > 0) {
                let [(ta, sa, da), (tb, sb, db)] = pair;
                let (a, b) = (values(ta, sa, da, &weights), values(tb, sb, db, &weights));
                for k in 0..4 {
                    diff[k] += f64::from(t) * (a[k] - b[k]) / s as f64;
                }
            }
            diff
        }
    }

    /// A synthetic run as its raw (truth, scores, decisions): a class carried by one (patch,
    /// class) in `every`, decisions right with probability `right`, scores the decisions plus
    /// noise, rounded to tenths when `tied` so that many tie.
    fn raw(n: usize, right: f64, stream: u64, every: u64, tied: bool) -> Raw {
        let unit = |j: u64| {
            (mix(stream.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ j) >> 11) as f64 / (1u64 << 53) as f64
        };
        let truth: Vec<u8> = (0..n * NUM_CLASSES)
            .map(|i| u8::from(mix(i as u64).is_multiple_of(every)))
            .collect();
        let decisions: Vec<u8> = truth
            .iter()
            .enumerate()
            .map(|(i, &t)| if unit(i as u64) < right { t } else { 1 - t })
            .collect();
        let scores = decisions
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let noise = unit((i + n * NUM_CLASSES) as u64);
                if tied {
                    ((d as f64 + noise) * 10.0).round() as f32 / 10.0
                } else {
                    d as f32 + 0.5 * noise as f32
                }
            })
            .collect();
        (truth, scores, decisions)
    }

    #[test]
    fn the_lanes_give_the_differences_of_the_definition_before_them() {
        let seed = 11;
        let runs: Vec<[Raw; 2]> = (0..3)
            .map(|k| {
                [
                    raw(150, 0.8, 2 * k, 5, true),
                    raw(150, 0.75, 2 * k + 1, 5, true),
                ]
            })
            .collect();
        let scored: Vec<[Scored; 2]> = runs
            .iter()
            .map(|p| p.clone().map(|(t, s, d)| Scored::new(t, &s, d)))
            .collect();
        let pairs: Vec<Pair> = scored
            .iter()
            .enumerate()
            .map(|(k, [a, b])| Pair {
                seed: k as u64,
                a,
                b,
            })
            .collect();
        // 70 resamples: three blocks of lanes, the last one partly filled.
        let resamples = 70;
        let got = compare(&pairs, resamples, seed);
        let diffs: Vec<[f64; 4]> = (0..resamples as u64)
            .map(|r| before::resample(&runs, seed, r))
            .collect();
        let mut observed = [0.0; 4];
        for [(ta, sa, da), (tb, sb, db)] in &runs {
            let ones = vec![1u32; 150];
            let (a, b) = (
                before::values(ta, sa, da, &ones),
                before::values(tb, sb, db, &ones),
            );
            for k in 0..4 {
                observed[k] += (a[k] - b[k]) / 3.0;
            }
        }
        let want = differences(&diffs, observed);
        for (g, w) in got.iter().zip(&want) {
            for (x, y) in [(g.observed, w.observed), (g.low, w.low), (g.high, w.high)] {
                assert!((x - y).abs() < 1e-12, "{g:?} against {w:?}");
            }
            assert_eq!(
                (g.a_better, g.b_better),
                (w.a_better, w.b_better),
                "{g:?} {w:?}"
            );
        }
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
        assert_eq!(compare(&pairs, 70, 9), compare(&pairs, 70, 9));
        // The same comparison alone or among others.
        let alone = compare(&pairs[..1], 70, 9);
        let among = compare_all(&[&pairs[..1], &pairs], 70, 9);
        assert_eq!(alone, among[0]);
    }
}
