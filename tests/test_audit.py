"""The audit: lower bounds are claims with witnesses, checked again before they refute
anything; an exact row refutes others with its certified lower bound, not its value."""
import json

import torch
from torch import nn

import bench
from bench import network as netmod
from bench.api import Query
from bench.audit import audit
from bench.jobs import Outcome, TrainedNetwork, TrainJob, VerifyJob
from bench.rows import best_lower_values, proven_lower, query_key
from bench.store import Store

Q = Query(p="inf")


def _store_with_net(tmp_path):
    """A store holding one trained network (saved, with its row), and that network."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    path = str(tmp_path / "net.pt")
    netmod.save(net, (3,), path)
    store = Store(str(tmp_path))
    job = TrainJob("standard", "1", {}, {}, "synthetic", 0, "net", path, key="train")
    store.record(job, Outcome("ok", network=TrainedNetwork(netmod.net_hash(net), path, (3,), "mlp", {})))
    return store, net, path


def _row(store, path, net, key, verifier, kind, value, stats=None, status="ok"):
    job = VerifyJob(verifier, "1", {}, Q, "net", netmod.net_hash(net), path, kind, key=key)
    store.record(job, Outcome(status, kind, value, stats or {}))


def _status(store):
    return {r["verifier"]: r["status"] for r in store.results()}


def test_witnessed_lower_bounds_refute_and_unwitnessed_ones_mark_themselves(tmp_path):
    store, net, path = _store_with_net(tmp_path)
    low = bench.lower_bound(net, p="inf")
    tb = bench.verify(net, "trivial", p="inf").value
    w = low.stats["witness"]
    _row(store, path, net, "a", "lower", "lower", low.value, low.stats)
    _row(store, path, net, "b", "trivial", "upper", tb)
    _row(store, path, net, "c", "broken", "upper", low.value * 0.5)           # refuted by the real lower bound
    _row(store, path, net, "d", "fake", "lower", 1000 * tb)                   # no witness
    _row(store, path, net, "e", "fake-w", "lower", 1000 * tb, {"witness": w})  # a real pair that shows far less
    bad_box = {"x1": [0.0] * 3, "x2": [0.0] * 3}
    _row(store, path, net, "f", "fake-eq", "lower", 1.0, {"witness": bad_box})  # x1 = x2
    _row(store, path, net, "g", "fake-short", "lower", 1.0, {"witness": {"x1": [0.0], "x2": [1.0]}})
    found = audit(store)
    assert _status(store) == {"lower": "ok", "trivial": "ok", "broken": "unsound", "fake": "unsound",
                              "fake-w": "unsound", "fake-eq": "unsound", "fake-short": "unsound"}
    why = {f["verifier"]: f.get("witness", {}).get("failed", "") for f in found}
    assert "no witness pair" in why["fake"] and "below the claimed" in why["fake-w"]
    assert "equal" in why["fake-eq"] and "coordinates" in why["fake-short"]
    rows = {r["verifier"]: r for r in store.results()}
    assert json.loads(rows["broken"]["audit"])["lower_verifier"] == "lower"
    # the lower row proves what its witness gives, re-evaluated by the audit
    checked = json.loads(rows["lower"]["audit"])["witness"]["value"]
    assert abs(checked - low.value) <= 1e-12 * low.value
    assert proven_lower(rows["lower"]) == min(low.value, checked)
    assert best_lower_values(store.results())[query_key(rows["lower"])] == proven_lower(rows["lower"])
    # a second audit changes nothing
    assert audit(store) == [] and _status(store)["trivial"] == "ok"
    assert len(store.unsound()) == 5


def test_exact_rows_refute_with_their_certified_lower_bound(tmp_path):
    store, net, path = _store_with_net(tmp_path)
    m = bench.verify(net, "mip", p="inf")
    assert m.kind == "exact" and m.stats["witness"]
    lo = m.stats["lower"]
    _row(store, path, net, "a", "mip", "exact", m.value, m.stats)
    _row(store, path, net, "b", "tight", "upper", lo * (1 - 5e-7))   # within the audit's rtol of the lower bound
    _row(store, path, net, "c", "broken", "upper", lo * 0.9)
    # an exact row whose lower bound has no witness proves nothing and marks itself
    _row(store, path, net, "d", "exact-nowit", "exact", 5 * m.value, {"lower": 5 * m.value})
    found = audit(store)
    assert sorted(f["verifier"] for f in found) == ["broken", "exact-nowit"]
    assert _status(store) == {"mip": "ok", "tight": "ok", "broken": "unsound", "exact-nowit": "unsound"}


def test_lower_bound_of_zero_needs_no_witness_and_a_moved_network_is_unchecked(tmp_path):
    store, net, path = _store_with_net(tmp_path)
    low = bench.lower_bound(net, p="inf")
    _row(store, path, net, "a", "zero", "lower", 0.0)
    _row(store, path, net, "b", "lower", "lower", low.value, low.stats)
    import os
    os.unlink(path)
    assert audit(store) == []
    rows = {r["verifier"]: r for r in store.results()}
    assert proven_lower(rows["zero"]) == 0.0
    assert proven_lower(rows["lower"]) is None   # unchecked: proves nothing, and is not unsound
    assert "unchecked" in json.loads(rows["lower"]["audit"])["witness"] and rows["lower"]["status"] == "ok"


def test_a_lower_bound_stored_before_witnesses_is_unchecked_not_unsound(tmp_path):
    store, net, path = _store_with_net(tmp_path)
    job = VerifyJob("lower", "1", {}, Q, "net", netmod.net_hash(net), path, "lower", key="old")
    store.record(job, Outcome("ok", "lower", 0.5, {}, versions={"lipbench": "0.1.0"}))
    assert audit(store) == []
    r = store.results()[0]
    assert r["status"] == "ok" and proven_lower(r) is None
    assert "before lower bounds carried witnesses" in json.loads(r["audit"])["witness"]["unchecked"]
