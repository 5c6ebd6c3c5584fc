"""The tidy frame and the headline table: every number as bench.rows defines it."""
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

import bench
from bench import network as netmod
from bench.api import Query
from bench.audit import audit
from bench.jobs import Outcome, TrainedNetwork, TrainJob, VerifyJob
from bench.rows import best_lower_values, query_key, tightness
from bench.store import Store
from bench.tidy import COLUMNS, frame, headline, headline_sentence
from conftest import REPO


def _store(tmp_path):
    """Two networks (standard relu, tb-penalty abs), each with trivial, a slow tight
    verifier, a fast tight one, an unsupported one and a witnessed lower bound."""
    store = Store(str(tmp_path))
    for i, (trainer, act) in enumerate([("standard", "relu"), ("tb-penalty", "abs")]):
        torch.manual_seed(i)
        net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        path = str(tmp_path / f"n{i}.pt")
        netmod.save(net, (3,), path)
        nid = f"net{i}"
        store.record(TrainJob(trainer, "1", {}, {"hidden": [8], "activation": act}, "synthetic", 0, nid, path,
                              key=f"t{i}"),
                     Outcome("ok", network=TrainedNetwork(netmod.net_hash(net), path, (3,), "mlp", {"clean_acc": 0.9})))
        low = bench.lower_bound(net, p="inf")
        q = Query(p="inf")

        def row(key, verifier, kind, value, status="ok", stats=None, solve=0.01):
            job = VerifyJob(verifier, "1", {}, q, nid, netmod.net_hash(net), path, kind, key=f"{key}{i}")
            store.record(job, Outcome(status, kind, value, stats or {}, solve_s=solve, wall_s=solve + 0.05))
        row("l", "lower", "lower", low.value, stats=low.stats, solve=0.5)
        row("a", "trivial", "upper", low.value * (3.0 if i == 0 else 1.05), solve=0.001)
        row("b", "slow", "upper", low.value * 1.01, solve=10.0)
        row("c", "fast", "upper", low.value * 1.08, solve=0.1)
        row("d", "picky", "upper", None, status="unsupported")
    audit(store)
    return store


def test_frame_columns_and_numbers_are_those_of_rows(tmp_path):
    store = _store(tmp_path)
    df = frame(str(tmp_path))
    assert list(df.columns) == COLUMNS and len(df) == 10
    rows = store.results()
    best = best_lower_values(rows)
    for r in rows:
        d = df[(df.network == r["network"]) & (df.verifier == r["verifier"])].iloc[0]
        t = tightness(r, best)
        assert (t is None and math.isnan(d.tightness)) or d.tightness == pytest.approx(t, rel=1e-12)
        assert d.best_lower == pytest.approx(best[query_key(r)])
    assert set(df.method) == {"standard", "tb-penalty x abs"} and set(df.arch) == {"mlp8"}
    assert df[df.verifier == "slow"].settled.all() and not df[df.verifier == "picky"].settled.any()


def test_settled_share_counts_only_the_queries_a_verifier_supports(tmp_path):
    import pandas as pd
    _store(tmp_path)
    df = frame(str(tmp_path))
    refused = df[(df.verifier == "fast") & (df.method == "standard")].copy()
    refused = refused.assign(status="unsupported", value=float("nan"), tightness=float("nan"), settled=False,
                             query="p=2", p="2")   # another query it refuses: not one it failed to settle
    h = headline(pd.concat([df, refused], ignore_index=True)).set_index(["method", "verifier"])
    r = h.loc[("standard", "fast")]
    assert (r.n, r.applicable, r.settled_share) == (2, 1, 1.0)


def test_headline_highlights_the_cheapest_within_ten_percent(tmp_path):
    _store(tmp_path)
    h = headline(frame(str(tmp_path))).set_index(["method", "verifier"])
    assert "lower" not in h.index.get_level_values("verifier")
    # standard: trivial is 3x off; slow (1.01) and fast (1.08) are within 10% of the best: fast is cheaper
    assert h.loc[("standard", "fast"), "best"] and not h.loc[("standard", "slow"), "best"]
    # tb-penalty: the trivial bound (1.05) is within 10% of the best and the cheapest
    assert h.loc[("tb-penalty x abs", "trivial"), "best"]
    assert h.loc[("standard", "picky"), "applicable"] == 0 and h.loc[("standard", "picky"), "statuses"] == "unsupported 1"
    s = headline_sentence(headline(frame(str(tmp_path))))
    assert "on tb-penalty x abs networks, trivial is the cheapest" in s


