"""bench.norms: the one operator norm of a Jacobian for a query."""
import math

import numpy as np
import pytest
import torch

from bench.api import Query, dual
from bench.norms import jacobian_norm, margin_jacobian


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("target", [None, (0, 2), (3, 1)])
def test_jacobian_norm_is_the_operator_norm_or_the_dual_norm_of_the_margin(p, target):
    from baselines.verify import lirpa, lower, pwl
    g = torch.Generator().manual_seed(0)
    J = torch.randn(20, 4, 6, generator=g, dtype=torch.float64)
    q = Query(p=p, target=target or "full")
    Jq = margin_jacobian(J, q)
    got = jacobian_norm(Jq, p, q.is_pair).numpy()
    if q.is_pair:
        i, j = target
        assert Jq.shape == (20, 1, 6) and torch.equal(Jq[:, 0], J[:, i] - J[:, j])
        want = [np.linalg.norm(Jn[i] - Jn[j], ord=dual(p)) for Jn in J.numpy()]
    else:
        assert Jq is J
        want = [np.linalg.norm(Jn, ord=p) for Jn in J.numpy()]  # 1: column sums, 2: sigma_max, inf: row sums
    assert got.shape == (20,) and np.allclose(got, want, rtol=1e-13, atol=0)
    # the verifiers' entry points are this one definition
    assert torch.equal(lower.matrix_norms(J, q), jacobian_norm(Jq, p, q.is_pair))
    assert pwl.norms is jacobian_norm
    M = Jq.abs()
    assert lirpa._majorant_norm(M[0], q) == float(jacobian_norm(M[:1], p, q.is_pair)[0])
