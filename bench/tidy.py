"""Tidy data: one pandas DataFrame row per stored result, with its network's and its
job's columns and the derived numbers, so that every table and figure is a group-by of
one frame (and ``export`` writes that frame).  What a row proves, the best lower bound
and tightness are :mod:`bench.rows`' rules, applied here once per row.

Columns, beyond the store's result columns (see :data:`COLUMNS`):

``trainer, trainer_params, dataset, seed, clean_acc``
    the network's, from its training job;
``arch, activation, bias, width, depth``
    its architecture (``arch``: its layers, e.g. "mlp64-64", "conv16x3s2-32x3s2-fc100"
    (:func:`bench.network.arch_shape`); width the widest hidden dense layer, depth the
    number of hidden dense layers; None for a network not built from ``hidden``);
``method``
    the training method as a reader names it: the trainer with the norm it trains for
    where it has one (or the family it builds, "construct identity"), x the activation
    where it is not ReLU ("tb-penalty p=2 x abs", "standard x tanh");
``query``
    "p=2" or "p=inf, 3-8";
``best_lower``
    the best proven lower bound of the row's query (:func:`bench.rows.best_lower`);
``tightness``
    value / best_lower for an upper or exact bound (:func:`bench.rows.tightness`);
``cost_s``
    :func:`bench.rows.cost_s`;
``anytime``
    a bound kept at a timeout (status ``timeout`` with a value);
``settled``
    the query is answered: an ``ok`` row of kind ``exact``, or an ``ok`` upper bound
    within :data:`bench.rows.TIGHT_WITHIN` (10%) of the best lower bound.
"""
from __future__ import annotations

import json

from .api import p_name, parse_p
from .network import arch_shape
from .rows import TIGHT_WITHIN, best_lower_values, cost_s, mapping, query_key, tightness

#: the frame's columns, in order
COLUMNS = ["network", "method", "trainer", "activation", "arch", "width", "depth", "bias", "dataset", "seed",
           "clean_acc", "verifier", "verifier_params", "p", "target", "query", "domain", "status", "kind",
           "value", "best_lower", "tightness", "settled", "anytime", "cost_s", "solve_s", "wall_s", "cpu_s",
           "peak_mem_mb", "device", "threads", "trainer_params", "net_hash", "error", "audit", "stats"]


def _arch(trainer_params: str) -> dict:
    a = mapping(trainer_params).get("arch", {})
    return a if isinstance(a, dict) else {}


def method_label(trainer: str, activation: str | None, p=None, family: str | None = None) -> str:
    """How a training method is named on every page: the trainer (with the norm it
    trains for, where it has one: "tb-penalty p=2"; with the family of a trainer that
    builds networks from one: "construct identity"), x the activation where it is not
    ReLU."""
    name = trainer if p is None else f"{trainer} p={p_name(parse_p(p))}"
    name = name if family is None else f"{name} {family}"
    return name if activation in (None, "relu") else f"{name} x {activation}"


def _trained(trainer_params: str, key: str):
    """A trainer parameter of a stored network (``p``, ``family``), or None."""
    return mapping(trainer_params).get(key)


def _plain(js: str | None):
    """A stored JSON scalar as itself ('"digits"' -> 'digits'); a mapping as sorted JSON."""
    if js is None:
        return None
    try:
        v = json.loads(js)
    except (TypeError, ValueError):
        return js
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def dataset_name(value) -> str:
    """A data set's name from the frame's ``dataset`` column: 'digits', or the name inside
    a mapping ('{"name": "synthetic", ...}')."""
    spec = mapping(value)
    return str(spec.get("name", value)) if spec else str(value)


def varying(params: list[dict], skip=()) -> list[str]:
    """The keys (sorted; those in ``skip`` apart) whose values differ between parameter
    mappings: what names a grid point among its neighbours."""
    keys = sorted({k for p in params for k in p} - set(skip))
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params}) > 1]


