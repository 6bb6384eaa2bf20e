"""The GPU bundle (`make gpu-bundle`, docs/cluster.md "The GPU check") on this CPU machine, as a
GPU node would run it: its trainer is linked against the PyPI torch 2.11.0 wheel with
libtorch_cuda.so NEEDED and runs against another PyTorch 2.11 installation's torch/lib (this
venv's) through LD_LIBRARY_PATH; asking it for CUDA without a GPU is a clear error; and
`gpu-check.sh --cpu` runs every step of the GPU check on the CPU.

Runs with the Python of .cache/venv-torch (full PyTorch 2.11, as on a GPU node)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import ROOT

BUNDLE = ROOT / "target" / "gpu-bundle"
TORCH_LIB = Path(torch.__file__).parent / "lib"


def bundle_env() -> dict:
    return dict(os.environ, LD_LIBRARY_PATH=str(TORCH_LIB), PYTHON=sys.executable)


def test_bundle_fits_and_needs_libtorch_cuda():
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    assert size <= 64 << 20, f"{size} bytes"
    for name in ["gpu-check.sh", "bin/trainer", "bin/data-prep", "scripts/gpu_check.py", "scripts/torch_peer.py", "jobs/ce.toml"]:
        assert (BUNDLE / name).is_file(), name
    dynamic = subprocess.run(["readelf", "-d", str(BUNDLE / "bin" / "trainer")], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert "libtorch_cuda.so" in needed and "libtorch_cpu.so" in needed, needed
    assert not any("mpi" in n for n in needed), f"the bundle's trainer must not need MPI: {needed}"


def test_cuda_is_used_where_there_is_a_gpu_and_refused_naming_the_library_where_not(tmp_path):
    """Without a GPU, `--device cuda` is refused naming the loaded libtorch_cuda; with one (a GPU
    node), the trainer sees the GPUs PyTorch sees and trains on the first."""
    env = bundle_env()
    trainer = str(BUNDLE / "bin" / "trainer")
    probe = json.loads(subprocess.run([trainer, "env"], env=env, capture_output=True, text=True, check=True).stdout)
    assert probe["libtorch_cuda"] == str(TORCH_LIB / "libtorch_cuda.so"), probe
    assert probe["tch_torch_version"] == torch.__version__.split("+")[0]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert probe["cuda_available"] is (gpus > 0) and len(probe["gpus"]) == gpus, probe
    store = tmp_path / "store.zarr"
    data_prep = str(BUNDLE / "bin" / "data-prep")
    subprocess.run([data_prep, "synth", "--patches", "60", "--seed", "2", "--out", str(tmp_path / "archive")], check=True, capture_output=True)
    subprocess.run([data_prep, "convert", "--archive", str(tmp_path / "archive"), "--out", str(store)], check=True, capture_output=True)
    done = subprocess.run([trainer, "train", "--config", str(BUNDLE / "jobs" / "ce.toml"), "--data", str(store), "--out",
                           str(tmp_path / "runs"), "--device", "cuda", "--epochs", "1", "--set", "train.batch_size=16"],
                          env=env, capture_output=True, text=True)
    if gpus:
        assert done.returncode == 0, done.stderr
        attempt = json.loads((tmp_path / "runs" / "ce-seed0" / "run.json").read_text())["attempts"][-1]
        assert attempt["device"] == "cuda:0", attempt
        return
    assert done.returncode == 1, done.stderr
    assert 'run.device = "cuda" but libtorch finds no CUDA device' in done.stderr, done.stderr
    assert "libtorch_cuda is loaded from" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "nothing trained on the CPU instead"


def test_the_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([str(BUNDLE / "gpu-check.sh"), str(out), "--cpu"], env=bundle_env(), capture_output=True, text=True)
    log = (out / "gpu-check.log").read_text() if (out / "gpu-check.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log[-5000:]
    r = json.loads((out / "gpu-check.json").read_text())
    assert r["mode"] == "cpu" and r["ok"], json.dumps(r, indent=1)
    steps = r["steps"]
    assert steps["environment"]["trainer"]["libtorch_cuda"] == str(TORCH_LIB / "libtorch_cuda.so")
    assert sum(steps["store"]["patches"].values()) > 300
    c = steps["correctness"]
    assert len(c["losses"]["device"]) == c["steps"] and c["max_relative_difference"] <= 1e-3
    assert steps["bf16"]["skipped"]
    for row in steps["speed"]["rows"]:
        assert row["ours"] > 0 and row["pytorch"] > 0 and row["ratio"] == row["ours"] / row["pytorch"]
    e2e = steps["end_to_end"]
    # On the CPU, data resident "on the device" lives in host memory, and says so.
    assert [p["placement"] for p in e2e["resident"]["placement"]] == ["host", "host"]
    assert [p["placement"] for p in e2e["streamed"]["placement"]] == ["stream", "stream"]
    assert 0 <= e2e["resident"]["data_wait_fraction"] < 1
    assert steps["prediction"]["run_minutes"] > 0 and steps["prediction"]["study_hours_one_gpu"] > 0
    report = (out / "gpu-check.md").read_text()
    assert "Predicted: one 80-epoch BigEarthNet-19 run" in report and "| kbranch |" in report
