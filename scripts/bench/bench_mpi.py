"""`make bench` for data parallelism: the trainer on one process (2 threads) against 2 MPI
ranks of 1 thread each under `mpirun -np 2` on this 2-core machine, same store, same global
batch, alternating rounds; reports training images/s and where rank 0's step time went
(compute, all-reduce, data wait) from each run's epochs.jsonl. Prints Markdown, saved to
work/bench/mpi.md.
"""
import json
import os
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "work" / "bench"
DATA_PREP = str(ROOT / "target" / "release" / "data-prep")
TRAINER = str(ROOT / "target" / "release" / "trainer")
PATCHES, BATCH, ROUNDS = 1200, 128, 2


def store() -> Path:
    path = WORK / "mpi-store.zarr"
    if not path.exists():
        subprocess.run([DATA_PREP, "synth", "--patches", str(PATCHES), "--seed", "7", "--format", "v1",
                        "--out", str(WORK / "mpi-archive")], check=True, capture_output=True)
        subprocess.run([DATA_PREP, "convert", "--archive", str(WORK / "mpi-archive"), "--out", str(path)],
                       check=True, capture_output=True)
    return path


def train(data: Path, ranks: int) -> dict:
    runs = WORK / "mpi-runs"
    subprocess.run(["rm", "-rf", str(runs)], check=True)
    threads = 2 // ranks
    args = [TRAINER, "train", "--config", str(ROOT / "jobs" / "ce.toml"), "--data", str(data), "--out", str(runs),
            "--run-id", "bench", "--epochs", "1", "--device", "cpu", "--set", f"train.batch_size={BATCH}",
            "--set", f"run.threads={threads}", "--set", "train.loader_threads=1"]
    if ranks > 1:
        args = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none", *args]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    subprocess.run(args, check=True, capture_output=True, env=env)
    return json.loads((runs / "bench" / "epochs.jsonl").read_text().splitlines()[0])


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    data = store()
    results = {1: [], 2: []}
    for _ in range(ROUNDS):
        for ranks in (1, 2):
            results[ranks].append(train(data, ranks))
    lines = []
    say = lambda s="": (print(s, flush=True), lines.append(s))
    say(f"### Data parallelism on this machine: 1 process x 2 threads vs 2 MPI ranks x 1 thread "
        f"(K-Branch + CE, global batch {BATCH}, one epoch of the training split of a {PATCHES}-patch "
        f"synthetic store, {ROUNDS} alternating rounds)")
    say()
    say("| ranks | images/s per round | median | compute s | all-reduce s | data wait s | all-reduce share |")
    say("|---|---|---|---|---|---|---|")
    medians = {}
    for ranks, records in results.items():
        ips = [r["images_per_s"] for r in records]
        medians[ranks] = statistics.median(ips)
        t = {k: statistics.median(r["time"][k] for r in records) for k in ("compute_s", "allreduce_s", "data_wait_s")}
        share = t["allreduce_s"] / sum(t.values())
        say(f"| {ranks} | {', '.join(f'{v:.1f}' for v in ips)} | {medians[ranks]:.1f} | {t['compute_s']:.1f} | "
            f"{t['allreduce_s']:.2f} | {t['data_wait_s']:.2f} | {share:.1%} |")
    say()
    say(f"2-rank / 1-rank throughput: {medians[2] / medians[1]:.2f}")
    (WORK / "mpi.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