def query_label(p: str, target: str) -> str:
    return f"p={p}" if target == "full" else f"p={p}, {target}"


def frame(store_or_dir):
    """The tidy DataFrame of a store (a :class:`bench.store.Store` or its folder)."""
    import pandas as pd

    from .store import Store
    store = Store(store_or_dir, create=False) if isinstance(store_or_dir, str) else store_or_dir
    try:
        rows = store.joined()
    finally:
        if isinstance(store_or_dir, str):
            store.close()
    best = best_lower_values(rows)
    out = []
    for r in rows:
        a = _arch(r.get("trainer_params"))
        hidden = a.get("hidden") if isinstance(a.get("hidden"), list) else None
        act = a.get("activation", "relu") if a else None
        bl = best.get(query_key(r))
        t = tightness(r, best)
        d = dict(r)
        d.update(
            method=method_label(r["trainer"], act, _trained(r.get("trainer_params"), "p"),
                                _trained(r.get("trainer_params"), "family")), activation=act,
            arch=arch_shape(a) if a else None,
            width=max(hidden) if hidden else None, depth=len(hidden) if hidden is not None else None,
            bias=a.get("bias", True) if a else None, query=query_label(r["p"], r["target"]),
            dataset=_plain(r["dataset"]), domain=_plain(r["domain"]),
            best_lower=bl, tightness=t, cost_s=cost_s(r),
            anytime=r["status"] == "timeout" and r["value"] is not None,
            settled=r["status"] == "ok" and (r["kind"] == "exact" or (t is not None and t <= TIGHT_WITHIN)))
        out.append(d)
    df = pd.DataFrame(out, columns=COLUMNS)
    for c in ("width", "depth", "seed", "threads"):
        df[c] = df[c].astype("Int64")
    return df


#: what separates a training method from the queries it is judged on in a headline row
AT = ", at "


def norm_label(p: str, target: str) -> str:
    """The queries of one norm: "p=2", or "p=2, class pairs" for class-pair margins."""
    return f"p={p}" if target == "full" else f"p={p}, class pairs"


def row_order(label: str) -> tuple:
    """Headline rows grouped by norm (p = 2 first, then inf, then 1; class pairs after the
    whole output), methods in order within a norm: the first page shows every method at
    p = 2."""
    m, _, at = label.partition(AT)
    p = at.split(",")[0].removeprefix("p=")
    return (", class pairs" in at, {"2": 0, "inf": 1, "1": 2}.get(p, 3), m)


def per_norm(df):
    """The frame with ``method`` read per query norm ("tb-penalty p=2 x abs, at p=2";
    class-pair margins apart: "..., at p=2, class pairs"): a headline of it compares
    verifiers on comparable queries, never a median that pools p = 2 with p = inf."""
    if not len(df):
        return df
    return df.assign(method=[f"{m}{AT}{norm_label(p, t)}" for m, p, t in zip(df.method, df.p, df.target)])


#: statuses that mean "this verifier does not apply here", not "it tried and failed"
NOT_APPLICABLE = ("unsupported", "not_installed")


