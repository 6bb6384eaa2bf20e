"""What the chaos suites share (tests/python/test_chaos.py on one node, test_chaos_cluster.py
for what a cluster adds): the binaries, the short training of the suite, running and comparing
runs, and the scenario table (CHAOS_TRIALS trials per random scenario, CHAOS_SEED seeds the
moments, CHAOS_REPORT collects each scenario's figures for scripts/chaos_table.py)."""
import hashlib
import json
import os
import random
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq

from conftest import BIN, MPI_ENV, ROOT, run

TRIALS = int(os.environ.get("CHAOS_TRIALS", "3"))
RNG = random.Random(int(os.environ.get("CHAOS_SEED", "0")))
TRAINER, COLLECTOR, DATA_PREP = BIN / "trainer", BIN / "collector", BIN / "data-prep"
SWEEP = ROOT / "slurm" / "sweep.sh"
LANDSCAPE = ROOT / "slurm" / "landscape.sh"
TRAIN_ARGS = ["--epochs", "2", "--set", "train.batch_size=16", "--set", "train.loader_threads=1", "--set",
              "lrp.probes=2", "--set", "run.threads=1", "--device", "cpu"]
# Exit codes (docs/training.md).
BUSY, REQUEUE, CONFIG_CHANGED = 73, 75, 78
# Longer than any step, checkpoint or set-up here: a process still running after it is hung.
HANG = 120


def report(scenario: str, trials: int, faults: str, expected: str, outcomes: dict):
    """Appends the scenario's figures to CHAOS_REPORT (docs/reliability.md)."""
    path = os.environ.get("CHAOS_REPORT")
    if path:
        line = {"scenario": scenario, "trials": trials, "faults": faults, "expected": expected, "outcomes": outcomes}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def train_cmd(data: Path, out: Path, loss: str = "ce", ranks: int = 2, extra=()) -> list:
    cmd = [str(TRAINER), "train", "--config", str(ROOT / "jobs" / f"{loss}.toml"), "--data", str(data),
           "--out", str(out), *TRAIN_ARGS, *extra]
    return ["mpirun", "-np", str(ranks), "--oversubscribe", *cmd] if ranks > 1 else cmd


def train(data: Path, out: Path, loss: str = "ce", ranks: int = 2, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(data, out, loss, ranks, extra), env=MPI_ENV, capture_output=True, text=True,
                          timeout=HANG)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_bytes(folder: Path) -> dict:
    """Every file's digest, but the run folder's lock (it names whoever held it last)."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def outcome_of(run_dir: Path) -> dict:
    """What a finished run computed: final weights and moments, validation records, test metrics."""
    ckpt = run_dir / "checkpoints" / "epoch-0002"
    records = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    return {
        "model": digest(ckpt / "model.safetensors"),
        "optimizer": digest(ckpt / "optimizer.safetensors"),
        "val": [[r["epoch"], r["train_loss"], r["val_loss"], r["val"]] for r in records],
        "test": json.loads((run_dir / "test_metrics.json").read_text()),
    }


def make_store(folder: Path) -> Path:
    """The chaos suite's store: 200 synthetic patches."""
    run("synth", "--patches", "200", "--seed", "21", "--format", "v1", "--out", str(folder / "archive"))
    run("convert", "--archive", str(folder / "archive"), "--out", str(folder / "store.zarr"))
    return folder / "store.zarr"


def make_reference(store: Path, out: Path) -> dict:
    """Undisturbed runs on 2 ranks: loss → what they computed, and how long one takes."""
    refs = {}
    for loss in ["ce", "focal"]:
        started = time.time()
        done = train(store, out, loss)
        assert done.returncode == 0, done.stderr
        refs[loss] = outcome_of(out / f"{loss}-seed0")
        refs[f"{loss}_seconds"] = time.time() - started
    refs["folder"] = out
    return refs


def rank_pids(mpirun: subprocess.Popen) -> list[int]:
    """The trainer processes mpirun started."""
    found = subprocess.run(["pgrep", "-f", "-P", str(mpirun.pid), "trainer"], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def resume_until_done(data: Path, out: Path, loss: str = "ce") -> list[int]:
    """Resumes a run until it finishes; the exit codes of the attempts."""
    codes = []
    for _ in range(4):
        done = train(data, out, loss, extra=["--resume", "auto"])
        codes.append(done.returncode)
        if done.returncode == 0:
            return codes
        assert done.returncode == REQUEUE, done.stderr
    raise AssertionError(f"did not finish: {codes}")


def tables(results: Path) -> dict:
    """Every table, as sorted rows (the file layout left out)."""
    out = {}
    for folder in sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rows = pq.read_table(folder).to_pylist()
        for r in rows:
            r.pop("folder", None)  # the run folder's path is the merge's input, not its result
        out[folder.name] = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return out


def landscape_cmd(run_dir: Path, *extra) -> list:
    return [str(TRAINER), "landscape", "--run", str(run_dir), "--kind", "2d", "--name", "grid", "--points", "5",
            "--block", "3", "--train-patches", "24", "--val-patches", "16", "--batch", "8", "--device", "cpu",
            "--threads", "1", *extra]


def landscape_rows(run_dir: Path) -> list:
    rows = pq.read_table(run_dir / "landscape" / "grid" / "blocks").to_pylist()
    return sorted((r["point"], r["quantity"], r["value"]) for r in rows)


@contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (a disk that fills up), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize(path: Path, size: str, *options: str):
    subprocess.run(["mount", "-o", ",".join(["remount", f"size={size}", *options]), str(path)], check=True)


def fill(folder: Path) -> Path:
    """Takes every free byte of the file system of `folder`."""
    filler = folder / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "status=none"], check=False)
    return filler
