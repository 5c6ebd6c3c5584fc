"""The audit: an exact row refutes others with its certified lower bound, not its value."""
from bench.api import Query
from bench.audit import audit
from bench.jobs import Outcome, VerifyJob
from bench.store import Store


def _row(store, key, verifier, kind, value, stats=None, status="ok"):
    job = VerifyJob(verifier, "1", {}, Query(p="inf"), "net", "h", "net.pt", kind, key=key)
    store.record(job, Outcome(status, kind, value, stats or {}))


def test_exact_rows_refute_with_their_certified_lower_bound(tmp_path):
    store = Store(str(tmp_path))
    # mip closed within its tolerance: value (an upper bound) 1e-6 above its certified lower bound
    _row(store, "a", "mip", "exact", 2.0 * (1 + 1e-6), {"lower": 2.0, "upper": 2.0 * (1 + 1e-6)})
    _row(store, "b", "bab", "exact", 2.0 * (1 + 1e-10), {"lower": 2.0})
    _row(store, "c", "tight", "upper", 2.0 * (1 - 5e-7))       # within the audit's rtol of 2.0
    _row(store, "d", "broken", "upper", 1.9)
    _row(store, "e", "lower", "lower", 1.5)
    found = audit(store)
    assert [f["verifier"] for f in found] == ["broken"]
    assert found[0]["lower"] == 2.0
    status = {r["verifier"]: r["status"] for r in store.results()}
    assert status == {"mip": "ok", "bab": "ok", "tight": "ok", "broken": "unsound", "lower": "ok"}
