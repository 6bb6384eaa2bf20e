"""Adam / AdamW and the learning-rate schedules (src/optim.rs, core/src/config/recipe.rs) against PyTorch:
the same starting parameter and gradients give the same learning rate at every step as
`LinearLR` → `CosineAnnealingLR` / `StepLR` (chained by `SequentialLR`), and the same parameter
after every step as `torch.optim.AdamW` (decoupled weight decay) and `torch.optim.Adam` (L2 added
to the gradient), within float32 rounding.

Runs with the Python of .cache/venv-torch (torch)."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, tool

EXAMPLES = ROOT / "target" / "release" / "examples"
STEPS_PER_EPOCH = 7
EPOCHS = 9
STEPS = STEPS_PER_EPOCH * EPOCHS


def torch_schedule(opt, schedule):
    """PyTorch's schedulers for a `[train.schedule]` table."""
    sched = torch.optim.lr_scheduler
    warmup = schedule.get("warmup_steps", 0)
    decay = schedule.get("decay", "constant")
    if decay == "cosine":
        after = sched.CosineAnnealingLR(opt, T_max=STEPS - warmup, eta_min=schedule.get("min_lr", 0.0))
    elif decay == "step":
        after = sched.StepLR(opt, step_size=schedule["step_epochs"] * STEPS_PER_EPOCH, gamma=schedule["gamma"])
    else:
        after = sched.ConstantLR(opt, factor=1.0, total_iters=0)
    if warmup == 0:
        return after
    start = schedule.get("warmup_start", 0.001)
    linear = sched.LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(opt, [linear, after], milestones=[warmup])


def toml_value(v):
    return f'"{v}"' if isinstance(v, str) else repr(v)


CASES = [
    ("adamw", 1e-3, {"weight_decay": 0.01}, {"warmup_steps": 10, "decay": "cosine", "min_lr": 1e-5}),
    ("adamw", 1e-3, {"weight_decay": 0.05}, {"decay": "cosine"}),
    ("adamw", 3e-4, {"weight_decay": 0.01}, {"warmup_steps": 5, "warmup_start": 0.1, "decay": "step", "step_epochs": 2, "gamma": 0.5}),
    ("adam", 1e-4, {"l2": 0.0005}, {}),
    ("adam", 1e-3, {}, {"warmup_steps": 20}),
]


@pytest.mark.parametrize("optimizer,lr,decay,schedule", CASES)
def test_trajectory_and_learning_rates_equal_pytorchs(tmp_path, optimizer, lr, decay, schedule):
    g = torch.Generator().manual_seed(11)
    w0 = torch.randn(32, generator=g)
    grads = torch.randn(STEPS, 32, generator=g) * torch.linspace(0.01, 3.0, 32)
    save_file({"w": w0, "grads": grads}, tmp_path / "in.safetensors")
    spec = [f'optimizer = "{optimizer}"', f"lr = {lr}", f"steps_per_epoch = {STEPS_PER_EPOCH}", f"epochs = {EPOCHS}"]
    spec += [f"{k} = {v}" for k, v in decay.items()]
    spec += ["[schedule]"] + [f"{k} = {toml_value(v)}" for k, v in schedule.items()]
    tool(EXAMPLES / "optim_trace", "\n".join(spec), tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    ours = load_file(tmp_path / "out.safetensors")

    w = w0.clone().requires_grad_(True)
    if optimizer == "adamw":
        opt = torch.optim.AdamW([w], lr=lr, weight_decay=decay["weight_decay"], foreach=False)
    else:
        opt = torch.optim.Adam([w], lr=lr, weight_decay=decay.get("l2", 0.0), foreach=False)
    scheduler = torch_schedule(opt, schedule)
    lrs, trajectory = [], []
    for grad in grads:
        w.grad = grad.clone()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
        trajectory.append(w.detach().clone())
    torch.testing.assert_close(ours["lr"], torch.tensor(lrs, dtype=torch.float64), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(ours["w"], torch.stack(trajectory), rtol=2e-5, atol=2e-6)
    # The schedule did move the learning rate where it has one.
    if schedule:
        assert len(set(round(x, 12) for x in lrs)) > 3
