"""Conformance checks for plug-ins, in the manner of scikit-learn's ``check_estimator``.

``check_verifier(name)`` and ``check_trainer(name)`` run a registered plug-in on tiny
networks and data and check the contract of :mod:`bench.api`; each raises
:class:`ConformanceError` listing every violation, or returns the list of checks that
ran.  The project's tests run both over every registered plug-in (``tests/
test_conformance.py``), so a new verifier or trainer needs no edit of an existing test:
register it, then ``python -c "from bench.testing import check_verifier;
check_verifier('mine')"``.

What a verifier must do:

- declare itself: a name, a ``kind`` in upper / lower / exact, ``norms`` a non-empty
  subset of {1, 2, inf}, parameters that resolve to their defaults and reject unknown
  names, wrong types and values outside their declared choices or bounds;
- answer only what it declares: ``supports`` refuses a norm outside ``norms`` (with a
  reason), and ``run`` never says ``unsupported`` where ``supports`` said yes;
- answer from the vocabulary: a :class:`~bench.api.Bound` whose status is one of
  ``ok``, ``timeout``, ``license_limit``, ``unsupported`` (with a reason) -- on these tiny
  networks ``error`` and ``oom`` are failures, and ``unsound`` is the audit's alone --
  with a finite value >= 0 when ``ok`` and the kind it declares (an ``exact`` verifier may
  answer ``upper`` when it does not close);
- be sound: on piecewise-linear networks (ReLU, Abs, MaxMin, a residual ReLU network: a
  verifier that reads only chains refuses it by the base class; with and without biases;
  the global domain and a box; full output and a class pair) its bound lies on the right
  side of the exact constant found by enumerating the linear regions
  (:mod:`bench.testing.exact`), within rtol 1e-6; on a tanh network, on the right
  side of a sampled Jacobian norm (upper) or of the trivial bound (lower);
- show its lower bounds: a ``lower`` value or an ``exact`` row's ``stats["lower"]`` comes
  with ``stats["witness"]``, a pair of inputs whose quotient gives it again
  (:mod:`bench.witness`), as the audit demands;
- honour a budget: run in a worker process with a timeout of a few seconds on a wider
  network, it returns by itself, never killed by the executor.

A plug-in may set ``quick_params`` (a dict of parameter values) so these checks run in
seconds (fewer samples, fewer epochs); they change its speed, never its soundness.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from ..api import KINDS, NORMS, STATUSES, Bound, Budget, Param, Query, UserError, p_name

RTOL, ATOL = 1e-6, 1e-9
TIMEOUT_S = 5.0
TINY_TIMEOUT_S = 300.0


class ConformanceError(AssertionError):
    """A plug-in breaks the contract; the message lists every violation."""


# ---------------------------------------------------------------- tiny networks
def _mlp(sizes, activation: str, bias: bool, seed: int) -> nn.Sequential:
    from ..network import build_net
    torch.manual_seed(seed)
    net = build_net({"hidden": list(sizes[1:-1]), "activation": activation, "bias": bias}, (sizes[0],), sizes[-1])
    return net.double().eval()


def _residual(seed: int) -> nn.Sequential:
    """3-4-(x + f(x))-3 with f = Linear-ReLU-Linear: a network that branches."""
    from ..modules import Sum
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Sum(nn.Sequential(), f), nn.Linear(4, 3)).double().eval()


def tiny_networks() -> dict[str, nn.Sequential]:
    """The networks of the checks: piecewise-linear ones (exact constants known by
    enumeration, through the residual add too) and one smooth one."""
    return {"relu 3-5-4-3": _mlp([3, 5, 4, 3], "relu", True, 0),
            "abs 3-4-4-3 bias-free": _mlp([3, 4, 4, 3], "abs", False, 1),
            "maxmin 3-4-3": _mlp([3, 4, 3], "maxmin", True, 2),
            "tanh 3-6-3": _mlp([3, 6, 3], "tanh", True, 3),
            "residual relu 3-4-4-3": _residual(4)}


BOX = {"center": [0.2, -0.1, 0.3], "radius": 0.5}
QUERIES = (Query(p=1), Query(p=2), Query(p="inf"), Query(p="inf", target=(0, 1)), Query(p=2, target=(2, 0)),
           Query(p="inf", domain=BOX), Query(p=2, domain=BOX))


def _q(q: Query) -> str:
    t = "" if not q.is_pair else f" pair {q.target}"
    d = "" if q.domain == "global" else " box"
    return f"p={p_name(q.p)}{t}{d}"


_REFERENCE: dict = {}


def _reference(module: nn.Sequential, q: Query) -> tuple[str, float]:
    """("exact", constant) for a piecewise-linear network, else ("sampled", a sampled
    lower bound) -- the yardstick of soundness (memoised per network and query)."""
    from ..network import net_hash
    key = (net_hash(module), q)
    if key not in _REFERENCE:
        _REFERENCE[key] = _compute_reference(module, q)
    return _REFERENCE[key]


def _compute_reference(module: nn.Sequential, q: Query) -> tuple[str, float]:
    from .exact import exact_lipschitz, norm
    target = q.target if q.is_pair else None
    if q.domain == "global":
        lo, hi = -100.0, 100.0
    else:
        lo, hi = q.box()
    try:
        return "exact", exact_lipschitz(module, q.p, target, lo, hi)
    except TypeError:  # not piecewise linear: the largest Jacobian norm at sampled points
        g = torch.Generator().manual_seed(0)
        n = module[0].in_features
        lo_t = torch.as_tensor(np.broadcast_to(lo, n).copy())
        hi_t = torch.as_tensor(np.broadcast_to(hi, n).copy())
        if q.domain == "global":
            lo_t, hi_t = lo_t.clamp(min=-3.0), hi_t.clamp(max=3.0)
        X = lo_t + (hi_t - lo_t) * torch.rand(512, n, generator=g, dtype=torch.float64)
        J = torch.func.vmap(torch.func.jacrev(module))(X).detach().numpy()
        return "sampled", max(norm(Jk, q.p, target) for Jk in J)


def _trivial_product(module: nn.Sequential, q: Query) -> float:
    """An independent trivial bound (plain numpy, no rounding margin) for checking lower
    bounds on networks without an enumerable exact constant; activations here are 1-Lipschitz."""
    Ws = [m.weight.detach().numpy() for m in module if isinstance(m, nn.Linear)]
    if q.is_pair:
        i, j = q.target
        qd = {1.0: np.inf, 2.0: 2.0, math.inf: 1.0}[q.p]
        last = float(np.linalg.norm(Ws[-1][i] - Ws[-1][j], qd))
    else:
        last = float(np.linalg.norm(Ws[-1], {1.0: 1, 2.0: 2, math.inf: np.inf}[q.p]))
    return last * math.prod(float(np.linalg.norm(W, {1.0: 1, 2.0: 2, math.inf: np.inf}[q.p])) for W in Ws[:-1])


# ---------------------------------------------------------------- declarations
def _check_declared(cls, failures: list[str]) -> None:
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        failures.append("has no name")
    if not isinstance(cls.version, str):
        failures.append(f"version {cls.version!r} is not a string")
    try:
        decl = cls.declared()
        defaults = cls.resolve_params({})
    except Exception as e:
        failures.append(f"its declared parameters do not resolve to their defaults: {type(e).__name__}: {e}")
        return
    for k, p in decl.items():
        try:
            p.check(cls.name, k, p.default)
        except UserError as e:
            failures.append(f"parameter {k!r}: its default is not allowed ({e})")
    try:
        cls.resolve_params({"no_such_parameter_xyz": 1})
        failures.append("accepts an unknown parameter 'no_such_parameter_xyz'")
    except UserError:
        pass
    for k, p in decl.items():
        bad = _bad_value(p)
        if bad is None:
            continue
        try:
            cls.resolve_params({k: bad})
            failures.append(f"parameter {k!r} accepts {bad!r}, outside what it declares ({p.describe_range()})")
        except UserError:
            pass
    quick = getattr(cls, "quick_params", {}) or {}
    try:
        cls.resolve_params(quick)
    except UserError as e:
        failures.append(f"quick_params are not valid parameters: {e}")
    return defaults


def _bad_value(p: Param):
    """A value the declaration must refuse, or None if nothing is refused."""
    if p.choices:
        return "no-such-choice" if isinstance(p.choices[0], str) else -12345.0
    for b, step in ((p.gt, 0), (p.ge, -1), (p.lt, 0), (p.le, 1)):
        if b is not None:
            v = b + step
            return int(v) if isinstance(p.default, int) and not isinstance(p.default, bool) else float(v)
    if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
        return "not a number"
    return None


# ---------------------------------------------------------------- verifiers
def check_verifier(name: str, params: dict | None = None) -> list[str]:
    """Check the registered verifier ``name`` (with ``params`` over its ``quick_params``);
    returns the checks that ran, raises :class:`ConformanceError` listing violations."""
    from .. import verify
    from ..api import UserError
    from ..registry import get_verifier
    cls = get_verifier(name)
    import os
    import sys
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if cls.__module__ == "__main__" and not (main_file and os.path.isfile(main_file)):
        raise UserError(f"verifier {name!r} is defined in an interactive session (a notebook, python -c or stdin), "
                        f"which the checks' worker processes cannot import: put the class in a .py file and load it "
                        f"with bench.registry.import_plugin('that_file.py')")
    failures: list[str] = []
    ran = ["declarations"]
    _check_declared(cls, failures)
    if cls.kind not in KINDS:
        failures.append(f"kind {cls.kind!r} is not one of {', '.join(KINDS)}")
    norms = tuple(cls.norms)
    if not norms or any(p not in NORMS for p in norms):
        failures.append(f"norms {norms!r} must be a non-empty subset of (1.0, 2.0, inf)")
    if failures:
        raise ConformanceError(f"verifier {name!r} breaks the contract:\n  - " + "\n  - ".join(failures))
    P = {**(getattr(cls, "quick_params", {}) or {}), **(params or {})}
    cls(**P)  # the quick parameters construct it
    if cls.missing():
        b = verify(tiny_networks()["relu 3-5-4-3"], name, p=norms[0], **P)
        if b.status != "not_installed" or not b.error:
            failures.append(f"missing requirements {cls.missing()}, yet the harness said {b.status!r}")
        ran.append("not installed: says so")
        if failures:
            raise ConformanceError(f"verifier {name!r} breaks the contract:\n  - " + "\n  - ".join(failures))
        return ran
    # 1. through the harness, in a worker process, with a timeout on a wider network
    wide = _mlp([8, 48, 48, 4], "relu", True, 4)
    b = verify(wide, name, p=norms[0], timeout=TIMEOUT_S, **P)
    own = f"{b.solve_s:.2f} s of its own" if b.solve_s is not None else "no time of its own (killed)"
    ran.append(f"budget of {TIMEOUT_S:g} s in a worker: {b.status} after {own}")
    if b.status == "timeout" and (b.error or "").startswith("killed"):
        failures.append(f"with a {TIMEOUT_S:g} s budget it had to be killed ({b.error}); a verifier stops itself "
                        f"at its budget (budget.timeout_s) and returns its status")
    elif b.status not in ("ok", "timeout", "unsupported", "license_limit"):
        failures.append(f"with a {TIMEOUT_S:g} s budget on a 8-48-48-4 ReLU network: status {b.status} ({b.error})")
    if failures:
        raise ConformanceError(f"verifier {name!r} breaks the contract:\n  - " + "\n  - ".join(failures))
    # 2. every tiny network and query, in one worker process (a verifier that hangs or
    #    crashes fails the check instead of stopping it)
    from ..registry import entry_of
    out = _in_worker(_tiny_checks, (name, P, entry_of(cls.__module__)), TINY_TIMEOUT_S)
    if isinstance(out, str):
        failures.append(f"the tiny-network checks: {out}")
    else:
        ran += out[0]
        failures += out[1]
    if failures:
        raise ConformanceError(f"verifier {name!r} breaks the contract:\n  - " + "\n  - ".join(failures))
    return ran


def _tiny_checks(name: str, P: dict, entry: str) -> tuple[list[str], list[str]]:
    from ..network import walk
    from ..registry import get_verifier, import_plugin, load_plugins
    import_plugin(entry)
    load_plugins()
    cls = get_verifier(name)
    verifier = cls(**P)
    norms = tuple(cls.norms)
    budget = Budget(60.0, "cpu", 1)
    ran, failures = [], []
    for net_name, module_ in tiny_networks().items():
        net = walk(module_, None)
        for q in QUERIES:
            where = f"{net_name}, {_q(q)}"
            reason = verifier.supports(net, q)
            if q.p not in norms and not reason:
                failures.append(f"{where}: supports() accepts p={p_name(q.p)}, which the verifier does not declare")
            if reason is not None and (not isinstance(reason, str) or not reason.strip()):
                failures.append(f"{where}: supports() refuses without a reason ({reason!r})")
            if reason:
                continue
            try:
                b = verifier.run(net, q, budget)
            except Exception as e:
                failures.append(f"{where}: run raised {type(e).__name__}: {e}")
                continue
            ran.append(where)
            failures += _check_bound(cls, b, module_, q, where)
    return ran, failures


def _in_worker(fn, args: tuple, timeout: float):
    """``fn(*args)`` in a fresh worker process; a string saying what went wrong if it
    does not answer in time or dies."""
    from ..executors.local import context
    ctx = context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
    proc.start()
    t0 = time.perf_counter()
    send.close()
    try:
        if recv.poll(timeout):
            try:
                return recv.recv()
            except EOFError:
                proc.join(5)
                dt = time.perf_counter() - t0
                import sys
                main = getattr(sys.modules.get("__main__"), "__file__", None)
                hint = (f"; if {main} starts the checks outside `if __name__ == '__main__':`, each worker "
                        f"process runs them again on import (multiprocessing's rule): guard them"
                        if main and dt < 5 else "")
                return f"the worker died after {dt:.1f} s (exit code {proc.exitcode}){hint}"
        return f"no answer within {timeout:g} s"
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def _child(conn, fn, args):
    torch.set_num_threads(1)
    conn.send(fn(*args))
    conn.close()


def _check_bound(cls, b, module, q: Query, where: str) -> list[str]:
    if not isinstance(b, Bound):
        return [f"{where}: run returned {type(b).__name__}, not a Bound"]
    if b.status not in STATUSES:
        return [f"{where}: status {b.status!r} is not in the vocabulary {STATUSES}"]
    if b.status == "unsupported":
        return [f"{where}: run says unsupported ({b.error}) where supports() accepted; "
                f"say it in supports() so that the scheduler need not start a worker"]
    if b.status in ("error", "oom", "unsound", "not_installed"):
        return [f"{where}: status {b.status} ({b.error})"]
    if b.status != "ok":
        return []
    out = []
    if b.value is None or not math.isfinite(b.value) or b.value < 0:
        return [f"{where}: status ok with value {b.value!r} (must be a finite number >= 0)"]
    if b.kind != cls.kind and not (cls.kind == "exact" and b.kind == "upper"):
        out.append(f"{where}: kind {b.kind!r}, but the verifier declares {cls.kind!r}")
    how, ref = _reference(module, q)
    v = b.value
    if b.kind in ("upper", "exact") and v < ref * (1 - RTOL) - ATOL:
        out.append(f"{where}: UNSOUND upper bound {v:.9g} below the {how} constant {ref:.9g}")
    if b.kind in ("lower", "exact"):
        top = ref if how == "exact" else _trivial_product(module, q)
        if v > top * (1 + RTOL) + ATOL:
            out.append(f"{where}: UNSOUND lower bound {v:.9g} above the {'exact constant' if how == 'exact' else 'trivial bound'} {top:.9g}")
        claim = v if b.kind == "lower" else (b.stats or {}).get("lower")
        if claim is not None:
            from ..network import walk
            from ..witness import confirm
            _, why = confirm(module, walk(module).input_shape, q, float(claim), (b.stats or {}).get("witness"))
            if why:
                out.append(f"{where}: UNWITNESSED lower bound {claim:.9g}: {why} (see bench.witness)")
    return out


# ---------------------------------------------------------------- trainers
def check_trainer(name: str, params: dict | None = None) -> list[str]:
    """Check the registered trainer ``name``: declarations, and a training run on tiny
    synthetic data that returns a network the harness can walk, with the metrics it
    promises (its clean accuracy that of the network it returns, as the harness measures
    it), the same network for the same seed."""
    from ..data import load
    from ..network import net_hash, walk
    from ..registry import get_trainer
    cls = get_trainer(name)
    failures: list[str] = []
    ran = ["declarations"]
    _check_declared(cls, failures)
    if failures or cls.missing():
        if failures:
            raise ConformanceError(f"trainer {name!r} breaks the contract:\n  - " + "\n  - ".join(failures))
        return ran + ["not installed: skipped"]
    P = {**(getattr(cls, "quick_params", {}) or {}), **(params or {})}
    ds = load({"name": "synthetic", "n": 90, "dim": 3, "classes": 3})
    arch = {"hidden": [6], "activation": "relu"}
    hashes = []
    for attempt in range(2):
        torch.manual_seed(7)
        np.random.seed(7)
        try:
            out = cls(**P).train(ds, arch, 7, Budget(60.0, "cpu", 1))
        except Exception as e:
            failures.append(f"train raised {type(e).__name__}: {e}")
            break
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module)
                and isinstance(out[1], dict)):
            failures.append(f"train returned {type(out).__name__}, not (nn.Module, metrics dict)")
            break
        module, metrics = out
        module = module.cpu().eval()
        try:
            net = walk(module, ds.input_shape)
            if net.out_dim != ds.n_classes:
                failures.append(f"the network has {net.out_dim} outputs for {ds.n_classes} classes")
        except Exception as e:
            failures.append(f"the trained network cannot be walked: {e}")
        acc = metrics.get("clean_acc")
        if not isinstance(acc, float) or not 0.0 <= acc <= 1.0:
            failures.append(f"metrics['clean_acc'] is {acc!r}, not a test accuracy in [0, 1]")
        else:
            from ..training import measure_accuracy
            m = measure_accuracy(module, ds, dict(metrics))
            if m.get("accuracy_disagrees"):
                failures.append(f"metrics['clean_acc'] is {acc:.4f}, but the returned network's test accuracy is "
                                f"{m['clean_acc']:.4f} (measure the network you return, after every change to it)")
        if not isinstance(metrics.get("train_s"), (int, float)) or metrics["train_s"] < 0:
            failures.append(f"metrics['train_s'] is {metrics.get('train_s')!r}, not seconds >= 0")
        hashes.append(net_hash(module))
        ran.append(f"trained ({attempt + 1})")
    if len(hashes) == 2 and hashes[0] != hashes[1]:
        failures.append("two runs with the same seed gave different networks (seed torch and numpy from `seed`)")
    if failures:
        raise ConformanceError(f"trainer {name!r} breaks the contract:\n  - " + "\n  - ".join(failures))
    return ran
