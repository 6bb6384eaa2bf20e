"""The chaos suite (issue: safe on a shared cluster; docs/reliability.md): what users of a busy
cluster do to runs, done to the real binaries as they start them (mpirun with OpenMPI, a real
single-node SLURM), with faults at random moments. For each scenario: what must happen, and that
nothing is lost: runs end bit-identical to undisturbed runs, tables equal a clean merge, files
that must not change keep their bytes.

CHAOS_TRIALS trials per random scenario (3 in `make test`, more in `make chaos`), CHAOS_SEED
seeds the moments; with CHAOS_REPORT set, each scenario appends a JSON line (trials, faults,
outcomes) that scripts/chaos_table.py turns into docs/reliability.md's table."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import chaos_kit as kit
from chaos_kit import (BUSY, COLLECTOR, CONFIG_CHANGED, DATA_PREP, HANG, LANDSCAPE, REQUEUE, SWEEP, TRAIN_ARGS,
                       folder_bytes, landscape_cmd, landscape_rows, outcome_of, rank_pids, report, resume_until_done,
                       tables, train, train_cmd)
from conftest import MPI_ENV, jobs_left, run, wait_until

TRIALS, RNG = kit.TRIALS, kit.RNG


@pytest.fixture(scope="module")
def store(chaos_store) -> Path:
    return chaos_store


@pytest.fixture(scope="module")
def reference(chaos_reference) -> dict:
    return chaos_reference


def test_a_signal_to_one_rank_at_any_moment_stops_every_rank_and_the_resume_is_exact(store, reference, tmp_path):
    """SIGUSR1 or SIGTERM delivered to one of two ranks at a random moment (set-up, a step,
    validation, a snapshot, a checkpoint, the test): both ranks exit together, 75 after a
    checkpoint (0 if the run had finished), never blocked in an all-reduce; resumed, the run
    equals the undisturbed one bit for bit. The time from signal to exit is measured."""
    codes, exits = {}, []
    for trial in range(TRIALS):
        out = tmp_path / f"t{trial}"
        mpirun = subprocess.Popen(train_cmd(store, out), env=MPI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        wait_until(lambda: len(rank_pids(mpirun)) == 2 or mpirun.poll() is not None, "two ranks", timeout=30)
        time.sleep(RNG.uniform(0.0, reference["ce_seconds"]))
        pids = rank_pids(mpirun)
        sig = RNG.choice([signal.SIGUSR1, signal.SIGTERM])
        sent = time.time()
        if pids:
            os.kill(RNG.choice(pids), sig)
        try:
            _, stderr = mpirun.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            mpirun.kill()
            raise AssertionError(f"trial {trial}: a rank hung after {sig.name}")
        exits.append(time.time() - sent)
        assert mpirun.returncode in (0, REQUEUE), f"trial {trial}: {mpirun.returncode}\n{stderr}"
        codes[mpirun.returncode] = codes.get(mpirun.returncode, 0) + 1
        if mpirun.returncode == REQUEUE:
            resume_until_done(store, out)
            info = json.loads((out / "ce-seed0" / "run.json").read_text())
            assert info["attempts"][0]["outcome"] == "stopped", info
            assert info["attempts"][0]["reason"].startswith(("SIG", "another rank")), info
        assert outcome_of(out / "ce-seed0") == reference["ce"], f"trial {trial}: the resumed run differs"
    report("signal to one rank of two", TRIALS, "SIGUSR1/SIGTERM to one random rank at a random moment",
           "both ranks exit 75 (or 0 when done), resume bit-identical",
           {"exit 75": codes.get(REQUEUE, 0), "exit 0": codes.get(0, 0), "hangs": 0,
            "bit-identical": TRIALS, "signal to exit, s (max)": round(max(exits), 2)})


def test_kill_9_of_a_trainer_at_any_moment_loses_nothing_but_time(store, reference, tmp_path):
    """kill -9 of one rank (mpirun then ends the other) at a random moment: the resumed run
    equals the undisturbed one; the killed attempt reads `killed` in run.json."""
    for trial in range(TRIALS):
        out = tmp_path / f"t{trial}"
        mpirun = subprocess.Popen(train_cmd(store, out), env=MPI_ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_until(lambda: len(rank_pids(mpirun)) == 2 or mpirun.poll() is not None, "two ranks", timeout=30)
        time.sleep(RNG.uniform(0.5, reference["ce_seconds"]))
        for pid in rank_pids(mpirun)[:1]:
            os.kill(pid, signal.SIGKILL)
        mpirun.wait(timeout=HANG)
        if mpirun.returncode != 0:
            resume_until_done(store, out)
            info = json.loads((out / "ce-seed0" / "run.json").read_text())
            # Rank 0 may have been killed (its attempt is found `running`: killed), or ended by
            # mpirun after its peer died (stopped on mpirun's SIGTERM, or failed).
            assert all(a["outcome"] in ("killed", "stopped", "failed") for a in info["attempts"][:-1]), info
        assert outcome_of(out / "ce-seed0") == reference["ce"], f"trial {trial}: the resumed run differs"
    report("kill -9 of a trainer rank", TRIALS, "SIGKILL to one of two ranks at a random moment",
           "resume bit-identical; the attempt recorded as not finished", {"bit-identical": TRIALS})


def test_merges_killed_or_run_twice_at_once_leave_the_tables_of_one_clean_merge(reference, tmp_path):
    """Two `collector merge` at once (and a report) into one results folder, and merges killed
    with SIGKILL at random moments: every file stays readable, and the tables end equal to a
    clean merge of the same runs."""
    runs = reference["folder"]
    clean = tmp_path / "clean"
    subprocess.run([str(COLLECTOR), "merge", "--runs", str(runs), "--out", str(clean)], check=True, capture_output=True)
    want = tables(clean)
    killed = 0
    for trial in range(TRIALS):
        out = tmp_path / f"t{trial}"
        victim = subprocess.Popen([str(COLLECTOR), "merge", "--runs", str(runs), "--out", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(RNG.uniform(0.0, 0.4))
        victim.kill()
        killed += victim.wait() != 0
        for f in out.rglob("*.parquet"):
            pq.read_table(f)  # whole files only: a killed merge leaves no half-written table
        both = [subprocess.Popen([str(COLLECTOR), "merge", "--runs", str(runs), "--out", str(out)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        report_run = subprocess.run([str(COLLECTOR), "report", "--results", str(out), "--out", str(tmp_path / "rep")],
                                    capture_output=True, text=True)
        for p in both:
            _, err = p.communicate(timeout=HANG)
            assert p.returncode == 0, err
        assert report_run.returncode in (0, 1), report_run.stderr
        assert tables(out) == want, f"trial {trial}"
        json.loads((out / "_manifest.json").read_text())
        assert not [p for p in out.rglob("*") if ".tmp." in p.name], "temporary files left behind"
    report("two merges at once; merges killed", TRIALS, "SIGKILL to a merge at a random moment, then two merges "
           "and a report at once", "every file readable; tables equal a clean merge",
           {"merges killed before their end": killed, "tables equal": TRIALS})


def test_landscape_workers_killed_or_doubled_give_the_table_of_one(reference, tmp_path):
    """A landscape killed with SIGKILL at random moments and rerun, and two landscapes of one
    spec computed at once with different task counts (one naming the run relatively, one
    absolutely): the blocks end equal to a landscape computed alone."""
    import shutil
    source = reference["folder"] / "ce-seed0"
    alone = tmp_path / "alone" / "ce-seed0"
    shutil.copytree(source, alone, ignore=shutil.ignore_patterns("landscape"))
    subprocess.run(landscape_cmd(alone), check=True, capture_output=True)
    want = landscape_rows(alone)
    for trial in range(TRIALS):
        run_dir = tmp_path / f"t{trial}" / "ce-seed0"
        shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("landscape"))
        victim = subprocess.Popen(landscape_cmd(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(RNG.uniform(0.2, 3.0))
        victim.kill()
        victim.wait()
        # Two submissions at once: 2 tasks of one, 3 of the other, the run named two ways.
        relative = os.path.relpath(run_dir, tmp_path)
        workers = [subprocess.Popen(landscape_cmd(Path(relative), "--task", f"{k}/2"), cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
        workers += [subprocess.Popen(landscape_cmd(run_dir, "--task", f"{k}/3"), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for k in range(3)]
        for w in workers:
            _, err = w.communicate(timeout=HANG)
            assert w.returncode == 0, err
        assert landscape_rows(run_dir) == want, f"trial {trial}"
        assert not [p for p in run_dir.rglob("*") if ".tmp." in p.name]
    report("landscape workers killed or doubled", TRIALS, "SIGKILL to a landscape at a random moment, then 2 + 3 "
           "tasks of the same landscape at once", "blocks equal a landscape computed alone", {"tables equal": TRIALS})


def test_resume_with_a_changed_config_and_a_second_trainer_are_refused_touching_nothing(store, reference, tmp_path):
    """Resuming with a configuration that differs where it may not is refused (exit 78) listing
    the keys, before anything is written; what may change (more epochs) is recorded in
    run.json; a second trainer on a run being trained exits 73 at once naming the holder."""
    out = tmp_path / "runs"
    first = train(store, out, extra=["--stop-after-steps", "3"])
    assert first.returncode == REQUEUE, first.stderr
    run_dir = out / "ce-seed0"
    before = folder_bytes(run_dir)
    changed = train(store, out, extra=["--resume", "auto", "--set", "train.batch_size=32", "--set", "loss.name=\"focal\""])
    assert changed.returncode == CONFIG_CHANGED, changed.stderr
    assert "loss.name: \"ce\" → \"focal\"" in changed.stderr and "train.batch_size: 16 → 32" in changed.stderr, changed.stderr
    assert folder_bytes(run_dir) == before, "a refused resume changed the run folder"
    # A second trainer while one trains.
    holder = subprocess.Popen(train_cmd(store, out, extra=["--resume", "auto"]), env=MPI_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: (run_dir / ".lock").exists() and subprocess.run(["flock", "-n", str(run_dir / ".lock"), "true"]).returncode != 0,
               "the first trainer's lock", timeout=60)
    second = train(store, out, extra=["--resume", "auto"])
    assert second.returncode == BUSY, second.stderr
    assert re.search(r"is busy: .* is held by trainer train \(host .*, pid \d+, since ", second.stderr), second.stderr
    assert holder.wait(timeout=HANG) == 0
    assert outcome_of(run_dir) == reference["ce"]
    # Extending the run is allowed, and recorded.
    more = train(store, out, extra=["--resume", "auto", "--set", "train.epochs=3"])
    assert more.returncode == 0, more.stderr
    last = json.loads((run_dir / "run.json").read_text())["attempts"][-1]
    assert last["config_changes"] == [{"key": "train.epochs", "old": "2", "new": "3"}], last
    report("resume with a changed config; a second trainer", 1, "resume with train.batch_size and loss.name changed; "
           "a second trainer on a run being trained", "exit 78 listing both keys, exit 73 naming the holder, "
           "folder bytes unchanged", {"refused as expected": 2, "folder unchanged": 1})


def test_convert_overwrite_under_a_running_trainer(store, reference, tmp_path):
    """`data-prep convert --overwrite` of a store a trainer reads is refused; with --force the
    store is replaced and the trainer stops with an error naming it instead of recording an
    epoch of mixed data."""
    import shutil
    data = tmp_path / "store.zarr"
    shutil.copytree(store, data)
    other = tmp_path / "other"
    run("synth", "--patches", "200", "--seed", "22", "--format", "v1", "--out", str(other))
    out = tmp_path / "runs"
    slow = ["--set", "train.batch_size=8", "--set", "train.epochs=3", "--set", "data.resident=\"off\""]
    trainer = subprocess.Popen(train_cmd(data, out, ranks=1, extra=slow), env=MPI_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (out / "ce-seed0" / "run.json").exists(), "the trainer to start", timeout=60)
    refused = subprocess.run([str(DATA_PREP), "convert", "--archive", str(other), "--out", str(data), "--overwrite"],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "is being read" in refused.stderr, refused.stderr
    forced = subprocess.run([str(DATA_PREP), "convert", "--archive", str(other), "--out", str(data), "--overwrite",
                             "--force"], capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    _, stderr = trainer.communicate(timeout=HANG)
    assert trainer.returncode == 1 and "the store was replaced while this process read it" in stderr, stderr
    info = json.loads((out / "ce-seed0" / "run.json").read_text())
    assert info["status"] == "failed" and "replaced" in info["attempts"][-1]["reason"], info
    report("convert --overwrite under a running trainer", 1, "convert --overwrite, then --overwrite --force, while "
           "a trainer reads the store", "refused; forced: the trainer stops with an error, run.json failed",
           {"refused": 1, "trainer stopped": 1})


def test_synth_into_a_download_folder_touches_nothing(tmp_path):
    """A download folder (archive, lists, the user's own notes): synth refuses to write there,
    every byte unchanged; with --overwrite it replaces exactly what it writes."""
    download = tmp_path / "download"
    download.mkdir()
    for name in ["BigEarthNet-S2-v1.0.tar.gz", "patches_with_seasonal_snow.csv", "notes.txt"]:
        (download / name).write_bytes(os.urandom(4096))
    before = folder_bytes(download)
    done = subprocess.run([str(DATA_PREP), "synth", "--patches", "10", "--pack", "tar.gz", "--out", str(download)],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "BigEarthNet-S2-v1.0.tar.gz" in done.stderr and "--overwrite" in done.stderr, done.stderr
    assert folder_bytes(download) == before
    done = subprocess.run([str(DATA_PREP), "synth", "--patches", "10", "--pack", "tar.gz", "--out", str(download),
                           "--overwrite"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = folder_bytes(download)
    assert after["notes.txt"] == before["notes.txt"] and after["BigEarthNet-S2-v1.0.tar.gz"] != before["BigEarthNet-S2-v1.0.tar.gz"]
    report("synth into a download folder", 1, "synth --pack into a folder holding an archive and lists",
           "refused, bytes unchanged; --overwrite replaces only its own names", {"as expected": 1})


def sbatch(env, out: Path, data: Path, tag: str, losses: str) -> subprocess.Popen:
    """Submits the sweep (2 ranks per task) and returns the waiting sbatch."""
    job_env = dict(env, LOSSES=losses, SEEDS="0", DATA=str(data), OUT=str(out),
                   TRAIN_ARGS=" ".join(TRAIN_ARGS[2:-2]), EPOCHS="2", RUST_LOG="info,lossbench=debug")
    return subprocess.Popen(["sbatch", "--parsable", "--wait", "--ntasks=2", f"--output={out.parent}/plan-{tag}.out",
                             str(SWEEP)], env=job_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sweeps_submitted_twice_and_resubmitted_while_running_train_each_run_once(cluster, store, reference, tmp_path):
    """Two `sbatch slurm/sweep.sh` at once, and a third while the first tasks train: each run
    is trained by one job (the others skip it, saying why), ends bit-identical to the
    undisturbed run, and the collectors' merges leave the tables of one clean merge."""
    env = cluster
    out = tmp_path / "runs"
    out.mkdir()
    both = [sbatch(env, out, store, tag, "ce focal") for tag in ("a", "b")]
    for p in both:
        assert p.wait(timeout=HANG) == 0, p.stderr.read()
    # Resubmitted while a task trains: that run is skipped as held.
    wait_until(lambda: any((out / r / ".lock").exists() and subprocess.run(["flock", "-n", str(out / r / ".lock"), "true"]).returncode
                           for r in ("ce-seed0", "focal-seed0")), "a task to train", timeout=HANG)
    third = sbatch(env, out, store, "c", "ce focal")
    assert third.wait(timeout=HANG) == 0
    wait_until(lambda: not jobs_left(env), "every job", timeout=900)
    plans = {tag: (out.parent / f"plan-{tag}.out").read_text() for tag in "abc"}
    assert re.search(r"skipping (ce|focal)-seed0: (held by trainer train .*SLURM job \d+_\d|finished)", plans["c"]), plans["c"]
    logs = "\n".join(p.read_text() for p in (out / "logs").glob("*_*.out"))
    skipped = len(re.findall(r"is being trained by another job: left to it|already finished", logs))
    for loss in ["ce", "focal"]:
        run_dir = out / f"{loss}-seed0"
        attempts = json.loads((run_dir / "run.json").read_text())["attempts"]
        assert [a["outcome"] for a in attempts] == ["finished"], attempts
        assert outcome_of(run_dir) == reference[loss], f"{loss}: differs from the undisturbed run"
    clean = tmp_path / "clean"
    subprocess.run([str(COLLECTOR), "merge", "--runs", str(out), "--out", str(clean)], check=True, capture_output=True)
    assert tables(tmp_path / "results") == tables(clean)
    report("sweeps submitted twice at once, and again while tasks run", 1, "3 submissions of the same 2 runs",
           "each run trained once, bit-identical; the others skipped; tables equal a clean merge",
           {"tasks that skipped a run": skipped, "runs trained once": 2})


def test_two_landscape_submissions_at_once_compute_each_block_once(cluster, reference, tmp_path):
    """Two `sbatch slurm/landscape.sh` of the same landscape at once with 2 and 3 tasks: the
    blocks and the merged table equal a landscape computed alone."""
    import shutil
    run_dir = tmp_path / "runs" / "ce-seed0"
    shutil.copytree(reference["folder"] / "ce-seed0", run_dir, ignore=shutil.ignore_patterns("landscape"))
    alone = tmp_path / "alone" / "ce-seed0"
    shutil.copytree(run_dir, alone)
    subprocess.run(landscape_cmd(alone), check=True, capture_output=True)
    args = " ".join(landscape_cmd(run_dir)[6:])
    subs = []
    for tasks in ("2", "3"):
        job_env = dict(cluster, RUN=str(run_dir), KIND="2d", TASKS=tasks, LANDSCAPE_ARGS=args)
        subs.append(subprocess.Popen(["sbatch", "--parsable", "--wait", "--ntasks=1", f"--output={tmp_path}/plan-{tasks}.out",
                                      str(LANDSCAPE)], env=job_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for s in subs:
        assert s.wait(timeout=HANG) == 0
    wait_until(lambda: not jobs_left(cluster), "the landscape arrays and collectors", timeout=900)
    assert landscape_rows(run_dir) == landscape_rows(alone)
    rows = [r for r in pq.read_table(tmp_path / "results" / "landscape").to_pylist() if r["quantity"] == "loss"]
    assert sorted(r["point"] for r in rows) == list(range(25))
    report("two landscape submissions at once", 1, "slurm/landscape.sh with TASKS=2 and TASKS=3 at once",
           "blocks and table equal one landscape", {"as expected": 1})
