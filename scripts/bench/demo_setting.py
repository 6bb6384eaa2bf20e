"""The demo's setting as the benchmarks of scripts/bench/bench_metrics.py and bench_spectrum.py
use it: paths, the demo's store (made once under work/bench), its training flags, running a
binary, and a Markdown report printed as it grows and saved at the end."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "work" / "bench"
DATA_PREP = str(ROOT / "target" / "release" / "data-prep")
TRAINER = str(ROOT / "target" / "release" / "trainer")
DEMO_PATCHES, DEMO_EPOCHS = 2000, 3
DEMO_FLAGS = ["--set", "train.batch_size=32", "--set", "train.lr=1e-3"]


def run(cmd, env=None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:3]))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def demo_store() -> Path:
    """The demo's synthetic store (`make demo`'s archive: 2000 patches, seed 1, v1)."""
    store = WORK / "demo-store.zarr"
    if not store.exists():
        run([DATA_PREP, "synth", "--patches", DEMO_PATCHES, "--seed", 1, "--format", "v1", "--out", WORK / "demo-archive"])
        run([DATA_PREP, "convert", "--archive", WORK / "demo-archive", "--out", store])
    return store


def measure(cmd) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command, measured in a child of its own."""
    code = ("import resource,subprocess,sys,time;t=time.perf_counter();"
            "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
            "s=time.perf_counter()-t;"
            "sys.exit(p.stderr) if p.returncode else print(s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *map(str, cmd)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed:\n{out.stderr[-2000:]}")
    seconds, kib = out.stdout.split()
    return float(seconds), int(kib) / 1024


class Report:
    """Markdown lines, printed as they come and saved to work/bench/<name>."""

    def __init__(self, name: str):
        WORK.mkdir(parents=True, exist_ok=True)
        self.path, self.lines = WORK / name, []

    def __call__(self, text=""):
        print(text, flush=True)
        self.lines.append(text)

    def save(self):
        self.path.write_text("\n".join(self.lines) + "\n")
