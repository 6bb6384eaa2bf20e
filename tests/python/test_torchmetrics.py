"""torchmetrics' `MultilabelAveragePrecision` and `MultilabelAUROC` (exact: `thresholds=None`)
agree with the scikit-learn values the Rust ranking metrics are tested against
(tests/data/sklearn_ranking.json), ties included. A class without positives: torchmetrics, as
scikit-learn, counts its AP as 0 in the macro mean; ours leaves it out (null), so torchmetrics'
macro mAP is ours × (classes with a positive) / 19.

Runs with the Python of .cache/venv-torch (torch, torchmetrics)."""
import json
import warnings

import pytest
import torch
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision

from conftest import ROOT

CASES = json.loads((ROOT / "tests" / "data" / "sklearn_ranking.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_average_precision_and_auc_agree(case):
    scores = torch.tensor(case["scores"], dtype=torch.float64)
    truth = torch.tensor(case["truth"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns of the class without positives
        per_class = MultilabelAveragePrecision(num_labels=19, average=None, thresholds=None)(scores, truth)
        macro = MultilabelAveragePrecision(num_labels=19, average="macro", thresholds=None)(scores, truth)
        micro = MultilabelAveragePrecision(num_labels=19, average="micro", thresholds=None)(scores, truth)
        auc = MultilabelAUROC(num_labels=19, average=None, thresholds=None)(scores, truth)
    for c, ap in enumerate(case["ap"]):
        if ap is None:
            assert per_class[c] == 0, (c, per_class[c])
        else:
            assert per_class[c].item() == pytest.approx(ap, abs=1e-6), c
    defined = sum(ap is not None for ap in case["ap"])
    assert macro.item() == pytest.approx(case["map_macro"] * defined / 19, abs=1e-6)
    assert micro.item() == pytest.approx(case["map_micro"], abs=1e-6)
    for c, a in enumerate(case["auc"]):
        if a is not None:
            assert auc[c].item() == pytest.approx(a, abs=1e-6), c
