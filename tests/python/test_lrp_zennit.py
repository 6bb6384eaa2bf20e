"""The trainer's LRP (src/lrp/) against zennit: a real checkpoint (one epoch of training on a
synthetic store, so BatchNorm statistics and biases are not trivial) is rebuilt in PyTorch
from its safetensors weights with BatchNorm folded, zennit explains random inputs with the same
composite, and the relevance maps agree within 1e-4 relative error.

Runs with the Python of .cache/venv-torch (torch + zennit, scripts/requirements-torch.txt)."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from zennit.composites import LayerMapComposite, NameLayerMapComposite
from zennit.rules import AlphaBeta, Epsilon, Flat, Pass, ZPlus
from zennit.types import Activation, Convolution

from conftest import tool

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release"
# The network of src/model/kbranch.rs (BRANCHES): (name, channels, side, [(out, kernel, pool)]).
BRANCHES = [
    ("b10m", 4, 120, [(32, 5, True), (32, 5, True), (64, 3, False)]),
    ("b20m", 6, 60, [(32, 3, True), (32, 3, False), (64, 3, False)]),
    ("b60m", 2, 20, [(32, 2, False), (32, 2, False), (32, 2, False)]),
]
BN_EPS = 1e-5
# ε per composite: zennit's default where ε only serves the dense layers; for ε on every layer a
# working value (with 1e-6, LRP-0 through the convs divides by near-zero outputs and float32
# rounding differences of ~1e-7 grow to ~1e-3 in both implementations alike).
EPSILON = {"epsilon-plus-flat": 1e-6, "epsilon": 0.25, "alpha1-beta0": 1e-6}

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def read_safetensors(path: Path) -> dict:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + start:8 + n + end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def write_safetensors(path: Path, tensors: dict):
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[array.dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def folded(w: dict, layer: str, bn: str):
    scale = w[f"{bn}.weight"] / np.sqrt(w[f"{bn}.running_var"] + BN_EPS)
    weight = w[f"{layer}.weight"] * scale.reshape(-1, *([1] * (w[f"{layer}.weight"].ndim - 1)))
    bias = (w[f"{layer}.bias"] - w[f"{bn}.running_mean"]) * scale + w[f"{bn}.bias"]
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


def set_params(module, weight, bias):
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)


class Folded(torch.nn.Module):
    """The K-Branch CNN in eval mode with BatchNorm folded into the layers before it."""

    def __init__(self, w: dict):
        super().__init__()
        self.branches = torch.nn.ModuleList()
        for name, c, side, convs in BRANCHES:
            layers = []
            for i, (c_out, k, pool) in enumerate(convs):
                conv = torch.nn.Conv2d(c, c_out, k, padding="same")
                set_params(conv, *folded(w, f"{name}.conv{i + 1}.conv", f"{name}.conv{i + 1}.bn"))
                layers += [conv, torch.nn.ReLU()] + ([torch.nn.MaxPool2d(2)] if pool else [])
                c, side = c_out, side // 2 if pool else side
            dense = torch.nn.Linear(c * side * side, 128)
            set_params(dense, *folded(w, f"{name}.dense.fc", f"{name}.dense.bn"))
            self.branches.append(torch.nn.Sequential(*layers, torch.nn.Flatten(), dense, torch.nn.ReLU()))
        self.fusion = torch.nn.Linear(384, 128)
        set_params(self.fusion, *folded(w, "fusion.fc", "fusion.bn"))
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Linear(128, 19)
        set_params(self.head, torch.from_numpy(w["head.weight"].copy()), torch.from_numpy(w["head.bias"].copy()))

    def forward(self, x10, x20, x60):
        hidden = torch.cat([b(x) for b, x in zip(self.branches, (x10, x20, x60))], 1)
        return self.head(self.relu(self.fusion(hidden)))


def composite(name: str):
    if name == "epsilon-plus-flat":
        firsts = [f"branches.{i}.0" for i in range(3)]
        return NameLayerMapComposite(
            name_map=[(firsts, Flat())],
            layer_map=[(Activation, Pass()), (Convolution, ZPlus()), (torch.nn.Linear, Epsilon(EPSILON[name]))],
        )
    if name == "epsilon":
        eps = EPSILON[name]
        return LayerMapComposite([(Activation, Pass()), (Convolution, Epsilon(eps)), (torch.nn.Linear, Epsilon(eps))])
    assert name == "alpha1-beta0"
    return LayerMapComposite([(Activation, Pass()), (Convolution, AlphaBeta(1.0, 0.0)), (torch.nn.Linear, AlphaBeta(1.0, 0.0))])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lrp")
    tool(BIN / "data-prep", "synth", "--patches", "60", "--seed", "5", "--format", "v1", "--out", folder / "archive")
    tool(BIN / "data-prep", "convert", "--archive", folder / "archive", "--out", folder / "store.zarr")
    tool(BIN / "trainer", "train", "--config", ROOT / "jobs" / "ce.toml", "--data", folder / "store.zarr", "--out",
        folder / "runs", "--epochs", "1", "--device", "cpu", "--set", "train.batch_size=8", "--set", "train.lr=1e-3",
        "--set", "lrp.every=0")
    return folder / "runs" / "ce-seed0" / "checkpoints" / "epoch-0001" / "model.safetensors"


@pytest.mark.parametrize("name", ["epsilon-plus-flat", "epsilon", "alpha1-beta0"])
def test_relevance_maps_equal_zennits(checkpoint, tmp_path, name):
    weights = read_safetensors(checkpoint)
    model = Folded(weights).eval()
    rng = np.random.default_rng(17)
    inputs = {
        "b10m": rng.standard_normal((3, 4, 120, 120)).astype(np.float32),
        "b20m": rng.standard_normal((3, 6, 60, 60)).astype(np.float32),
        "b60m": rng.standard_normal((3, 2, 20, 20)).astype(np.float32),
        "classes": np.array([0, 9, 18], dtype=np.int64),
    }
    write_safetensors(tmp_path / "inputs.safetensors", inputs)
    tool(BIN / "examples" / "lrp_reference", "kbranch", checkpoint, tmp_path / "inputs.safetensors", name, EPSILON[name], tmp_path / "out.safetensors")
    ours = read_safetensors(tmp_path / "out.safetensors")

    xs = [torch.from_numpy(inputs[k]).requires_grad_(True) for k in ("b10m", "b20m", "b60m")]
    with composite(name).context(model) as modified:
        logits = modified(*xs)
        start = torch.zeros_like(logits)
        rows = torch.arange(3)
        classes = torch.from_numpy(inputs["classes"])
        start[rows, classes] = logits[rows, classes].detach()
        theirs = torch.autograd.grad(logits, xs, grad_outputs=start)
    np.testing.assert_allclose(ours["logits"], logits[rows, classes].detach().numpy(), rtol=1e-4, atol=1e-5)
    for key, relevance in zip(("b10m", "b20m", "b60m"), theirs):
        reference = relevance.numpy()
        for i in range(3):
            err = np.linalg.norm(ours[key][i] - reference[i]) / np.linalg.norm(reference[i])
            assert err <= 1e-4, f"{name}, {key}, sample {i}: relative error {err:.2e}"
