"""zarr-python 3 reads the store written by data-prep, and it agrees with the source band files
read by tifffile (an independent TIFF reader) and the labels mapped independently here."""
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr

from ben19 import BEN19, CORINE_TO_19
from conftest import run

BAND_GROUPS = {
    "b10m": ["B04", "B03", "B02", "B08"],
    "b20m": ["B05", "B06", "B07", "B8A", "B11", "B12"],
    "b60m": ["B01", "B09"],
}
SPLITS = ["train", "validation", "test"]

def v1_labels(patch_dir: Path, name: str) -> np.ndarray:
    meta = json.loads((patch_dir / f"{name}_labels_metadata.json").read_text())
    v = np.zeros(19, dtype=np.uint8)
    for label in meta["labels"]:
        if label in CORINE_TO_19:
            v[CORINE_TO_19[label]] = 1
    return v


def assert_store_matches(store: Path, patch_dir_of, labels_of) -> int:
    root = zarr.open_group(store, mode="r")
    checked = 0
    for split in SPLITS:
        g = root[split]
        names = list(g["names"][:])
        labels = g["labels"][:]
        assert labels.dtype == np.uint8 and labels.shape == (len(names), 19)
        for group, bands in BAND_GROUPS.items():
            arr = g[group]
            assert arr.dtype == np.uint16
            assert arr.shape[:2] == (len(names), len(bands))
            data = arr[:]
            for i, name in enumerate(names):
                d = patch_dir_of(name)
                expected = np.stack([tifffile.imread(d / f"{name}_{b}.tif") for b in bands])
                np.testing.assert_array_equal(data[i], expected, err_msg=f"{split} {name} {group}")
        for i, name in enumerate(names):
            np.testing.assert_array_equal(labels[i], labels_of(name), err_msg=f"{split} {name} labels")
        checked += len(names)
    return checked


def test_zarr_python_reads_v1_store_equal_to_tifffile(v1_archive, tmp_path):
    store = tmp_path / "v1.zarr"
    run("convert", "--archive", str(v1_archive), "--out", str(store), "--shard-patches", "16")
    patches = v1_archive / "BigEarthNet-v1.0"
    checked = assert_store_matches(store, lambda n: patches / n, lambda n: v1_labels(patches / n, n))
    attrs = zarr.open_group(store, mode="r").attrs["lossbench"]
    assert checked == sum(attrs["accounting"]["written"].values()) > 40
    assert attrs["classes"] == BEN19
    assert attrs["band_groups"] == BAND_GROUPS
    # Training-split statistics, recomputed with numpy in float64.
    train = zarr.open_group(store, mode="r")["train"]
    for group, bands in BAND_GROUPS.items():
        data = train[group][:].astype(np.float64)
        for b, band in enumerate(bands):
            assert attrs["band_stats"][band]["mean"] == pytest.approx(data[:, b].mean(), rel=1e-12)
            assert attrs["band_stats"][band]["std"] == pytest.approx(data[:, b].std(), rel=1e-9)


def test_zarr_python_reads_the_store_converted_from_the_packed_archive(v1_archive, tmp_path):
    """The archive as downloaded (one .tar.zst written by `synth --pack`, lists beside it),
    converted without unpacking: zarr-python reads every patch equal to the unpacked files."""
    run("synth", "--patches", "80", "--seed", "42", "--format", "v1", "--out", str(tmp_path / "packed"), "--pack", "tar.zst")
    packed = tmp_path / "packed" / "BigEarthNet-S2-v1.0.tar.zst"
    assert packed.is_file() and not (tmp_path / "packed" / "BigEarthNet-v1.0").exists()
    store = tmp_path / "packed.zarr"
    run("convert", "--archive", str(packed), "--out", str(store), "--shard-patches", "16")
    patches = v1_archive / "BigEarthNet-v1.0"  # the same seed unpacked (conftest)
    checked = assert_store_matches(store, lambda n: patches / n, lambda n: v1_labels(patches / n, n))
    attrs = zarr.open_group(store, mode="r").attrs["lossbench"]
    assert checked == sum(attrs["accounting"]["written"].values()) > 40
    assert attrs["source"]["path"] == str(packed)


