"""Soundness audit, in two steps.

1. Every claimed lower bound (:func:`bench.rows.claimed_lower`) is checked against its
   witness: the pair of inputs stored with it is evaluated again on the stored network,
   in float64 (:func:`bench.witness.check`).  A claim above what its witness gives (beyond
   ``witness.CHECK_RTOL``), or without a usable witness, is the row marked ``unsound``;
   a confirmed one gets the verdict ``{"witness": {"value": v}}`` and from then on proves
   a lower bound (:func:`bench.rows.proven_lower`).  A claim whose network file cannot
   be read, or that an older lipbench (< 0.2) stored without a witness, stays unchecked
   (``{"witness": {"unchecked": why}}``) and proves nothing.
2. No upper (or exact) bound may lie below the best proven lower bound of the same
   network and query (:func:`bench.rows.best_lower`).  Offending rows get status
   ``unsound`` and a note naming the lower bound that refutes them; the original status
   is kept in the note.

So a plug-in that claims a lower bound it cannot show marks only itself, never the upper
bounds it contradicts."""
from __future__ import annotations

import logging
from collections import defaultdict

from . import witness
from .rows import audit_note, best_lower, claimed_lower, is_upper, mapping, query_key, query_of, stats
from .store import Store

log = logging.getLogger(__name__)
# one tolerance for both steps: float64 rounding in either computation
RTOL, ATOL = witness.CHECK_RTOL, witness.CHECK_ATOL


def check_witnesses(store: Store) -> list[dict]:
    """Step 1: check every unchecked claim; mark the failed ones; return them."""
    from . import network as netmod
    paths = {n["id"]: n["path"] for n in store.networks()}
    modules: dict = {}
    verdicts, marks, found = [], [], []
    for r in store.results():
        claim = claimed_lower(r)
        if claim is None or claim <= 0.0 or "value" in audit_note(r).get("witness", {}):
            continue
        key = r["network"]
        if key not in modules:
            try:
                module, shape = netmod.load(paths[key])
                if netmod.net_hash(module) != r["net_hash"]:
                    raise ValueError(f"{paths[key]} no longer holds network {r['net_hash']}")
                modules[key] = (module, shape, None)
            except Exception as e:   # a missing or changed file: nothing to check against
                modules[key] = (None, None, f"{type(e).__name__}: {e}".splitlines()[0])
        module, shape, why = modules[key]
        old = _before_witnesses(r)
        if old and not isinstance(stats(r).get("witness"), dict):
            verdicts.append((r["id"], {"witness": {"unchecked": f"stored by lipbench {old}, before lower bounds "
                                                                 f"carried witnesses; the suite's rerun replaces it"}}))
            continue
        if module is None:
            verdicts.append((r["id"], {"witness": {"unchecked": why}}))
            continue
        value, why = witness.confirm(module, shape, query_of(r), claim, stats(r).get("witness"))
        if why is None:
            verdicts.append((r["id"], {"witness": {"value": value}}))
            continue
        note = {"was": r["status"], "claimed_lower": claim, "witness": {"value": value, "failed": why}}
        marks.append((r["id"], note))
        found.append({"network": key, "p": r["p"], "target": r["target"], "verifier": r["verifier"],
                      "value": r["value"], **note})
        log.warning("UNSOUND: %s claims a lower bound %.6g on %s (p=%s, target=%s): %s",
                    r["verifier"], claim, key, r["p"], r["target"], why)
    store.set_audit(verdicts)
    store.mark_unsound(marks)
    return found


def _before_witnesses(r) -> str | None:
    """The lipbench version of a row stored before lower bounds carried witnesses (0.2)."""
    v = mapping(r["versions"]).get("lipbench")
    try:
        return v if v and tuple(int(x) for x in v.split(".")[:2]) < (0, 2) else None
    except (ValueError, AttributeError):
        return None


def audit(store: Store) -> list[dict]:
    """Check the witnesses, then mark upper bounds below a proven lower bound; return
    one dict per newly flagged row."""
    found = check_witnesses(store)
    groups = defaultdict(list)
    for r in store.results():
        if r["value"] is not None:
            groups[query_key(r)].append(r)
    marks = []
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
                        "tolerance": {"rtol": RTOL, "atol": ATOL}, **audit_note(r)}
                marks.append((r["id"], note))
                found.append({"network": key[0], "p": key[1], "target": key[2], "verifier": r["verifier"], **note})
                log.warning("UNSOUND: %s says %.6g < %s's lower bound %.6g on %s (p=%s, target=%s)",
                            r["verifier"], r["value"], by["verifier"], low, key[0], key[1], key[2])
    store.mark_unsound(marks)
    return found