def headline(df):
    """The report's first table, long form: one row per (method, verifier) with the
    number of results, the median and interquartile range of tightness (upper bound /
    best lower bound, over the results that have one), the median cost, the share of
    settled results among the queries it supports (``unsupported`` and ``not_installed``
    rows left out), the statuses, the number of unsound results, and ``best``: the
    cheapest verifier (median cost) whose median tightness is within ``TIGHT_WITHIN`` of
    the method's best median, among the verifiers with no unsound result on the method's
    networks (an unsound bound is "tight" only because it is wrong).  "Within" is judged
    on the same results: v qualifies when, against every other verifier, its median
    tightness over the networks and queries both answered is within ``TIGHT_WITHIN`` of
    the other's (:func:`_within`).
    Lower-bound verifiers are left out (their tightness is not defined)."""
    import pandas as pd
    up = df[df.kind.isin(["upper", "exact"]) | df.status.isin(NOT_APPLICABLE)]
    up = up[~up.verifier.isin(df[df.kind == "lower"].verifier.unique())]
    rows = []
    for (method, verifier), g in up.groupby(["method", "verifier"], sort=True):
        applicable = g[~g.status.isin(NOT_APPLICABLE)]
        t = applicable.tightness.dropna()
        rows.append({
            "method": method, "verifier": verifier, "n": len(g), "applicable": len(applicable),
            "tight_median": t.median() if len(t) else None,
            "tight_q25": t.quantile(0.25) if len(t) else None, "tight_q75": t.quantile(0.75) if len(t) else None,
            "cost_median_s": applicable.cost_s.median() if len(applicable) else None,
            # of the queries it supports: a query it refuses (or cannot run) is not one it failed
            "settled_share": float(applicable.settled.mean()) if len(applicable) else 0.0,
            "statuses": ", ".join(f"{k} {v}" for k, v in g.status.value_counts().sort_index().items()),
            "unsound": int((g.status == "unsound").sum())})
    out = pd.DataFrame(rows, columns=["method", "verifier", "n", "applicable", "tight_median", "tight_q25",
                                      "tight_q75", "cost_median_s", "settled_share", "statuses", "unsound"])
    out["best"] = False
    measured = up[~up.status.isin(NOT_APPLICABLE)].dropna(subset=["tightness"])
    for method, g in out.groupby("method"):
        g = g[g.unsound == 0].dropna(subset=["tight_median"])
        if not len(g):
            continue
        m = measured[measured.method == method]
        per = {v: r.groupby(["network", "query"]).tightness.median() for v, r in m.groupby("verifier")}
        good = g[[_within(v, [u for u in g.verifier if u != v], per) for v in g.verifier]]
        if not len(good):   # the pairwise comparisons contradict each other: fall back to the medians
            good = g[g.tight_median <= g.tight_median.min() * TIGHT_WITHIN]
        out.loc[good.cost_median_s.idxmin(), "best"] = True
    return out


def _within(v, others, per) -> bool:
    """v is within ``TIGHT_WITHIN`` of every other verifier on the queries both answered
    (median tightness over the same networks and queries): a verifier that answers only
    the easy queries (lipsdp: p = 2) is never compared by its median with another's over
    harder ones (p = inf too)."""
    for u in others:
        common = per[v].index.intersection(per[u].index)
        if len(common) and per[v][common].median() > TIGHT_WITHIN * per[u][common].median():
            return False
    return True


def _networks(label: str) -> str:
    """"tb-penalty p=2 x abs, at p=2" -> "tb-penalty p=2 x abs networks at p=2"."""
    m, _, at = label.partition(AT)
    return f"{m} networks" + (f" at {at}" if at else "")


def answer_parts(h) -> list[str]:
    """The paper's question, answered per headline row of networks trained for a norm (a
    method named "... p=P ...") at that norm: is the trivial bound within 10% of the best
    sound lower bound, and how much cheaper is it than the cheapest other verifier as
    tight."""
    import re
    parts = []
    for label, g in h.groupby("method", sort=True):
        m, _, at = label.partition(AT)
        trained = re.search(r"\bp=(\w+)", m)
        if not trained or at != f"p={trained.group(1)}" or "trivial" not in set(g.verifier):
            continue
        tb = g[g.verifier == "trivial"].iloc[0]
        if tb.tight_median is None or tb.tight_median != tb.tight_median:
            continue
        within = tb.tight_median <= TIGHT_WITHIN
        as_tight = g[(g.verifier != "trivial") & (g.unsound == 0) & g.tight_median.notna()
                     & (g.tight_median <= max(tb.tight_median, 1.0) * TIGHT_WITHIN)]
        cheaper = ""
        if within and len(as_tight) and tb.cost_median_s:
            o = as_tight.loc[as_tight.cost_median_s.idxmin()]
            cheaper = f", {o.cost_median_s / tb.cost_median_s:.3g}x cheaper than {o.verifier}, the cheapest as tight"
        parts.append(f"on {m} networks at the norm they were trained for ({at}), the trivial bound is "
                     f"{'within' if within else 'not within'} 10% of the best sound lower bound (median "
                     f"{tb.tight_median:.3g}, {tb.settled_share:.0%} of queries settled){cheaper}")
    return parts


