"""The chaos suite, part 2: what a real cluster adds to one node's signals and kills
(docs/reliability.md). Done to the real binaries as users start them: mpirun with OpenMPI, the
real single-node SLURM, size-limited tmpfs mounts for run folders, results folders, store
outputs and a small shared-memory folder (ENOSPC at random moments), a read-only remount, a
second "node" as its own PID + UTS (host name) + mount namespaces (`unshare`), and a FUSE mount
(bindfs) whose flock is local to the mount, as flock is per node on BeeGFS, Lustre `localflock`
or NFS `local_lock`.

For every scenario: nothing lost (stores byte-identical, runs resumed bit-identical to undisturbed
ones, tables equal a clean merge), nothing hangs (the time from the fault to every rank's exit is
measured), every failure visible (run.json, exit code, the sweep's log)."""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import chaos_kit as kit
from chaos_kit import (BUSY, COLLECTOR, DATA_PREP, HANG, REQUEUE, SWEEP, TRAIN_ARGS, TRAINER, fill, folder_bytes,
                       landscape_cmd, landscape_rows, outcome_of, rank_pids, report, resize, tables, tmpfs,
                       train_cmd)
from conftest import MPI_ENV, ROOT, jobs_left, run, wait_until

TRIALS, RNG = kit.TRIALS, kit.RNG
UNWRITABLE, IN_USE = 74, 76


@pytest.fixture(scope="module")
def store(chaos_store) -> Path:
    return chaos_store


@pytest.fixture(scope="module")
def reference(chaos_reference) -> dict:
    return chaos_reference


