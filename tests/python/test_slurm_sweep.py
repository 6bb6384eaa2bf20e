"""`sbatch slurm/sweep.sh` on a real single-node SLURM (munge, slurmctld, slurmd from Debian,
started by scripts/slurm-cluster.sh): 2 losses x 2 seeds x 2 epochs, every task with 2 MPI
ranks launched by srun. One task is requeued by `scontrol requeue` and one is signalled as
before a time limit; both resume from their checkpoints and end exactly as uninterrupted runs.
A second sweep with one new seed trains only that run."""
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import MPI_ENV, ROOT, jobs_left, run, wait_until

TRAINER = ROOT / "target" / "release" / "trainer"
SWEEP = ROOT / "slurm" / "sweep.sh"
TRAIN_ARGS = "--set train.batch_size=16 --set train.loader_threads=1 --set lrp.probes=2"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    run("synth", "--patches", "300", "--seed", "11", "--format", "v1", "--out", str(folder / "archive"))
    run("convert", "--archive", str(folder / "archive"), "--out", str(folder / "store.zarr"))
    return folder / "store.zarr"


def sbatch_sweep(env, out: Path, data: Path, losses: str, seeds: str) -> str:
    # The trainers log each finished step (debug level): the test interrupts them at a known point.
    env = dict(env, LOSSES=losses, SEEDS=seeds, EPOCHS="2", DATA=str(data), OUT=str(out), TRAIN_ARGS=TRAIN_ARGS,
               RUST_LOG="info,lossbench=debug")
    plan_log = out.parent / f"plan-{seeds.replace(' ', '_')}.out"
    job = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--ntasks=2", f"--output={plan_log}", str(SWEEP)],
        env=env, capture_output=True, text=True, check=True,
    )
    text = plan_log.read_text()
    assert job.returncode == 0, text
    return text


def log_events(log: Path, message: str) -> list[dict]:
    """The fields of the trainer's JSON log lines with this message."""
    if not log.exists():
        return []
    events = []
    for line in log.read_text().splitlines():
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue  # srun's and the script's own lines
        if fields.get("message") == message:
            events.append(fields)
    return events


def val_records(run_dir: Path) -> list:
    lines = (run_dir / "epochs.jsonl").read_text().splitlines()
    return [[r["epoch"], r["train_loss"], r["val"]] for r in map(json.loads, lines)]


def train_uninterrupted(data: Path, out: Path, loss: str, seed: int) -> Path:
    env = MPI_ENV
    cmd = ["mpirun", "-np", "2", "--oversubscribe", str(TRAINER), "train", "--config", str(ROOT / "jobs" / f"{loss}.toml"),
           "--seed", str(seed), "--data", str(data), "--out", str(out), "--epochs", "2", *TRAIN_ARGS.split()]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out / f"{loss}-seed{seed}"


def test_sweep_trains_requeues_resumes_and_adds_runs(cluster, store, tmp_path):
    env = cluster
    out = tmp_path / "runs"
    plan = sbatch_sweep(env, out, store, "ce focal", "1 2")
    assert "4 run(s) to train or resume, 0 finished, 0 being trained" in plan, plan
    array = re.search(r"submitted array job (\d+)", plan).group(1)

    # Task 1 (ce-seed2) is requeued by the administrator once it is into epoch 2; task 2
    # (focal-seed1) gets the time-limit signal (USR1 to the batch script) the same way.
    interrupted = {1: ("ce", 2, ["scontrol", "requeue", f"{array}_1"], "DUE TO JOB REQUEUE"),
                   2: ("focal", 1, ["scancel", "--batch", "--signal=USR1", f"{array}_2"],
                       "checkpointed before the time limit: requeueing")}
    for task, (loss, seed, command, _) in interrupted.items():
        run_dir = out / f"{loss}-seed{seed}"
        log = out / "logs" / f"{array}_{task}.out"
        wait_until(lambda: any(e["epoch"] == 2 for e in log_events(log, "step done")), f"a step of epoch 2 of {run_dir.name}")
        assert not (run_dir / "checkpoints" / "epoch-0002").exists(), "too late to interrupt"
        subprocess.run(command, env=env, check=True)

    wait_until(lambda: not jobs_left(env), "the array and the collector", timeout=600)
    logs = out / "logs"
    for loss in ["ce", "focal"]:
        for seed in [1, 2]:
            run_dir = out / f"{loss}-seed{seed}"
            assert (run_dir / "test_metrics.json").exists(), f"{run_dir.name} did not finish"
            assert [r[0] for r in val_records(run_dir)] == [1, 2]
    for task, (loss, seed, _, expected) in interrupted.items():
        log = (logs / f"{array}_{task}.out").read_text()
        assert expected in log and "restart 1" in log, log
        # Interrupted in epoch 2, each resumed (every rank) from the checkpoint written mid-epoch on the signal.
        resumed_from = {e["checkpoint"] for e in log_events(logs / f"{array}_{task}.out", "resuming")}
        assert len(resumed_from) == 1 and "/epoch-0001-step-" in resumed_from.pop(), resumed_from
        # The same run without interruption, on 2 ranks: bit-identical weights and records.
        whole = train_uninterrupted(store, tmp_path / "whole", loss, seed)
        resumed = out / f"{loss}-seed{seed}"
        for name in ["model.safetensors", "optimizer.safetensors"]:
            a = (whole / "checkpoints" / "epoch-0002" / name).read_bytes()
            b = (resumed / "checkpoints" / "epoch-0002" / name).read_bytes()
            assert a == b, f"{resumed.name}: {name} differs from the uninterrupted run"
        assert val_records(whole) == val_records(resumed)
        assert json.loads((whole / "test_metrics.json").read_text()) == json.loads((resumed / "test_metrics.json").read_text())
    collect_logs = list(logs.glob("collect-*.out"))
    assert len(collect_logs) == 1
    text = collect_logs[0].read_text()
    assert "every training task has ended" in text and "merged 4 run(s)" in text, text
    # The collector ran behind the array: tables and report are there.
    # One file per run, and the table's schema file (_schema.parquet, no rows).
    assert len(list((tmp_path / "results" / "test_metrics").glob("[!_]*.parquet"))) == 4
    assert (tmp_path / "report" / "index.html").is_file()

    # A rerun with a new seed trains only the new run; finished ones are not touched.
    kept = out / "ce-seed1" / "test_metrics.json"
    before = kept.stat().st_mtime_ns
    plan = sbatch_sweep(env, out, store, "ce", "1 3")
    assert "1 run(s) to train or resume, 1 finished, 0 being trained by running jobs" in plan, plan
    assert "skipping ce-seed1: finished" in plan, plan
    wait_until(lambda: not jobs_left(env), "the second sweep", timeout=300)
    assert (out / "ce-seed3" / "test_metrics.json").exists()
    assert kept.stat().st_mtime_ns == before


