"""`make bench` for the ranking metrics (docs/benchmarks.md, "Ranking metrics"): what they add
to an epoch, and their speed against scikit-learn's. Prints Markdown, saved to
work/bench/metrics.md.

1. The demo's setting (`make demo`: its store, CE, 3 epochs, its flags): per epoch the wall time
   and the seconds the trainer spent computing the ranking metrics of the validation split (its
   debug log), and their share.
2. A split of BigEarthNet's validation size (123,723 patches x 19 classes, synthetic scores):
   our ranking metrics (examples/ranking_cost.rs) against scikit-learn's average_precision_score
   per class and micro, roc_auc_score per class, coverage_error, label_ranking_loss and
   label_ranking_average_precision_score on the same scores, alternating rounds; and the time of
   tuning the per-class thresholds.
"""
import json
import os
import statistics
import time

import numpy as np
from sklearn.metrics import (average_precision_score, coverage_error, label_ranking_average_precision_score,
                             label_ranking_loss, roc_auc_score)

from demo_setting import DEMO_EPOCHS, DEMO_FLAGS, DEMO_PATCHES, ROOT, TRAINER, WORK, Report, demo_store, run

EXAMPLE = str(ROOT / "target" / "release" / "examples" / "ranking_cost")
VAL_PATCHES, ROUNDS = 123_723, 3


def demo_epochs(say):
    store = demo_store()
    out = WORK / "metrics-runs"
    env = dict(os.environ, RUST_LOG="info,lossbench::train=debug")
    p = run([TRAINER, "--log-format", "json", "train", "--config", ROOT / "jobs" / "ce.toml", "--data", store, "--out", out,
             "--epochs", DEMO_EPOCHS, "--run-id", f"bench-{time.time_ns()}", "--device", "cpu", *DEMO_FLAGS], env=env)
    costs = {}
    for line in p.stderr.splitlines():
        try:
            fields = json.loads(line)["fields"]
        except (ValueError, KeyError):
            continue
        if fields.get("message") == "ranking metrics computed":
            costs[fields["epoch"]] = fields["seconds"]
    run_dir = next(d for d in sorted(out.iterdir()) if d.name.startswith("bench-"))
    records = [json.loads(l) for l in (run_dir / "epochs.jsonl").read_text().splitlines()]
    say(f"### In an epoch of the demo ({DEMO_PATCHES} patches, CE, batch 32, K-Branch CNN on the CPU)\n")
    say("| epoch | epoch wall time (s) | ranking metrics (ms) | share |")
    say("|---|---|---|---|")
    for r in records:
        cost = costs[r["epoch"]]
        say(f"| {r['epoch']} | {r['wall_s']:.1f} | {1000 * cost:.2f} | {100 * cost / r['wall_s']:.3f}% |")
    total = sum(costs.values()) / sum(r["wall_s"] for r in records)
    say(f"\nOver the {len(records)} epochs the ranking metrics took {100 * total:.3f}% of the wall time.\n")


def sklearn_ranking(truth, scores):
    aps = [average_precision_score(truth[:, c], scores[:, c]) for c in range(19)]
    aucs = [roc_auc_score(truth[:, c], scores[:, c]) for c in range(19)]
    average_precision_score(truth.ravel(), scores.ravel())
    coverage_error(truth, scores)
    label_ranking_loss(truth, scores)
    label_ranking_average_precision_score(truth, scores)
    return float(np.mean(aps)), aucs


def full_split(say):
    rng = np.random.default_rng(3)
    truth = (rng.random((VAL_PATCHES, 19)) < 0.15).astype(np.uint8)
    scores = (rng.normal(size=(VAL_PATCHES, 19)) + 1.5 * truth).astype(np.float32)
    scores_file, truth_file = WORK / "val-scores.f32", WORK / "val-truth.u8"
    scores.tofile(scores_file)
    truth.tofile(truth_file)
    ours, theirs = [], []
    tuning = []
    for _ in range(ROUNDS):
        out = json.loads(run([EXAMPLE, scores_file, truth_file, 1]).stdout)
        ours += out["ranking_s"]
        tuning += out["tuning_s"]
        started = time.perf_counter()
        map_macro, _ = sklearn_ranking(truth, scores.astype(np.float64))
        theirs.append(time.perf_counter() - started)
        assert abs(map_macro - out["map_macro"]) < 1e-9, (map_macro, out["map_macro"])
    say(f"### A validation split of BigEarthNet's size ({VAL_PATCHES:,} patches x 19 classes), {ROUNDS} alternating rounds\n")
    say("| | median (s) | range (s) |")
    say("|---|---|---|")
    for name, values in [("lossbench: every ranking metric (one thread)", ours),
                         ("scikit-learn: AP per class and micro, AUC per class, coverage, ranking loss, LRAP", theirs),
                         ("lossbench: tuning 19 thresholds", tuning)]:
        say(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |")
    say(f"\nscikit-learn / lossbench: {statistics.median(theirs) / statistics.median(ours):.1f}x (the same macro mAP to 1e-9).\n")


def main():
    say = Report("metrics.md")

    say("## Ranking metrics\n")
    demo_epochs(say)
    full_split(say)
    say.save()


if __name__ == "__main__":
    main()
