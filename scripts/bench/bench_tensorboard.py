"""The cost of TensorBoard's curves (docs/benchmarks.md, "TensorBoard curves"): one epoch of
the demo's training (2000 patches, CE, batch 32, K-Branch CNN on the CPU) with a point of the
training curves after every step (`tensorboard.every = 1`, the most there can be) against none
(`0`), in alternating rounds; the cost is the difference in training seconds per step.

    .cache/venv/bin/python scripts/bench/bench_tensorboard.py"""
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_setting import DEMO_FLAGS, ROOT, TRAINER, WORK, Report, demo_store, run  # noqa: E402

ROUNDS = 3


def train_seconds(store: Path, every: int, out: Path) -> tuple[float, int]:
    """Training seconds of the epoch (without validation) and its optimizer steps."""
    shutil.rmtree(out, ignore_errors=True)
    run([TRAINER, "train", "--config", ROOT / "jobs" / "ce.toml", "--data", store, "--out", out, "--epochs", 1,
         "--set", f"tensorboard.every={every}", "--set", "lrp.every=0", *DEMO_FLAGS])
    record = json.loads((out / "ce-seed0" / "epochs.jsonl").read_text().splitlines()[0])
    t = record["time"]
    patches = record["images_per_s"] * (t["compute_s"] + t["allreduce_s"] + t["data_wait_s"])
    return t["compute_s"] + t["allreduce_s"] + t["data_wait_s"], round(patches / 32)


def main():
    store = demo_store()
    report = Report("tensorboard.md")
    seconds = {1: [], 0: []}
    steps = 0
    for _ in range(ROUNDS):
        for every in (1, 0):
            s, steps = train_seconds(store, every, WORK / f"tb-{every}")
            seconds[every].append(s)
    on, off = min(seconds[1]), min(seconds[0])
    per_step = (on - off) / steps
    report("### TensorBoard curves: one demo epoch, a point every step vs none (fastest of "
           f"{ROUNDS} alternating rounds)")
    report()
    report("| tensorboard.every | training s | steps | s per step |")
    report("|---|---|---|---|")
    report(f"| 1 | {on:.2f} | {steps} | {on / steps:.4f} |")
    report(f"| 0 | {off:.2f} | {steps} | {off / steps:.4f} |")
    report()
    report(f"Cost of a point every step: {per_step * 1000:+.2f} ms per step, {100 * per_step / (off / steps):+.2f}% "
           "of a step (the default, every 10 steps, a tenth of it).")
    report.save()


if __name__ == "__main__":
    main()
