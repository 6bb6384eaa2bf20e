"""`make bench` for the Hessian's spectrum (docs/benchmarks.md, "Hessian spectrum"): the time of a
Hessian-vector product against a forward pass over the same subset, memory over 100 of them,
and the spectra of two losses on the demo's data. Prints Markdown, saved to
work/bench/spectrum.md.

Two runs of the demo's setting (its store, 3 epochs, its flags), CE and sparsemax; at the last
epoch of each, `trainer landscape --kind spectrum` on 32 training patches (one batch): the top 5
eigenvalues (40 Lanczos steps), the trace over 100 Hutchinson probes (a tolerance no estimate
meets, so that all 100 run), the density from 2 quadrature probes, and per layer (10 Lanczos
steps each). The trainer logs the seconds of its Hessian-vector products and of a forward pass;
the resident set size (VmRSS) of the process is read after every written item and every 0.2 s.
"""
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from demo_setting import DEMO_EPOCHS, DEMO_FLAGS, DEMO_PATCHES, ROOT, TRAINER, WORK, Report, demo_store, run

LOSSES = ["ce", "sparsemax"]
PROBES = 100
SPECTRUM = ["--train-patches", "32", "--val-patches", "32", "--batch", "32", "--device", "cpu", "--top-k", "5",
            "--lanczos-steps", "40", "--layer-steps", "10", "--trace-probes", str(PROBES), "--trace-tolerance", "1e-9", "--density-probes", "2"]


def rss_mib(pid) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def spectrum(run_dir: Path):
    """Runs the spectrum; returns its log fields by message, the RSS after each trace probe, the
    peak RSS and the wall time."""
    started = time.perf_counter()
    p = subprocess.Popen([TRAINER, "--log-format", "json", "landscape", "--run", str(run_dir), "--kind", "spectrum",
                          "--name", "bench", "--epoch", str(DEMO_EPOCHS), *SPECTRUM], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
        while p.poll() is None:
            try:
                peak[0] = max(peak[0], rss_mib(p.pid))
            except (OSError, RuntimeError):
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    logs, after_probe, tail = {}, [], []
    for line in p.stderr:
        tail = (tail + [line])[-20:]
        try:
            fields = json.loads(line)["fields"]
        except (ValueError, KeyError):
            continue
        logs.setdefault(fields.get("message"), []).append(fields)
        if fields.get("message") == "spectrum item written" and "-trace-" in fields.get("item", ""):
            after_probe.append(rss_mib(p.pid))
    p.wait()
    sampler.join()
    if p.returncode != 0:
        raise SystemExit(f"spectrum failed ({p.returncode}):\n{''.join(tail)}")
    return logs, after_probe, peak[0], time.perf_counter() - started


def summary(folder: Path, epoch: int) -> dict:
    rows = pq.read_table(folder / "blocks" / f"e{epoch:04d}-summary.parquet").to_pylist()
    top = pq.read_table(folder / "blocks" / f"e{epoch:04d}-top.parquet").to_pylist()
    values = {r["quantity"]: r["value"] for r in rows if r["unit"] is None and r["point"] == 0}
    values["eigenvalues"] = [r["value"] for r in top if r["quantity"] == "eigenvalue"]
    layers = {r["unit"]: r["value"] for r in rows if r["quantity"] == "layer_trace"}
    values["largest_layer"] = max(layers, key=layers.get)
    return values


def main():
    say = Report("spectrum.md")

    store = demo_store()
    say("## Hessian spectrum\n")
    say(f"`trainer landscape --kind spectrum --epoch {DEMO_EPOCHS} {' '.join(SPECTRUM)}` on the demo's runs "
        f"({DEMO_PATCHES} synthetic patches, {DEMO_EPOCHS} epochs, {' '.join(DEMO_FLAGS)}).\n")
    say("| loss | wall (s) | HVPs | s per HVP | forward (s) | HVP / forward | RSS, probes 11-20 (MiB, median) | RSS, probes 91-100 | growth | highest sample, probes 11-100 | peak RSS (MiB) |")
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    spectra = {}
    for loss in LOSSES:
        out = WORK / "spectrum-runs"
        run_id = f"bench-{loss}-{time.time_ns()}"
        run([TRAINER, "train", "--config", ROOT / "jobs" / f"{loss}.toml", "--data", store, "--out", out,
             "--epochs", DEMO_EPOCHS, "--run-id", run_id, "--device", "cpu", "--set", "lrp.every=0", *DEMO_FLAGS])
        logs, after_probe, peak, wall = spectrum(out / run_id)
        cost = logs["Hessian-vector products against a forward pass over the subset"][0]
        assert len(after_probe) == PROBES, len(after_probe)
        # The level RSS settles at between products (median of 10 probes: a sample can catch one
        # product's temporaries still live), early and late, and the highest sample.
        base, later = statistics.median(after_probe[10:20]), statistics.median(after_probe[-10:])
        say(f"| {loss} | {wall:.0f} | {cost['hvps']} | {cost['hvp_seconds']:.3f} | {cost['forward_seconds']:.3f} | "
            f"{cost['ratio']:.1f}x | {base:.0f} | {later:.0f} | {100 * (later - base) / base:+.2f}% | "
            f"{max(after_probe[10:]):.0f} | {peak:.0f} |")
        spectra[loss] = summary(out / run_id / "landscape" / "bench", DEMO_EPOCHS)
    say("\n| loss | top 5 eigenvalues | trace ± SE | negative mass | layer with the largest trace |")
    say("|---|---|---|---|---|")
    for loss, s in spectra.items():
        say(f"| {loss} | {', '.join(f'{v:.3g}' for v in s['eigenvalues'])} | {s['trace']:.4g} ± {s['trace_se']:.2g} | "
            f"{s['negative_mass']:.3f} | {s['largest_layer']} |")
    say.save()


if __name__ == "__main__":
    main()
