"""`make bench` for the trainer: training images/s of the K-Branch CNN with the CE loss on this
CPU (batch 256, 2 threads, data in memory) in Rust (tch) beside Python PyTorch (same torch
2.13, same threads), alternating runs; and the trainer's time from launch to its first
optimizer step on a small store. Prints Markdown, saved to work/bench/trainer.md.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "work" / "bench"
RUST = str(ROOT / "target" / "release" / "examples" / "train_bench")
TORCH_PY = str(ROOT / ".cache" / "venv-torch" / "bin" / "python")
DATA_PREP = str(ROOT / "target" / "release" / "data-prep")
TRAINER = str(ROOT / "target" / "release" / "trainer")
BATCH, STEPS, THREADS, ROUNDS = 256, 4, 2, 3


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def first_step_seconds(store: Path) -> float:
    runs = WORK / "first-step-runs"
    subprocess.run(["rm", "-rf", str(runs)], check=True)
    start = time.perf_counter()
    p = subprocess.Popen([TRAINER, "--log-format", "json", "train", "--config", str(ROOT / "jobs" / "ce.toml"),
                          "--data", str(store), "--out", str(runs), "--epochs", "1", "--set", "train.batch_size=32"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if json.loads(line)["fields"].get("message") == "first optimizer step done":
            seconds = time.perf_counter() - start
            p.kill()
            p.wait()
            return seconds
    raise SystemExit("the trainer ended without a first step")


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    lines = []
    say = lambda s="": (print(s, flush=True), lines.append(s))
    rust, py = [], []
    for _ in range(ROUNDS):
        rust.append(run_json([RUST, str(BATCH), str(STEPS), str(THREADS)])["images_per_s"])
        result = run_json([TORCH_PY, str(ROOT / "scripts" / "bench" / "torch_kbranch.py"), str(BATCH), str(STEPS), str(THREADS)])
        py.append(result["images_per_s"])
    say(f"### Training throughput, K-Branch CNN + CE, batch {BATCH}, {THREADS} threads, data in memory "
        f"({ROUNDS} alternating rounds of {STEPS} timed steps after a warm-up step; torch {result['torch']})")
    say()
    say("| implementation | images/s per round | median |")
    say("|---|---|---|")
    say(f"| lossbench (Rust, tch) | {', '.join(f'{v:.1f}' for v in rust)} | {statistics.median(rust):.1f} |")
    say(f"| Python PyTorch | {', '.join(f'{v:.1f}' for v in py)} | {statistics.median(py):.1f} |")
    say()
    say(f"Ratio Rust / Python (medians): **{statistics.median(rust) / statistics.median(py):.2f}** (goal >= 1.0).")
    say()
    store = WORK / "first-step" / "store.zarr"
    if not store.exists():
        subprocess.run([DATA_PREP, "synth", "--patches", "400", "--seed", "3", "--out", str(store.parent / "archive")],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([DATA_PREP, "convert", "--archive", str(store.parent / "archive"), "--out", str(store)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = [first_step_seconds(store) for _ in range(3)]
    say(f"Time from launching `trainer train` to its first optimizer step (400-patch store, batch 32): "
        f"{', '.join(f'{t:.2f}' for t in times)} s.")
    (WORK / "trainer.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
