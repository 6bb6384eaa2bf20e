"""`make bench` for the trainer, on this CPU, each comparison against its peer in the same run
(alternating rounds, since the machine is noisy). Prints Markdown, saved to work/bench/trainer.md.

1. The optimizer step (`trainer bench`: the code `trainer train` runs) against Python PyTorch's
   (scripts/gpu/torch_peer.py: the same network, BCE, Adam) on the same batch and threads, for
   the K-Branch CNN, ResNet-50 and VGG-16-BN: images/s per round, the spread, the ratio.
2. Resident data (`data.resident = "host"`) against data streamed from the store (`"off"`):
   images/s and the data-wait fraction of one epoch.
3. A 2D loss landscape (`trainer landscape`) on 1 rank x 1 thread, 1 rank x 2 threads and
   2 MPI ranks x 1 thread: wall time, points/s and the forward rate.
4. The trainer's time from launch to its first optimizer step.
"""
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "work" / "bench"
TORCH_PY = str(ROOT / ".cache" / "venv-torch" / "bin" / "python")
PEER = str(ROOT / "scripts" / "gpu" / "torch_peer.py")
DATA_PREP = str(ROOT / "target" / "release" / "data-prep")
TRAINER = str(ROOT / "target" / "release" / "trainer")
THREADS = 2
PATCHES = 1200
# (arch, batch, timed steps, warm-up steps, rounds): the rounds and steps make the spread
# smaller than the differences reported; deeper networks take fewer, longer steps.
STEP_CASES = [("kbranch", 64, 10, 2, 6), ("resnet50", 16, 5, 1, 3), ("vgg16", 8, 4, 1, 3)]
FORWARD_GFLOP = {"kbranch": 0.411}  # docs/models.md (scripts/model_costs.py)
LANDSCAPE = dict(points=5, train=96, val=32, batch=32, block=1)
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def run(cmd, env=None) -> str:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:3]))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def store() -> Path:
    path = WORK / "mpi-store.zarr"  # shared with bench_mpi.py
    if not path.exists():
        run([DATA_PREP, "synth", "--patches", PATCHES, "--seed", 7, "--format", "v1", "--out", WORK / "mpi-archive"])
        run([DATA_PREP, "convert", "--archive", WORK / "mpi-archive", "--out", path])
    return path


def spread(values) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def step_speed(data: Path, say):
    say(f"### Optimizer step, lossbench vs Python PyTorch ({THREADS} threads, CE, Adam with the conv weight decay; "
        "lossbench trains on the store's batches held in memory, PyTorch on the first of them; alternating rounds)")
    say()
    say("Other tenants of the machine only ever slow a step down, so beside the median of the rounds the table "
        "gives each side's fastest step, the steadier measure of what the code itself costs.")
    say()
    say("| network | batch | timed steps x rounds | lossbench img/s per round | PyTorch img/s per round | "
        "ratio of round medians | ratio per round | fastest step, lossbench / PyTorch img/s | ratio of fastest steps |")
    say("|---|---|---|---|---|---|---|---|---|")
    batch_file = WORK / "peer-batch.safetensors"
    version = ""
    for arch, batch, steps, warmup, rounds in STEP_CASES:
        ours, theirs, our_steps, their_steps = [], [], [], []
        for _ in range(rounds):
            t = last_json(run([TRAINER, "bench", "--config", ROOT / "jobs" / "ce.toml", "--data", data, "--device", "cpu",
                               "--set", f"model.arch=\"{arch}\"", "--set", f"train.batch_size={batch}",
                               "--set", f"run.threads={THREADS}", "--set", "data.resident=\"host\"",
                               "--steps", steps, "--warmup", warmup, "--save-batch", batch_file]))
            ours.append(t["images_per_s"])
            our_steps += t["step_seconds"][warmup:]
            p = last_json(run([TORCH_PY, PEER, "--arch", arch, "--batch-file", batch_file, "--steps", steps,
                               "--warmup", warmup, "--threads", THREADS]))
            theirs.append(p["images_per_s"])
            their_steps += p["step_seconds"]
            version = p["torch"]
        per_round = [a / b for a, b in zip(ours, theirs)]
        best_ours, best_theirs = batch / min(our_steps), batch / min(their_steps)
        say(f"| {arch} | {batch} | {steps} x {rounds} | {', '.join(f'{v:.1f}' for v in ours)} | "
            f"{', '.join(f'{v:.1f}' for v in theirs)} | {statistics.median(ours) / statistics.median(theirs):.2f} | "
            f"{min(per_round):.2f}-{max(per_round):.2f} | {best_ours:.1f} / {best_theirs:.1f} | **{best_ours / best_theirs:.2f}** |")
    say()
    say(f"PyTorch {version} (the same libtorch as the trainer's); goal: ratio >= 1.0.")
    say()


