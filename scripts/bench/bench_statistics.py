"""The study's statistics at their real size (docs/benchmarks.md, "Statistics at the study's
size"): `collector merge`, `compare` and `report` against the number of runs (6, 21, 66: 2, 7
and 22 losses x 3 seeds) and the test size (10,000 and BigEarthNet-19's 125,866 patches), on
synthetic run folders whose predictions have BigEarthNet-19's class frequencies; `merge` of 100
runs; each step's wall time and peak memory. The peer, in the same run: the paired bootstrap
written with numpy (vectorised over patches, one resample at a time, as the independent check of
tests/python/test_results.py does), per resample, on the same pair.

    .cache/venv/bin/python scripts/bench/bench_statistics.py [--quick]"""
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_setting import ROOT, WORK, Report, measure  # noqa: E402

COLLECTOR = ROOT / "target" / "release" / "collector"
TEMPLATE = ROOT / "tests" / "data" / "old-run" / "focal-seed1"
LOSSES = ["ce", "wce", "focal", "hamming", "huber", "sparsemax", "ranking", "asl", "zlpr", "poly1",
          "weighted_focal"]
# BigEarthNet-19's share of patches per class (docs/bigearthnet.md, test split, rounded).
SHARES = [0.137, 0.052, 0.047, 0.046, 0.269, 0.045, 0.233, 0.048, 0.318, 0.036, 0.211, 0.014, 0.005, 0.092,
          0.073, 0.010, 0.006, 0.391, 0.223]
SEEDS = 3


