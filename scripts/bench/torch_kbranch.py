"""The K-Branch CNN and CE training step in Python PyTorch, on data already in memory: the peer
of examples/train_bench.rs in `make bench` (same layers, same batch, same threads).

    python torch_kbranch.py [BATCH] [STEPS] [THREADS]
"""
import json
import sys
import time

import torch
from torch import nn


def conv(c_in, c_out, k):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding="same"), nn.BatchNorm2d(c_out), nn.ReLU())


def branch(c_in, side, layers):
    mods, c, s = [], c_in, side
    for c_out, k, pool in layers:
        mods.append(conv(c, c_out, k))
        if pool:
            mods.append(nn.MaxPool2d(2))
            s //= 2
        mods.append(nn.Dropout(0.25))
        c = c_out
    mods += [nn.Flatten(), nn.Linear(c * s * s, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5)]
    return nn.Sequential(*mods)


class KBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.b10m = branch(4, 120, [(32, 5, True), (32, 5, True), (64, 3, False)])
        self.b20m = branch(6, 60, [(32, 3, True), (32, 3, False), (64, 3, False)])
        self.b60m = branch(2, 20, [(32, 2, False), (32, 2, False), (32, 2, False)])
        self.head = nn.Sequential(nn.Linear(384, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 19))

    def forward(self, x10, x20, x60):
        return self.head(torch.cat([self.b10m(x10), self.b20m(x20), self.b60m(x60)], 1))


def main():
    batch, steps, threads = [int(a) for a in sys.argv[1:4]] + [256, 5, 2][len(sys.argv) - 1:]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = KBranch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = [torch.randn(batch, 4, 120, 120), torch.randn(batch, 6, 60, 60), torch.randn(batch, 2, 20, 20)]
    y = (torch.rand(batch, 19) < 0.2).float()
    loss_fn = nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(*x), y).backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    secs = time.perf_counter() - t
    print(json.dumps({"impl": "python-torch", "batch": batch, "steps": steps, "threads": threads,
                      "images_per_s": round(batch * steps / secs, 1), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
