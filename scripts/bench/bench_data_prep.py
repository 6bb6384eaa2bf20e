"""`make bench` for data-prep: conversion speed beside the Python reference converter, peak
memory at two archive sizes, codec comparison, random-read speed beside raw decode speed.
Prints a Markdown report (also saved to work/bench/data-prep.md) for docs/benchmarks.md.
"""
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "work" / "bench"
DATA_PREP = str(ROOT / "target" / "release" / "data-prep")
READ_BENCH = str(ROOT / "target" / "release" / "examples" / "read_bench")
PY = sys.executable
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "5000 20000").split()]


def measure(cmd, **kw):
    """Runs cmd; returns (seconds, peak RSS in MiB of that process, stdout)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    secs = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed with {p.returncode}")
    return secs, usage.ru_maxrss / 1024, out


def archive(n):
    path = WORK / f"archive-{n}"
    if not (path / ".complete").exists():
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([DATA_PREP, "synth", "--patches", str(n), "--seed", "7", "--out", str(path)], check=True,
                       stdout=subprocess.DEVNULL)
        (path / ".complete").touch()
    # Warm page cache: read every file once.
    subprocess.run(f"find {path} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)
    return path


def written(store):
    info = subprocess.run([DATA_PREP, "info", str(store)], capture_output=True, text=True, check=True).stdout
    return sum(int(l.split()[-1]) for l in info.splitlines() if l.strip().startswith("written,"))


def du(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def convert(arch, out, threads, *extra):
    shutil.rmtree(out, ignore_errors=True)
    return measure([DATA_PREP, "--threads", str(threads), "convert", "--archive", str(arch), "--out", str(out), *extra])


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    lines = []
    say = lambda s="": (print(s, flush=True), lines.append(s))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    say(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"command `make bench`.")
    say()
    big = archive(SIZES[-1])
    store = WORK / "store.zarr"
    ref_store = WORK / "reference.zarr"

    say(f"### Conversion of a {SIZES[-1]:,}-patch synthetic v1 archive (warm page cache, default codec: blosc-zstd level 3)")
    say()
    say("| converter | threads | seconds | patches written | patches/s | patches/s per core | peak RSS MiB |")
    say("|---|---|---|---|---|---|---|")
    results = {}
    for threads in (1, 2):
        secs, rss, _ = convert(big, store, threads)
        n = written(store)
        results[threads] = n / secs
        say(f"| data-prep | {threads} | {secs:.1f} | {n} | {n / secs:.0f} | {n / secs / threads:.0f} | {rss:.0f} |")
    shutil.rmtree(ref_store, ignore_errors=True)
    secs, rss, out = measure([PY, str(ROOT / "scripts" / "bench" / "reference_converter.py"), str(big), str(ref_store)])
    n = json.loads(out)["written"]
    ref = n / secs
    say(f"| Python reference (tifffile + zarr-python) | 1 | {secs:.1f} | {n} | {ref:.0f} | {ref:.0f} | {rss:.0f} |")
    say()
    say(f"data-prep per core / reference per core: **{results[1] / ref:.1f}x** (1 thread each); "
        f"2-thread speed-up of data-prep: {results[2] / results[1]:.2f}x.")
    say()

    say("### Memory against archive size (data-prep, 2 threads, 3 runs each)")
    say()
    say("| patches in archive | RSS after planning (index) MiB | peak RSS MiB, min-max of 3 runs |")
    say("|---|---|---|")
    for n in SIZES:
        arch, out, peaks, index = archive(n), WORK / f"mem-{n}.zarr", [], None
        for _ in range(3):
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            p = subprocess.Popen([DATA_PREP, "--threads", "2", "--log-format", "json", "convert", "--archive", str(arch),
                                  "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for line in p.stderr:
                event = json.loads(line)
                if event["fields"].get("message") == "planned every patch":
                    index = event["fields"]["rss_mib"]
            _, status, usage = os.wait4(p.pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            peaks.append(usage.ru_maxrss / 1024)
        shutil.rmtree(out)
        say(f"| {n:,} | {index} | {min(peaks):.0f}-{max(peaks):.0f} |")
    say()

    small = archive(SIZES[0])
    raw = du(small / "BigEarthNet-v1.0")
    say(f"### Codecs on the {SIZES[0]:,}-patch archive (1 thread)")
    say()
    say("| codec | level | convert patches/s | store MiB | raw pixels / stored bytes | random reads/s, 1 thread | 2 threads | raw decode reads/s | read / raw decode | compressed-bytes fetch only reads/s |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for codec in ("blosc", "zstd"):
        for level in (1, 3):
            out = WORK / f"codec-{codec}-{level}.zarr"
            secs, _, _ = convert(small, out, 1, "--codec", codec, "--level", str(level))
            n = written(out)
            pixel_bytes = n * (4 * 120 * 120 + 6 * 60 * 60 + 2 * 20 * 20) * 2
            rb = json.loads(subprocess.run([READ_BENCH, str(out)], capture_output=True, text=True, check=True).stdout)
            say(f"| {codec} | {level} | {n / secs:.0f} | {du(out) / 2**20:.0f} | {pixel_bytes / du(out):.2f} | "
                f"{rb['samples_per_s_1_thread']} | {rb['samples_per_s_all_threads']} | {rb['raw_decode_samples_per_s_1_thread']} | "
                f"{rb['ratio_to_raw_decode']:.2f} | {rb['fetch_only_samples_per_s_1_thread']} |")
            shutil.rmtree(out)
    say()
    say(f"Source archive: {raw / 2**20:.0f} MiB of GeoTIFF files for {SIZES[0]:,} patches.")
    (WORK / "data-prep.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
