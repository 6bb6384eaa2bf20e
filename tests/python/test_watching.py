"""Watching a run while it trains (docs/training.md, "Watching a run"; docs/cluster.md,
"Watching a sweep"): the TensorBoard event files read by TensorBoard's own reader
(`tensorboard.backend.event_processing`) and by tbparse hold every value the run recorded, a
log read while the trainer writes never errors, a run killed with SIGKILL and resumed shows the
undisturbed run's curves, a landscape's values appear at their checkpoint's step; and the report
of a sweep in progress keeps unfinished runs apart from finished ones."""
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tbparse
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import BIN, ROOT, run, tool, wait_until

TRAINER, COLLECTOR = BIN / "trainer", BIN / "collector"
ARGS = ["--epochs", "3", "--device", "cpu", "--set", "train.batch_size=16", "--set", "train.lr=1e-3", "--set",
        "lrp.probes=2", "--set", "tensorboard.every=2", "--set", "run.threads=2"]
# Values of the run's own arithmetic (losses, metrics): equal in every undisturbed run; the
# speeds and times are the machine's.
TIMED = ("train/images_per_s", "train/data_wait_share", "time/epoch_s")
RNG = random.Random(int(os.environ.get("CHAOS_SEED", "0")))


def train_cmd(data: Path, out: Path) -> list:
    return [str(TRAINER), "train", "--config", str(ROOT / "jobs" / "ce.toml"), "--data", str(data), "--out", str(out),
            *ARGS]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("watch")
    run("synth", "--patches", "150", "--seed", "12", "--format", "v1", "--out", str(folder / "archive"))
    run("convert", "--archive", str(folder / "archive"), "--out", str(folder / "store.zarr"))
    return folder / "store.zarr"


def board(folder: Path) -> EventAccumulator:
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def curves(folder: Path, timed=False) -> dict:
    """Tag → [(step, value)] of every scalar, as TensorBoard shows them."""
    ea = board(folder)
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"] if timed or t not in TIMED}


@pytest.fixture(scope="module")
def watched(store, tmp_path_factory) -> Path:
    """An undisturbed run, its event files read over and over while it trains."""
    out = tmp_path_factory.mktemp("undisturbed")
    folder = out / "ce-seed0" / "tensorboard"
    errors, reads = [], [0]
    done = threading.Event()

    def read_while_training():
        while not done.is_set():
            if folder.is_dir():
                try:
                    board(folder)
                    tbparse.SummaryReader(str(folder)).scalars
                    reads[0] += 1
                except Exception as e:  # noqa: BLE001 - any error of a reader is the failure
                    errors.append(repr(e))
            time.sleep(0.05)

    reader = threading.Thread(target=read_while_training)
    reader.start()
    try:
        tool(*train_cmd(store, out))
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:3]
    assert reads[0] > 10, f"only {reads[0]} reads during training"
    return out / "ce-seed0"


def test_every_value_of_the_run_is_in_tensorboard(watched):
    ea = board(watched / "tensorboard")
    records = [json.loads(line) for line in (watched / "epochs.jsonl").read_text().splitlines()]
    steps = {e.value: e.step for e in ea.Scalars("epoch")}
    assert sorted(steps) == [r["epoch"] for r in records]
    for r in records:
        step = steps[r["epoch"]]
        at = lambda tag: [e.value for e in ea.Scalars(tag) if e.step == step]  # noqa: E731
        expected = {"val/loss": r["val_loss"], "val/f1_samples": r["val"]["samples"]["f1"],
                    "val/f1_micro": r["val"]["micro"]["f1"], "val/f1_macro": r["val"]["macro_avg"]["f1"],
                    "val/map_macro": r["val_ranking"]["map_macro"], "train/epoch_loss": r["train_loss"]}
        for c, cls in enumerate(r["val_ranking"]["per_class"]):
            if cls["ap"] is not None:
                tag = next(t for t in ea.Tags()["scalars"] if t.startswith(f"val_ap/{c:02d}_"))
                expected[tag] = cls["ap"]
        for tag, value in expected.items():
            assert at(tag) == pytest.approx([value], rel=1e-6, abs=1e-7), (tag, r["epoch"])
    # The training curves every 2 steps, at the configured learning rate.
    loss = ea.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(2, steps[records[-1]["epoch"]] + 1, 2))
    assert {round(e.value, 9) for e in ea.Scalars("train/lr")} == {1e-3}
    # The LRP snapshots as images (each epoch, each explained (patch, class)).
    rows = sum(len(pq.read_table(p)) for p in (watched / "lrp").glob("*.parquet"))
    images = [im for t in ea.Tags()["images"] for im in ea.Images(t)]
    assert len(images) == rows
    picture = Image.open(io.BytesIO(images[0].encoded_image_string))
    assert picture.size == (images[0].width, images[0].height) and picture.size[1] == 120
    # The resolved config as text.
    text = ea.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert (watched / "config.toml").read_text().strip() in text
    # tbparse reads the same scalars.
    frame = tbparse.SummaryReader(str(watched / "tensorboard")).scalars
    f1 = frame[frame.tag == "val/f1_samples"].sort_values("step")
    assert list(f1.value) == pytest.approx([r["val"]["samples"]["f1"] for r in records], rel=1e-6)


