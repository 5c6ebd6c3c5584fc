"""Imported once by the fork server, so that every worker process starts with torch,
numpy and the plug-ins already loaded (a fork costs milliseconds, an import seconds).
What a run's plug-ins declare in ``preload`` and its data sets' loaders import
(``bench.data.LOADER_IMPORTS``) follow it (:class:`bench.executors.local.LocalExecutor`)."""
import torch
import numpy  # noqa: F401
import scipy.linalg  # noqa: F401

from bench.registry import load_plugins
from bench import worker  # noqa: F401

load_plugins()
# torch.func's first vmap(jacrev) call loads its machinery (seconds): once, not per job
torch.func.vmap(torch.func.jacrev(lambda x: x.sin()))(torch.zeros(1, 1))