def lists(values: np.ndarray, item: pa.DataType) -> pa.FixedSizeListArray:
    """Rows of 19 values, as the trainer writes them (lossbench_core::predictions)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=item),
                                             type=pa.list_(pa.field("item", item), 19))


def predictions(n: int, rng: np.random.Generator, skill: float) -> pa.Table:
    """A run's test predictions: labels at BigEarthNet-19's frequencies, scores that separate
    them with `skill`, decisions by the sign."""
    labels = (rng.random((n, 19)) < np.array(SHARES)).astype(np.uint8)
    scores = (rng.normal(0.0, 1.0, (n, 19)) + skill * (2.0 * labels - 1.0) - 1.0).astype(np.float32)
    decisions = (scores > 0).astype(np.uint8)
    return pa.table({
        "patch": pa.array([f"P{i:06d}" for i in range(n)]),
        "labels": lists(labels, pa.uint8()),
        "scores": lists(scores, pa.float32()),
        "decisions": lists(decisions, pa.uint8()),
    })


def make_runs(folder: Path, losses: int, n: int):
    """`losses` x SEEDS run folders from the template, each with `n` synthetic test predictions
    (the same patches and labels for every run, as runs of one store)."""
    if folder.exists():
        return
    truth_rng = np.random.default_rng(0)
    base = predictions(n, truth_rng, 0.0)
    labels = np.array(base.column("labels").combine_chunks().flatten()).reshape(n, 19)
    for k in range(losses):
        job = LOSSES[k % len(LOSSES)] + (f"_{k // len(LOSSES)}" if k >= len(LOSSES) else "")
        for seed in range(SEEDS):
            run = folder / f"{job}-seed{seed}"
            shutil.copytree(TEMPLATE, run)
            config = (run / "config.toml").read_text().replace('job = "focal"', f'job = "{job}"')
            config = config.replace("seed = 1", f"seed = {seed}")
            (run / "config.toml").write_text(config)
            info = json.loads((run / "run.json").read_text())
            info.update(run_id=run.name, seed=seed)
            info["attempts"][0]["store_id"] = "bench-store"  # one store: one setup per job
            (run / "run.json").write_text(json.dumps(info))
            rng = np.random.default_rng(1 + 100 * k + seed)
            skill = 1.0 + 0.05 * k
            scores = (rng.normal(0.0, 1.0, (n, 19)) + skill * (2.0 * labels - 1.0) - 1.0).astype(np.float32)
            table = base.set_column(2, "scores", lists(scores, pa.float32()))
            table = table.set_column(3, "decisions", lists((scores > 0).astype(np.uint8), pa.uint8()))
            # "item" children, as arrow-rs writes them (pyarrow would name them "element").
            pq.write_table(table, run / "test_predictions.parquet", use_compliant_nested_type=False)


def numpy_resample_seconds(results: Path, a: str, b: str, resamples: int) -> float:
    """The numpy peer: seconds per resample of the paired bootstrap (micro/macro/sample F1 and
    macro AP of both runs of one seed pair), vectorised over the patches."""
    def load(run):
        t = pq.read_table(results / "predictions", filters=[("run_id", "=", run)])
        n = t.num_rows
        get = lambda c: np.array(t.column(c).combine_chunks().flatten()).reshape(n, 19)  # noqa: E731
        return get("labels"), get("scores"), get("decisions")

    runs = [load(a), load(b)]
    n = runs[0][0].shape[0]
    rng = np.random.default_rng(0)
    orders = [[np.argsort(-s[:, c], kind="stable") for c in range(19)] for _, s, _ in runs]

    def metrics(truth, decisions, order, w):
        tp = (w[:, None] * (truth & decisions)).sum(0)
        fp = (w[:, None] * ((1 - truth) & decisions)).sum(0)
        fn = (w[:, None] * (truth & (1 - decisions))).sum(0)
        aps = []
        for c in range(19):
            o = order[c]
            pos, neg = w[o] * truth[o, c], w[o] * (1 - truth[o, c])
            ctp, cfp = np.cumsum(pos), np.cumsum(neg)
            total = ctp[-1]
            if total > 0:
                step = np.diff(np.concatenate([[0.0], ctp])) / total
                aps.append(float((step * ctp / np.maximum(ctp + cfp, 1)).sum()))
        return tp.sum(), fp.sum(), fn.sum(), np.mean(aps)

    start = time.perf_counter()
    for _ in range(resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.int64)
        for (truth, _, decisions), order in zip(runs, orders):
            metrics(truth.astype(np.int64), decisions.astype(np.int64), order, w)
    return (time.perf_counter() - start) / resamples


def main():
    quick = "--quick" in sys.argv
    report = Report("statistics.md")
    sizes = [10_000] if quick else [10_000, 125_866]
    counts = [2, 7] if quick else [2, 7, 22]
    root = WORK / "statistics"
    report("### Statistics at the study's size: merge, compare and report (2,000 resamples)")
    report()
    report("| test patches | runs | merge, s | merge peak, MiB | compare (one pair), s | compare peak, MiB "
           "| report, s | report peak, MiB |")
    report("|---|---|---|---|---|---|---|---|")
    peer = None
    for n in sizes:
        for losses in counts:
            runs = root / f"runs-{n}-{losses}"
            make_runs(runs, losses, n)
            results = root / f"results-{n}-{losses}"
            shutil.rmtree(results, ignore_errors=True)
            merge = measure([COLLECTOR, "merge", "--runs", runs, "--out", results])
            jobs = sorted({p.name.rsplit("-seed", 1)[0] for p in runs.iterdir()})
            compare = measure([COLLECTOR, "compare", "--a", jobs[0], "--b", jobs[1], "--results", results,
                               "--resamples", "2000"])
            rendered = measure([COLLECTOR, "report", "--results", results, "--out", root / f"report-{n}-{losses}",
                                "--resamples", "2000"])
            report(f"| {n:,} | {losses * SEEDS} | {merge[0]:.1f} | {merge[1]:.0f} | {compare[0]:.1f} | "
                   f"{compare[1]:.0f} | {rendered[0]:.1f} | {rendered[1]:.0f} |")
            if n == sizes[-1] and losses == counts[0]:
                peer = (numpy_resample_seconds(results, f"{jobs[0]}-seed0", f"{jobs[1]}-seed0", 5), compare[0])
    report()
    if peer:
        per_resample, ours = peer
        # One pair's compare: 3 per-seed comparisons and the pooled one, 2,000 resamples each.
        numpy_compare = per_resample * 2000 * (SEEDS + 1)
        report(f"Peer (numpy, same machine, same run): {per_resample * 1000:.0f} ms per resample of one seed "
               f"pair at {sizes[-1]:,} patches, so about {numpy_compare:.0f} s for the compare above; "
               f"collector compare: {ours:.1f} s ({numpy_compare / ours:.0f}x).")
    runs = root / f"runs-10000-{34}"
    make_runs(runs, 34, 10_000)
    results = root / "results-100"
    shutil.rmtree(results, ignore_errors=True)
    merge = measure([COLLECTOR, "merge", "--runs", runs, "--out", results])
    again = measure([COLLECTOR, "merge", "--runs", runs, "--out", results])
    report(f"`collector merge` of {34 * SEEDS} runs (10,000 test patches each): {merge[0]:.1f} s, peak "
           f"{merge[1]:.0f} MiB; merged again with nothing new: {again[0]:.1f} s.")
    report.save()


if __name__ == "__main__":
    main()
