"""`trainer landscape` checked independently with Python PyTorch: the K-Branch CNN rebuilt in
PyTorch from the run's model.safetensors, the saved directions and the subset of training
patches the landscape names (read from the store with zarr-python) give the same loss at grid
points within 1e-5 relative; the directions are torch's seeded normal draws, filter-normalised
as a direct numpy computation does.

Runs with the Python of .cache/venv-torch."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import zarr
from safetensors.numpy import load_file
from torch import nn

from conftest import ROOT, run, tool

BIN = ROOT / "target" / "release"
# src/model/kbranch.rs: (name, channels, [(out, kernel, pool)]).
BRANCHES = [
    ("b10m", 4, 120, [(32, 5, True), (32, 5, True), (64, 3, False)]),
    ("b20m", 6, 60, [(32, 3, True), (32, 3, False), (64, 3, False)]),
    ("b60m", 2, 20, [(32, 2, False), (32, 2, False), (32, 2, False)]),
]


class ConvBlock(nn.Module):
    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, k, padding="same"), nn.BatchNorm2d(c_out)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Dense(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc, self.bn = nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out)

    def forward(self, x):
        return torch.relu(self.bn(self.fc(x)))


class Branch(nn.Module):
    def __init__(self, channels, side, convs):
        super().__init__()
        c, s, self.pools = channels, side, []
        for i, (c_out, k, pool) in enumerate(convs):
            setattr(self, f"conv{i + 1}", ConvBlock(c, c_out, k))
            self.pools.append(pool)
            c, s = c_out, s // 2 if pool else s
        self.dense = Dense(c * s * s, 128)

    def forward(self, x):
        for i, pool in enumerate(self.pools):
            x = getattr(self, f"conv{i + 1}")(x)
            x = nn.functional.max_pool2d(x, 2) if pool else x
        return self.dense(x.flatten(1))


class KBranch(nn.Module):
    """Parameter names as the trainer's (b10m.conv1.conv.weight, ..., fusion.fc, head)."""

    def __init__(self):
        super().__init__()
        for name, c, s, convs in BRANCHES:
            setattr(self, name, Branch(c, s, convs))
        self.fusion, self.head = Dense(384, 128), nn.Linear(128, 19)

    def forward(self, x10, x20, x60):
        return self.head(self.fusion(torch.cat([self.b10m(x10), self.b20m(x20), self.b60m(x60)], 1)))


def inputs(store: Path, rows):
    root = zarr.open_group(store, mode="r")
    meta = root.attrs["lossbench"]
    train = root["train"]
    x = []
    for group, bands in meta["band_groups"].items():
        mean = np.array([meta["band_stats"][b]["mean"] for b in bands], dtype=np.float32)[None, :, None, None]
        inv_std = (1.0 / np.array([meta["band_stats"][b]["std"] for b in bands]))[None, :, None, None].astype(np.float32)
        x.append(((train[group][rows].astype(np.float32) - mean) * inv_std, group))
    order = {"b10m": 0, "b20m": 1, "b60m": 2}
    x = [torch.from_numpy(a) for a, _ in sorted(x, key=lambda t: order[t[1]])]
    return x, torch.from_numpy(train["labels"][rows].astype(np.float32))


def one_epoch_ce_run(tmp_path: Path) -> Path:
    """A synthetic store of 60 patches in tmp_path and a CE run of one epoch on it: its folder."""
    run("synth", "--patches", "60", "--seed", "5", "--out", str(tmp_path / "archive"))
    run("convert", "--archive", str(tmp_path / "archive"), "--out", str(tmp_path / "store.zarr"))
    tool(BIN / "trainer", "train", "--config", ROOT / "jobs" / "ce.toml", "--data", tmp_path / "store.zarr", "--out", tmp_path / "runs",
         "--epochs", "1", "--device", "cpu", "--set", "train.batch_size=8", "--set", "lrp.every=0")
    return tmp_path / "runs" / "ce-seed0"


def test_landscape_losses_and_directions_agree_with_pytorch(tmp_path):
    run_dir = one_epoch_ce_run(tmp_path)
    tool(BIN / "trainer", "landscape", "--run", run_dir, "--kind", "2d", "--points", "3", "--seed", "4", "--name", "check",
         "--train-patches", "16", "--val-patches", "8", "--batch", "8", "--device", "cpu")
    folder = run_dir / "landscape" / "check"
    spec = json.loads((folder / "spec.json").read_text())
    weights = load_file(run_dir / "checkpoints" / "epoch-0001" / "model.safetensors")
    directions = load_file(folder / "directions.safetensors")

    # The directions: torch's normal draws in name order (d1 for every trainable variable, then
    # d2), each filter scaled to the weights' norm in numpy; 1-D variables get zero.
    trainable = sorted(n for n in weights if not n.endswith(("running_mean", "running_var")))
    torch.manual_seed(spec["seed"])
    for d in ("d1", "d2"):
        for name in trainable:
            w = weights[name]
            raw = torch.randn(w.shape).numpy().astype(np.float64)
            if w.ndim <= 1:
                want = np.zeros_like(raw)
            else:
                flat_w, flat_d = w.reshape(w.shape[0], -1), raw.reshape(w.shape[0], -1)
                scale = np.linalg.norm(flat_w, axis=1) / np.linalg.norm(flat_d, axis=1)
                want = (flat_d * scale[:, None]).reshape(w.shape)
            np.testing.assert_allclose(directions[f"{d}/{name}"], want, rtol=1e-5, atol=1e-7, err_msg=f"{d}/{name}")

    # The losses: the model at θ + α·d1 + β·d2, eval mode, BCE with logits on the training subset.
    x, y = inputs(tmp_path / "store.zarr", spec["train_rows"])
    model = KBranch().eval()
    state = model.state_dict()
    table = {}
    for f in sorted((folder / "blocks").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            if r["quantity"] == "loss":
                table[(r["alpha"], r["beta"])] = r["value"]
    assert len(table) == 9
    for (alpha, beta), value in list(table.items())[:5]:
        moved = {}
        for name, t in state.items():
            if name.endswith("num_batches_tracked"):
                moved[name] = t
                continue
            w = weights[name].astype(np.float32)
            if name in trainable:
                w = w + np.float32(alpha) * directions[f"d1/{name}"] + np.float32(beta) * directions[f"d2/{name}"]
            moved[name] = torch.from_numpy(np.ascontiguousarray(w))
        model.load_state_dict(moved)
        with torch.no_grad():
            loss = nn.functional.binary_cross_entropy_with_logits(model(*x), y).item()
        assert abs(loss - value) <= 1e-5 * abs(value), f"α={alpha} β={beta}: PyTorch {loss} vs trainer {value}"
