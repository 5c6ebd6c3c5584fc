"""The trade-off page's arithmetic: Pareto fronts and the sentence that answers whether the
paper's method reaches a baseline at equal clean accuracy."""
import pandas as pd

from reports import tradeoff


def test_front_keeps_the_points_no_other_dominates():
    pts = [(0.5, 0.1), (0.4, 0.3), (0.45, 0.2), (0.3, 0.25), (0.5, 0.05), (0.2, 0.3)]
    assert tradeoff.front(pts) == [(0.4, 0.3), (0.45, 0.2), (0.5, 0.1)]
    assert tradeoff.front([(0.1, 0.1)]) == [(0.1, 0.1)]


def _settings(rows):
    cols = ["method", "trainer", "setting", "eps", "seeds", "clean_acc", "cert_trivial", "cert_best",
            "tb_over_lower", "tb_over_lower_max", "train_s", "best_by"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


E = 36 / 255


def test_sentence_names_the_best_setting_and_each_baseline_at_that_clean_accuracy():
    s = _settings([
        ("tb-penalty p=2 x abs", "tb-penalty", "lam=0.01", E, 2, 0.60, 0.10, 0.10, 3.0, 3.2, 40, "trivial"),
        ("tb-penalty p=2 x abs", "tb-penalty", "lam=1", E, 2, 0.45, 0.30, 0.31, 1.02, 1.03, 40, "lipsdp"),
        # lmt: its accurate setting certifies less than tb's best, its robust one is less accurate
        ("lmt p=2", "lmt", "eps=0.07", E, 2, 0.50, 0.20, 0.20, 2.0, 2.0, 30, "trivial"),
        ("lmt p=2", "lmt", "eps=0.28", E, 2, 0.40, 0.35, 0.35, 1.5, 1.5, 30, "trivial"),
        # gloro: as accurate and more certified: not reached
        ("gloro p=2", "gloro", "", E, 2, 0.47, 0.33, 0.33, 1.4, 1.4, 30, "trivial"),
        # aol: never as accurate
        ("aol x maxmin", "aol", "", E, 2, 0.40, 0.39, 0.39, 1.6, 1.6, 30, "trivial"),
        # standard training is a reference, not a baseline to reach
        ("standard", "standard", "", E, 2, 0.65, 0.0, 0.0, 50, 50, 20, "trivial"),
    ])
    w = tradeoff.sentence(s, E)
    assert "best tb-penalty setting (tb-penalty p=2 x abs, lam=1) certifies 31.0%" in w
    assert "45.0% clean accuracy" in w and "1.02x the best sound lower bound" in w and "by lipsdp" in w
    assert "It reaches lmt p=2 eps=0.07: 20.0% at 50.0% clean" in w
    assert "It does not reach gloro p=2: 33.0% at 47.0% clean" in w
    assert "No setting of aol x maxmin (at most 40.0% clean) is as accurate" in w
    assert "standard" not in w
    assert "The most any baseline setting certifies, at any clean accuracy, is 39.0% (aol x maxmin, at 40.0% " \
           "clean): more than the best tb-penalty setting's." in w
    assert tradeoff.sentence(s[s.trainer != "tb-penalty"], E) is None   # nothing to answer without the method
    assert tradeoff.sentence(s, 72 / 255) is None                       # no rows at that radius
