"""What every executor shares: a :class:`Task` (a job, the resources granted to it, a
label for progress lines) and the :class:`Executor` protocol.

An executor runs tasks and reports each one back *in the driver's process*:
``on_start(task)`` when it starts, ``on_done(task, outcome)`` when it ends (the scheduler
writes the store there, one transaction per job, so a killed driver resumes exactly).  It
owns how jobs run (processes, machines), hard timeouts (a job over its budget ends as
``timeout``) and the mapping of worker deaths to ``oom`` / ``error``.  Executors:

- :class:`bench.executors.local.LocalExecutor`: a fresh worker process per job on this
  machine, killed at the timeout;
- :class:`InlineExecutor`: in the calling process, no timeout (the Python API without
  ``timeout``; tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from ..api import Budget
from ..jobs import Job, Outcome

OnStart = Callable[["Task"], None]
OnDone = Callable[["Task", Outcome], None]


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
        """Run every task; call ``on_start`` / ``on_done`` in this process as each starts
        and ends.  Returns when all have ended; on an exception (Ctrl-C) leaves nothing
        running."""


class InlineExecutor:
    """Runs each task in this process, one after the other, without a timeout."""

    def __init__(self, net_module=None):
        self.net_module = net_module  # (module, input_shape): verify this in-memory network

    def run(self, tasks: Iterable[Task], on_start: OnStart | None = None, on_done: OnDone | None = None) -> None:
        from ..worker import execute
        for t in tasks:
            if on_start:
                on_start(t)
            out = execute(t.job, t.budget, net_module=self.net_module)
            if on_done:
                on_done(t, out)
