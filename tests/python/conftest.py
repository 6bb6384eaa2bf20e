"""Shared set-up for the interop tests: the data-prep binary and synthetic archives."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def data_prep_bin() -> str:
    path = os.environ.get("LOSSBENCH_DATA_PREP", str(ROOT / "target" / "release" / "data-prep"))
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
