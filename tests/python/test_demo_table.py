"""The demo table's "learns?" column (scripts/demo_table.py) says yes only for a run whose
validation F1 rises and ends clearly above the best constant predictor's."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from demo_table import verdict  # noqa: E402


def test_a_run_learns_only_when_its_f1_rises_above_the_constant_predictor():
    assert verdict([0.40, 0.48, 0.55], baseline=0.30) == "yes"
    assert verdict([0.55, 0.50, 0.45], baseline=0.30) == "no: falls every epoch"
    assert verdict([0.50, 0.56, 0.50], baseline=0.30) == "no: ends where it began"
    assert verdict([0.20, 0.30, 0.33], baseline=0.30) == "no: near the constant predictor"
    assert verdict([0.60], baseline=0.30) == "yes"
