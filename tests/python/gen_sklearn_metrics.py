"""Writes tests/data/sklearn_metrics.json: multi-label cases and the metrics scikit-learn computes
for them (precision_recall_fscore_support with zero_division=0, Hamming loss, subset accuracy).
The Rust metrics module's unit test compares against this file; test_sklearn_metrics.py checks
the file is still what scikit-learn says.

    python tests/python/gen_sklearn_metrics.py > tests/data/sklearn_metrics.json
"""
import json

import numpy as np
from sklearn.metrics import accuracy_score, hamming_loss, precision_recall_fscore_support

C = 19


def cases():
    rng = np.random.default_rng(20201)
    for name, n, p_true, p_pred in [("dense", 40, 0.4, 0.4), ("sparse", 50, 0.08, 0.1), ("small", 7, 0.2, 0.5)]:
        truth = (rng.random((n, C)) < p_true).astype(int)
        pred = (rng.random((n, C)) < p_pred).astype(int)
        yield name, truth, pred
    # Edge cases: rows with no prediction, rows with no true label, classes never seen, exact rows.
    truth = (rng.random((12, C)) < 0.2).astype(int)
    pred = truth.copy()
    pred[0:3] = 0
    truth[3:5] = 0
    truth[:, 16] = 0
    pred[:, 16] = 0
    pred[5, 7] = 1 - pred[5, 7]
    yield "edges", truth, pred


def compute(name, truth, pred):
    out = {"name": name, "truth": truth.tolist(), "pred": pred.tolist()}
    for avg in ["micro", "macro", "weighted", "samples"]:
        p, r, f, _ = precision_recall_fscore_support(truth, pred, average=avg, zero_division=0)
        out[avg] = [float(p), float(r), float(f)]
    p, r, f, s = precision_recall_fscore_support(truth, pred, average=None, zero_division=0)
    out["per_class"] = [p.tolist(), r.tolist(), f.tolist(), s.tolist()]
    out["hamming_loss"] = float(hamming_loss(truth, pred))
    out["subset_accuracy"] = float(accuracy_score(truth, pred))
    return out


def generate():
    return [compute(*c) for c in cases()]


if __name__ == "__main__":
    print(json.dumps(generate(), indent=1))
