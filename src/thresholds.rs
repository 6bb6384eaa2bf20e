//! Per-class decision thresholds tuned on the validation split (docs/results.md, "The threshold
//! effect"): for each class, the score threshold that maximises that class's F1 on the
//! validation patches, applied to the test scores as a second decision rule beside the loss's
//! own. Telling the two rules' results apart separates what a loss does to the ranking of
//! scores from where it puts its decision boundary.

use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::metrics::{Counts, Metrics};
use lossbench_core::ranking::descending;

/// The threshold of one class: a patch is predicted positive when its score is at least it.
/// Scanning the distinct scores from the highest, the first one reaching the best F1; a class
/// without a validation positive gets `f32::INFINITY` (never predicted).
fn tune_class(scores: &[f32], positive: &[bool]) -> f32 {
    let total = positive.iter().filter(|&&p| p).count() as f64;
    if total == 0.0 {
        return f32::INFINITY;
    }
    let order = descending(scores);
    let (mut tp, mut fp, mut best, mut threshold) = (0.0, 0.0, -1.0, f32::INFINITY);
    for (k, &i) in order.iter().enumerate() {
        if positive[i as usize] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let s = scores[i as usize];
        let last_of_tie = k + 1 == order.len() || scores[order[k + 1] as usize] != s;
        if last_of_tie {
            let f1 = 2.0 * tp / (tp + fp + total);
            if f1 > best {
                (best, threshold) = (f1, s);
            }
        }
    }
    threshold
}

/// Each class's threshold from row-major `[patches, 19]` validation scores and truth.
pub fn tune(scores: &[f32], truth: &[u8]) -> Vec<f32> {
    let patches = scores.len() / NUM_CLASSES;
    (0..NUM_CLASSES)
        .map(|c| {
            let s: Vec<f32> = (0..patches).map(|i| scores[i * NUM_CLASSES + c]).collect();
            let t: Vec<bool> = (0..patches)
                .map(|i| truth[i * NUM_CLASSES + c] != 0)
                .collect();
            tune_class(&s, &t)
        })
        .collect()
}

/// The metrics of `scores` decided by `thresholds`, against `truth`.
pub fn metrics(scores: &[f32], truth: &[u8], thresholds: &[f32]) -> Metrics {
    let decided: Vec<u8> = scores
        .iter()
        .enumerate()
        .map(|(k, &s)| u8::from(s >= thresholds[k % NUM_CLASSES]))
        .collect();
    let mut counts = Counts::default();
    counts.add(truth, &decided);
    counts.metrics()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_maximises_the_class_f1() {
        // Positives at 0.9 and 0.5, a negative at 0.7 between them: F1 at 0.9 is 2/3, at 0.5
        // (all three predicted) is 0.8, so 0.5.
        let t = tune_class(&[0.9, 0.7, 0.5, 0.1], &[true, false, true, false]);
        assert_eq!(t, 0.5);
        assert_eq!(tune_class(&[0.9, 0.1], &[false, false]), f32::INFINITY);
        // Ties: one threshold for all equal scores.
        assert_eq!(tune_class(&[0.5, 0.5, 0.1], &[true, false, false]), 0.5);
    }
}
