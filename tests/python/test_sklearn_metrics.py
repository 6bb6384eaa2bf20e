"""The scikit-learn reference values the Rust metrics are tested against are what the pinned
scikit-learn computes now."""
import json
from pathlib import Path

import pytest

from gen_sklearn_metrics import generate


def test_reference_file_matches_scikit_learn():
    stored = json.loads((Path(__file__).resolve().parents[1] / "data" / "sklearn_metrics.json").read_text())
    fresh = generate()
    assert len(stored) == len(fresh)
    for s, f in zip(stored, fresh):
        assert s["truth"] == f["truth"] and s["pred"] == f["pred"]
        for key in ["micro", "macro", "weighted", "samples", "hamming_loss", "subset_accuracy"]:
            assert s[key] == pytest.approx(f[key], abs=1e-15), (s["name"], key)
        for a, b in zip(s["per_class"], f["per_class"]):
            assert a == pytest.approx(b, abs=1e-15)


def test_ranking_reference_file_matches_scikit_learn():
    from gen_sklearn_ranking import generate as generate_ranking
    stored = json.loads((Path(__file__).resolve().parents[1] / "data" / "sklearn_ranking.json").read_text())
    fresh = generate_ranking()
    assert [s["name"] for s in stored] == [f["name"] for f in fresh]
    for s, f in zip(stored, fresh):
        assert s["truth"] == f["truth"] and s["scores"] == f["scores"]
        for key in ["ap", "auc", "map_macro", "map_micro", "auc_macro", "coverage", "ranking_loss", "lrap", "one_error"]:
            assert s[key] == pytest.approx(f[key], abs=1e-15), (s["name"], key)
