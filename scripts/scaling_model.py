"""The scaling model of docs/scaling.md: predicted data-parallel efficiency of one run at a
global batch of 1024 for 8, 32 and 128 GPUs, and the cost of an 80-epoch run of each network on
one GPU. Prints the Markdown tables the doc shows. Inputs are stated below; change them to model
another machine."""
GRAD_BYTES = 16_523_251 * 4          # parameters x float32 (counted with torch on the model)
TRAIN_FLOP_PER_IMAGE = 1.13e9        # forward + backward, torch.utils.flop_counter
BATCH = 1024
BUCKET_BYTES = 64 * 2**20            # the trainer's all-reduce buffers
LATENCY_S = 5e-6                     # per ring hop
PCIE_BYTES_PER_S = 25e9              # device<->host staging of the gradients (MPI on host buffers)
STEP_FLOOR_S = 2e-3                  # kernel-launch bound of one forward+backward of this net
RATES = {"30 TFLOP/s (small-channel convs, TF32)": 30e12, "100 TFLOP/s (bf16 autocast)": 100e12}
LINKS = {"100 Gb/s": 100e9 / 8, "200 Gb/s": 200e9 / 8}
# Per network: parameters, forward and training-step GFLOP per patch (docs/models.md,
# scripts/model_costs.py) and the sustained fp32 (TF32) rate assumed on one H100/H200-class GPU:
# the K-Branch CNN's small-channel convolutions keep the GPU far from its peak, the deeper
# networks' wide ones less so.
NETWORKS = {
    "K-Branch": (16_523_251, 0.411e9, 1.130e9, 30e12),
    "ResNet-50": (23_575_187, 2.721e9, 7.892e9, 60e12),
    "VGG-16-BN": (134_352_019, 9.095e9, 27.085e9, 60e12),
}
# The study's BigEarthNet-19 splits and run length.
TRAIN, VALIDATION, TEST, EPOCHS = 269_695, 123_723, 125_866, 80


def step_compute(gpus: int, rate: float) -> float:
    return max(BATCH * TRAIN_FLOP_PER_IMAGE / rate / gpus, STEP_FLOOR_S)


def allreduce(gpus: int, link: float) -> float:
    buckets = -(-GRAD_BYTES // BUCKET_BYTES)
    ring = 2 * (gpus - 1) / gpus * GRAD_BYTES / link
    return ring + buckets * 2 * (gpus - 1) * LATENCY_S


def staging() -> float:
    return 2 * GRAD_BYTES / PCIE_BYTES_PER_S


def main():
    print("| compute rate per GPU | link | GPUs | compute ms/step | all-reduce ms | staging ms | efficiency | efficiency, all-reduce hidden |")
    print("|---|---|---|---|---|---|---|---|")
    for rate_name, rate in RATES.items():
        one = step_compute(1, rate)
        for link_name, link in LINKS.items():
            for gpus in (8, 32, 128):
                c, a, s = step_compute(gpus, rate), allreduce(gpus, link), staging()
                exposed = c + a + s
                hidden = max(c, a + s)
                print(f"| {rate_name} | {link_name} | {gpus} | {c * 1e3:.2f} | {a * 1e3:.2f} | {s * 1e3:.2f} | "
                      f"{one / gpus / exposed:.0%} | {one / gpus / hidden:.0%} |")
    print()
    print(f"one GPU, whole batch: {step_compute(1, RATES['30 TFLOP/s (small-channel convs, TF32)']) * 1e3:.1f} ms "
          f"/ {step_compute(1, RATES['100 TFLOP/s (bf16 autocast)']) * 1e3:.1f} ms per step; gradient "
          f"{GRAD_BYTES / 1e6:.1f} MB per step")


def run_costs():
    print("| network | parameters | PFLOP per epoch (train + validation) | PFLOP per 80-epoch run | assumed TFLOP/s | hours per run, one GPU | GPU-hours, 7 losses x 3 seeds |")
    print("|---|---|---|---|---|---|---|")
    for name, (params, forward, step, rate) in NETWORKS.items():
        epoch = TRAIN * step + VALIDATION * forward
        run = EPOCHS * epoch + TEST * forward
        hours = run / rate / 3600
        print(f"| {name} | {params / 1e6:.1f} M | {epoch / 1e15:.2f} | {run / 1e15:.0f} | {rate / 1e12:.0f} | {hours:.1f} | {21 * hours:.0f} |")


if __name__ == "__main__":
    main()
    print()
    run_costs()
