//! Threshold-free metrics of scores (docs/results.md, "Ranking metrics"): average precision
//! per class, macro and micro mAP, ROC AUC per class and macro, and the multi-label ranking
//! measures (one-error, coverage, ranking loss, label ranking average precision), computed
//! exactly over every patch's scores (the logits; any increasing function of them gives the
//! same values).
//!
//! Definitions are scikit-learn's (`average_precision_score`: the step-wise sum of precision ×
//! recall increments over the distinct score thresholds, ties taken together, no interpolation;
//! `roc_auc_score`; `coverage_error`, `label_ranking_loss`,
//! `label_ranking_average_precision_score`), except for classes without a positive patch: their
//! AP (and AUC, and without a negative) is undefined, reported as null and left out of the macro
//! averages (scikit-learn and torchmetrics count such a class's AP as 0, with a warning: their
//! macro mAP is ours × the classes with a positive / 19; every class of the official splits has
//! positives).

use serde::{Deserialize, Serialize};

use crate::labels::NUM_CLASSES;

/// AP and AUC of one class (null where undefined).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ClassRanking {
    pub ap: Option<f64>,
    pub auc: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// Mean AP over the classes with a positive patch.
    pub map_macro: Option<f64>,
    /// AP of every (patch, class) pair taken together.
    pub map_micro: Option<f64>,
    /// Mean ROC AUC over the classes with positive and negative patches.
    pub auc_macro: Option<f64>,
    /// Share of patches whose best-scored class is not one of theirs (first of ties).
    pub one_error: f64,
    /// Mean number of classes to go down the ranking to cover all of a patch's.
    pub coverage: f64,
    /// Mean share of (true, false) class pairs a patch's scores order wrongly.
    pub ranking_loss: f64,
    /// Label ranking average precision.
    pub lrap: f64,
    pub per_class: Vec<ClassRanking>,
}

/// Average precision of items sorted by descending score, each with its weight as a positive
/// (`pos`) and as a negative (`neg`); ties (equal scores) form one threshold. `None` without a
/// positive.
pub fn average_precision_sorted(scores: &[f32], pos: &[f64], neg: &[f64]) -> Option<f64> {
    let total: f64 = pos.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let (mut tp, mut fp, mut ap, mut recall) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..scores.len() {
        tp += pos[i];
        fp += neg[i];
        // The last item of a run of equal scores closes its threshold.
        if i + 1 == scores.len() || scores[i + 1] != scores[i] {
            let r = tp / total;
            if r > recall {
                ap += (r - recall) * tp / (tp + fp);
                recall = r;
            }
        }
    }
    Some(ap)
}

/// The order of `scores` from highest to lowest (stable: equal scores keep their order).
pub fn descending(scores: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
    order
}

/// AP of (score, positive) pairs.
fn average_precision(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let order = descending(scores);
    let sorted: Vec<f32> = order.iter().map(|&i| scores[i as usize]).collect();
    let pos: Vec<f64> = order
        .iter()
        .map(|&i| f64::from(u8::from(positive[i as usize])))
        .collect();
    let neg: Vec<f64> = pos.iter().map(|p| 1.0 - p).collect();
    average_precision_sorted(&sorted, &pos, &neg)
}

/// ROC AUC of (score, positive) pairs: the probability that a positive outscores a negative,
/// ties counting half (Mann-Whitney); `None` without positives or negatives.
fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let order = descending(scores);
    let (p, n) = positive.iter().fold(
        (0.0, 0.0),
        |(p, n), &x| if x { (p + 1.0, n) } else { (p, n + 1.0) },
    );
    if p == 0.0 || n == 0.0 {
        return None;
    }
    // Walk down the ranking: each negative is outscored by the positives above it.
    let (mut above, mut wins, mut i) = (0.0, 0.0, 0);
    while i < order.len() {
        let s = scores[order[i] as usize];
        let (mut tie_p, mut tie_n) = (0.0, 0.0);
        while i < order.len() && scores[order[i] as usize] == s {
            if positive[order[i] as usize] {
                tie_p += 1.0
            } else {
                tie_n += 1.0
            }
            i += 1;
        }
        wins += tie_n * (above + tie_p / 2.0);
        above += tie_p;
    }
    Some(wins / (p * n))
}

fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let defined: Vec<f64> = values.flatten().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// The per-patch ranking measures of one patch: (one-error, coverage, ranking loss, LRAP).
fn patch_measures(scores: &[f32], truth: &[u8]) -> (f64, f64, f64, f64) {
    let relevant: Vec<usize> = (0..scores.len()).filter(|&c| truth[c] != 0).collect();
    let top = (0..scores.len()).fold(0, |best, c| if scores[c] > scores[best] { c } else { best });
    let one_error = f64::from(u8::from(truth[top] == 0));
    let n = scores.len();
    if relevant.is_empty() {
        return (one_error, 0.0, 0.0, 1.0);
    }
    let lowest = relevant
        .iter()
        .map(|&c| scores[c])
        .fold(f32::INFINITY, f32::min);
    let coverage = scores.iter().filter(|&&s| s >= lowest).count() as f64;
    if relevant.len() == n {
        return (one_error, coverage, 0.0, 1.0);
    }
    // Pairs (true, false) ordered wrongly: the false class scores at least as high (a tie is
    // wrong too, as scikit-learn counts).
    let mut wrong = 0.0;
    for &t in &relevant {
        for f in (0..n).filter(|&c| truth[c] == 0) {
            if scores[f] >= scores[t] {
                wrong += 1.0;
            }
        }
    }
    let ranking_loss = wrong / (relevant.len() * (n - relevant.len())) as f64;
    // LRAP: for each true class, the share of true classes among those scored at least as high.
    let lrap = relevant
        .iter()
        .map(|&t| {
            let rank = scores.iter().filter(|&&s| s >= scores[t]).count() as f64;
            let true_above = relevant.iter().filter(|&&u| scores[u] >= scores[t]).count() as f64;
            true_above / rank
        })
        .sum::<f64>()
        / relevant.len() as f64;
    (one_error, coverage, ranking_loss, lrap)
}