def test_a_run_killed_and_resumed_shows_the_undisturbed_curves(store, watched, tmp_path):
    """SIGKILL at a random moment (after the curves of steps the checkpoint does not hold were
    written, often), then `--resume auto`: TensorBoard and tbparse show exactly the undisturbed
    run's points, no step twice, none missing."""
    want = curves(watched / "tensorboard")
    want_images = sorted((t, e.step) for t in board(watched / "tensorboard").Tags()["images"]
                         for e in board(watched / "tensorboard").Images(t))
    out = tmp_path / "runs"
    victim = subprocess.Popen(train_cmd(store, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: (out / "ce-seed0" / "tensorboard").is_dir(), "the first event file", timeout=60)
    time.sleep(RNG.uniform(1.0, 10.0))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = subprocess.run(train_cmd(store, out) + ["--resume", "auto"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = out / "ce-seed0" / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) >= 2, "one file per attempt"
    assert curves(folder) == want
    ea = board(folder)
    assert sorted((t, e.step) for t in ea.Tags()["images"] for e in ea.Images(t)) == want_images
    frame = tbparse.SummaryReader(str(folder)).scalars
    frame = frame[~frame.tag.isin(TIMED)]
    got = {t: list(zip(g.step, g.value)) for t, g in frame.sort_values("step").groupby("tag")}
    assert got == {t: [(s, pytest.approx(v)) for s, v in pts] for t, pts in want.items()}


def test_a_landscape_appears_at_its_checkpoints_steps(watched, tmp_path):
    """`trainer landscape --kind sharpness`: λ_max of every kept checkpoint in the run's
    TensorBoard, at the checkpoint's optimizer step."""
    run_dir = tmp_path / "ce-seed0"
    shutil.copytree(watched, run_dir)
    tool(TRAINER, "landscape", "--run", run_dir, "--kind", "sharpness", "--name", "sharp", "--iterations", "5",
         "--train-patches", "24", "--val-patches", "16", "--batch", "8", "--device", "cpu")
    ea = board(run_dir / "tensorboard")
    points = {e.step: e.value for e in ea.Scalars("landscape/sharp/lambda_max")}
    rows = [r for r in pq.read_table(run_dir / "landscape" / "sharp" / "blocks").to_pylist() if r["quantity"] == "lambda_max"]
    for r in rows:
        state = json.loads((run_dir / "checkpoints" / f"epoch-{r['checkpoint']:04d}" / "state.json").read_text())
        assert points[state["optimizer_step"]] == pytest.approx(r["value"], rel=1e-6)
    assert len(points) == len(rows) >= 2


def test_the_report_of_a_sweep_in_progress_keeps_unfinished_runs_apart(watched, tmp_path):
    """Merged and reported while a seed still trains: that run is marked running with its epoch,
    drawn apart from its setup's finished seeds, left out of the test table and the matrix,
    which say so."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        dest = runs / f"ce-seed{seed}"
        shutil.copytree(watched, dest, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
        config = (dest / "config.toml").read_text().replace("seed = 0", f"seed = {seed}")
        (dest / "config.toml").write_text(config)
    late = runs / "ce-seed1"
    (late / "test_metrics.json").unlink()
    (late / "test_predictions.parquet").unlink()
    (late / "epochs.jsonl").write_text((late / "epochs.jsonl").read_text().splitlines()[0] + "\n")
    info = json.loads((late / "run.json").read_text())
    info.update(status="running", run_id="ce-seed1", seed=1)
    (late / "run.json").write_text(json.dumps(info))
    results, report = tmp_path / "results", tmp_path / "report"
    tool(COLLECTOR, "merge", "--runs", runs, "--out", results)
    tool(COLLECTOR, "report", "--results", results, "--out", report)
    page = (report / "index.html").read_text()
    assert "\"setup\":\"CE (ce) · seed 1 (running, epoch 1/3)\"" in page
    assert "1 run(s) have no test yet: CE (ce) · seed 1 (running, epoch 1/3)" in page
    # The runs table marks it, with its epochs so far.
    assert re.search(r"<td[^>]*>ce-seed1</td>.*?<td>running</td>.*?>1/3<", page, re.S)
