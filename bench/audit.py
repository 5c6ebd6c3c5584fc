"""Soundness audit: no upper (or exact) bound may lie below a sound lower bound of the
same network and query.  Offending rows get status ``unsound`` and a note naming the
lower bound that refutes them; the original status is kept in the note.  An ``exact``
row refutes others with its certified lower bound (``stats["lower"]``) where it has one:
its value is an upper bound that meets that lower bound only within its tolerance."""
from __future__ import annotations

import json
import logging
from collections import defaultdict

from .store import Store

log = logging.getLogger(__name__)
RTOL = 1e-6   # relative tolerance: float64 rounding in either computation
ATOL = 1e-9


def audit(store: Store) -> list[dict]:
    """Mark unsound rows; return one dict per newly flagged row."""
    groups = defaultdict(list)
    for r in store.results():
        if r["value"] is not None:
            groups[(r["network"], r["p"], r["target"], r["domain"])].append(r)
    marks, found = [], []
    for key, rows in groups.items():
        lows = [(_lower_of(r), r) for r in rows if r["kind"] in ("lower", "exact") and r["status"] in ("ok", "timeout")]
        lows = [(v, r) for v, r in lows if v is not None]
        if not lows:
            continue
        low, best = max(lows, key=lambda x: x[0])
        for r in rows:
            if r["kind"] not in ("upper", "exact") or r["status"] == "unsound" or r["id"] == best["id"]:
                continue
            if r["value"] < low * (1 - RTOL) - ATOL:
                note = {"was": r["status"], "value": r["value"], "lower": low,
                        "lower_verifier": best["verifier"], "lower_job": best["job_key"],
                        "tolerance": {"rtol": RTOL, "atol": ATOL}}
                marks.append((r["id"], note))
                found.append({"network": key[0], "p": key[1], "target": key[2], "verifier": r["verifier"], **note})
                log.warning("UNSOUND: %s says %.6g < %s's lower bound %.6g on %s (p=%s, target=%s)",
                            r["verifier"], r["value"], best["verifier"], low, key[0], key[1], key[2])
    store.mark_unsound(marks)
    return found


def _lower_of(r) -> float | None:
    if r["kind"] == "lower":
        return r["value"]
    try:
        low = json.loads(r["stats"] or "{}").get("lower")
    except (TypeError, ValueError):
        low = None
    return r["value"] if low is None else float(low)
