"""Reference converter for the benchmark: BigEarthNet v1 archive -> the same Zarr v3 layout as
data-prep (per-split groups, sharded uint16 band arrays with one patch per inner chunk, blosc
zstd + byte shuffle with one blosc block per inner chunk, labels, names), written with tifffile + zarr-python in one process.

It reads the official split lists and writes whole shards at a time, as data-prep does; it does
no validation and no statistics beyond what the layout needs, so it is a lower bound on the
work a Python tool would do.

    python reference_converter.py ARCHIVE OUT --level L   (the level of the store it is compared with)
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr
from zarr.codecs import BloscCodec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "python"))
from ben19 import CORINE_TO_19  # noqa: E402

GROUPS = {"b10m": (["B04", "B03", "B02", "B08"], 120), "b20m": (["B05", "B06", "B07", "B8A", "B11", "B12"], 60),
          "b60m": (["B01", "B09"], 20)}
SHARD = 256


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("archive", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--level", type=int, required=True)
    args = ap.parse_args()
    patches = args.archive / "BigEarthNet-v1.0"
    root = zarr.open_group(args.out, mode="w")
    written = 0
    for split, listfile in [("train", "train.csv"), ("validation", "val.csv"), ("test", "test.csv")]:
        names = sorted(line.split(",")[0].strip() for line in (args.archive / listfile).read_text().splitlines() if line.strip())
        n = len(names)
        g = root.create_group(split)
        arrays = {}
        for name, (bands, side) in GROUPS.items():
            arrays[name] = g.create_array(
                name, shape=(n, len(bands), side, side), dtype="uint16", shards=(SHARD, len(bands), side, side),
                chunks=(1, len(bands), side, side),
                compressors=[BloscCodec(cname="zstd", clevel=args.level, shuffle="shuffle", typesize=2,
                                         blocksize=len(bands) * side * side * 2)])
        labels = np.zeros((n, 19), dtype=np.uint8)
        for start in range(0, n, SHARD):
            stop = min(start + SHARD, n)
            for name, (bands, side) in GROUPS.items():
                buf = np.empty((stop - start, len(bands), side, side), dtype=np.uint16)
                for k, patch in enumerate(names[start:stop]):
                    for b, band in enumerate(bands):
                        buf[k, b] = tifffile.imread(patches / patch / f"{patch}_{band}.tif")
                arrays[name][start:stop] = buf
            for k, patch in enumerate(names[start:stop]):
                meta = json.loads((patches / patch / f"{patch}_labels_metadata.json").read_text())
                for label in meta["labels"]:
                    if label in CORINE_TO_19:
                        labels[start + k, CORINE_TO_19[label]] = 1
        g.create_array("labels", data=labels, chunks=(16384, 19))
        g.create_array("names", data=np.array(names, dtype=np.dtypes.StringDType()), chunks=(16384,))
        written += n
    print(json.dumps({"written": written}))


if __name__ == "__main__":
    main()
