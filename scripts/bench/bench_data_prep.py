"""`make bench` for data-prep: the four ways to convert the downloaded archive (the unpacked
folder; `tar -xzf` then the folder; the .tar.gz and the .tar.zst read directly) at 1 and 2
threads, the folder route beside the Python reference converter, the predicted time for the
full archive on a 16-core node, peak memory at two archive sizes, the codec comparison and
random-read speed beside raw decode speed. Prints a Markdown report (also saved to
work/bench/data-prep.md) for docs/benchmarks.md.
"""
import datetime
import functools
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
STREAM_BENCH = str(ROOT / "target" / "release" / "examples" / "stream_bench")
# The real downloads: BigEarthNet-S2 v1.0 (.tar.gz) and v2.0 (.tar.zst), patches and bytes.
FULL = {"v1.0 .tar.gz": (590_326, 66e9), "v2.0 .tar.zst": (549_488, 63e9)}
PY = sys.executable
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "5000 20000").split()]


def measure(cmd, **kw):
    """Runs cmd; returns (seconds, peak RSS in MiB of that process, stdout, CPU seconds)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    secs = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed with {p.returncode}")
    return secs, usage.ru_maxrss / 1024, out, usage.ru_utime + usage.ru_stime


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


def packed(n, kind):
    """The archive packed by the system tar in name order (gzip or zstd), lists beside it."""
    folder = archive(n)
    dest = WORK / f"packed-{n}"
    target = dest / f"BigEarthNet-S2-v1.0.tar.{kind}"
    if not target.exists():
        dest.mkdir(parents=True, exist_ok=True)
        flag = "--gzip" if kind == "gz" else "--zstd"
        subprocess.run(["tar", "--sort=name", flag, "-cf", str(target) + ".tmp", "-C", str(folder), "BigEarthNet-v1.0"], check=True)
        os.rename(str(target) + ".tmp", target)
        for f in folder.glob("*.csv"):
            shutil.copy(f, dest / f.name)
    subprocess.run(["cat", str(target)], stdout=subprocess.DEVNULL, check=True)  # warm page cache
    return target


def files_under(path):
    return sum(1 for f in Path(path).rglob("*") if f.is_file())


def written(store):
    info = subprocess.run([DATA_PREP, "info", str(store)], capture_output=True, text=True, check=True).stdout
    return sum(int(l.split()[-1]) for l in info.splitlines() if l.strip().startswith("written,"))


def du(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def convert(arch, out, threads, *extra):
    shutil.rmtree(out, ignore_errors=True)
    return measure([DATA_PREP, "--threads", str(threads), "convert", "--archive", str(arch), "--out", str(out), *extra])


@functools.cache
def default_codec_config():
    """The compression data-prep applies by default, read back from a small store it converts."""
    probe = WORK / "codec-probe"
    shutil.rmtree(probe, ignore_errors=True)
    subprocess.run([DATA_PREP, "synth", "--patches", "20", "--seed", "1", "--format", "v1", "--out", str(probe / "archive")],
                   capture_output=True, check=True)
    subprocess.run([DATA_PREP, "convert", "--archive", str(probe / "archive"), "--out", str(probe / "store.zarr")],
                   capture_output=True, check=True)
    codecs = json.loads((probe / "store.zarr" / "train" / "b10m" / "zarr.json").read_text())["codecs"]
    inner = codecs[0]["configuration"]["codecs"]
    config = next(c for c in inner if c["name"] == "blosc")["configuration"]
    shutil.rmtree(probe)
    return config


def default_codec():
    c = default_codec_config()
    return f"blosc-{c['cname']} level {c['clevel']}, one block of {c['blocksize']:,} bytes per 10 m inner chunk"


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
    gz, zst = packed(SIZES[-1], "gz"), packed(SIZES[-1], "zst")

    say(f"### The downloaded archive to a store: {SIZES[-1]:,}-patch synthetic v1 archive, four routes "
        f"(warm page cache, default codec: {default_codec()})")
    say()
    say(f"Archive: {du(big / 'BigEarthNet-v1.0') / 2**20:.0f} MiB unpacked in {files_under(big / 'BigEarthNet-v1.0'):,} files; "
        f".tar.gz {gz.stat().st_size / 2**20:.0f} MiB, .tar.zst {zst.stat().st_size / 2**20:.0f} MiB (system `tar --sort=name`).")
    say()
    say("| route | threads | seconds | patches written | patches/s | per thread | per CPU-second | peak RSS MiB | files created |")
    say("|---|---|---|---|---|---|---|---|---|")
    results = {}
    for threads in (1, 2):
        for route in ("folder", "tar -xzf + folder", ".tar.gz direct", ".tar.zst direct"):
            extract_s, extract_cpu, extract_rss, extracted = 0.0, 0.0, 0.0, 0
            if route == "folder":
                source = big
            elif route == "tar -xzf + folder":
                unpacked = WORK / "unpacked"
                shutil.rmtree(unpacked, ignore_errors=True)
                unpacked.mkdir()
                extract_s, extract_rss, _, extract_cpu = measure(["tar", "-xzf", str(gz), "-C", str(unpacked)])
                for f in gz.parent.glob("*.csv"):
                    shutil.copy(f, unpacked / f.name)
                extracted = files_under(unpacked)
                source = unpacked
            else:
                source = gz if "gz" in route else zst
            secs, rss, _, cpu = convert(source, store, threads)
            n = written(store)
            secs, cpu, rss = secs + extract_s, cpu + extract_cpu, max(rss, extract_rss)
            results[(route, threads)] = (secs, n, cpu)
            say(f"| {route} | {threads} | {secs:.1f} | {n} | {n / secs:.0f} | {n / secs / threads:.0f} | {n / cpu:.0f} | {rss:.0f} | "
                f"{extracted + files_under(store):,} |")
    shutil.rmtree(WORK / "unpacked", ignore_errors=True)
    ref_secs, rss, out, _ = measure([PY, str(ROOT / "scripts" / "bench" / "reference_converter.py"), str(big), str(ref_store),
                                     "--level", str(default_codec_config()["clevel"])])
    n = json.loads(out)["written"]
    ref = n / ref_secs
    say(f"| Python reference (tifffile + zarr-python), folder | 1 | {ref_secs:.1f} | {n} | {ref:.0f} | {ref:.0f} | | {rss:.0f} | |")
    say()
    rate = lambda route, t: results[(route, t)][1] / results[(route, t)][0]
    say(f"- Folder route per core / reference per core (1 thread each): **{rate('folder', 1) / ref:.1f}x** (goal 5x).")
    for t in (1, 2):
        say(f"- {t} thread(s): .tar.gz direct is **{rate('.tar.gz direct', t) / rate('tar -xzf + folder', t):.1f}x** as fast as "
            f"`tar -xzf` then the folder route (goal 2x); .tar.zst direct converts **{rate('.tar.zst direct', t):.0f}** patches/s "
            f"(goal 2,000 with 2 threads).")
    say()
    streams = {k: json.loads(subprocess.run([STREAM_BENCH, str(p)], capture_output=True, text=True, check=True).stdout)
               for k, p in (("gz", gz), ("zst", zst))}
    say("Predicted time for the full download on a 16-core node, from these per-core figures: the stream is read by one "
        "thread (measured alone: "
        f"{streams['gz']['patches_per_s']} patches/s, {streams['gz']['compressed_mb_per_s']} MB/s from .tar.gz; "
        f"{streams['zst']['patches_per_s']} patches/s, {streams['zst']['compressed_mb_per_s']} MB/s from .tar.zst), "
        "the rest (decoding, compressing, writing) spreads over the cores at the measured CPU cost per patch:")
    say()
    say("| download | patches | reading the stream, one thread | the rest on 16 cores | predicted |")
    say("|---|---|---|---|---|")
    for (name, (patches, _)), (kind, route) in zip(FULL.items(), (("gz", ".tar.gz direct"), ("zst", ".tar.zst direct"))):
        secs, n, cpu = results[(route, 2)]
        reader = patches / streams[kind]["patches_per_s"]
        # CPU per written patch beyond the reader's own share.
        rest = max(cpu / n - 1 / streams[kind]["patches_per_s"], 0) * patches / 16
        say(f"| {name} | {patches:,} | {reader / 60:.1f} min | {rest / 60:.1f} min | **{max(reader, rest) / 60:.1f} min** |")
    say()
    shutil.rmtree(store, ignore_errors=True)

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
            secs, _, _, _ = convert(small, out, 1, "--codec", codec, "--level", str(level))
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