def best_parts(h) -> list[str]:
    """Per headline row, the verifier highlighted (the cheapest within 10% of the
    tightest), how tight and how fast it is."""
    return [f"on {_networks(r.method)}, {r.verifier} is the cheapest verifier within 10% of the tightest "
            f"(median upper / best lower {r.tight_median:.3g}, median {r.cost_median_s:.3g} s)"
            for _, r in h[h.best].iterrows()]


def sentence(parts: list[str]) -> str:
    """Clauses joined into one sentence, capitalised; "" for none."""
    if not parts:
        return ""
    s = "; ".join(parts)
    return s[0].upper() + s[1:] + "."


def headline_sentence(h) -> str:
    """The headline table's answer in words: first the paper's question
    (:func:`answer_parts`), then the verifier highlighted per row (:func:`best_parts`)."""
    return (sentence(answer_parts(h) + best_parts(h))
            or "No verifier has an upper bound with a proven lower bound to compare against yet.")


#: trainer parameters that never tell two settings of one method apart
_NOT_SETTINGS = {"arch"}


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def networks_frame(nets):
    """One row per stored network (``Store.networks()`` rows), its stored JSON read once:
    ``network, method, trainer, activation, arch, dataset, seed, clean_acc, train_s``,
    ``params`` (the trainer's parameters, a dict), ``metrics`` (the training record, a
    dict), ``dataset_spec`` (the data set as the suite gave it: a name or a dict),
    ``path``, ``description`` and ``setting``: the parameters that
    differ between the networks of the same method in this store ("lam=0.05,
    margin_eps=0.141"; the architecture first where a method has several; "" where a method
    has one setting), the name of a grid point."""
    import pandas as pd
    rows = []
    for n in nets:
        n = dict(n)
        tp, metrics = mapping(n.get("trainer_params")), mapping(n.get("metrics"))
        try:
            spec = json.loads(n.get("dataset") or '""')
        except (TypeError, ValueError):
            spec = n.get("dataset")
        a = tp.get("arch", {}) if isinstance(tp.get("arch"), dict) else {}
        act = a.get("activation", "relu") if a else None
        rows.append({"network": n["id"], "method": method_label(n["trainer"], act, tp.get("p"), tp.get("family")),
                     "trainer": n["trainer"], "activation": act, "arch": arch_shape(a) if a else None,
                     "dataset": _plain(n.get("dataset")), "seed": n.get("seed"), "clean_acc": n.get("clean_acc"),
                     "train_s": metrics.get("train_s"), "params": tp, "metrics": metrics, "dataset_spec": spec,
                     "path": n.get("path"), "description": n.get("description")})
    df = pd.DataFrame(rows, columns=["network", "method", "trainer", "activation", "arch", "dataset", "seed",
                                     "clean_acc", "train_s", "params", "metrics", "dataset_spec", "path",
                                     "description"])
    setting = {}
    for _, g in df.groupby("method"):
        keys = varying(list(g.params), skip=_NOT_SETTINGS)
        arch = g.arch.nunique(dropna=False) > 1   # architectures apart: one method, several sizes
        for r in g.itertuples():
            setting[r.network] = ", ".join(([str(r.arch)] if arch else [])
                                           + [f"{k}={_short(r.params.get(k))}" for k in keys])
    df["setting"] = df.network.map(setting).fillna("")
    return df
