"""lipbench: a benchmarking suite for the Lipschitz verification of neural networks."""
from ._version import __version__  # noqa: F401

from .api import Bound, Budget, Query, Trainer, UserError, Unsupported, Verifier  # noqa: E402
from .registry import register, register_activation  # noqa: E402

__all__ = ["Bound", "Budget", "Query", "Trainer", "UserError", "Unsupported", "Verifier", "register",
           "register_activation", "verify", "lower_bound", "results"]


def results(out_dir: str):
    """The tidy pandas DataFrame of a results folder: one row per result, with the
    network's and the job's columns, the best lower bound, tightness and cost
    (:mod:`bench.tidy` lists the columns)."""
    from .tidy import frame
    return frame(out_dir)


def verify(net, verifier: str = "trivial", p=2, target=None, input_shape=None, timeout=None,
           domain="global", device: str = "cpu", threads: int = 1, **params) -> Bound:
    """Bound the Lipschitz constant of ``net`` with the registered verifier ``verifier``;
    ``params`` are the verifier's parameters.  ``net``: any torch ``nn.Module`` (an
    ``nn.Sequential``, or a module whose forward is code, e.g. with residual adds: it is
    traced), the path of an ONNX file (whose input shape it gives) or of a saved module
    (``.pt`` / ``.pth``: a whole module or TorchScript), or ``"package.module:attribute"``
    (:mod:`bench.sources`).  ``domain``: "global", a box ``{"center": [...], "radius": r}``
    or ``{"lower": [...], "upper": [...]}``.

    ``target`` is None (the whole output) or a class pair ``(i, j)`` (the margin
    f_i - f_j); ``input_shape`` (one input's shape, without the batch dimension) is
    needed unless the network starts with a Linear layer or is an ONNX file that gives it
    (a conv, a BatchNorm, a module of your own cannot tell it).  With ``timeout`` (seconds) the job runs in a worker process that is killed
    when the time is up (status ``timeout``); without it, in this process.  A verifier
    that raises gives status ``error`` with the exception's traceback in ``Bound.traceback``."""
    return _verify(net, verifier, Query(p=p, target=target or "full", domain=domain), input_shape,
                   timeout, device, threads, params)


def lower_bound(net, p=2, target=None, input_shape=None, timeout=None, **params) -> Bound:
    """A sound lower bound (verifier ``lower``); same arguments as :func:`verify`."""
    return verify(net, "lower", p=p, target=target, input_shape=input_shape, timeout=timeout, **params)


def _verify(net, verifier: str, query: Query, input_shape, timeout, device, threads, params) -> Bound:
    """The API's path: one in-memory network, in this process without a timeout
    (:class:`~bench.executors.base.InlineExecutor`), else in a worker process killed at
    the timeout (:class:`~bench.executors.local.LocalExecutor`)."""
    import os
    import re
    import tempfile

    from . import network as netmod
    from .executors.base import InlineExecutor, Task
    from .executors.local import LocalExecutor
    from .jobs import VerifyJob
    from .registry import get_verifier
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
        raise UserError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a whole number >= 1, got {threads!r}")
    if not isinstance(device, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?", device):
        raise UserError(f"device must be cpu, cuda, cuda:K or auto, got {device!r}")
    cls = get_verifier(verifier)
    params = cls.resolve_params(params)  # a bad parameter is the caller's error: raise it here
    try:
        net, input_shape = netmod.read(net, input_shape)
        walked = netmod.walk(net, input_shape)
    except Unsupported as e:
        return Bound(None, cls.kind, "unsupported", error=str(e))
    net = walked.module   # what was read: a traced module's layers as a tree of modules
    done: list = []
    collect = lambda t, o: done.append(o)  # noqa: E731
    budget = Budget(timeout, device, threads)
    if timeout is None:
        job = VerifyJob(cls.name, cls.version, params, query, "api", "", "", cls.kind, key="api")
        InlineExecutor(net_module=(net, walked.input_shape)).run([Task(job, budget)], on_done=collect)
    else:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "net.pt")
            netmod.save(net, walked.input_shape, path)
            mods = {type(m).__module__ for m in net.modules()} | {cls.__module__}
            from .registry import entry_of
            plugins = tuple(sorted(entry_of(m) for m in mods if m != "__main__" and not m.startswith("torch.")))
            job = VerifyJob(cls.name, cls.version, params, query, "api", "", path, cls.kind, plugins=plugins,
                            key="api")
            LocalExecutor(1).run([Task(job, budget)], on_done=collect)
    return done[0].bound()