def test_zarr_python_reads_v2_store_equal_to_tifffile_and_parquet(v2_archive, tmp_path):
    store = tmp_path / "v2.zarr"
    run("convert", "--archive", str(v2_archive), "--out", str(store))
    meta = pq.read_table(v2_archive / "metadata.parquet").to_pylist()
    by_id = {row["patch_id"]: row for row in meta}

    def labels_of(name):
        v = np.zeros(19, dtype=np.uint8)
        for label in by_id[name]["labels"]:
            v[BEN19.index(label)] = 1
        return v

    def dir_of(name):
        tile = name.rsplit("_", 2)[0]
        return v2_archive / "BigEarthNet-S2" / tile / name

    assert assert_store_matches(store, dir_of, labels_of) > 20
    root = zarr.open_group(store, mode="r")
    for split in SPLITS:
        for name in root[split]["names"][:]:
            assert by_id[name]["split"] == split
            assert not by_id[name]["contains_seasonal_snow"]
            assert not by_id[name]["contains_cloud_or_shadow"]


@pytest.mark.parametrize(
    "variant",
    [
        dict(compression="lzw"),
        dict(compression="deflate"),
        dict(compression="deflate", predictor=2),
        dict(compression="lzw", predictor=2),
        dict(tile=(16, 16)),
        dict(tile=(32, 32), compression="deflate", predictor=2),
        dict(rowsperstrip=7, compression="lzw"),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]}" for k in v),
)
def test_compressed_and_tiled_geotiffs_are_read_losslessly(v1_archive, tmp_path, variant):
    """Band files rewritten by tifffile in other layouts give the same store contents."""
    archive = tmp_path / "archive"
    shutil.copytree(v1_archive, archive)
    patches = archive / "BigEarthNet-v1.0"
    tile = variant.get("tile")
    for d in sorted(patches.iterdir())[:25]:
        for f in d.glob("*.tif"):
            data = tifffile.imread(f)
            if tile and data.shape[0] < tile[0]:
                continue  # tiles larger than a 20x20 band are legal but pointless here
            tifffile.imwrite(f, data, **variant)
    rewritten = next(iter(sorted(patches.iterdir()))) / (sorted(patches.iterdir())[0].name + "_B04.tif")
    with tifffile.TiffFile(rewritten) as t:
        page = t.pages[0]
        assert page.is_tiled == bool(tile)
        if "compression" in variant:
            assert page.compression.name.lower() in (variant["compression"], "adobe_deflate")
    store = tmp_path / "s.zarr"
    run("convert", "--archive", str(archive), "--out", str(store))
    original = tmp_path / "o.zarr"
    run("convert", "--archive", str(v1_archive), "--out", str(original))
    a, b = zarr.open_group(store, mode="r"), zarr.open_group(original, mode="r")
    for split in SPLITS:
        for group in BAND_GROUPS:
            np.testing.assert_array_equal(a[split][group][:], b[split][group][:])


def test_synthetic_v1_files_match_the_real_byte_layout(v1_archive):
    patch = sorted((v1_archive / "BigEarthNet-v1.0").iterdir())[0]
    sizes = {f.name.rsplit("_", 1)[1]: f.stat().st_size for f in patch.glob("*.tif")}
    assert sizes["B02.tif"] == 29192 and sizes["B05.tif"] == 7560 and sizes["B01.tif"] == 1160
    with tifffile.TiffFile(patch / f"{patch.name}_B02.tif") as t:
        p = t.pages[0]
        assert t.byteorder == "<" and p.dtype == np.uint16 and p.rowsperstrip == 34
        assert len(p.dataoffsets) == 4 and p.compression == 1
        geo = t.geotiff_metadata
        assert geo["ProjectedCSTypeGeoKey"] in (32600 + z for z in range(1, 61))
        assert geo["ModelPixelScale"][:2] == [10.0, 10.0]
    text = (patch / f"{patch.name}_labels_metadata.json").read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta), "one line, Python json.dumps layout"
    assert list(meta) == ["labels", "coordinates", "projection", "tile_source", "acquisition_date"]
    assert meta["coordinates"]["lrx"] - meta["coordinates"]["ulx"] == 1200


def test_the_documented_python_snippet_runs(v1_archive, tmp_path):
    """docs/store.md's snippet, pointed at a fresh store, runs as written."""
    store = tmp_path / "doc.zarr"
    run("convert", "--archive", str(v1_archive), "--out", str(store))
    doc = (Path(__file__).resolve().parents[2] / "docs" / "store.md").read_text()
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert "work/demo/store.zarr" in snippet
    exec(compile(snippet.replace("work/demo/store.zarr", str(store)), "docs/store.md", "exec"), {})
