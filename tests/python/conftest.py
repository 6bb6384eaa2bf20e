"""Shared set-up for the interop tests: the data-prep binary and synthetic archives."""
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# LOSSBENCH_BIN runs the tests against other builds (an older version's, to reproduce a defect).
BIN = Path(os.environ.get("LOSSBENCH_BIN") or ROOT / "target" / "release")
CLUSTER = ROOT / "scripts" / "slurm-cluster.sh"
# mpirun as root, as CI runs.
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def data_prep_bin() -> str:
    path = os.environ.get("LOSSBENCH_DATA_PREP", str(BIN / "data-prep"))
    assert Path(path).is_file(), f"data-prep binary not found at {path}: run `make build`"
    return path


def tool(program, *args) -> str:
    """Runs a binary of the project (arguments may be paths); returns its stdout and stderr."""
    out = subprocess.run([str(program), *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, f"{Path(program).name} {args} failed:\n{out.stderr}"
    return out.stdout + out.stderr


def run(*args: str) -> str:
    """Runs data-prep."""
    return tool(data_prep_bin(), *args)


@pytest.fixture(scope="session")
def v1_archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v1") / "archive"
    run("synth", "--patches", "80", "--seed", "42", "--format", "v1", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def v2_archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v2") / "archive"
    run("synth", "--patches", "50", "--seed", "43", "--format", "v2", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def cluster():
    """A real single-node SLURM (scripts/slurm-cluster.sh), shared by the tests that submit jobs:
    the environment that points sbatch, squeue and scontrol at it."""
    # Under the repository, not pytest's private tmp: the munge user must reach its socket.
    folder = ROOT / ".cache" / "slurm-test"
    subprocess.run([str(CLUSTER), "start", str(folder)], check=True)
    env = dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"))
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--user=root"], env=env)
        subprocess.run([str(CLUSTER), "stop", str(folder)], check=True)


def jobs_left(env) -> list[str]:
    q = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, check=True)
    return q.stdout.split("\n")[:-1]


def wait_until(condition, what: str, timeout: float = 300):
    start = time.time()
    while not condition():
        assert time.time() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def chaos_store(tmp_path_factory) -> Path:
    """The chaos suites' store (tests/python/chaos_kit.py)."""
    import chaos_kit
    return chaos_kit.make_store(tmp_path_factory.mktemp("chaos"))


@pytest.fixture(scope="session")
def chaos_reference(chaos_store, tmp_path_factory) -> dict:
    """The chaos suites' undisturbed 2-rank runs of ce and focal."""
    import chaos_kit
    return chaos_kit.make_reference(chaos_store, tmp_path_factory.mktemp("reference"))