/// Every measure over patches' `scores` and 0/1 `truth`, both row-major `[patches, 19]`.
pub fn ranking(scores: &[f32], truth: &[u8]) -> Ranking {
    assert_eq!(scores.len(), truth.len());
    let patches = scores.len() / NUM_CLASSES;
    let per_class: Vec<ClassRanking> = (0..NUM_CLASSES)
        .map(|c| {
            let s: Vec<f32> = (0..patches).map(|i| scores[i * NUM_CLASSES + c]).collect();
            let t: Vec<bool> = (0..patches)
                .map(|i| truth[i * NUM_CLASSES + c] != 0)
                .collect();
            ClassRanking {
                ap: average_precision(&s, &t),
                auc: roc_auc(&s, &t),
            }
        })
        .collect();
    let positive: Vec<bool> = truth.iter().map(|&t| t != 0).collect();
    let (mut one_error, mut coverage, mut ranking_loss, mut lrap) = (0.0, 0.0, 0.0, 0.0);
    for (s, t) in scores.chunks(NUM_CLASSES).zip(truth.chunks(NUM_CLASSES)) {
        let m = patch_measures(s, t);
        one_error += m.0;
        coverage += m.1;
        ranking_loss += m.2;
        lrap += m.3;
    }
    let n = patches.max(1) as f64;
    Ranking {
        map_macro: mean_of(per_class.iter().map(|c| c.ap)),
        map_micro: average_precision(scores, &positive),
        auc_macro: mean_of(per_class.iter().map(|c| c.auc)),
        one_error: one_error / n,
        coverage: coverage / n,
        ranking_loss: ranking_loss / n,
        lrap: lrap / n,
        per_class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_takes_ties_together() {
        // scikit-learn: average_precision_score([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1]) = 0.8333...
        let ap = average_precision(&[0.9, 0.8, 0.8, 0.1], &[true, false, true, false]).unwrap();
        assert!((ap - 5.0 / 6.0).abs() < 1e-12, "{ap}");
        assert_eq!(average_precision(&[0.3, 0.2], &[false, false]), None);
        // roc_auc_score([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1]) = 0.875
        let auc = roc_auc(&[0.9, 0.8, 0.8, 0.1], &[true, false, true, false]).unwrap();
        assert!((auc - 0.875).abs() < 1e-12, "{auc}");
        assert_eq!(roc_auc(&[0.3, 0.2], &[true, true]), None);
    }

    /// Cases and the values scikit-learn computes for them, generated by
    /// tests/python/gen_sklearn_ranking.py (tests/python/test_sklearn_metrics.py checks the file
    /// is still what scikit-learn says, tests/python/test_torchmetrics.py what torchmetrics says).
    const SKLEARN: &str = include_str!("../../tests/data/sklearn_ranking.json");

    #[test]
    fn agree_with_scikit_learn() {
        let cases: serde_json::Value = serde_json::from_str(SKLEARN).unwrap();
        for case in cases.as_array().unwrap() {
            let rows = |k: &str| {
                case[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_array().unwrap())
            };
            let truth: Vec<u8> = rows("truth")
                .flatten()
                .map(|v| v.as_u64().unwrap() as u8)
                .collect();
            let scores: Vec<f32> = rows("scores")
                .flatten()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let r = ranking(&scores, &truth);
            let name = case["name"].as_str().unwrap();
            let close =
                |ours: Option<f64>, theirs: &serde_json::Value, what: &str| match theirs.as_f64() {
                    Some(t) => {
                        let o = ours.unwrap_or_else(|| panic!("{name}: {what}: null vs {t}"));
                        assert!((o - t).abs() < 1e-12, "{name}: {what}: {o} vs {t}");
                    }
                    None => assert_eq!(ours, None, "{name}: {what}"),
                };
            for c in 0..NUM_CLASSES {
                close(
                    r.per_class[c].ap,
                    &case["ap"][c],
                    &format!("AP of class {c}"),
                );
                close(
                    r.per_class[c].auc,
                    &case["auc"][c],
                    &format!("AUC of class {c}"),
                );
            }
            close(r.map_macro, &case["map_macro"], "macro mAP");
            close(r.map_micro, &case["map_micro"], "micro mAP");
            close(r.auc_macro, &case["auc_macro"], "macro AUC");
            close(Some(r.coverage), &case["coverage"], "coverage");
            close(Some(r.ranking_loss), &case["ranking_loss"], "ranking loss");
            close(Some(r.lrap), &case["lrap"], "LRAP");
            close(Some(r.one_error), &case["one_error"], "one-error");
        }
    }
}
