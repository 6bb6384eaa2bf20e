"""The asymmetric loss (src/losses/asl.rs) against timm's `AsymmetricLossMultiLabel`, the
reference implementation packaged: the same logits and targets give the same value and
gradient within 1e-6 once timm's sum over patches and classes is divided by B·19 (ours is a
mean, like every loss here), for the paper's setting and timm's default one.

Runs with the Python of .cache/venv-torch (torch, timm)."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.loss import AsymmetricLossMultiLabel

from conftest import ROOT, tool

EXAMPLES = ROOT / "target" / "release" / "examples"


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (0.0, 2.0, 0.0)])
def test_value_and_gradient_equal_timms(tmp_path, gamma_pos, gamma_neg, clip):
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(16, 19, generator=g, dtype=torch.float64) * 3)
    targets = (torch.rand(16, 19, generator=g) < 0.25).to(torch.float64)
    save_file({"logits": logits, "targets": targets}, tmp_path / "in.safetensors")
    spec = f'name = "asl"\ngamma_pos = {gamma_pos}\ngamma_neg = {gamma_neg}\nclip = {clip}\n'
    tool(EXAMPLES / "loss_reference", spec, tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    ours = load_file(tmp_path / "out.safetensors")

    x = logits.clone().requires_grad_(True)
    # timm computes in float32 whatever it is given: the comparison is at float32 precision.
    asl = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=1e-8, reduction="sum")
    theirs = asl(x, targets) / (16 * 19)
    theirs.backward()
    assert abs(ours["value"].item() - theirs.item()) <= 1e-6 * max(1.0, abs(theirs.item())), (ours["value"].item(), theirs.item())
    torch.testing.assert_close(ours["gradient"], x.grad, rtol=1e-5, atol=1e-6)
