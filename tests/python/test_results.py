"""The collector's Parquet tables read by DuckDB, pyarrow and polars (row counts and values
equal to the run folders), incremental and torn-record behaviour, the docs' example query, and
the HTML report rendered in headless Chromium."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ROOT, run, tool

BIN = ROOT / "target" / "release"
TABLES = ["runs", "epochs", "class_metrics", "test_metrics", "predictions", "lrp", "landscape"]
RUNS = [("ce", 1), ("ce", 2), ("sparsemax", 1), ("sparsemax", 2)]
# Small landscapes of the seed-1 runs (docs/landscape.md): every kind, a few points each.
LANDSCAPES = [("1d", ["--points", "5"]), ("2d", ["--points", "4"]), ("interp", ["--points", "5", "--epoch", "1", "--to-epoch", "2"]),
              ("sharpness", ["--iterations", "5"])]
LANDSCAPE_ARGS = ["--train-patches", "24", "--val-patches", "16", "--batch", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results")
    run("synth", "--patches", "70", "--seed", "9", "--format", "v1", "--out", str(folder / "archive"))
    run("convert", "--archive", str(folder / "archive"), "--out", str(folder / "store.zarr"))
    for loss, seed in RUNS:
        tool(BIN / "trainer", "train", "--config", ROOT / "jobs" / f"{loss}.toml", "--data", folder / "store.zarr",
             "--out", folder / "runs", "--seed", seed, "--epochs", "2", "--device", "cpu", "--set", "train.batch_size=16",
             "--set", "train.lr=1e-3", "--set", "lrp.probes=2")
    for loss in ("ce", "sparsemax"):
        for kind, extra in LANDSCAPES:
            tool(BIN / "trainer", "landscape", "--run", folder / "runs" / f"{loss}-seed1", "--kind", kind, "--name", kind,
                 *LANDSCAPE_ARGS, *extra)
    return folder / "runs"


def records(run_dir: Path) -> list:
    return [json.loads(l) for l in (run_dir / "epochs.jsonl").read_text().splitlines()]


def merge(runs: Path, out: Path) -> str:
    return tool(BIN / "collector", "merge", "--runs", runs, "--out", out)


def test_every_table_reads_in_duckdb_pyarrow_and_polars_with_the_run_folders_values(runs, tmp_path):
    out = tmp_path / "results"
    assert "merged 4 run(s)" in merge(runs, out)
    dirs = [runs / f"{loss}-seed{seed}" for loss, seed in RUNS]
    expected = {
        "runs": 4,
        "epochs": sum(2 * len(records(d)) for d in dirs),
        "class_metrics": sum(19 * (len(records(d)) + 1) for d in dirs),
        "test_metrics": 4,
        "predictions": sum(pq.read_metadata(d / "test_predictions.parquet").num_rows for d in dirs),
        "lrp": sum(pq.read_metadata(f).num_rows for d in dirs for f in (d / "lrp").glob("*.parquet")),
        "landscape": sum(pq.read_metadata(f).num_rows for d in dirs for f in (d / "landscape").glob("*/blocks/*.parquet")),
    }
    for table in TABLES:
        pattern = str(out / table / "*.parquet")
        n_duck = duckdb.sql(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchall()[0][0]
        n_arrow = ds.dataset(str(out / table), format="parquet").count_rows()
        n_polars = pl.scan_parquet(pattern).select(pl.len()).collect().item()
        assert n_duck == n_arrow == n_polars == expected[table], (table, n_duck, n_arrow, n_polars, expected[table])

    epochs = pl.read_parquet(str(out / "epochs" / "*.parquet"))
    classes = duckdb.sql(f"SELECT * FROM read_parquet('{out}/class_metrics/*.parquet')").pl()
    test = ds.dataset(str(out / "test_metrics"), format="parquet").to_table().to_pylist()
    runs_table = {r["run_id"]: r for r in pq.read_table(out / "runs" / "runs.parquet").to_pylist()}
    for d in dirs:
        run_id = d.name
        for r in records(d):
            row = epochs.filter((pl.col("run_id") == run_id) & (pl.col("epoch") == r["epoch"]))
            val = row.filter(pl.col("split") == "validation").row(0, named=True)
            train = row.filter(pl.col("split") == "train").row(0, named=True)
            assert val["samples_f1"] == r["val"]["samples"]["f1"] and val["loss_value"] == r["val_loss"]
            assert val["macro_recall"] == r["val"]["macro_avg"]["recall"]
            assert train["loss_value"] == r["train_loss"] and train["images_per_s"] == r["images_per_s"]
            assert train["compute_s"] == r["time"]["compute_s"] and train["samples_f1"] is None
            per_class = classes.filter((pl.col("run_id") == run_id) & (pl.col("epoch") == r["epoch"])
                                       & (pl.col("split") == "validation")).sort("class_index")
            assert per_class["f1"].to_list() == [c["f1"] for c in r["val"]["per_class"]]
            assert per_class["support"].to_list() == [c["support"] for c in r["val"]["per_class"]]
        outcome = json.loads((d / "test_metrics.json").read_text())
        mine = next(t for t in test if t["run_id"] == run_id)
        assert mine["micro_f1"] == outcome["metrics"]["micro"]["f1"] and mine["best_epoch"] == outcome["best_epoch"]
        info = runs_table[run_id]
        assert info["status"] == "finished" and info["world_size"] == 1 and info["epochs_done"] == 2
        assert info["best_epoch"] == outcome["best_epoch"] and info["code_revision"] and info["wall_s"] > 0
        assert info["loss"] == run_id.split("-")[0] and info["started"] <= info["ended"]
        # Predictions and heatmaps: the trainer's files with the run's columns in front.
        source = pq.read_table(d / "test_predictions.parquet").to_pydict()
        merged = duckdb.sql(f"SELECT patch, scores, decisions FROM read_parquet('{out}/predictions/{run_id}.parquet')").fetchall()
        assert [m[0] for m in merged] == source["patch"]
        assert [list(m[1]) for m in merged] == [list(s) for s in source["scores"]]
        snapshot = pq.read_table(d / "lrp" / "epoch-0002.parquet").to_pydict()
        lrp = pq.read_table(out / "lrp" / f"{run_id}-epoch-0002.parquet").to_pydict()
        assert lrp["map"] == snapshot["map"] and lrp["patch"] == snapshot["patch"] and set(lrp["run_id"]) == {run_id}
    # Every table starts with the run's columns; the runs table names the job's loss parameters and store.
    for table in TABLES:
        names = pq.read_schema(next((out / table).glob("*.parquet"))).names
        assert names[:5] == ["run_id", "job", "loss", "arch", "seed"], (table, names)
    for info in runs_table.values():
        assert info["arch"] == "kbranch" and info["job"] == info["loss"]
        assert json.loads(info["loss_params"])["name"] == info["loss"] and info["data"].endswith("store.zarr")
    # The landscape table: each block's rows with the run's columns, every point of the 4 x 4 grid.
    grid = duckdb.sql(f"SELECT run_id, count(DISTINCT point), min(alpha), max(beta) FROM read_parquet('{out}/landscape/*.parquet') "
                      "WHERE kind = '2d' AND quantity = 'loss' GROUP BY run_id ORDER BY run_id").fetchall()
    assert grid == [("ce-seed1", 16, -1.0, 1.0), ("sparsemax-seed1", 16, -1.0, 1.0)], grid
    sharp = duckdb.sql(f"SELECT checkpoint, value FROM read_parquet('{out}/landscape/*.parquet') "
                       "WHERE run_id = 'ce-seed1' AND quantity = 'lambda_max' ORDER BY checkpoint").fetchall()
    assert [c for c, _ in sharp] == [1, 2] and all(v > 0 for _, v in sharp), sharp
    # Runs of one setup share a config hash; different losses do not.
    hashes = {r["run_id"]: r["config_hash"] for r in runs_table.values()}
    assert hashes["ce-seed1"] == hashes["ce-seed2"] != hashes["sparsemax-seed1"]


def test_merging_again_adds_only_what_is_new_and_skips_torn_records(runs, tmp_path):
    out = tmp_path / "results"
    merge(runs, out)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again = merge(runs, out)
    assert "0 file(s) written" in again, again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == files

    # A run still training: its record file ends in a torn line. It contributes its complete
    # epochs; nothing else is rewritten.
    more = tmp_path / "more"
    shutil.copytree(runs / "ce-seed1", more / "ce-seed7")
    (more / "ce-seed7" / "test_metrics.json").unlink()
    (more / "ce-seed7" / "test_predictions.parquet").unlink()
    with open(more / "ce-seed7" / "epochs.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_loss": 0.5, "val_lo')
    text = tool(BIN / "collector", "merge", "--runs", runs, more, "--out", out)
    assert "1 torn record line(s) skipped" in text and "skipping a torn or invalid record" in text, text
    # Only the runs table (a run was added) changed among the earlier files.
    changed = {p.relative_to(out).as_posix() for p, t in files.items() if p.stat().st_mtime_ns != t}
    assert changed == {"runs/runs.parquet"}, changed
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/epochs/ce-seed7.parquet')").fetchall()[0][0]
    assert n == 4
    status = duckdb.sql(f"SELECT status FROM read_parquet('{out}/runs/*.parquet') WHERE run_id = 'ce-seed7'").fetchall()[0][0]
    assert status == "finished"  # run.json was copied from a finished run
    assert not (out / "test_metrics" / "ce-seed7.parquet").exists()


def test_the_docs_queries_run(runs, tmp_path):
    out = tmp_path / "results"
    merge(runs, out)
    doc = (ROOT / "docs" / "results.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", doc, re.S)
    assert len(queries) >= 2
    con = duckdb.connect()
    for q in queries:
        rows = con.sql(q.replace("results/", f"{out}/")).fetchall()
        assert rows, q
    table_6_1 = con.sql(queries[0].replace("results/", f"{out}/")).fetchall()
    assert {r[0] for r in table_6_1} == {"ce", "sparsemax"}
    snippets = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert snippets
    for code in snippets:
        exec(code.replace('"results/', f'"{out}/'), {})


def test_report_renders_in_headless_chromium(runs, tmp_path):
    out = tmp_path / "results"
    merge(runs, out)
    printed = tool(BIN / "collector", "report", "--results", out, "--out", tmp_path / "report")
    page = tmp_path / "report" / "index.html"
    assert str(page) in printed
    html = page.read_text()
    for heading in ["Table 6.1", "Table 6.4", "Fig. 6.2", "Tables 6.12", "Loss landscapes", "1D: ", "2D: ", "Interpolation",
                    "Sharpness"]:
        assert heading in html, heading
    # Charts: per-class F1, validation curves, 1D loss and F1, interpolation, sharpness. Images: the
    # LRP grid's heatmaps and the patch in true colour, a 2D contour per loss.
    assert html.count("<svg") == 6, html.count("<svg")
    assert html.count("data:image/png;base64,") >= 4 + 1 + 2
    assert ", true colour" in html and "true-colour image unavailable" not in html
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', ""), "the report must be self-contained"
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", "--hide-scrollbars", "--window-size=1200,3000",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 3000)
    pixels = list(image.getdata())
    inked = sum(1 for p in pixels if sum(p) < 600) / len(pixels)
    assert inked > 0.02, f"the screenshot is nearly blank ({inked:.1%} inked)"
    # The charts' first series colour (#0072B2) and the heatmaps' reds and blues are drawn.
    near = lambda p, c: all(abs(a - b) < 12 for a, b in zip(p, c))
    assert sum(1 for p in pixels if near(p, (0x00, 0x72, 0xB2))) > 500, "no chart bars or lines"
    reds = sum(1 for p in pixels if p[0] > 150 and p[1] < 110 and p[2] < 110)
    blues = sum(1 for p in pixels if p[2] > 150 and p[0] < 110 and p[1] < 160)
    assert reds > 200 and blues > 200, f"no heatmaps visible (red {reds}, blue {blues})"
