"""The one reading of stored results: how a query is named in the store, which rows give
a sound lower bound and how large, the best lower bound of a query, tightness, and which
upper bounds may certify.  The audit, ``show``, ``export``, the reports and certified
accuracy all ask here; nothing else interprets a row's kind, status or stats.

The rule, in one place: a row *claims a lower bound* when its kind is ``lower`` or
``exact`` and its status is ``ok`` or ``timeout`` (an anytime verifier's kept bound): a
``lower`` row its value, an ``exact`` row its certified lower bound ``stats["lower"]``
(its value is an upper bound that meets that lower bound within the verifier's
tolerance).  A claim *proves* a lower bound only once the audit has evaluated its
witness again (:mod:`bench.witness`; the verdict ``{"witness": {"value": v}}`` in the
row's ``audit``), and proves the smaller of the claim and that value; a claim of 0 needs
no witness.  A claim whose witness fails is marked ``unsound`` by the audit and proves
nothing.  The *best lower bound* of a (network, p, target, domain) is the largest proven
one, and *tightness* of an upper bound is its value over that best lower bound (>= 1 for
a sound bound, 1 = tight).

Reserved keys in a row's ``stats`` (the contract between verifiers and readers):
``lower`` (a certified lower bound, see above), ``witness`` (the pair of inputs behind a
lower bound), ``certified`` (False: the value is a solver's number that was not checked,
and never certifies robustness), ``trace`` (anytime verifiers: [t, lower, upper] rows).
"""
from __future__ import annotations

import json
import math
from typing import Iterable, Mapping

from .api import Query, p_name

#: "tight": an upper bound within 10% of the best lower bound (the paper's "within 10% of
#: the ground truth"); the report's settled queries, highlights and evidence all use it
TIGHT_WITHIN = 1.10

#: the columns a query occupies in a result row
QUERY_COLUMNS = ("network", "p", "target", "domain")
GLOBAL = '"global"'   # the stored form of the global domain


def p_label(q: Query) -> str:
    """The store's name of a query's norms: "2", or "2->inf" when the output norm differs."""
    return p_name(q.p) if q.q in (None, q.p) else f"{p_name(q.p)}->{p_name(q.q)}"


def target_label(q: Query) -> str:
    """The store's name of a target: "full" or "i-j" (the margin f_i - f_j)."""
    return "full" if not q.is_pair else f"{q.target[0]}-{q.target[1]}"


def parse_target(label: str) -> tuple[int, int] | None:
    """``target_label`` read back: None for "full", else the class pair."""
    if label == "full":
        return None
    i, j = (int(t) for t in label.split("-"))
    return i, j


def query_key(r: Mapping) -> tuple:
    """(network, p, target, domain) of a row: rows with the same key bound the same number."""
    return tuple(r[c] for c in QUERY_COLUMNS)


def mapping(js) -> dict:
    """A stored JSON field that holds a mapping (a row's stats or audit, a job's spec or
    versions, a network's trainer parameters or training record, a run's provenance), read
    the one way every reader reads it: a dict as it is, {} where the field is empty, not
    JSON or not a mapping."""
    if isinstance(js, dict):
        return js
    try:
        v = json.loads(js or "{}")
    except (TypeError, ValueError):
        return {}
    return v if isinstance(v, dict) else {}


def stats(r: Mapping) -> dict:
    return mapping(r.get("stats") if hasattr(r, "get") else r["stats"])


def claimed_lower(r: Mapping) -> float | None:
    """The lower bound a row claims, or None (see the module doc)."""
    if r["value"] is None or r["kind"] not in ("lower", "exact") or r["status"] not in ("ok", "timeout"):
        return None
    if r["kind"] == "lower":
        return float(r["value"])
    low = stats(r).get("lower")
    return None if low is None else float(low)


def audit_note(r: Mapping) -> dict:
    try:
        return mapping(r["audit"])
    except KeyError:
        return {}


def proven_lower(r: Mapping) -> float | None:
    """The lower bound a row proves, or None: its claim, once the audit has checked the
    witness (the smaller of the two numbers); a claim of 0 needs no witness."""
    claim = claimed_lower(r)
    if claim is None:
        return None
    if claim <= 0.0:
        return 0.0
    checked = audit_note(r).get("witness", {}).get("value")
    return None if checked is None else min(claim, float(checked))


def query_of(r: Mapping) -> Query:
    """The query a stored row answers."""
    p, _, q = r["p"].partition("->")
    target = parse_target(r["target"])
    return Query(p=p, q=q or None, target=target or "full", domain=json.loads(r["domain"]))


def best_lower(rows: Iterable[Mapping]) -> dict:
    """query_key -> (best proven lower bound, the row proving it)."""
    best: dict = {}
    for r in rows:
        v = proven_lower(r)
        if v is not None:
            k = query_key(r)
            if k not in best or v > best[k][0]:
                best[k] = (v, r)
    return best


def best_lower_values(rows: Iterable[Mapping]) -> dict:
    """query_key -> best proven lower bound."""
    return {k: v for k, (v, _) in best_lower(rows).items()}


def is_upper(r: Mapping) -> bool:
    """An upper bound with a value (of any status: the audit judges them all)."""
    return r["kind"] in ("upper", "exact") and r["value"] is not None and r["value"] == r["value"]


def tightness(r: Mapping, best: Mapping) -> float | None:
    """Upper bound / best lower bound of its query (``best`` from :func:`best_lower_values`);
    None for a lower bound, a row without value, or a query without a positive lower bound."""
    if not is_upper(r):
        return None
    lb = best.get(query_key(r))
    return r["value"] / lb if lb else None


def cost_s(r: Mapping) -> float | None:
    """What a result cost, in seconds, for comparing verifiers: the verifier's own time
    (``solve_s``), else, for a job without one (killed at its timeout, or stored by an
    older lipbench), the job's ``wall_s``."""
    s = r["solve_s"] if "solve_s" in r.keys() else None
    return s if s is not None else r["wall_s"]


def certifies(r: Mapping) -> bool:
    """May this row's value certify robustness?  An ``ok`` upper (or exact) bound on the
    global domain that was checked (``stats["certified"]`` is not False)."""
    return (r["status"] == "ok" and is_upper(r) and r["domain"] == GLOBAL
            and bool(stats(r).get("certified", True)))



def answer(rows: Iterable[Mapping]) -> tuple[Mapping | None, Mapping | None]:
    """The answer to one query: (the tightest sound bound, the cheapest bound within
    :data:`TIGHT_WITHIN` of it), each a row, among the upper and exact bounds of status
    ``ok`` or ``timeout`` (an anytime bound kept at the timeout is as sound; a row the
    audit found unsound has status ``unsound``); (None, None) when there is none."""
    def cost(r):
        c = cost_s(r)
        return c if c is not None and c == c else math.inf

    ok = [r for r in rows if r["status"] in ("ok", "timeout") and is_upper(r)]
    if not ok:
        return None, None
    tight = min(ok, key=lambda r: (r["value"], cost(r)))
    near = [r for r in ok if r["value"] <= tight["value"] * TIGHT_WITHIN]
    return tight, min(near, key=lambda r: (cost(r), r["value"]))
