"""ResNet-50 and VGG-16-BN (src/model/) against torchvision's models and zennit.

- Forward: the trainer's freshly initialised network (BatchNorm statistics set to non-trivial
  values), exported as safetensors under torchvision's parameter names, loaded into torchvision's
  model with a 12-channel first convolution and 19 outputs behind the same band stacking
  (20 m and 60 m bands bilinearly upsampled to 120x120): the same logits within 1e-5.
- LRP: zennit with its ResNet / VGG canonizers (BatchNorm merged, residual additions as Sum
  layers under the Norm rule) on that torchvision model gives the trainer's relevance maps at
  native band resolution within 1e-9 relative, for each composite. Both sides compute in
  float64: in float32 the two orders of rounding through 50 layers differ by 1e-4 already, and
  the ε rule amplifies pre-activations near zero whose sign the rounding flips. zennit's merged
  BatchNorms are made exact identities (see the test).

Runs with the Python of .cache/venv-torch (torch, torchvision, zennit)."""
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from zennit.composites import EpsilonPlusFlat, LayerMapComposite
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Norm, Pass
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Activation, AvgPool, Convolution

from conftest import ROOT, tool

sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
from torch_peer import network  # noqa: E402

EXAMPLES = ROOT / "target" / "release" / "examples"


def torchvision_model(arch: str, weights: dict) -> nn.Module:
    """torchvision's network for the 12 stacked bands (scripts/gpu/torch_peer.py, the benchmark
    peer) with the trainer's weights."""
    model = network(arch)
    missing, unexpected = model.net.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert all(m.endswith("num_batches_tracked") for m in missing), missing
    return model.eval()


def inputs(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"b10m": torch.randn(n, 4, 120, 120, generator=g), "b20m": torch.randn(n, 6, 60, 60, generator=g),
            "b60m": torch.randn(n, 2, 20, 20, generator=g)}


def reference(arch, tmp_path, n=2):
    x = inputs(n, 3)
    save_file(x, tmp_path / "inputs.safetensors")
    tool(EXAMPLES / "model_reference", arch, "7", tmp_path / "inputs.safetensors", tmp_path / "weights.safetensors", tmp_path / "logits.safetensors")
    return x, load_file(tmp_path / "weights.safetensors"), load_file(tmp_path / "logits.safetensors")["logits"]


@pytest.mark.parametrize("arch", ["resnet50", "vgg16"])
def test_forward_equals_torchvisions(arch, tmp_path):
    x, weights, ours = reference(arch, tmp_path)
    model = torchvision_model(arch, weights)
    with torch.no_grad():
        theirs = model(x["b10m"], x["b20m"], x["b60m"])
    err = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    assert err <= 1e-5, f"{arch}: logits differ by {err:.2e} relative"


def composite(name: str, canonizer):
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat(canonizers=[canonizer])
    rule = Epsilon(0.25) if name == "epsilon" else AlphaBeta(1.0, 0.0)
    return LayerMapComposite(
        [(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()), (Convolution, rule), (nn.Linear, rule)], canonizers=[canonizer])


@pytest.mark.parametrize("arch", ["resnet50", "vgg16"])
@pytest.mark.parametrize("name", ["epsilon-plus-flat", "epsilon", "alpha1-beta0"])
def test_relevance_maps_equal_zennits(arch, name, tmp_path):
    x, weights, _ = reference(arch, tmp_path)
    classes = torch.tensor([3, 17])
    save_file({**x, "classes": classes}, tmp_path / "lrp-inputs.safetensors")
    epsilon = "0.25" if name == "epsilon" else "1e-6"
    tool(EXAMPLES / "lrp_reference", arch, tmp_path / "weights.safetensors", tmp_path / "lrp-inputs.safetensors", name, epsilon,
         tmp_path / "out.safetensors", "f64")
    ours = load_file(tmp_path / "out.safetensors")
    model = torchvision_model(arch, weights).double()
    canonizer = ResNetCanonizer() if arch == "resnet50" else VGGCanonizer()
    xs = [x[k].double().requires_grad_(True) for k in ("b10m", "b20m", "b60m")]
    with composite(name, canonizer).context(model) as modified:
        # zennit 0.5.1 merges each BatchNorm into its conv and leaves it as an identity that
        # still divides by sqrt(1 + eps) (canonizers.py, MergeBatchNorm): 1e-4 off the logits
        # through ResNet-50. A running variance of 1 - eps makes it the identity it means to be
        # (torch refuses eps = 0; zennit restores the statistics on exit).
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(1.0 - m.eps)
        logits = modified(*xs)
        rows = torch.arange(2)
        start = torch.zeros_like(logits)
        start[rows, classes] = logits[rows, classes].detach()
        theirs = torch.autograd.grad(logits, xs, grad_outputs=start)
    # The logits come back as float32.
    torch.testing.assert_close(ours["logits"], logits[rows, classes].detach().float(), rtol=1e-5, atol=1e-5)
    for key, relevance in zip(("b10m", "b20m", "b60m"), theirs):
        for i in range(2):
            err = ((ours[key][i] - relevance[i]).norm() / relevance[i].norm()).item()
            assert err <= 1e-9, f"{arch} {name} {key} sample {i}: relative error {err:.2e}"