def epoch_record(data: Path, out: Path, run_id: str, *sets) -> dict:
    args = [TRAINER, "train", "--config", ROOT / "jobs" / "ce.toml", "--data", data, "--out", out, "--run-id", run_id,
            "--epochs", "1", "--device", "cpu", "--set", "train.batch_size=64", "--set", f"run.threads={THREADS}",
            "--set", "lrp.every=0"]
    for s in sets:
        args += ["--set", s]
    subprocess.run(["rm", "-rf", str(out / run_id)], check=True)
    run(args)
    return json.loads((out / run_id / "epochs.jsonl").read_text().splitlines()[0])


def resident_vs_streamed(data: Path, say) -> Path:
    runs = WORK / "trainer-runs"
    results = {"host": [], "off": []}
    for _ in range(2):
        for mode in results:
            results[mode].append(epoch_record(data, runs, f"resident-{mode}", f"data.resident=\"{mode}\"",
                                              "train.loader_threads=1"))
    say("### Resident vs streamed training data (K-Branch + CE, batch 64, one epoch, 2 alternating rounds)")
    say()
    say("| data.resident | images/s per round | data-wait fraction per round |")
    say("|---|---|---|")
    for mode, records in results.items():
        speeds = ", ".join(f"{r['images_per_s']:.1f}" for r in records)
        waits = ", ".join(f"{r['data_wait_fraction']:.2%}" for r in records)
        say(f"| `{mode}` | {speeds} | {waits} |")
    say()
    return runs / "resident-host"


def landscape(run_dir: Path, say):
    c = LANDSCAPE
    base = ["landscape", "--run", run_dir, "--kind", "2d", "--points", c["points"], "--train-patches", c["train"],
            "--val-patches", c["val"], "--batch", c["batch"], "--block", c["block"], "--device", "cpu"]
    modes = [("1 rank x 1 thread", 1, 1), ("1 rank x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1)]
    times = {m[0]: [] for m in modes}
    for r in range(2):
        for name, ranks, threads in modes:
            folder = f"bench-{ranks}x{threads}-{r}"
            subprocess.run(["rm", "-rf", str(run_dir / "landscape" / folder)], check=True)
            cmd = [TRAINER, *base, "--name", folder, "--threads", threads]
            if ranks > 1:
                cmd = ["mpirun", "-np", ranks, "--oversubscribe", "--bind-to", "none", *cmd]
            start = time.perf_counter()
            run(cmd, env=MPI_ENV)
            times[name].append(time.perf_counter() - start)
    points = c["points"] ** 2
    forwards = points * (c["train"] + c["val"])
    say(f"### 2D loss landscape, K-Branch: {c['points']}x{c['points']} points, {c['train']} training + {c['val']} "
        f"validation patches per point, batch {c['batch']}, blocks of {c['block']} point (2 alternating rounds)")
    say()
    say("| workers | wall s per round | points/s (median) | patch forwards/s | forward GFLOP/s |")
    say("|---|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        say(f"| {name} | {', '.join(f'{t:.1f}' for t in ts)} | {points / m:.2f} | {forwards / m:.0f} | "
            f"{forwards / m * FORWARD_GFLOP['kbranch']:.1f} |")
    say()
    one, two, split = (statistics.median(times[m[0]]) for m in modes)
    say(f"2 ranks vs 1 rank (1 thread each): **{one / split:.2f}x** (goal >= 1.8); "
        f"2 ranks x 1 thread vs 1 rank x 2 threads: {two / split:.2f}x. Wall times include each process's start-up.")
    say()


def first_step_seconds(data: Path) -> float:
    runs = WORK / "first-step-runs"
    subprocess.run(["rm", "-rf", str(runs)], check=True)
    start = time.perf_counter()
    p = subprocess.Popen([TRAINER, "--log-format", "json", "train", "--config", str(ROOT / "jobs" / "ce.toml"),
                          "--data", str(data), "--out", str(runs), "--epochs", "1", "--set", "train.batch_size=32"],
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

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    say(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.uname().nodename}: {os.cpu_count()} cores; "
        f"command `make bench` ({Path(__file__).resolve().relative_to(ROOT)}).")
    say()
    data = store()
    step_speed(data, say)
    run_dir = resident_vs_streamed(data, say)
    landscape(run_dir, say)
    times = [first_step_seconds(data) for _ in range(3)]
    say(f"Time from launching `trainer train` to its first optimizer step ({PATCHES}-patch store, batch 32): "
        f"{', '.join(f'{t:.2f}' for t in times)} s.")
    (WORK / "trainer.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
