"""The Python PyTorch peer of `trainer bench` (docs/benchmarks.md): the same network (K-Branch
CNN, or torchvision's ResNet-50 / VGG-16-BN for the 12 bands stacked at 120x120), the CE loss
(BCE with logits) and Adam with the trainer's conv weight decay, trained on one batch held on
the device, timed the same way (a
step's time includes reading its loss). Prints one JSON line.

    python torch_peer.py --arch kbranch --batch-file batch.safetensors [--device cuda] [--bf16]
                         [--steps 20] [--warmup 3] [--threads 2]
    python torch_peer.py --arch resnet50 --batch 64 ...   (random data of that batch size)
"""
import argparse
import json
import time

import torch
from torch import nn
from torch.nn import functional as F


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
    """The layers of src/model/kbranch.rs."""

    def __init__(self):
        super().__init__()
        self.b10m = branch(4, 120, [(32, 5, True), (32, 5, True), (64, 3, False)])
        self.b20m = branch(6, 60, [(32, 3, True), (32, 3, False), (64, 3, False)])
        self.b60m = branch(2, 20, [(32, 2, False), (32, 2, False), (32, 2, False)])
        self.head = nn.Sequential(nn.Linear(384, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 19))

    def forward(self, x10, x20, x60):
        return self.head(torch.cat([self.b10m(x10), self.b20m(x20), self.b60m(x60)], 1))


class Stacked(nn.Module):
    """A torchvision network on the 12 bands: 20 m and 60 m bilinearly upsampled to 120x120."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x10, x20, x60):
        up = lambda x: F.interpolate(x, size=(120, 120), mode="bilinear", align_corners=False)
        return self.net(torch.cat([x10, up(x20), up(x60)], 1))


def network(arch):
    import torchvision
    if arch == "kbranch":
        return KBranch()
    if arch == "resnet50":
        net = torchvision.models.resnet50(num_classes=19)
        net.conv1 = nn.Conv2d(12, 64, 7, 2, 3, bias=False)
    else:
        net = torchvision.models.vgg16_bn(num_classes=19)
        net.features[0] = nn.Conv2d(12, 64, 3, padding=1)
    return Stacked(net)


def batch(args, device):
    if args.batch_file:
        from safetensors.torch import load_file
        t = load_file(args.batch_file)
        x, y = [t["b10m"], t["b20m"], t["b60m"]], t["targets"]
    else:
        g = torch.Generator().manual_seed(0)
        b = args.batch
        x = [torch.randn(b, 4, 120, 120, generator=g), torch.randn(b, 6, 60, 60, generator=g), torch.randn(b, 2, 20, 20, generator=g)]
        y = (torch.rand(b, 19, generator=g) < 0.2).float()
    return [v.to(device) for v in x], y.to(device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="kbranch", choices=["kbranch", "resnet50", "vgg16"])
    p.add_argument("--batch-file")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = network(args.arch).to(device)
    # The trainer's Adam: L2 weight decay (train.conv_weight_decay) on the conv kernels only.
    convs = [p for p in model.parameters() if p.dim() == 4]
    others = [p for p in model.parameters() if p.dim() != 4]
    opt = torch.optim.Adam([{"params": convs, "weight_decay": 2e-5}, {"params": others}], lr=1e-4)
    x, y = batch(args, device)
    loss_fn = nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(*x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        opt.step()
        return loss.item()  # waits for the device, as the trainer's step reads its loss

    for _ in range(args.warmup):
        step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    n = x[0].shape[0]
    print(json.dumps({"impl": "python-torch", "arch": args.arch, "device": str(device), "batch": n, "bf16": args.bf16,
                      "steps": args.steps, "images_per_s": n * args.steps / sum(seconds), "step_seconds": seconds, "torch": torch.__version__,
                      "tf32_conv": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}))


if __name__ == "__main__":
    main()
