"""Parameters and FLOPs per patch of the three networks (docs/models.md, docs/scaling.md),
counted with torch.utils.flop_counter on the PyTorch peers of scripts/gpu/torch_peer.py (the
same layers as src/model/). Runs with .cache/venv-torch's Python; prints a Markdown table.
"""
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from torch_peer import network  # noqa: E402


def costs(arch):
    model = network(arch).train()
    params = sum(p.numel() for p in model.parameters())
    # A batch of 2: BatchNorm in training mode needs more than one patch; counts are per patch.
    x = [torch.randn(2, 4, 120, 120), torch.randn(2, 6, 60, 60), torch.randn(2, 2, 20, 20)]
    with FlopCounterMode(display=False) as fwd:
        out = model(*x)
    with FlopCounterMode(display=False) as bwd:
        out.sum().backward()
    return params, fwd.get_total_flops() / 2, (fwd.get_total_flops() + bwd.get_total_flops()) / 2


def main():
    print("| network | parameters | forward GFLOP per patch | training step (forward + backward) GFLOP per patch |")
    print("|---|---|---|---|")
    for arch in ("kbranch", "resnet50", "vgg16"):
        params, forward, step = costs(arch)
        print(f"| {arch} | {params:,} | {forward / 1e9:.3f} | {step / 1e9:.3f} |")


if __name__ == "__main__":
    main()
