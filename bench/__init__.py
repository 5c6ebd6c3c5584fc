"""lipbench: a benchmarking suite for the Lipschitz verification of neural networks."""
__version__ = "0.1.0"

from .api import Bound, Budget, Query, Trainer, UserError, Unsupported, Verifier  # noqa: E402
from .registry import register, register_activation  # noqa: E402

__all__ = ["Bound", "Budget", "Query", "Trainer", "UserError", "Unsupported", "Verifier", "register",
           "register_activation", "verify", "lower_bound"]


def verify(net, verifier: str = "trivial", p=2, target=None, input_shape=None, timeout=None,
           domain="global", device: str = "cpu", threads: int = 1, **params) -> Bound:
    """Bound the Lipschitz constant of ``net`` (a torch ``nn.Sequential``) with the
    registered verifier ``verifier``; ``params`` are the verifier's parameters.

    ``target`` is None (the whole output) or a class pair ``(i, j)`` (the margin
    f_i - f_j); ``input_shape`` is needed only when the network starts with a conv
    layer.  With ``timeout`` (seconds) the job runs in a worker process that is killed
    when the time is up (status ``timeout``); without it, in this process."""
    from .executors.local import run_one
    return run_one(net, verifier, Query(p=p, target=target or "full", domain=domain), input_shape,
                   timeout, device, threads, params)


def lower_bound(net, p=2, target=None, input_shape=None, timeout=None, **params) -> Bound:
    """A sound lower bound (verifier ``lower``); same arguments as :func:`verify`."""
    return verify(net, "lower", p=p, target=target, input_shape=input_shape, timeout=timeout, **params)
