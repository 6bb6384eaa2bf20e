"""`trainer landscape --kind spectrum` checked against PyHessian (`pyhessian` on PyPI): the
K-Branch CNN rebuilt in PyTorch from the run's checkpoint (test_landscape_torch.py) on the
spectrum's own training subset, BatchNorm in eval mode, the run's loss (CE: BCE with logits).
PyHessian's power iteration gives the top eigenvalue within 1e-3 relative of the trainer's
Lanczos; its Hutchinson trace and the trainer's, each over 30 Rademacher probes of their own,
agree within three standard errors of their difference.

Runs with the Python of .cache/venv-torch."""
import json
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from pyhessian import hessian
from safetensors.numpy import load_file
from torch import nn

from conftest import ROOT, tool
from test_landscape_torch import KBranch, inputs, one_epoch_ce_run

BIN = ROOT / "target" / "release"
PROBES = 30


class OnTuple(nn.Module):
    """PyHessian calls model(inputs) with one object: the three band groups as a tuple."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(*x)


def test_spectrum_agrees_with_pyhessian(tmp_path):
    run_dir = one_epoch_ce_run(tmp_path)
    # One batch of the whole subset: PyHessian's Hessian of one batch is the same function.
    tool(BIN / "trainer", "landscape", "--run", run_dir, "--kind", "spectrum", "--name", "check",
         "--train-patches", "8", "--val-patches", "8", "--batch", "8", "--device", "cpu",
         "--top-k", "1", "--lanczos-steps", "30", "--trace-probes", str(PROBES), "--trace-tolerance", "1e-9",
         "--density-probes", "1", "--no-layers")
    folder = run_dir / "landscape" / "check"
    spec = json.loads((folder / "spec.json").read_text())
    rows = [r for f in sorted((folder / "blocks").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    ours = {r["quantity"]: r["value"] for r in rows if r["unit"] is None and r["point"] == 0}
    ours_probes = [r["value"] for r in rows if r["quantity"] == "hutchinson" and r["unit"] is None]
    assert len(ours_probes) == PROBES and ours["trace_probes"] == PROBES

    weights = load_file(run_dir / "checkpoints" / "epoch-0001" / "model.safetensors")
    model = KBranch()
    state = model.state_dict()
    model.load_state_dict({n: t if n.endswith("num_batches_tracked") else torch.from_numpy(weights[n].copy())
                           for n, t in state.items()})
    x, y = inputs(tmp_path / "store.zarr", spec["train_rows"])
    torch.manual_seed(0)
    h = hessian(OnTuple(model), nn.BCEWithLogitsLoss(), data=(tuple(x), y), cuda=False)

    # Power iteration to a relative change of 1e-5 between iterations: the Rayleigh quotient's
    # error is then a few 1e-5 for any gap below the top eigenvalue that is not tiny.
    started = time.perf_counter()
    (top,), _ = h.eigenvalues(maxIter=150, tol=1e-5, top_n=1)
    print(f"PyHessian: top eigenvalue {top} in {time.perf_counter() - started:.1f} s; trainer {ours['eigenvalue']}")
    assert abs(top - ours["eigenvalue"]) <= 1e-3 * abs(top), f"top eigenvalue: PyHessian {top} vs trainer {ours['eigenvalue']}"
    assert ours["ritz_residual"] <= 1e-2 * abs(top), ours["ritz_residual"]

    # A tolerance of 0 takes all PROBES probes.
    started = time.perf_counter()
    theirs = np.array(h.trace(maxIter=PROBES, tol=0.0))
    print(f"PyHessian: {PROBES} trace probes in {time.perf_counter() - started:.1f} s")
    assert len(theirs) == PROBES
    their_trace, their_se = theirs.mean(), theirs.std(ddof=1) / np.sqrt(PROBES)
    np.testing.assert_allclose(ours["trace"], np.mean(ours_probes), rtol=1e-12)
    np.testing.assert_allclose(ours["trace_se"], np.std(ours_probes, ddof=1) / np.sqrt(PROBES), rtol=1e-9)
    gap = abs(ours["trace"] - their_trace)
    assert gap <= 3 * np.hypot(ours["trace_se"], their_se), \
        f"trace: trainer {ours['trace']} ± {ours['trace_se']} vs PyHessian {their_trace} ± {their_se}"