LANDSCAPE = ROOT / "slurm" / "landscape.sh"


def test_landscape_array_shares_blocks_and_collects(cluster, store, tmp_path):
    """`sbatch slurm/landscape.sh`: a planning job submits an array of 2 tasks with 2 srun ranks
    each (4 workers over 5 blocks of a 3x3 grid), then the collector; the merged landscape table
    holds every point once, and a second submission computes nothing."""
    env = cluster
    run_dir = train_uninterrupted(store, tmp_path / "runs", "ce", 1)
    args = "--points 3 --block 2 --seed 3 --train-patches 48 --val-patches 32 --batch 16 --name grid"

    def submit(tag: str) -> str:
        plan_log = tmp_path / f"plan-{tag}.out"
        job_env = dict(env, RUN=str(run_dir), KIND="2d", TASKS="2", LANDSCAPE_ARGS=args)
        subprocess.run(["sbatch", "--parsable", "--wait", "--ntasks=2", f"--output={plan_log}", str(LANDSCAPE)],
                       env=job_env, capture_output=True, text=True, check=True)
        wait_until(lambda: not jobs_left(env), "the landscape array and the collector", timeout=600)
        return re.search(r"submitted array job (\d+)", plan_log.read_text()).group(1)

    array = submit("first")
    logs = run_dir / "landscape" / "logs"
    computed, written = {}, {}
    for task in (0, 1):
        log = (logs / f"{array}_{task}.out").read_text()
        assert f"task {task} of 2" in log
        for k, r, n in re.findall(r"task (\d)/2 rank (\d)/2 computed (\d+)", log):
            computed[(int(k), int(r))] = int(n)
        # Rank 0 of each task logs its blocks: worker 2·task + rank takes blocks b with b mod 4 = its number.
        written[task] = sorted(e["block"] for e in log_events(logs / f"{array}_{task}.out", "landscape block written"))
    assert computed == {(0, 0): 2, (0, 1): 1, (1, 0): 1, (1, 1): 1}, computed
    assert written == {0: [0, 4], 1: [2]}, written
    assert len(list((run_dir / "landscape" / "grid" / "blocks").glob("block-*.parquet"))) == 5

    rows = [r for r in pq.read_table(tmp_path / "results" / "landscape").to_pylist() if r["quantity"] == "loss"]
    assert sorted(r["point"] for r in rows) == list(range(9))
    assert {(r["alpha"], r["beta"]) for r in rows} == {(a, b) for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)}
    assert (tmp_path / "report" / "index.html").read_text().count("Loss landscapes") == 1

    # Resubmitted: every block is there, nothing is recomputed.
    array = submit("second")
    for task in (0, 1):
        log = (logs / f"{array}_{task}.out").read_text()
        assert sorted(re.findall(r"rank \d/2 computed (\d+)", log)) == ["0", "0"], log
