"""Imported once by the fork server, so that every worker process starts with torch,
numpy, scikit-learn's data sets, the plug-ins and what they declare in ``preload``
already loaded (a fork costs milliseconds, an import seconds)."""
import torch
import numpy  # noqa: F401
import scipy.linalg  # noqa: F401
import sklearn.datasets  # noqa: F401  (bench.data's digits loader, which train and certify jobs call)

from bench.registry import load_plugins, preload_imports
from bench import worker  # noqa: F401

load_plugins()
preload_imports()   # what the plug-ins declare in their ``preload``
# torch.func's first vmap(jacrev) call loads its machinery (seconds): once, not per job
torch.func.vmap(torch.func.jacrev(lambda x: x.sin()))(torch.zeros(1, 1))
