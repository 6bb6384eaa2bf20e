"""`data-prep convert` against the archive's size (docs/benchmarks.md, "data-prep at scale"):
synthetic v1.0 archives of 3,000 to 100,000 patches packed as the download comes (.tar.zst with
its lists), converted with the default options; patches per second and peak memory should stay
flat as the archive grows (the conversion streams: docs/data-prep.md, "Memory"). Each archive
and store is removed after its row (100,000 patches take about 11 GB packed, 7 GB as a store).

    .cache/venv/bin/python scripts/bench/bench_convert_scale.py [SIZE ...]"""
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_setting import DATA_PREP, WORK, Report, measure, run  # noqa: E402

SIZES = [3_000, 10_000, 30_000, 100_000]


def main():
    sizes = [int(a) for a in sys.argv[1:]] or SIZES
    report = Report("convert-scale.md")
    report("### data-prep convert against the archive's size (.tar.zst, default options, all cores)")
    report()
    report("| patches | archive, GB | convert, s | patches/s | peak RSS, MiB |")
    report("|---|---|---|---|---|")
    for n in sizes:
        folder = WORK / f"scale-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        run([DATA_PREP, "synth", "--patches", n, "--seed", 7, "--format", "v1", "--pack", "tar.zst", "--out",
             folder / "archive"])
        archive = folder / "archive" / "BigEarthNet-S2-v1.0.tar.zst"
        seconds, peak = measure([DATA_PREP, "convert", "--archive", archive, "--out", folder / "store.zarr"])
        report(f"| {n:,} | {archive.stat().st_size / 1e9:.2f} | {seconds:.1f} | {n / seconds:,.0f} | {peak:.0f} |")
        shutil.rmtree(folder)
    report.save()


if __name__ == "__main__":
    main()
