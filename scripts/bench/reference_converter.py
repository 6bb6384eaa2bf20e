"""Reference converter for the benchmark: BigEarthNet v1 archive -> the same Zarr v3 layout as
data-prep (per-split groups, sharded uint16 band arrays with one patch per inner chunk, blosc
zstd + byte shuffle, labels, names), written with tifffile + zarr-python in one process.

It reads the official split lists and writes whole shards at a time, as data-prep does; it does
no validation and no statistics beyond what the layout needs, so it is a lower bound on the
work a Python tool would do.

    python reference_converter.py ARCHIVE OUT [--level 1]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
import zarr
from zarr.codecs import BloscCodec

GROUPS = {"b10m": (["B04", "B03", "B02", "B08"], 120), "b20m": (["B05", "B06", "B07", "B8A", "B11", "B12"], 60),
          "b60m": (["B01", "B09"], 20)}
CORINE_TO_19 = {
    "Continuous urban fabric": 0, "Discontinuous urban fabric": 0, "Industrial or commercial units": 1,
    "Non-irrigated arable land": 2, "Permanently irrigated land": 2, "Rice fields": 2, "Vineyards": 3,
    "Fruit trees and berry plantations": 3, "Olive groves": 3, "Annual crops associated with permanent crops": 3,
    "Pastures": 4, "Complex cultivation patterns": 5,
    "Land principally occupied by agriculture, with significant areas of natural vegetation": 6,
    "Agro-forestry areas": 7, "Broad-leaved forest": 8, "Coniferous forest": 9, "Mixed forest": 10,
    "Natural grassland": 11, "Sparsely vegetated areas": 11, "Moors and heathland": 12,
    "Sclerophyllous vegetation": 12, "Transitional woodland/shrub": 13, "Beaches, dunes, sands": 14,
    "Inland marshes": 15, "Peatbogs": 15, "Salt marshes": 16, "Salines": 16, "Water courses": 17,
    "Water bodies": 17, "Coastal lagoons": 18, "Estuaries": 18, "Sea and ocean": 18,
}
SHARD = 256


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("archive", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--level", type=int, default=1)
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
                compressors=[BloscCodec(cname="zstd", clevel=args.level, shuffle="shuffle", typesize=2)])
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
        g.create_array("names", data=np.array(names, dtype=str), chunks=(16384,))
        written += n
    print(json.dumps({"written": written}))


if __name__ == "__main__":
    main()
