"""Writes tests/data/sklearn_ranking.json: multi-label scores and truths (ties, a class without
positives, a class without negatives, patches without labels and with every label) and the
ranking metrics scikit-learn computes for them: average_precision_score per class, macro over
the classes with a positive, micro over every (patch, class) pair; roc_auc_score per class
where defined and their mean; coverage_error, label_ranking_loss,
label_ranking_average_precision_score; and one-error (not in scikit-learn: the share of patches
whose first highest-scored class is not theirs). The Rust ranking module's unit test compares
against this file; test_sklearn_metrics.py checks that it is still what scikit-learn says, and
test_torchmetrics.py that torchmetrics agrees.

    python tests/python/gen_sklearn_ranking.py > tests/data/sklearn_ranking.json
"""
import json

import numpy as np
from sklearn.metrics import (average_precision_score, coverage_error, label_ranking_average_precision_score,
                             label_ranking_loss, roc_auc_score)

C = 19


def cases():
    rng = np.random.default_rng(2024)
    truth = (rng.random((40, C)) < 0.3).astype(int)
    scores = rng.normal(size=(40, C)) + truth
    yield "dense", truth, scores
    # Scores with one decimal: many ties within a class and within a patch.
    truth = (rng.random((60, C)) < 0.2).astype(int)
    scores = np.round(rng.random((60, C)) + 0.4 * truth, 1)
    yield "ties", truth, scores
    truth = (rng.random((15, C)) < 0.25).astype(int)
    scores = np.round(rng.normal(size=(15, C)), 2)
    truth[4] = 0  # a patch without labels
    truth[:, 16] = 0  # no positive: AP and AUC undefined
    truth[:, 3] = 1  # no negative: AUC undefined
    scores[6] = 0.5  # a patch whose scores all tie
    yield "edges", truth, scores
    truth = (rng.random((6, C)) < 0.5).astype(int)
    truth[2] = 1  # a patch with every label
    yield "every label", truth, rng.normal(size=(6, C))


def one_error(truth, scores):
    top = scores.argmax(axis=1)
    return float(np.mean(truth[np.arange(len(truth)), top] == 0))


def compute(name, truth, scores):
    scores = scores.astype(np.float32).astype(np.float64)  # what the trainer's float32 logits hold
    ap = [float(average_precision_score(truth[:, c], scores[:, c])) if truth[:, c].any() else None for c in range(C)]
    auc = [float(roc_auc_score(truth[:, c], scores[:, c])) if 0 < truth[:, c].sum() < len(truth) else None
           for c in range(C)]
    defined = lambda v: [x for x in v if x is not None]
    return {
        "name": name, "truth": truth.tolist(), "scores": scores.tolist(),
        "ap": ap, "map_macro": float(np.mean(defined(ap))),
        "map_micro": float(average_precision_score(truth.ravel(), scores.ravel())),
        "auc": auc, "auc_macro": float(np.mean(defined(auc))),
        "coverage": float(coverage_error(truth, scores)),
        "ranking_loss": float(label_ranking_loss(truth, scores)),
        "lrap": float(label_ranking_average_precision_score(truth, scores)),
        "one_error": one_error(truth, scores),
    }


def generate():
    return [compute(*c) for c in cases()]


if __name__ == "__main__":
    print(json.dumps(generate(), indent=1))
