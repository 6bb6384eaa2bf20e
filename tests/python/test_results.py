"""The collector's Parquet tables read by DuckDB, pyarrow and polars (row counts and values
equal to the run folders), incremental and torn-record behaviour, the docs' example query, and
the HTML report rendered in headless Chromium."""
import html as html_lib
import json
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import MPI_ENV, ROOT, run, tool

BIN = ROOT / "target" / "release"
TABLES = ["runs", "epochs", "class_metrics", "test_metrics", "predictions", "lrp", "landscape", "test_summary"]
RUNS = [("ce", 1), ("ce", 2), ("sparsemax", 1), ("sparsemax", 2)]
# Trained by two MPI ranks: its metrics must be those of the whole split, not of a rank's part.
TWO_RANKS = ("sparsemax", 2)
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
        train = [BIN / "trainer", "train", "--config", ROOT / "jobs" / f"{loss}.toml", "--data", folder / "store.zarr",
                 "--out", folder / "runs", "--seed", seed, "--epochs", "2", "--device", "cpu", "--set", "train.batch_size=16",
                 "--set", "train.lr=1e-3", "--set", "lrp.probes=2"]
        if (loss, seed) == TWO_RANKS:
            out = subprocess.run(["mpirun", "-np", "2", "--oversubscribe", *map(str, train), "--set", "run.threads=1"],
                                 capture_output=True, text=True, env=MPI_ENV)
            assert out.returncode == 0, out.stderr
        else:
            tool(*train)
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
        "test_summary": 2 * 19,  # two setups (ce, sparsemax), every summarised metric
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
        ranks = 2 if run_id == "-seed".join(map(str, TWO_RANKS)) else 1
        assert info["status"] == "finished" and info["world_size"] == ranks and info["epochs_done"] == 2
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
    for table in TABLES[:-1]:
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
    # Only the tables over all runs (a run was added) changed among the earlier files.
    changed = {p.relative_to(out).as_posix() for p, t in files.items() if p.stat().st_mtime_ns != t}
    assert changed == {"runs/runs.parquet", "test_summary/test_summary.parquet"}, changed
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
    assert len(snippets) >= 2
    for code in snippets:
        exec(code.replace('"results/', f'"{out}/'), {})
    # The DuckDB command lines of this page and the README, with the CLI make installs.
    readme = (ROOT / "README.md").read_text()
    commands = [line for text in (doc, readme) for line in text.splitlines() if line.startswith(".cache/venv/bin/duckdb ")]
    assert len(commands) >= 2
    for command in commands:
        p = subprocess.run(command.replace("results/", f"{out}/"), shell=True, cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0 and "ce" in p.stdout and "sparsemax" in p.stdout, (command, p.stdout, p.stderr)


PROBE_HEAD = """<script>window.__errors = []; window.addEventListener('error', e => __errors.push('error: ' + e.message));
for (const level of ['error', 'warn']) { const f = console[level]; console[level] = (...a) => { __errors.push(level + ': ' + a.map(String).join(' ')); f(...a); }; }</script>"""
# After the charts rendered: each chart's SVG marks, elements reaching past the viewport (outside
# the horizontally scrolling .wrap boxes), and the runs table's order after two clicks on its
# first header (descending natural order).
PROBE_TAIL = """<script>setTimeout(() => {
  const charts = Array.from(document.querySelectorAll('.chart')).map(el => {
    const svg = el.querySelector('svg');
    return {marks: svg ? svg.querySelectorAll('path, line, text, rect, circle').length : 0,
            width: svg ? svg.getBoundingClientRect().width : 0, failed: el.classList.contains('failed')};
  });
  const width = document.documentElement.clientWidth;
  const overflow = [];
  document.querySelectorAll('body *').forEach(el => {
    if (el.closest('.wrap') || el.closest('script')) return;
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 1) overflow.push(el.tagName + ' ' + (el.textContent || '').slice(0, 60));
  });
  const runs = Array.from(document.querySelectorAll('table.sortable')).pop();
  const header = runs.querySelector('th');
  header.click(); header.click();
  const order = Array.from(runs.tBodies[0].rows).map(r => r.cells[0].textContent);
  const out = document.createElement('pre'); out.id = '__check';
  out.textContent = JSON.stringify({errors: __errors, charts, overflow, width, order});
  document.body.appendChild(out);
}, 5000);</script>"""


def chromium(*args, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={work / 'chromium'}", "--hide-scrollbars", "--virtual-time-budget=30000", *args],
                          capture_output=True, text=True, timeout=240, check=True)


def probe(page: Path, work: Path) -> dict:
    """The report as headless Chromium renders it at 1400 px (see PROBE_TAIL)."""
    html = page.read_text()
    html = html.replace("<head>", "<head>" + PROBE_HEAD, 1)
    cut = html.rindex("</body>")
    probed = work / "probed.html"
    probed.write_text(html[:cut] + PROBE_TAIL + html[cut:])
    dom = chromium("--window-size=1400,1000", "--dump-dom", probed.as_uri(), work=work).stdout
    found = re.search(r'<pre id="__check">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run"
    return json.loads(html_lib.unescape(found.group(1)))


def test_report_renders_in_headless_chromium(runs, tmp_path):
    out = tmp_path / "results"
    merge(runs, out)
    printed = tool(BIN / "collector", "report", "--results", out, "--out", tmp_path / "report", "--resamples", "200")
    page = tmp_path / "report" / "index.html"
    assert str(page) in printed
    html = page.read_text()
    for heading in ["Test metrics (Table 6.1", "Which setup is better", "The threshold effect", "Validation curves",
                    "Per-class test F1", "LRP heatmaps", "Loss landscapes", "1D: ", "2D: ", "Interpolation", "Sharpness", "Runs (4)"]:
        assert heading in html, heading
    # Every metric has values (mAP included); AP is missing only for classes without test
    # positives; the threshold table and the matrix are filled.
    table_6_1 = html[html.index("Test metrics (Table 6.1"):html.index("Which setup is better")]
    assert "mAP macro" in table_6_1 and "class=missing" not in table_6_1, "a metric without values"
    per_class = html[html.index("Per-class test F1"):html.index("LRP heatmaps")]
    without_positives = len(re.findall(r"</td><td data-v=0>0</td>", per_class))
    assert per_class.count("class=missing>–</td>") == 2 * without_positives
    assert html.count("<caption>") == 2 and "no shared seed" not in html
    assert "No run tested with tuned thresholds" not in html
    # Self-contained: nothing is loaded from elsewhere.
    assert not re.search(r'(src|href)="(https?:)?//', html), "the report must open offline"
    # Images: the LRP grid's maps and colour bars, the patch in true colour, a 2D contour per setup.
    assert html.count("data:image/png;base64,") >= 4 + 2 + 1 + 2
    assert ", true colour" in html and "true-colour image unavailable" not in html
    checked = probe(page, tmp_path)
    assert checked["errors"] == [], checked["errors"]
    # Charts: validation curves, 1D slices, interpolation, sharpness; each drawn, none failed.
    assert len(checked["charts"]) == 4, checked["charts"]
    for chart in checked["charts"]:
        assert not chart["failed"] and chart["marks"] > 50 and chart["width"] > 300, chart
    assert checked["overflow"] == [], checked["overflow"]
    assert checked["order"] == ["sparsemax-seed2", "sparsemax-seed1", "ce-seed2", "ce-seed1"], checked["order"]
    shot = tmp_path / "shot.png"
    chromium("--window-size=1400,6000", f"--screenshot={shot}", page.as_uri(), work=tmp_path)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 6000)
    pixels = list(image.getdata())
    inked = sum(1 for p in pixels if sum(p) < 600) / len(pixels)
    assert inked > 0.02, f"the screenshot is nearly blank ({inked:.1%} inked)"
    # The charts' first setup colour (#0072B2) and the heatmaps' reds and blues are drawn.
    near = lambda p, c: all(abs(a - b) < 12 for a, b in zip(p, c))
    assert sum(1 for p in pixels if near(p, (0x00, 0x72, 0xB2))) > 500, "no chart lines"
    reds = sum(1 for p in pixels if p[0] > 150 and p[1] < 110 and p[2] < 110)
    blues = sum(1 for p in pixels if p[2] > 150 and p[0] < 110 and p[1] < 160)
    assert reds > 200 and blues > 200, f"no heatmaps visible (red {reds}, blue {blues})"


def sklearn_ranking(truth, scores):
    """The ranking metrics of docs/results.md as scikit-learn computes them (AP of a class without
    positives left out of the macro mean, as ours)."""
    from sklearn.metrics import (average_precision_score, coverage_error, label_ranking_average_precision_score,
                                 label_ranking_loss, roc_auc_score)
    ap = [average_precision_score(truth[:, c], scores[:, c]) if truth[:, c].any() else None for c in range(19)]
    auc = [roc_auc_score(truth[:, c], scores[:, c]) if 0 < truth[:, c].sum() < len(truth) else None for c in range(19)]
    defined = lambda v: [x for x in v if x is not None]
    return {"ap": ap, "auc": auc, "map_macro": np.mean(defined(ap)),
            "map_micro": average_precision_score(truth.ravel(), scores.ravel()),
            "auc_macro": np.mean(defined(auc)) if defined(auc) else None,
            "coverage": coverage_error(truth, scores), "ranking_loss": label_ranking_loss(truth, scores),
            "lrap": label_ranking_average_precision_score(truth, scores),
            "one_error": np.mean(truth[np.arange(len(truth)), scores.argmax(axis=1)] == 0)}


def predictions_of(path):
    t = pq.read_table(path).to_pydict()
    return np.array(t["labels"]), np.array(t["scores"], dtype=np.float64), np.array(t["decisions"])


def test_ranking_metrics_are_scikit_learns_over_the_whole_split(runs, tmp_path):
    """Each run's test mAP, AUC and ranking measures (test_metrics.json and the merged tables)
    are scikit-learn's over every test patch, for the two-rank run too (each rank scored part of
    the split)."""
    out = tmp_path / "results"
    merge(runs, out)
    for loss, seed in RUNS:
        run_id = f"{loss}-seed{seed}"
        truth, scores, _ = predictions_of(runs / run_id / "test_predictions.parquet")
        ours = json.loads((runs / run_id / "test_metrics.json").read_text())["ranking"]
        theirs = sklearn_ranking(truth, scores)
        for key in ["map_macro", "map_micro", "auc_macro", "coverage", "ranking_loss", "lrap", "one_error"]:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-9), (run_id, key)
        assert [c["ap"] for c in ours["per_class"]] == pytest.approx(theirs["ap"], abs=1e-9)
        merged = duckdb.sql(f"SELECT map_macro, map_micro FROM read_parquet('{out}/test_metrics/{run_id}.parquet')").fetchall()
        assert merged[0] == pytest.approx((theirs["map_macro"], theirs["map_micro"]), abs=1e-9)
        aps = duckdb.sql(f"SELECT ap FROM read_parquet('{out}/class_metrics/{run_id}.parquet') WHERE split = 'test' "
                         "ORDER BY class_index").fetchall()
        assert [a for (a,) in aps] == pytest.approx(theirs["ap"], abs=1e-9)
        # Every epoch's validation record has its mAP too.
        assert all(r["val_ranking"]["map_macro"] > 0 for r in records(runs / run_id))


GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x):
    """SplitMix64's output for state x (docs/results.md, "Comparing two jobs")."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def pick(x, n):
    return ((x >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)


def metrics_of(truth, scores, decisions, w):
    """F1 micro, macro, sample and macro mAP of patches drawn w times each, from their definitions."""
    from sklearn.metrics import average_precision_score
    tp = (w[:, None] * (truth & decisions)).sum(0)
    fp = (w[:, None] * ((1 - truth) & decisions)).sum(0)
    fn = (w[:, None] * (truth & (1 - decisions))).sum(0)
    f1 = lambda tp, fp, fn: np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(np.shape(tp)), where=(2 * tp + fp + fn) > 0)
    per_patch = f1((truth & decisions).sum(1), ((1 - truth) & decisions).sum(1), (truth & (1 - decisions)).sum(1))
    aps = [average_precision_score(truth[:, c], scores[:, c], sample_weight=w) for c in range(19) if (w * truth[:, c]).sum() > 0]
    return np.array([f1(tp.sum(), fp.sum(), fn.sum()), f1(tp, fp, fn).mean(), (w * per_patch).sum() / w.sum(), np.mean(aps)])


def numpy_bootstrap(pairs, resamples, seed):
    """The paired (two-level when several seeds) bootstrap of docs/results.md, written anew."""
    n, s = len(pairs[0][0][0]), len(pairs)
    ones = np.ones(n, dtype=np.int64)
    observed = np.mean([metrics_of(*a, ones) - metrics_of(*b, ones) for a, b in pairs], axis=0)
    diffs = []
    for r in range(resamples):
        key = mix(np.uint64(seed) + np.uint64(r))
        draws = mix(key + np.arange(s + n, dtype=np.uint64))
        seeds = pick(draws[:s], s).astype(np.int64)
        w = np.bincount(pick(draws[s:], n).astype(np.int64), minlength=n)
        diffs.append(sum((metrics_of(*pairs[k][0], w) - metrics_of(*pairs[k][1], w)) / s for k in seeds))
    diffs = np.array(diffs)
    low, high = np.quantile(diffs, [0.025, 0.975], axis=0)
    return observed, low, high, (diffs > 0).mean(axis=0)


def test_compare_is_reproduced_by_numpy_and_scipy(runs, tmp_path):
    """`collector compare`: the paired bootstrap per seed and pooled equals an independent numpy
    implementation with the same seed, and the across-seed intervals are scipy's Student t."""
    from scipy import stats
    out = tmp_path / "results"
    merge(runs, out)
    printed = json.loads(tool(BIN / "collector", "compare", "--results", out, "--a", "ce", "--b", "sparsemax",
                              "--resamples", "200", "--seed", "5", "--json"))
    assert printed["patches"] > 0 and printed["resamples"] == 200
    load = lambda loss, seed: predictions_of(runs / f"{loss}-seed{seed}" / "test_predictions.parquet")
    metrics = ["micro_f1", "macro_f1", "samples_f1", "map_macro"]
    cases = [([1], printed["per_seed"][0][1]), ([2], printed["per_seed"][1][1]), ([1, 2], printed["pooled"])]
    for seeds, diffs in cases:
        pairs = [(load("ce", s), load("sparsemax", s)) for s in seeds]
        observed, low, high, better = numpy_bootstrap(pairs, 200, 5)
        assert [d["metric"] for d in diffs] == metrics
        for k, d in enumerate(diffs):
            assert (d["observed"], d["low"], d["high"], d["a_better"]) == pytest.approx(
                (observed[k], low[k], high[k], better[k]), abs=1e-9), (seeds, d["metric"])
    for side, loss in [("a", "ce"), ("b", "sparsemax")]:
        for metric, summary in printed[side]["summaries"]:
            key = {"micro_f1": ("metrics", "micro"), "macro_f1": ("metrics", "macro_avg"), "samples_f1": ("metrics", "samples")}
            values = []
            for seed in (1, 2):
                outcome = json.loads((runs / f"{loss}-seed{seed}" / "test_metrics.json").read_text())
                values.append(outcome["ranking"]["map_macro"] if metric == "map_macro"
                              else outcome[key[metric][0]][key[metric][1]]["f1"])
            low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
            assert summary["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert summary["ci95"] == pytest.approx([low, high], abs=1e-9), (loss, metric)
            row = duckdb.sql(f"SELECT runs, mean, ci95_low, ci95_high FROM read_parquet('{out}/test_summary/*.parquet') "
                             f"WHERE job = '{loss}' AND metric = '{metric}'").fetchall()
            assert row == [pytest.approx((2, np.mean(values), low, high), abs=1e-9)], (loss, metric, row)
    text = tool(BIN / "collector", "compare", "--results", out, "--a", "ce", "--b", "sparsemax", "--resamples", "200")
    assert "pooled" in text and "mAP macro" in text and "paired bootstrap" in text


def test_compare_refuses_what_it_cannot_compare(runs, tmp_path):
    out = tmp_path / "results"
    merge(runs, out)

    def refused(*args):
        p = subprocess.run([BIN / "collector", "compare", "--results", out, *args], capture_output=True, text=True)
        assert p.returncode != 0
        return p.stderr

    assert "jobs: ce, sparsemax" in refused("--a", "ce", "--b", "focal")
    assert "at least 100" in refused("--a", "ce", "--b", "sparsemax", "--resamples", "10")
    assert "holds no merged tables" in subprocess.run([BIN / "collector", "compare", "--results", tmp_path / "none", "--a", "ce",
                                                       "--b", "sparsemax"], capture_output=True, text=True).stderr


def test_a_run_folder_of_an_earlier_version_merges_reports_and_compares(runs, tmp_path):
    """tests/data/old-run: a run folder written before ranking metrics, tuned thresholds and store
    ids. Merged beside new runs its new columns are null, the report shows it (its mAP as missing),
    and it compares with a new run of the same synthetic store (the same test patches)."""
    old = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "old-run" / "focal-seed1", old / "focal-seed1")
    out = tmp_path / "results"
    text = tool(BIN / "collector", "merge", "--runs", runs, old, "--out", out)
    assert "merged 5 run(s)" in text, text
    row = duckdb.sql(f"SELECT map_macro, tuned_micro_f1, micro_f1, best_epoch FROM read_parquet('{out}/test_metrics/focal-seed1.parquet')").fetchall()
    outcome = json.loads((old / "focal-seed1" / "test_metrics.json").read_text())
    assert row == [(None, None, outcome["metrics"]["micro"]["f1"], outcome["best_epoch"])], row
    aps = duckdb.sql(f"SELECT count(*), count(ap) FROM read_parquet('{out}/class_metrics/focal-seed1.parquet')").fetchall()
    assert aps == [(19 * 3, 0)], aps
    maps = duckdb.sql(f"SELECT count(*), count(map_macro) FROM read_parquet('{out}/epochs/focal-seed1.parquet') WHERE split = 'validation'").fetchall()
    assert maps == [(2, 0)], maps
    info = duckdb.sql(f"SELECT status, world_size, code_revision FROM read_parquet('{out}/runs/*.parquet') WHERE run_id = 'focal-seed1'").fetchall()
    assert info == [("finished", 1, "c58b3c75da81")], info
    summary = duckdb.sql(f"SELECT metric, runs FROM read_parquet('{out}/test_summary/*.parquet') WHERE job = 'focal' ORDER BY metric").fetchall()
    assert ("micro_f1", 1) in summary and not any(m == "map_macro" for m, _ in summary), summary
    page = tmp_path / "report" / "index.html"
    tool(BIN / "collector", "report", "--results", out, "--out", page.parent, "--resamples", "200")
    html = page.read_text()
    assert "FL (focal)" in html and "focal: gamma=2" in html
    compared = json.loads(tool(BIN / "collector", "compare", "--results", out, "--a", "focal", "--b", "ce", "--resamples", "200", "--json"))
    assert [seed for seed, _ in compared["per_seed"]] == [1] and compared["unpaired"] == [2]


