"""The GPU check of a lossbench build (docs/cluster.md, "The GPU check"), run by gpu-check.sh from
the bundle that `make gpu-bundle` writes. Standard library only: it drives the bundle's
`trainer` and `data-prep` and the Python peer (torch_peer.py) and writes OUT/gpu-check.json and
OUT/gpu-check.md. Every step records its outcome and the check goes on after a failure.

Steps: environment; a synthetic store; correctness (the same steps on the GPU in fp32 with TF32
off and on the CPU, from the same initial weights; a one-epoch run in bf16 beside fp32); speed
beside Python PyTorch on the same device, data and precision; the trainer end to end with the
data streamed from the store and resident on the device; the predicted time of the study.

With --cpu every step runs on the CPU at a small size (the CI test); the GPU-only parts (bf16
autocast) are recorded as skipped.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The study's split sizes (BigEarthNet-19, snowy and cloudy patches removed) and run shape.
STUDY = {"train": 269_695, "validation": 123_723, "test": 125_866, "epochs": 80, "losses": 7, "seeds": 3}
BF16_F1_TOLERANCE = 0.02
LOSS_TOLERANCE = 1e-3
GOALS = {"ratio": 1.0, "data_wait": 0.05, "run_minutes": 15.0}


class Check:
    def __init__(self, bundle: Path, out: Path, cpu: bool):
        self.bundle, self.out, self.cpu = bundle, out, cpu
        self.trainer = str(bundle / "bin" / "trainer")
        self.data_prep = str(bundle / "bin" / "data-prep")
        self.peer = str(bundle / "scripts" / "torch_peer.py")
        self.jobs = bundle / "jobs"
        self.work = out / "work"
        self.device = "cpu" if cpu else "cuda"
        # Small on the CPU, the study's batch on the GPU.
        self.size = dict(patches=700, batch=32, steps=4, warmup=1, lr=1e-3, check_batch=16, check_steps=6) if cpu else \
            dict(patches=24_000, batch=1024, steps=30, warmup=5, lr=1e-3, check_batch=256, check_steps=20)
        self.threads = os.cpu_count() or 1
        self.result = {"mode": "cpu" if cpu else "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                       "size": self.size, "steps": {}}
        self.log = open(out / "gpu-check.log", "w")

    def run(self, args, env=None, check=True):
        """Runs a command, logging it and its output; returns (seconds, stdout)."""
        self.log.write(f"$ {' '.join(map(str, args))}\n")
        self.log.flush()
        start = time.perf_counter()
        p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env={**os.environ, **(env or {})})
        seconds = time.perf_counter() - start
        self.log.write(p.stdout + p.stderr + f"[exit {p.returncode}, {seconds:.1f} s]\n")
        self.log.flush()
        if check and p.returncode != 0:
            raise RuntimeError(f"{Path(str(args[0])).name} {' '.join(map(str, args[1:3]))} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
        return seconds, p.stdout

    def step(self, name, fn):
        """Runs one step; its outcome (or error) goes into the result."""
        start = time.perf_counter()
        try:
            value = fn()
            entry = {"ok": True, **(value or {})}
        except Exception as e:  # noqa: BLE001 - every failure is recorded, the check goes on
            entry = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        entry["seconds"] = round(time.perf_counter() - start, 1)
        self.result["steps"][name] = entry
        print(f"[gpu-check] {name}: {'ok' if entry['ok'] else 'FAILED: ' + entry['error']} ({entry['seconds']} s)", flush=True)
        return entry

    def train_args(self, job, *sets, device=None):
        args = ["--config", self.jobs / f"{job}.toml", "--data", self.work / "store.zarr", "--device", device or self.device,
                "--set", f"train.batch_size={self.size['batch']}", "--set", f"train.lr={self.size['lr']}", "--set", "lrp.every=0",
                "--set", f"train.loader_threads={min(16, self.threads)}"]
        for s in sets:
            args += ["--set", s]
        return args

    # -- steps ------------------------------------------------------------------------------

    def environment(self):
        _, text = self.run([self.trainer, "env"])
        env = json.loads(text)
        _, torch_info = self.run([sys.executable, "-c", "import json, torch; print(json.dumps({'torch': torch.__version__, "
                                  "'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"])
        info = {"trainer": env, "python_torch": json.loads(torch_info), "host": platform.node(), "cpu_threads": self.threads}
        if shutil.which("nvidia-smi"):
            _, smi = self.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], check=False)
            info["nvidia_smi"] = smi.strip()
        if not self.cpu and not env.get("libtorch_cuda"):
            raise RuntimeError("the trainer runs without libtorch_cuda: LD_LIBRARY_PATH must hold a PyTorch 2.11 CUDA torch/lib")
        return info

    def store(self):
        archive, store = self.work / "archive", self.work / "store.zarr"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        synth_s, _ = self.run([self.data_prep, "synth", "--patches", self.size["patches"], "--seed", 7, "--out", archive])
        convert_s, text = self.run([self.data_prep, "convert", "--archive", archive, "--out", store])
        shutil.rmtree(archive)
        written = {line.split()[1].rstrip(","): int(line.split()[-1]) for line in text.splitlines() if line.strip().startswith("written,")}
        return {"patches": written, "synth_s": round(synth_s, 1), "convert_s": round(convert_s, 1)}

    def bench(self, device, *sets, env=None, save_batch=None, steps=None, warmup=None, batch=None):
        args = [self.trainer, "bench", *self.train_args("ce", *sets, device=device),
                "--steps", steps or self.size["steps"], "--warmup", warmup if warmup is not None else self.size["warmup"]]
        if batch:
            args += ["--set", f"train.batch_size={batch}"]
        if save_batch:
            args += ["--save-batch", save_batch]
        _, text = self.run(args, env=env)
        return json.loads(text.strip().splitlines()[-1])

    def correctness_steps(self):
        """The same steps from the same initial weights (dropout off, so both draw nothing) on
        the GPU in fp32 with TF32 off and on the CPU; on --cpu, resident against streamed data."""
        steps, batch = self.size["check_steps"], self.size["check_batch"]
        common = dict(steps=steps, warmup=0, batch=batch)
        gpu = self.bench(self.device, "model.dropout=false", "data.resident=\"device\"", env={"NVIDIA_TF32_OVERRIDE": "0"}, **common)
        cpu = self.bench("cpu", "model.dropout=false", "data.resident=\"off\"", **common)
        a, b = gpu["step_losses"], cpu["step_losses"]
        worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))
        if worst > LOSS_TOLERANCE:
            raise RuntimeError(f"step losses differ by {worst:.2e} relative (tolerance {LOSS_TOLERANCE:g}): {a} vs {b}")
        return {"compared": f"{self.device} (resident, TF32 off) vs cpu (streamed)", "batch": batch, "steps": steps,
                "max_relative_difference": worst, "losses": {"device": a, "cpu": b}}

    def train_run(self, name, *sets, epochs=1):
        out = self.work / "runs"
        started = time.perf_counter()
        self.run([self.trainer, "train", *self.train_args("ce", *sets), "--out", out, "--run-id", name, "--epochs", epochs])
        wall = time.perf_counter() - started
        run = out / name
        records = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
        info = json.loads((run / "run.json").read_text())
        test = json.loads((run / "test_metrics.json").read_text())
        return {"records": records, "attempt": info["attempts"][-1], "wall_s": wall, "test": test}

    def bf16_epoch(self):
        if self.cpu:
            return {"skipped": "bf16 autocast runs on CUDA only"}
        fp32 = self.train_run("fp32", "data.resident=\"device\"")
        bf16 = self.train_run("bf16", "data.resident=\"device\"", "train.bf16=true")
        f1 = [r["records"][-1]["val"]["samples"]["f1"] for r in (fp32, bf16)]
        loss = bf16["records"][-1]["train_loss"]
        if not (loss == loss and abs(loss) != float("inf")):
            raise RuntimeError(f"bf16 training loss is {loss}")
        if abs(f1[0] - f1[1]) > BF16_F1_TOLERANCE:
            raise RuntimeError(f"validation F1 after one epoch: fp32 {f1[0]:.4f}, bf16 {f1[1]:.4f} (tolerance {BF16_F1_TOLERANCE})")
        return {"val_f1_samples": {"fp32": f1[0], "bf16": f1[1]}, "bf16_train_loss": loss}

    def speed(self):
        """Images/s of our training step and Python PyTorch's, same device, data and precision."""
        batch_file = self.work / "batch.safetensors"
        rows = []
        precisions = [("fp32", False)] + ([] if self.cpu else [("bf16", True)])
        threads = [] if not self.cpu else ["--threads", self.threads]
        for arch in ["kbranch"] + ([] if self.cpu else ["resnet50", "vgg16"]):
            batch = self.size["batch"] if arch == "kbranch" else min(self.size["batch"], 256)
            for name, bf16 in precisions:
                sets = [f"model.arch=\"{arch}\"", "data.resident=\"device\""] + (["train.bf16=true"] if bf16 else [])
                ours = self.bench(self.device, *sets, batch=batch, save_batch=batch_file)
                _, text = self.run([sys.executable, self.peer, "--arch", arch, "--batch-file", batch_file, "--device", self.device,
                                    "--steps", self.size["steps"], "--warmup", self.size["warmup"], *threads, *(["--bf16"] if bf16 else [])])
                peer = json.loads(text.strip().splitlines()[-1])
                rows.append({"arch": arch, "precision": name if bf16 or self.cpu else "fp32 (TF32 convs, as PyTorch's default)",
                             "batch": batch, "ours": ours["images_per_s"], "pytorch": peer["images_per_s"],
                             "ratio": ours["images_per_s"] / peer["images_per_s"], "pytorch_version": peer["torch"]})
        return {"rows": rows}

    def end_to_end(self):
        """The trainer with the data streamed (16 loader threads) and resident on the device."""
        out = {}
        for name, resident in [("streamed", "off"), ("resident", "device")]:
            r = self.train_run(name, f"data.resident=\"{resident}\"", epochs=2)
            last = r["records"][-1]
            train_s = last["time"]["compute_s"] + last["time"]["allreduce_s"] + last["time"]["data_wait_s"]
            val_s = max(last["wall_s"] - train_s, 1e-9)
            out[name] = {"images_per_s": last["images_per_s"], "data_wait_fraction": last["data_wait_fraction"],
                         "val_images_per_s": last["val"]["patches"] / val_s, "placement": r["attempt"]["data"],
                         "wall_s": r["wall_s"], "epoch_wall_s": [e["wall_s"] for e in r["records"]]}
        return out

    def prediction(self):
        e2e = self.result["steps"].get("end_to_end", {})
        if not e2e.get("ok"):
            raise RuntimeError("needs the end-to-end measurement")
        r = e2e["resident"]
        # Checkpoints, LRP snapshots off here, start-up and test: what a run spends beyond its epochs.
        overhead = max(r["wall_s"] - sum(r["epoch_wall_s"]), 0.0)
        epoch_s = STUDY["train"] / r["images_per_s"] + STUDY["validation"] / r["val_images_per_s"]
        run_s = STUDY["epochs"] * epoch_s + STUDY["test"] / r["val_images_per_s"] + overhead
        study_s = run_s * STUDY["losses"] * STUDY["seeds"]
        return {"epoch_s": epoch_s, "run_minutes": run_s / 60, "study_hours_one_gpu": study_s / 3600,
                "assumes": "resident data on the device, fp32, lrp.every = 0; measured rates of the end-to-end step"}

    def goals(self):
        s = self.result["steps"]
        rows = [r for r in s.get("speed", {}).get("rows", []) if r["arch"] == "kbranch"]
        out = {"ratio_at_least_1": all(r["ratio"] >= GOALS["ratio"] for r in rows) if rows else None,
               "data_wait_under_5_percent_resident": (s["end_to_end"]["resident"]["data_wait_fraction"] < GOALS["data_wait"]
                                                      if s.get("end_to_end", {}).get("ok") else None),
               "run_under_15_minutes": (s["prediction"]["run_minutes"] < GOALS["run_minutes"] if s.get("prediction", {}).get("ok") else None)}
        self.result["goals"] = out

    def report(self):
        self.result["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.result["ok"] = all(v["ok"] for v in self.result["steps"].values())
        (self.out / "gpu-check.json").write_text(json.dumps(self.result, indent=2))
        (self.out / "gpu-check.md").write_text(markdown(self.result))


def markdown(r):
    s = r["steps"]
    lines = [f"# lossbench GPU check ({r['mode']} mode)", "", f"{r['started']} to {r['ended']}; all steps ok: **{r['ok']}**", ""]
    env = s.get("environment", {})
    if env.get("ok"):
        t = env["trainer"]
        lines += [f"- GPU: {env.get('nvidia_smi') or env['python_torch'].get('gpu')}; Python torch {env['python_torch']['torch']} "
                  f"(CUDA {env['python_torch']['cuda']}); trainer binds PyTorch {t['tch_torch_version']}",
                  f"- libtorch_cuda loaded from: {t['libtorch_cuda']}; libtorch_cpu: {t['libtorch_cpu']}; CPU threads {env['cpu_threads']}", ""]
    for name, entry in s.items():
        if not entry["ok"]:
            lines.append(f"- **{name} FAILED**: {entry['error']}")
    c = s.get("correctness", {})
    if c.get("ok"):
        lines += ["", f"Correctness: {c['compared']}, {c['steps']} steps of batch {c['batch']}: largest relative loss difference "
                  f"{c['max_relative_difference']:.2e} (tolerance {LOSS_TOLERANCE:g})."]
    b = s.get("bf16", {})
    if b.get("ok"):
        lines.append(f"bf16: {b['skipped']}." if "skipped" in b else
                     f"bf16: one epoch, validation F1 (sample) fp32 {b['val_f1_samples']['fp32']:.4f} vs bf16 "
                     f"{b['val_f1_samples']['bf16']:.4f}; bf16 training loss {b['bf16_train_loss']:.4f}.")
    sp = s.get("speed", {})
    if sp.get("ok"):
        lines += ["", "| network | precision | batch | lossbench img/s | PyTorch img/s | ratio |", "|---|---|---|---|---|---|"]
        for row in sp["rows"]:
            lines.append(f"| {row['arch']} | {row['precision']} | {row['batch']} | {row['ours']:.0f} | {row['pytorch']:.0f} | {row['ratio']:.2f} |")
    e = s.get("end_to_end", {})
    if e.get("ok"):
        lines += ["", "| data | train img/s | data-wait share | validation img/s |", "|---|---|---|---|"]
        for name in ["streamed", "resident"]:
            x = e[name]
            lines.append(f"| {name} | {x['images_per_s']:.0f} | {100 * x['data_wait_fraction']:.1f}% | {x['val_images_per_s']:.0f} |")
    p = s.get("prediction", {})
    if p.get("ok"):
        lines += ["", f"Predicted: one 80-epoch BigEarthNet-19 run {p['run_minutes']:.1f} min; the study (7 losses x 3 seeds) "
                  f"{p['study_hours_one_gpu']:.1f} h on one such GPU ({p['assumes']})."]
    if "goals" in r:
        lines += ["", f"Goals: {json.dumps(r['goals'])}"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cpu", action="store_true", help="every step on the CPU, small (the CI test)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    c = Check(a.bundle.resolve(), a.out.resolve(), a.cpu)
    c.step("environment", c.environment)
    if c.step("store", c.store)["ok"]:
        c.step("correctness", c.correctness_steps)
        c.step("bf16", c.bf16_epoch)
        c.step("speed", c.speed)
        c.step("end_to_end", c.end_to_end)
        c.step("prediction", c.prediction)
    c.goals()
    c.report()
    shutil.rmtree(c.work, ignore_errors=True)
    print((a.out / "gpu-check.md").read_text())
    sys.exit(0 if c.result["ok"] else 1)


if __name__ == "__main__":
    main()
