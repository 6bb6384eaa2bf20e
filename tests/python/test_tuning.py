"""A fair comparison (docs/tuning.md): successive halving decides as Optuna's pruner does, and a
study run by real workers (several at once, killed at random moments, restarted; on the real
single-node SLURM, requeued and submitted twice into one folder) ends exactly as one worker alone
ends it: the same trials, parameters, promotions, prunes and values, the same best
configurations; its tables and report hold the tuning results; the study refuses what would
make the comparison unfair or unreproducible."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from chaos_kit import REQUEUE, fill, tmpfs
from conftest import BIN, ROOT, jobs_left, run, tool, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_optuna_asha  # noqa: E402

TUNE, COLLECTOR = BIN / "tune", BIN / "collector"
RNG = random.Random(int(os.environ.get("CHAOS_SEED", "0")))
HANG = 600


def test_optuna_still_decides_as_recorded():
    """tests/data/optuna_asha.json (the tuner's unit test replays it) is what Optuna decides."""
    recorded = json.loads((ROOT / "tests" / "data" / "optuna_asha.json").read_text())["cases"]
    fresh = gen_optuna_asha.cases()
    assert len(fresh) == len(recorded) == 12
    for case, now in zip(recorded, fresh):
        assert json.dumps(now) == json.dumps(case), (case["grace"], case["reduction"], case["max_epochs"])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tune")
    run("synth", "--patches", "150", "--seed", "13", "--format", "v1", "--out", str(folder / "archive"))
    run("convert", "--archive", str(folder / "archive"), "--out", str(folder / "store.zarr"))
    return folder / "store.zarr"


def study_file(folder: Path, store: Path, out: str = "study", **changes) -> Path:
    """A small study: two losses, three trials each, rungs at 1 and 2 epochs, one final seed."""
    text = f"""[study]
out = "{out}"
data = "{store}"
jobs = "{ROOT / 'jobs'}"
seed = 0
startup_trials = 2
window = 2
metric = "{changes.get('metric', 'map_macro')}"

[budget]
trials = 3

[asha]
grace_epochs = 1
reduction = 2
max_epochs = 2

[recipe]
"train.batch_size" = 16
"lrp.every" = 0
"run.device" = "cpu"
"run.threads" = 1
"checkpoint.keep_last" = 1

[final]
seeds = 1

[losses.ce]
"train.lr" = {{ low = 1e-4, high = 1e-2, scale = "log" }}

[losses.focal]
"train.lr" = {{ low = 1e-4, high = 1e-2, scale = "log" }}
"loss.gamma" = {{ low = 0.0, high = 5.0 }}
"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tune.toml"
    path.write_text(text)
    return path


def outcome(study: Path) -> dict:
    """Every trial's parameters, status, prune point and values."""
    out = {}
    for f in sorted((study / "trials").glob("*/trial.json")):
        t = json.loads(f.read_text())
        out[f.parent.name] = (t["params"], t["status"], t["pruned_at"], t["reports"])
    return out


@pytest.fixture(scope="module")
def alone(store, tmp_path_factory) -> dict:
    """The study run by one worker, undisturbed."""
    folder = tmp_path_factory.mktemp("alone")
    tool(TUNE, "run", study_file(folder, store))
    result = outcome(folder / "study")
    assert len(result) == 6 and {s for _, s, _, _ in result.values()} <= {"complete", "pruned"}
    assert "pruned" in {s for _, s, _, _ in result.values()}
    return result


def workers(study: Path, n: int) -> list:
    return [subprocess.Popen([str(TUNE), "run", str(study)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True) for _ in range(n)]


def test_workers_at_once_killed_and_restarted_end_as_one_worker(store, alone, tmp_path):
    """Two workers at once, one killed with SIGKILL at a random moment (its trainer left to
    finish alone), a third started later: the same trials as one worker's, and the final runs
    of each loss's best configuration and its defaults; merged, the trials table and the
    report's tuning section."""
    study = study_file(tmp_path, store)
    started = workers(study, 2)
    time.sleep(RNG.uniform(3.0, 20.0))
    started[0].send_signal(signal.SIGKILL)
    started[0].wait()
    late = workers(study, 1)
    for w in started[1:] + late:
        _, err = w.communicate(timeout=HANG)
        assert w.returncode == 0, err
    out = tmp_path / "study"
    assert outcome(out) == alone
    finals = sorted(p.name for p in (out / "final").iterdir() if (p / "test_metrics.json").is_file())
    assert finals == ["ce-default-seed0", "ce-tuned-seed0", "focal-default-seed0", "focal-tuned-seed0"]
    shown = tool(TUNE, "show", study)
    assert re.search(r"focal: 3 trial\(s\) of 3 \(\d complete, \d pruned, 0 failed", shown), shown
    results, report = tmp_path / "results", tmp_path / "report"
    tool(COLLECTOR, "merge", "--runs", out / "trials", out / "final", "--out", results)
    tool(COLLECTOR, "report", "--results", results, "--out", report)
    rows = pq.read_table(results / "trials").to_pylist()
    assert {r["run_id"] for r in rows} == set(alone)
    best = {r["loss"]: r["run_id"] for r in rows if r["best"]}
    for loss, run_id in best.items():
        config = tomllib.loads((out / "final" / f"{loss}-tuned-seed0" / "config.toml").read_text())
        for key, value in alone[run_id][0].items():
            section, name = key.split(".")
            assert config[section][name] == pytest.approx(value, rel=1e-12), (loss, key)
        default = tomllib.loads((out / "final" / f"{loss}-default-seed0" / "config.toml").read_text())
        assert default["train"]["lr"] == pytest.approx(1e-4), "the default run keeps the job's own lr"
    page = (report / "index.html").read_text()
    assert "Tuning: every loss with the same budget" in page and "With their defaults the losses rank" in page


def test_a_full_disk_stops_the_worker_and_fails_no_trial(store, alone, tmp_path):
    """The study folder's disk fills at a random moment of a worker's trial (a scratch quota):
    the worker exits 75, to be requeued, and no trial is failed for it; once space is back a
    worker ends the study as one undisturbed worker ended it."""
    with tmpfs(tmp_path / "disk", "6g") as disk:
        study = study_file(tmp_path, store, out=str(disk / "study"))
        worker = workers(study, 1)[0]
        time.sleep(RNG.uniform(3.0, 15.0))
        filler = fill(disk)
        _, err = worker.communicate(timeout=HANG)
        assert worker.returncode == REQUEUE, err
        assert "failed" not in {s for _, s, _, _ in outcome(disk / "study").values()}, err
        filler.unlink()
        tool(TUNE, "run", study)
        assert outcome(disk / "study") == alone


def test_the_study_refuses_what_is_unfair_or_not_its_own(store, tmp_path):
    """Selecting on a test metric is refused (the test split stays out of the search); a recipe
    key the trainer does not know, or a search space whose edge it refuses, is refused before
    any trial (checked against each loss's job config); a different study file into a study's
    folder is refused."""
    bad = study_file(tmp_path / "bad", store, metric="test_map_macro")
    refused = subprocess.run([str(TUNE), "run", str(bad)], capture_output=True, text=True)
    assert refused.returncode == 1 and "trials never see the test split" in refused.stderr, refused.stderr
    typo = study_file(tmp_path / "typo", store)
    typo.write_text(typo.read_text().replace('"lrp.every" = 0', '"lrp.every" = 0\n"train.lrr" = 0.1'))
    refused = subprocess.run([str(TUNE), "run", str(typo)], capture_output=True, text=True)
    assert refused.returncode == 1 and 'recipe."train.lrr" = 0.1' in refused.stderr, refused.stderr
    edge = study_file(tmp_path / "edge", store)
    edge.write_text(edge.read_text().replace("low = 0.0, high = 5.0", "low = -1.0, high = 5.0"))
    refused = subprocess.run([str(TUNE), "run", str(edge)], capture_output=True, text=True)
    assert refused.returncode == 1 and 'losses.focal."loss.gamma" = -1.0' in refused.stderr, refused.stderr
    assert not (tmp_path / "typo" / "study").exists() and not (tmp_path / "edge" / "study").exists()
    first = study_file(tmp_path / "a", store, out=str(tmp_path / "shared"))
    tool(TUNE, "out", first)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "study.toml").write_text(first.read_text())
    other = study_file(tmp_path / "b", store, out=str(tmp_path / "shared"), metric="f1_samples")
    refused = subprocess.run([str(TUNE), "run", str(other)], capture_output=True, text=True)
    assert refused.returncode == 1 and "belongs to another study" in refused.stderr, refused.stderr


def test_workers_requeued_on_slurm_and_a_second_submission_end_as_one_worker(cluster, store, alone, tmp_path):
    """`sbatch slurm/tune.sh` twice at once into one study folder (2 workers each); workers
    requeued by `scontrol requeue` at random moments: the same trials as one worker's."""
    study = study_file(tmp_path, store)
    env = dict(cluster, WORKERS="2")
    subs = [subprocess.Popen(["sbatch", "--parsable", "--wait", "--ntasks=1", f"--output={tmp_path}/plan-{k}.out",
                              str(ROOT / "slurm" / "tune.sh"), str(study)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for k in range(2)]
    for s in subs:
        assert s.wait(timeout=HANG) == 0, s.stderr.read()
    arrays = [re.search(r"array job (\d+)", (tmp_path / f"plan-{k}.out").read_text()).group(1) for k in range(2)]
    requeued = 0
    for _ in range(2):
        time.sleep(RNG.uniform(5.0, 25.0))
        running = [j.split()[0] for j in jobs_left(cluster) if "RUNNING" in j and j.split()[0].split("_")[0] in arrays]
        if running:
            subprocess.run(["scontrol", "requeue", RNG.choice(running)], env=cluster, check=False)
            requeued += 1
    wait_until(lambda: not jobs_left(cluster), "the workers and the collectors", timeout=HANG)
    out = tmp_path / "study"
    assert outcome(out) == alone
    logs = "\n".join(p.read_text() for p in (out / "logs").glob("*.out"))
    assert "every worker has ended" in logs
    assert (out / "report" / "index.html").is_file()
    assert requeued >= 1 or not running