def test_merge_and_report_refuse_mistakes_naming_them(runs, tmp_path):
    """The usual mistakes with the collector, as a user makes them: each is an error naming the
    cause, and a refused merge creates no output folder."""
    out = tmp_path / "results"
    merge(runs, out)

    def refused(*args):
        p = subprocess.run([BIN / "collector", *map(str, args)], capture_output=True, text=True)
        assert p.returncode != 0, p.stdout
        return p.stderr

    report = ["report", "--results", out, "--out", tmp_path / "report"]
    assert "--f1-threshold 1.5: an F1 lies in (0, 1]" in refused(*report, "--f1-threshold", "1.5")
    assert "--lrp-epochs 0" in refused(*report, "--lrp-epochs", "0")
    said = refused(*report, "--lrp-patch", "no-such-patch")
    assert "no LRP snapshot of --lrp-patch no-such-patch" in said and "probe patches are" in said, said
    (tmp_path / "empty").mkdir()
    assert "holds no merged tables" in refused("report", "--results", tmp_path / "empty", "--out", tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
    # --runs that does not exist, and --runs one level above the folder of runs.
    said = refused("merge", "--runs", tmp_path / "nope", "--out", tmp_path / "m1")
    assert "nope" in said and not (tmp_path / "m1").exists(), said
    said = refused("merge", "--runs", runs.parent, "--out", tmp_path / "m2")
    assert str(runs) in said and not (tmp_path / "m2").exists(), said
