"""Soundness audit: no upper (or exact) bound may lie below the best sound lower bound
of the same network and query (:func:`bench.results.best_lower`, which also says what an
``exact`` row proves).  Offending rows get status ``unsound`` and a note naming the lower
bound that refutes them; the original status is kept in the note."""
from __future__ import annotations

import logging
from collections import defaultdict

from .results import best_lower, is_upper, query_key
from .store import Store

log = logging.getLogger(__name__)
RTOL = 1e-6   # relative tolerance: float64 rounding in either computation
ATOL = 1e-9


def audit(store: Store) -> list[dict]:
    """Mark unsound rows; return one dict per newly flagged row."""
    groups = defaultdict(list)
    for r in store.results():
        if r["value"] is not None:
            groups[query_key(r)].append(r)
    marks, found = [], []
    for key, rows in groups.items():
        best = best_lower(rows).get(key)
        if best is None:
            continue
        low, by = best
        for r in rows:
            if not is_upper(r) or r["status"] == "unsound" or r["id"] == by["id"]:
                continue
            if r["value"] < low * (1 - RTOL) - ATOL:
                note = {"was": r["status"], "value": r["value"], "lower": low,
                        "lower_verifier": by["verifier"], "lower_job": by["job_key"],
                        "tolerance": {"rtol": RTOL, "atol": ATOL}}
                marks.append((r["id"], note))
                found.append({"network": key[0], "p": key[1], "target": key[2], "verifier": r["verifier"], **note})
                log.warning("UNSOUND: %s says %.6g < %s's lower bound %.6g on %s (p=%s, target=%s)",
                            r["verifier"], r["value"], by["verifier"], low, key[0], key[1], key[2])
    store.mark_unsound(marks)
    return found