@contextmanager
def bindfs(backing: Path, path: Path):
    """`backing` mounted at `path` through bindfs (FUSE): a file system whose flock covers this
    mount only, as flock is per node on BeeGFS, Lustre `localflock` or NFS `local_lock`."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bindfs", "--no-allow-other", str(backing), str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(path)], check=False)


def on_node2(cmd: list, shared: tuple[Path, Path] | None = None) -> list:
    """`cmd` as a process of a second node: its own PID, UTS and mount namespaces, host name
    `node2` (pids of this node mean nothing there, nor its pids here). With `shared` (backing,
    path), node 2 sees `backing` at the same `path` as node 1, through a FUSE mount of its own:
    their flock does not see each other."""
    # Node 1's mount at `path` is left behind in node 2's own mount namespace first.
    mount = f"umount -l '{shared[1]}' && bindfs --no-allow-other '{shared[0]}' '{shared[1]}' && " if shared else ""
    script = "hostname node2 && " + mount + "exec " + " ".join(f"'{c}'" for c in cmd)
    return ["unshare", "--uts", "--pid", "--mount", "--fork", "--mount-proc", "sh", "-c", script]


def exits_within(proc: subprocess.Popen, what: str) -> tuple[int, str]:
    """The exit code and stderr of `proc`, which must end within HANG seconds."""
    try:
        _, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{what}: hung")
    return proc.returncode, err or ""


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def resume_until_done(data: Path, out: Path, loss: str = "ce", env=None) -> list[int]:
    codes = []
    for _ in range(4):
        done = subprocess.run(train_cmd(data, out, loss, extra=["--resume", "auto"]), env=env or MPI_ENV,
                              capture_output=True, text=True, timeout=HANG)
        codes.append(done.returncode)
        if done.returncode == 0:
            return codes
        assert done.returncode == REQUEUE, done.stderr
    raise AssertionError(f"did not finish: {codes}")


# ---- stores ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_archive(tmp_path_factory) -> Path:
    """An archive whose conversion takes a few seconds: time to kill it at random moments."""
    folder = tmp_path_factory.mktemp("big") / "archive"
    run("synth", "--patches", "1500", "--seed", "31", "--format", "v1", "--out", str(folder))
    return folder


def store_id(path: Path) -> str:
    return json.loads((path / "zarr.json").read_text())["attributes"]["lossbench"]["store_id"]


def test_convert_overwrite_killed_at_any_moment_leaves_the_old_store_whole(store, big_archive, tmp_path):
    """`data-prep convert --overwrite` killed at a random moment: the old store stays
    byte-identical and readable (its store id too, so runs trained on it still resume);
    a reader that starts during the conversion is told who replaces the store, never a parse
    error; a conversion that completes replaces it."""
    data = tmp_path / "store.zarr"
    shutil.copytree(store, data)
    before, old_id = folder_bytes(data), store_id(data)
    convert = [str(DATA_PREP), "convert", "--archive", str(big_archive), "--out", str(data), "--overwrite"]
    started = time.time()
    subprocess.run(convert, check=True, capture_output=True)
    seconds = time.time() - started
    shutil.rmtree(data)
    shutil.copytree(store, data)
    told, killed, replaced = 0, 0, 0
    for trial in range(TRIALS):
        victim = subprocess.Popen(convert, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(RNG.uniform(0.05, 0.9) * seconds)
        reader = subprocess.run([str(DATA_PREP), "info", str(data)], capture_output=True, text=True)
        victim.kill()
        killed += victim.wait() != 0
        if reader.returncode != 0:
            assert "is being replaced by data-prep convert --overwrite (host" in reader.stderr, reader.stderr
            told += 1
        info = subprocess.run([str(DATA_PREP), "info", str(data)], capture_output=True, text=True)
        assert info.returncode == 0, f"trial {trial}: {info.stderr}"
        if store_id(data) != old_id:
            # Killed after the new store was complete and renamed in: the new one, whole.
            replaced += 1
            shutil.rmtree(data)
            shutil.copytree(store, data)
            continue
        assert folder_bytes(data) == before, f"trial {trial}: the old store changed"
    subprocess.run(convert, check=True, capture_output=True)
    assert store_id(data) != old_id and not Path(f"{data}.partial").exists()
    report("convert --overwrite killed", TRIALS, "SIGKILL to convert --overwrite at a random moment; a reader "
           "started meanwhile", "old store byte-identical and readable; readers told who replaces it",
           {"killed": killed, "old store intact": TRIALS - replaced, "killed once the new one was in place": replaced,
            "readers told": told})


# ---- full disks ------------------------------------------------------------------------------

def test_a_full_disk_at_any_moment_ends_every_rank_and_the_run_resumes_exact(store, reference, tmp_path):
    """The run folder's file system fills at a random moment of a 2-rank run (the quota of a
    scratch folder): every rank exits within seconds of the write that failed, exit 75 (the
    newest checkpoint intact), run.json `failed` saying the disk is full, no half-written
    checkpoint left; once space is back the run resumes to the undisturbed result."""
    waits, outcomes = [], {}
    for trial in range(TRIALS):
        with tmpfs(tmp_path / f"t{trial}", "1g") as disk:
            out = disk / "runs"
            proc = subprocess.Popen(train_cmd(store, out), env=MPI_ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            time.sleep(RNG.uniform(0.5, reference["ce_seconds"]))
            filler = fill(disk)
            filled = time.time()
            code, err = exits_within(proc, f"trial {trial}")
            waits.append(time.time() - filled)
            outcomes[code] = outcomes.get(code, 0) + 1
            run_dir = out / "ce-seed0"
            if code != 0:
                assert code == REQUEUE, f"trial {trial}: exit {code}\n{err}"
                assert "No space left on device" in err and "free space, then resume" in err, err
                info = run_json(run_dir)
                assert info["status"] == "failed" and "No space left" in info["attempts"][-1]["reason"], info
                assert not list((run_dir / "checkpoints").glob("*.tmp")), "a half-written checkpoint was left"
            filler.unlink()
            if code != 0:
                resume_until_done(store, out)
            assert outcome_of(run_dir) == reference["ce"], f"trial {trial}: the resumed run differs"
    report("the run folder's disk fills", TRIALS, "a tmpfs run folder filled at a random moment of a 2-rank run",
           "every rank exits 75, run.json failed (disk full), no .tmp left; resumed bit-identical",
           {**{f"exit {k}": v for k, v in sorted(outcomes.items())}, "hangs": 0,
            "fill to every rank's exit, s (max)": round(max(waits), 1), "bit-identical": TRIALS})


def test_full_results_and_store_disks_lose_nothing(store, reference, tmp_path):
    """`collector merge` into a full results folder and `data-prep convert` into a full disk:
    clear errors, no half-written table or store, the old store intact; with space back, the
    merge equals a clean merge and the conversion completes."""
    clean = tmp_path / "clean"
    subprocess.run([str(COLLECTOR), "merge", "--runs", str(reference["folder"]), "--out", str(clean)], check=True,
                   capture_output=True)
    with tmpfs(tmp_path / "results", "300k") as results:
        merged = subprocess.run([str(COLLECTOR), "merge", "--runs", str(reference["folder"]), "--out", str(results)],
                                capture_output=True, text=True)
        assert merged.returncode == 1 and "No space left on device" in merged.stderr, merged.stderr
        assert not [p for p in results.rglob("*") if ".tmp." in p.name], "temporary files left"
        resize(results, "50m")
        subprocess.run([str(COLLECTOR), "merge", "--runs", str(reference["folder"]), "--out", str(results)], check=True,
                       capture_output=True)
        assert tables(results) == tables(clean)
    with tmpfs(tmp_path / "stores", "24m") as disk:
        data = disk / "store.zarr"
        shutil.copytree(store, data)
        before = folder_bytes(data)
        conv = subprocess.run([str(DATA_PREP), "convert", "--archive", str(store.parent / "archive"), "--out",
                               str(data), "--overwrite"], capture_output=True, text=True)
        assert conv.returncode == 1 and "No space left on device" in conv.stderr, conv.stderr
        assert folder_bytes(data) == before and not Path(f"{data}.partial").exists()
        resize(disk, "64m")
        subprocess.run([str(DATA_PREP), "convert", "--archive", str(store.parent / "archive"), "--out", str(data),
                        "--overwrite"], check=True, capture_output=True)
    report("full results and store disks", 1, "merge into a 300 kB tmpfs; convert --overwrite of a 17 MB store in a 24 MB tmpfs",
           "clear errors, nothing half-written, old store intact; with space, a clean merge and a new store",
           {"as expected": 2})


@contextmanager
def bind(backing: Path, path: Path):
    """`backing` bind-mounted at `path`, so that it can be turned read-only under the processes
    that use it (files they keep open stay writable, as on a real failover's old handles)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(backing), str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def rebind(backing: Path, path: Path, *options: str):
    subprocess.run(["umount", "-l", str(path)], check=True)
    subprocess.run(["mount", "--bind", str(backing), str(path)], check=True)
    if options:
        subprocess.run(["mount", "-o", ",".join(["remount", "bind", *options]), str(path)], check=True)


def test_a_read_only_remount_mid_run_fails_visibly_and_resumes_exact(store, reference, tmp_path):
    """The run folder's file system turns read-only at a random moment (a storage failover):
    every rank exits (74: writes refused) at the next write; mounted read-write again, the run
    resumes to the undisturbed result."""
    waits, codes = [], {}
    for trial in range(TRIALS):
        backing = tmp_path / f"b{trial}"
        backing.mkdir()
        with bind(backing, tmp_path / f"t{trial}") as disk:
            out = disk / "runs"
            proc = subprocess.Popen(train_cmd(store, out), env=MPI_ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            time.sleep(RNG.uniform(1.0, reference["ce_seconds"]))
            rebind(backing, disk, "ro")
            remounted = time.time()
            code, err = exits_within(proc, f"trial {trial}")
            waits.append(time.time() - remounted)
            codes[code] = codes.get(code, 0) + 1
            assert code in (0, UNWRITABLE), f"trial {trial}: exit {code}\n{err}"
            if code == UNWRITABLE:
                assert "Read-only file system" in err, err
            rebind(backing, disk)
            if code != 0:
                resume_until_done(store, out)
            assert outcome_of(out / "ce-seed0") == reference["ce"], f"trial {trial}: the resumed run differs"
    report("read-only remount mid-run", TRIALS, "the run folder's mount turned read-only at a random moment",
           "every rank exits 74 (or 0 when done); mounted rw again, resumed bit-identical",
           {**{f"exit {k}": v for k, v in sorted(codes.items())}, "hangs": 0,
            "remount to every rank's exit, s (max)": round(max(waits), 1)})


# ---- one rank failing alone -----------------------------------------------------------------

def damaged_copy(store: Path, folder: Path, split: str) -> Path:
    """A copy of the store whose `split` band shards are truncated: a node that reads a damaged
    file (a failing disk, a half-synced copy)."""
    copy = folder / "store.zarr"
    shutil.copytree(store, copy)
    for shard in (copy / split / "b10m" / "c").rglob("*"):
        if shard.is_file():
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return copy


def test_one_rank_failing_alone_ends_every_rank(store, tmp_path):
    """Rank 1 alone reads a damaged store (MPMD: rank 0 the good one): the failure comes at a
    random moment of the run, while loading resident data, in a training step, in validation or
    in the test; every rank exits within seconds with the same code, run.json names rank 1's
    error."""
    # (damaged split, data.resident, the moment rank 1 fails): without a shared-memory folder,
    # each rank loads its own resident copy, rank 1 from its damaged store.
    moments = [("train", "host", "loading"), ("train", "off", "a step"), ("validation", "off", "validation"),
               ("test", "off", "the test")]
    env = {**MPI_ENV, "LOSSBENCH_SHM": str(tmp_path / "no-shm")}
    waits, seen = [], []
    for trial in range(TRIALS):
        split, resident, moment = moments[trial % len(moments)] if trial < len(moments) else RNG.choice(moments)
        bad = damaged_copy(store, tmp_path / f"t{trial}", split)
        out = tmp_path / f"t{trial}" / "runs"
        args = [str(TRAINER), "train", "--config", str(ROOT / "jobs" / "ce.toml"), "--out", str(out), *TRAIN_ARGS,
                "--set", f'data.resident="{resident}"']
        cmd = ["mpirun", "--oversubscribe", "-np", "1", *args, "--data", str(store), ":", "-np", "1", *args,
               "--data", str(bad)]
        started = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        code, err = exits_within(proc, f"trial {trial} ({moment})")
        waits.append(time.time() - started)
        assert code not in (0, REQUEUE), f"trial {trial}: exit {code}\n{err}"
        info = run_json(out / "ce-seed0")
        assert info["status"] == "failed", info
        assert "rank 1 failed" in info["attempts"][-1]["reason"], info
        assert "MPI_Abort" not in err, "the failure was not agreed"
        seen.append(moment)
    report("one rank fails alone", TRIALS, "rank 1 reads a damaged store: fails while loading, in a step, in "
           "validation or in the test", "every rank exits with one code; run.json failed naming rank 1's error",
           {"moments": ", ".join(sorted(set(seen))), "hangs": 0, "run, s (max)": round(max(waits), 1)})


# ---- two nodes, and flock that lies --------------------------------------------------------

_ONE_RANK: dict = {}


def one_rank_reference(store: Path, tmp_path: Path) -> dict:
    """The undisturbed run on one rank (computed once)."""
    if "ce" not in _ONE_RANK:
        done = subprocess.run(train_cmd(store, tmp_path / "one-rank", ranks=1), env=MPI_ENV, capture_output=True,
                              text=True, timeout=HANG)
        assert done.returncode == 0, done.stderr
        _ONE_RANK["ce"] = outcome_of(tmp_path / "one-rank" / "ce-seed0")
    return _ONE_RANK["ce"]


def test_two_nodes_with_node_local_flock_never_write_one_run_twice(store, tmp_path):
    """Two "nodes" (namespaces with their own pids and host names) share the run folders through
    two FUSE mounts whose flock does not see each other: a trainer on node 2 is refused a run
    node 1 trains (exit 73, node 1 named); landscapes of one spec on both nodes at once give the
    blocks of one (neither deletes the other's block in progress); after node 1's trainer is
    killed, node 2 takes the run over only once its lease expires, and the run ends exact."""
    lease = {**MPI_ENV, "LOSSBENCH_LOCK_LEASE_S": "4"}
    backing = tmp_path / "shared"
    backing.mkdir()
    takeovers = []
    with bindfs(backing, tmp_path / "scratch") as scratch:
        for trial in range(TRIALS):
            runs = scratch / f"t{trial}"
            node2 = on_node2(train_cmd(store, runs, ranks=1, extra=["--resume", "auto"]), (backing, scratch))
            first = subprocess.Popen(train_cmd(store, runs, ranks=1), env=lease, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            wait_until(lambda: (runs / "ce-seed0" / "run.json").exists(), "node 1's trainer", timeout=60)
            second = subprocess.run(node2, env=lease, capture_output=True, text=True, timeout=HANG)
            assert second.returncode == BUSY, second.stderr
            assert re.search(r"is held by trainer train \(host \S+, pid \d+", second.stderr), second.stderr
            assert "host node2" not in second.stderr
            time.sleep(RNG.uniform(0.0, 3.0))
            first.kill()
            first.wait()
            killed = time.time()
            # Node 2 resumes: refused while node 1's lease runs, then it takes the run over.
            while True:
                again = subprocess.run(node2, env=lease, capture_output=True, text=True, timeout=HANG)
                if again.returncode != BUSY:
                    break
                assert time.time() - killed < 60, "node 1's stale lock was never taken over"
            assert again.returncode == 0, again.stderr
            takeovers.append(time.time() - killed)
            run_dir = backing / f"t{trial}" / "ce-seed0"
            attempts = run_json(run_dir)["attempts"]
            assert attempts[0]["outcome"] == "killed" and attempts[-1]["host"] == "node2", attempts
            assert outcome_of(run_dir) == one_rank_reference(store, tmp_path), f"trial {trial}: the run differs"
    report("two nodes, node-local flock", TRIALS, "a trainer on node 2 while node 1 trains; node 1's trainer killed, "
           "node 2 resumes", "refused (73) while node 1 holds the lease; taken over once it expired (4 s here)",
           {"refused while held": TRIALS, "kill to takeover, s (max)": round(max(takeovers), 1)})


def test_landscapes_on_two_nodes_at_once_give_one_landscape(reference, tmp_path):
    """The same landscape computed on two nodes at once (through mounts whose flock does not see
    each other), one of them killed at a random moment and rerun: the blocks equal a landscape
    computed alone, and no commit fails for a block the other node deleted."""
    source = reference["folder"] / "ce-seed0"
    alone = tmp_path / "alone" / "ce-seed0"
    shutil.copytree(source, alone, ignore=shutil.ignore_patterns("landscape"))
    subprocess.run(landscape_cmd(alone), check=True, capture_output=True)
    want = landscape_rows(alone)
    backing = tmp_path / "shared"
    backing.mkdir()
    with bindfs(backing, tmp_path / "scratch") as scratch:
        for trial in range(TRIALS):
            shutil.copytree(source, backing / f"t{trial}" / "ce-seed0", ignore=shutil.ignore_patterns("landscape"))
            run_dir = scratch / f"t{trial}" / "ce-seed0"
            w1 = subprocess.Popen(landscape_cmd(run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            w2 = subprocess.Popen(on_node2(landscape_cmd(run_dir), (backing, scratch)), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
            time.sleep(RNG.uniform(0.2, 2.0))
            w1.kill()
            w1.wait()
            code, err = exits_within(w2, f"trial {trial}: node 2's landscape")
            assert code == 0, err
            rerun = subprocess.run(landscape_cmd(run_dir), capture_output=True, text=True, timeout=HANG)
            assert rerun.returncode == 0, rerun.stderr
            assert landscape_rows(backing / f"t{trial}" / "ce-seed0") == want, f"trial {trial}"
    report("landscapes on two nodes at once", TRIALS, "one landscape on two nodes, node 1's killed at a random "
           "moment and rerun", "blocks equal a landscape computed alone", {"tables equal": TRIALS})


# ---- the node's shared memory --------------------------------------------------------------

def test_a_small_shared_memory_folder_falls_back_and_a_kill_leaves_nothing(store, reference, tmp_path):
    """Two ranks on a node whose shared-memory folder is too small for a split: they fall back
    (ENOSPC is not a failure) and the run equals the undisturbed one; a SIGKILL at a random
    moment while the shared copy is written leaves nothing in the folder."""
    with tmpfs(tmp_path / "shm", "1m") as shm:
        env = {**MPI_ENV, "LOSSBENCH_SHM": str(shm)}
        done = subprocess.run(train_cmd(store, tmp_path / "small", extra=["--set", 'data.resident="host"']), env=env,
                              capture_output=True, text=True, timeout=HANG)
        assert done.returncode == 0, done.stderr
        assert "no shared copy of the train split" in done.stderr, done.stderr
        assert outcome_of(tmp_path / "small" / "ce-seed0") == reference["ce"]
        assert not list(shm.iterdir())
    left = 0
    with tmpfs(tmp_path / "shm2", "200m") as shm:
        env = {**MPI_ENV, "LOSSBENCH_SHM": str(shm)}
        for trial in range(TRIALS):
            proc = subprocess.Popen(train_cmd(store, tmp_path / f"k{trial}", extra=["--set", 'data.resident="host"']),
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: len(rank_pids(proc)) == 2 or proc.poll() is not None, "two ranks", timeout=30)
            time.sleep(RNG.uniform(0.0, 1.0))
            for pid in rank_pids(proc):
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=HANG)
            used = shutil.disk_usage(shm).used
            left += used > 0
            assert used == 0 and not list(shm.iterdir()), f"trial {trial}: {used} bytes left in the folder"
    report("small or killed shared memory", TRIALS + 1, "a 1 MB shared-memory folder; SIGKILL of both ranks at a "
           "random moment while the shared copy is written", "fallback, run bit-identical; nothing left in the folder",
           {"bit-identical": 1, "bytes left after kills": left})


# ---- merges that race with runs ------------------------------------------------------------

def test_a_run_finishing_during_a_merge_is_merged_next_time_and_deleted_runs_leave(reference, tmp_path):
    """A run that finishes while a merge reads the runs (the sweep's collector and a user's merge
    at once): the next merge has its test result; a run folder deleted to redo it leaves the
    tables."""
    runs = tmp_path / "runs"
    source = reference["folder"] / "ce-seed0"
    keep = ["config.toml", "run.json", "epochs.jsonl", "test_metrics.json", "test_predictions.parquet"]
    for k in range(120):
        dest = runs / f"r{k:03d}"
        dest.mkdir(parents=True)
        for f in keep:
            shutil.copy(source / f, dest / f)
    late = runs / "r000"
    finished = {f: (late / f).read_bytes() for f in ["test_metrics.json", "test_predictions.parquet", "run.json"]}
    info = json.loads(finished["run.json"])
    (late / "run.json").write_text(json.dumps({**info, "status": "running"}))
    for f in ["test_metrics.json", "test_predictions.parquet"]:
        (late / f).unlink()
    results = tmp_path / "results"
    merging = subprocess.Popen([str(COLLECTOR), "merge", "--runs", str(runs), "--out", str(results)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    for f, b in finished.items():
        (late / f).write_bytes(b)
    _, err = merging.communicate(timeout=HANG)
    assert merging.returncode == 0, err
    subprocess.run([str(COLLECTOR), "merge", "--runs", str(runs), "--out", str(results)], check=True,
                   capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run([str(COLLECTOR), "merge", "--runs", str(runs), "--out", str(clean)], check=True, capture_output=True)
    assert tables(results) == tables(clean), "the run that finished during the first merge is missing"
    shutil.rmtree(runs / "r005")
    subprocess.run([str(COLLECTOR), "merge", "--runs", str(runs), "--out", str(results)], check=True,
                   capture_output=True)
    gone = {t: [r for r in rows if '"run_id": "r005"' in r] for t, rows in tables(results).items()}
    assert not any(gone.values()), f"rows of a deleted run stayed: { {t: len(r) for t, r in gone.items() if r} }"
    report("a run finishing during a merge; a run deleted", 1, "a run's test written while a merge reads 120 runs; "
           "a run folder deleted", "the next merge equals a clean merge; the deleted run's rows leave",
           {"as expected": 2})


# ---- SLURM: scancel is not a time limit; a full disk is held -------------------------------

def status(env, out: Path) -> dict:
    """`collector status OUT --json`: run id → its line."""
    done = subprocess.run([str(COLLECTOR), "status", str(out), "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return {line["run_id"]: line for line in json.loads(done.stdout)["lines"]}


def test_scancel_is_never_requeued_and_a_full_disk_is_held(cluster, store, tmp_path):
    """On the real SLURM: `scancel` of a training task (SIGTERM) checkpoints and ends it, never
    requeued, the run not counted as done; a task whose run folder's disk fills is requeued
    *held* (never a silent loop), saying why and how to release it, and finishes once space is
    back and it is released. A third task fails on purpose (its job diverges). `collector status`
    shows each as it is: running with its epoch, job and node; stopped, held and failed with why
    and the log to read; finished."""
    env = cluster
    jobs = tmp_path / "jobs"
    shutil.copytree(ROOT / "jobs", jobs)
    (jobs / "broken.toml").write_text('base = "base.toml"\n\n[loss]\nname = "ce"\n\n[train]\nlr = 1e30\n')
    with tmpfs(tmp_path / "disk", "1g") as disk:
        out = disk / "runs"
        out.mkdir()
        logs = tmp_path / "logs"
        # The diverging job first: it fails in seconds, before the disk is filled.
        job_env = dict(env, LOSSES="broken ce focal", SEEDS="0", DATA=str(store), OUT=str(out), EPOCHS="2",
                       LOGS=str(logs), JOBS=str(jobs), RESULTS=str(tmp_path / "results"),
                       REPORT=str(tmp_path / "report"), TRAIN_ARGS=" ".join(TRAIN_ARGS[2:-2]))
        plan = subprocess.run(["sbatch", "--parsable", "--wait", "--ntasks=2", f"--output={tmp_path}/plan.out",
                               str(SWEEP)], env=job_env, capture_output=True, text=True, timeout=HANG)
        assert plan.returncode == 0, plan.stderr
        array = re.search(r"submitted array job (\d+)", (tmp_path / "plan.out").read_text()).group(1)
        ce, focal = out / "ce-seed0", out / "focal-seed0"
        wait_until(lambda: (ce / "run.json").exists() and (focal / "run.json").exists(), "both tasks to train",
                   timeout=HANG)
        wait_until(lambda: all(status(env, out)[r]["state"] == "running" and status(env, out)[r]["epoch"] >= 1
                               for r in ("ce-seed0", "focal-seed0")), "both runs' first epoch on the board",
                   timeout=HANG)
        board = status(env, out)
        running = [b for b in board.values() if b["state"] == "running"]
        assert all(b["slurm_job"].startswith(f"{array}_") and b["node"] and b["epochs"] == 2 for b in running), board
        time.sleep(RNG.uniform(0.0, 2.0))
        subprocess.run(["scancel", f"{array}_1"], env=env, check=True)
        wait_until(lambda: status(env, out)["ce-seed0"]["state"] == "stopped", "the cancelled run", timeout=60)
        filler = fill(disk)
        wait_until(lambda: "HELD" in (logs / f"{array}_2.out").read_text(), "the full disk's hold", timeout=HANG)

        def state() -> str:
            return subprocess.run(["squeue", "-h", "-j", f"{array}_2", "-o", "%T %r"], env=env, capture_output=True,
                                  text=True).stdout

        wait_until(lambda: state().startswith("PENDING"), "the task to be pending", timeout=60)
        assert "held" in state().lower(), state()
        board = status(env, out)
        assert board["focal-seed0"]["state"] == "held" and "No space left" in board["focal-seed0"]["reason"], board
        assert board["focal-seed0"]["log"].endswith(f"{array}_2.out"), board
        broken = status(env, out)["broken-seed0"]
        assert broken["state"] == "failed" and "diverged" in broken["reason"] and Path(broken["log"]).is_file(), broken
        filler.unlink()
        subprocess.run(["scontrol", "release", f"{array}_2"], env=env, check=True)
        wait_until(lambda: not jobs_left(env), "the released task and the collector", timeout=600)
        time.sleep(12)  # past cred_expire: a requeued task would be pending or running again
        log0 = (logs / f"{array}_1.out").read_text()
        assert "SIGTERM (scancel or preemption)" in log0 and "not requeued" in log0, log0
        states = subprocess.run(["squeue", "-h", "-t", "all", "-j", f"{array}_1", "-o", "%T"], env=env,
                                capture_output=True, text=True).stdout
        assert "CANCELLED" in states and "PENDING" not in states and "RUNNING" not in states, states
        assert run_json(ce)["status"] == "stopped", run_json(ce)
        assert not (ce / "test_metrics.json").exists()
        assert (focal / "test_metrics.json").exists(), (logs / f"{array}_2.out").read_text()
        board = status(env, out)
        assert {r: b["state"] for r, b in board.items()} == {"ce-seed0": "stopped", "focal-seed0": "finished",
                                                             "broken-seed0": "failed"}, board
        wait_until(lambda: not jobs_left(env) or all("CANCELLED" in j or "COMPLETED" in j for j in jobs_left(env)),
                   "the collector", timeout=300)
    report("scancel, a full disk and a failure on SLURM", 1, "scancel of a training task; the run folder's disk "
           "filled under another; a third diverges", "cancelled: not requeued, not done; full disk: requeued held, "
           "finishes once released; collector status shows each with why and its log", {"as expected": 3})