def test_the_best_verifier_is_judged_on_the_queries_both_answered(tmp_path):
    """A verifier that answers only p = 2 (as lipsdp) is 3x looser than trivial there; its
    median (3.0) beats trivial's over p = 2 and p = inf (1.2 and 40: median 20.6), but
    it is not within 10% of the tightest: the headline picks trivial."""
    store = Store(str(tmp_path))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    path = str(tmp_path / "n.pt")
    netmod.save(net, (3,), path)
    store.record(TrainJob("standard", "1", {}, {"hidden": [8], "activation": "relu"}, "synthetic", 0, "net", path,
                          key="t"),
                 Outcome("ok", network=TrainedNetwork(netmod.net_hash(net), path, (3,), "mlp", {"clean_acc": 0.9})))
    for p, ratios in [("2", {"trivial": 1.2, "sdp": 3.0}), ("inf", {"trivial": 40.0})]:
        q = Query(p=p)
        low = bench.lower_bound(net, p=p)

        def row(verifier, kind, value, stats=None, solve=0.01):
            job = VerifyJob(verifier, "1", {}, q, "net", netmod.net_hash(net), path, kind, key=f"{verifier}{p}")
            store.record(job, Outcome("ok", kind, value, stats or {}, solve_s=solve, wall_s=solve + 0.05))
        row("lower", "lower", low.value, stats=low.stats, solve=0.5)
        for v, r in ratios.items():
            row(v, "upper", low.value * r, solve=0.001 if v == "trivial" else 1.0)
    audit(store)
    h = headline(frame(str(tmp_path))).set_index(["method", "verifier"])
    assert h.loc[("standard", "sdp"), "tight_median"] < h.loc[("standard", "trivial"), "tight_median"]
    assert h.loc[("standard", "trivial"), "best"] and not h.loc[("standard", "sdp"), "best"]


@pytest.mark.slow
def test_show_prints_the_headline_and_export_writes_the_frame(tmp_path):
    _store(tmp_path)
    r = subprocess.run([sys.executable, "-m", "bench", "show", "--out", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "queries at p=inf"   # one table per query norm
    assert lines[1].split() == ["verifier", "standard", "tb-penalty", "x", "abs"]
    trivial = next(l for l in lines if l.startswith("trivial"))
    assert "*1.05" in trivial and "3 [3-3]" in trivial
    empty = tmp_path / "empty"
    Store(str(empty)).close()
    r = subprocess.run([sys.executable, "-m", "bench", "show", "--out", str(empty)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "holds no results" in r.stdout


def test_the_sentence_answers_the_papers_question_at_the_trained_norm():
    """For networks trained for a norm, at that norm: is the trivial bound within 10% of
    the best lower bound, and how much cheaper than the cheapest verifier as tight."""
    import pandas as pd
    rows = [("tb-penalty p=2 x abs, at p=2", "trivial", 1.04, 0.002, 1.0, True),
            ("tb-penalty p=2 x abs, at p=2", "lipsdp", 1.01, 1.0, 1.0, False),
            ("tb-penalty p=2 x abs, at p=inf", "trivial", 3.8, 0.001, 0.0, True),
            ("tb-penalty p=inf x abs, at p=inf", "trivial", 1.5, 0.001, 0.0, False),
            ("tb-penalty p=inf x abs, at p=inf", "bab", 1.2, 5.0, 0.0, True)]
    h = pd.DataFrame([{"method": m, "verifier": v, "tight_median": t, "cost_median_s": c, "settled_share": s,
                       "unsound": 0, "best": b} for m, v, t, c, s, b in rows])
    s = headline_sentence(h)
    assert s.startswith("On tb-penalty p=2 x abs networks at the norm they were trained for (p=2), the trivial bound "
                        "is within 10% of the best sound lower bound (median 1.04, 100% of queries settled), 500x "
                        "cheaper than lipsdp, the cheapest as tight; on tb-penalty p=inf x abs networks at the norm "
                        "they were trained for (p=inf), the trivial bound is not within 10%"), s
    assert "on tb-penalty p=2 x abs networks at p=inf, trivial is the cheapest verifier" in s
