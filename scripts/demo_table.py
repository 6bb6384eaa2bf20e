"""Prints the demo's table: validation F1 (sample average) per loss and epoch, the test F1 and
macro mAP of each run, whether it learns, and the best constant predictor's validation F1 for
comparison.

    python scripts/demo_table.py STORE RUNS_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np
import zarr

LOSSES = ["ce", "wce", "focal", "hamming", "huber", "sparsemax", "ranking"]


def f1_samples(truth: np.ndarray, pred: np.ndarray) -> float:
    tp = (truth & pred).sum(1)
    denom = truth.sum(1) + pred.sum(1)
    return float(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).mean())


def best_constant_f1(store: Path) -> tuple[float, int]:
    """The best F1 (sample average) on validation of predicting the k most frequent training
    classes for every patch, over k."""
    root = zarr.open_group(store, mode="r")
    counts = np.array(root.attrs["lossbench"]["splits"]["train"]["label_counts"])
    truth = root["validation"]["labels"][:].astype(bool)
    best = (0.0, 0)
    for k in range(1, 20):
        pred = np.zeros_like(truth)
        pred[:, np.argsort(-counts)[:k]] = True
        best = max(best, (f1_samples(truth, pred), k))
    return best


def verdict(f1s: list[float], baseline: float) -> str:
    """Whether a run learns: its validation F1 ends above where it started and clearly above the
    best constant predictor's. A run whose F1 falls every epoch, ends where it began, or ends
    near the constant predictor does not."""
    if len(f1s) > 1 and all(b < a for a, b in zip(f1s, f1s[1:])):
        return "no: falls every epoch"
    if len(f1s) > 1 and f1s[-1] <= f1s[0]:
        return "no: ends where it began"
    if f1s[-1] <= baseline + 0.05:
        return "no: near the constant predictor"
    return "yes"


def main():
    store, runs = Path(sys.argv[1]), Path(sys.argv[2])
    baseline, k = best_constant_f1(store)
    rows = []
    for loss in LOSSES:
        run = runs / f"{loss}-seed0"
        records = [json.loads(l) for l in (run / "epochs.jsonl").read_text().splitlines()]
        test = json.loads((run / "test_metrics.json").read_text())
        rows.append((loss, [r["val"]["samples"]["f1"] for r in records], test["metrics"]["samples"]["f1"],
                     test["ranking"]["map_macro"]))
    epochs = max(len(r[1]) for r in rows)
    print("validation F1 (sample average) per epoch; test F1 and macro mAP with the best epoch's weights")
    print(f"{'loss':<10}" + "".join(f"{'epoch ' + str(e + 1):>10}" for e in range(epochs))
          + f"{'test F1':>10}{'test mAP':>10}  learns?")
    for loss, f1s, test, test_map in rows:
        print(f"{loss:<10}" + "".join(f"{f:>10.4f}" for f in f1s) + f"{test:>10.4f}{test_map:>10.4f}  {verdict(f1s, baseline)}")
    print(f"best constant predictor (the {k} most frequent classes for every patch): {baseline:.4f}")


if __name__ == "__main__":
    main()
