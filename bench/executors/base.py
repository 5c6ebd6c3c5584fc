"""What every executor shares: a :class:`Task` (a job, the resources granted to it, a
label for progress lines) and the :class:`Executor` protocol.

An executor runs tasks and reports each one back *in the driver's process*:
``on_start(task)`` when it starts, ``on_done(task, outcome)`` when it ends (the scheduler
writes the store there, one transaction per job, so a killed driver resumes exactly).
``on_done`` may return further tasks, which the executor runs next: this is how a
network's verification jobs follow its training job as soon as it ends (a dependency
graph, not phases with a barrier).  An executor owns how jobs run (processes, machines),
hard timeouts (a job over its budget ends as ``timeout``) and the mapping of worker deaths
to ``oom`` / ``error``.  Executors:

- :class:`bench.executors.local.LocalExecutor`: a fresh worker process per job on this
  machine, killed at the timeout;
- :class:`bench.executors.ray.RayExecutor`: each job a Ray task (on this machine's Ray
  instance or a cluster's), run there by a local executor of one worker;
- :class:`InlineExecutor`: in the calling process, no timeout (the Python API without
  ``timeout``; tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from ..api import Budget
from ..jobs import Job, Outcome

OnStart = Callable[["Task"], None]
OnDone = Callable[["Task", Outcome], "Iterable[Task] | None"]  # returns tasks to run next


@dataclass
class Task:
    """One job to run with its budget.  An executor may narrow the budget (e.g. give a
    "cuda" job the GPU "cuda:k" it holds)."""

    job: Job
    budget: Budget
    label: str = ""

    @property
    def key(self) -> str:
        return self.job.key


class Executor(Protocol):
    def run(self, tasks: Iterable[Task], on_start: OnStart | None = None, on_done: OnDone | None = None) -> None:
        """Run every task and every task that ``on_done`` returns; call ``on_start`` /
        ``on_done`` in this process as each starts and ends.  Returns when all have ended;
        on an exception (Ctrl-C) leaves nothing running."""

    def describe(self) -> dict:
        """What the run's provenance records of the executor (its name, its resources)."""


class InlineExecutor:
    """Runs each task in this process, one after the other, without a timeout."""

    def __init__(self, net_module=None):
        self.net_module = net_module  # (module, input_shape): verify this in-memory network

    def run(self, tasks: Iterable[Task], on_start: OnStart | None = None, on_done: OnDone | None = None) -> None:
        from ..worker import execute
        pending = list(tasks)[::-1]
        while pending:
            t = pending.pop()
            if on_start:
                on_start(t)
            out = execute(t.job, t.budget, net_module=self.net_module)
            if on_done:
                pending.extend(list(on_done(t, out) or ())[::-1])

    def describe(self) -> dict:
        return {"executor": "inline"}
