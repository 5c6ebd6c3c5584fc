"""SDP verifiers: LipSDP (neuron, layer), ECLipsE, ECLipsE-Fast; certification."""
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import bench
from conftest import REFERENCE
from helpers import mlp
from bench.testing.exact import exact_lipschitz

pytest.importorskip("cvxpy", reason="the sdp extra is not installed")
from baselines.verify.sdp.certificate import certify  # noqa: E402
from baselines.verify.sdp.chain import Chain, RepairError  # noqa: E402
from baselines.verify.sdp.lmi import check  # noqa: E402

LIPSDP = os.path.join(REFERENCE, "lipsdp")


def from_mat(name):
    import scipy.io
    W = scipy.io.loadmat(os.path.join(LIPSDP, name))["weights"][0]
    layers = []
    for k, w in enumerate(W):
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data = torch.tensor(w, dtype=torch.float64)
        layers += [lin, nn.ReLU()] if k < len(W) - 1 else [lin]
    return nn.Sequential(*layers).double()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(LIPSDP), reason="../shared/reference/lipsdp absent")
@pytest.mark.parametrize("solver", ["CLARABEL", "SCS", "NATIVE"])
def test_reproduces_the_published_lipsdp_values(solver):
    """The LipSDP authors publish, for random_weights.mat (2-10-30-20-2):
    LipSDP-Neuron 36.482 and LipSDP-Layer 39.839."""
    net = from_mat("random_weights.mat")
    neuron = bench.verify(net, "lipsdp", p=2, form="neuron", solver=solver, eps=1e-7)
    layer = bench.verify(net, "lipsdp", p=2, form="layer", solver=solver, eps=1e-7)
    assert neuron.status == "ok" and layer.status == "ok", (neuron.error, layer.error)
    assert round(neuron.value, 3) == 36.482 and round(layer.value, 3) == 39.839
    assert 0 < neuron.stats["lmi_margin"] <= neuron.stats["lmi_shift"]  # the rounding is covered by the shift
    fast = bench.verify(net, "eclipse-fast", p=2).value
    ecl = bench.verify(net, "eclipse", p=2).value
    triv = bench.verify(net, "trivial", p=2).value
    assert neuron.value <= ecl * (1 + 1e-4) and ecl <= fast * (1 + 1e-9) and layer.value <= triv


@pytest.mark.skipif(not os.path.isdir(LIPSDP), reason="../shared/reference/lipsdp absent")
@pytest.mark.slow
def test_mnist_reference_network_ordering():
    net = from_mat("mnist_weights.mat")  # 784-50-10
    low = bench.lower_bound(net, p=2, samples=500, restarts=8, steps=20).value
    neuron = bench.verify(net, "lipsdp", p=2).value
    fast = bench.verify(net, "eclipse-fast", p=2).value
    triv = bench.verify(net, "trivial", p=2).value
    assert low <= neuron <= fast * (1 + 1e-4) and fast <= triv * (1 + 1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ordering_on_random_networks(seed):
    net = mlp([5, 12, 10, 3], seed=seed, act=nn.ReLU if seed < 2 else nn.Tanh)
    v = {name: bench.verify(net, name, p=2, **kw).value for name, kw in
         [("lipsdp", {"form": "neuron"}), ("eclipse", {}), ("eclipse-fast", {}), ("trivial", {})]}
    v["layer"] = bench.verify(net, "lipsdp", p=2, form="layer").value
    v["native"] = bench.verify(net, "lipsdp", p=2, solver="NATIVE").value
    assert abs(v["native"] / v["lipsdp"] - 1) < 1e-2  # the same SDP, two solvers
    low = bench.lower_bound(net, p=2, samples=1000, restarts=8, steps=20).value
    tol = 1 + 1e-2  # SCS at eps 1e-5 reaches the SDP's optimum to ~0.1%
    assert low <= v["lipsdp"] <= v["layer"] * tol and v["layer"] <= v["trivial"] * tol
    assert v["lipsdp"] <= v["eclipse"] * tol and v["eclipse"] <= v["eclipse-fast"] * tol


@pytest.mark.slow
@pytest.mark.parametrize("target", [None, (0, 2)])
def test_sdp_bounds_are_above_the_exact_constant(target):
    for seed in (1, 2):
        net = mlp([2, 6, 5, 3], seed=seed)
        exact = exact_lipschitz(net, 2.0, target)
        for name in ("lipsdp", "eclipse", "eclipse-fast"):
            b = bench.verify(net, name, p=2, target=target)
            assert b.status == "ok" and b.value >= exact * (1 - 1e-12), (name, b.value, exact)


def test_pair_target_is_tighter_than_full_times_sqrt2():
    net = mlp([4, 10, 3], seed=4)
    full = bench.verify(net, "lipsdp", p=2).value
    pair = bench.verify(net, "lipsdp", p=2, target=(0, 1)).value
    assert pair <= full * math.sqrt(2) * (1 + 1e-6)


def exact_negative_definite(ch, rho, T):
    """M(rho, T) < 0 decided exactly: the matrix assembled in rational arithmetic from the
    floats W, T, rho, a, b, then Gaussian elimination of -M (every pivot > 0)."""
    from fractions import Fraction as F
    Ws = [[[F(float(x)) for x in row] for row in W] for W in ch.Ws]
    n = [len(Ws[0][0])] + ch.hidden
    offs = np.concatenate([[0], np.cumsum(n)]).astype(int)
    N = offs[-1]
    M = [[F(0)] * N for _ in range(N)]
    for i in range(n[0]):
        M[i][i] -= F(float(rho))
    for k, t in enumerate(T):
        W, a, b = Ws[k], F(ch.a[k]), F(ch.b[k])
        t = [F(float(x)) for x in t]
        o_in, o_h = offs[k], offs[k + 1]
        for p in range(len(t)):
            for i in range(n[k]):
                c = (a + b) * W[p][i] * t[p]
                M[o_in + i][o_h + p] += c
                M[o_h + p][o_in + i] += c
                for j in range(n[k]):
                    M[o_in + i][o_in + j] -= 2 * a * b * W[p][i] * t[p] * W[p][j]
            M[o_h + p][o_h + p] -= 2 * t[p]
    WL, o = Ws[-1], offs[-2]
    for i in range(n[-1]):
        for j in range(n[-1]):
            M[o + i][o + j] += sum(WL[r][i] * WL[r][j] for r in range(len(WL)))
    A = [[-x for x in row] for row in M]
    for i in range(N):
        if A[i][i] <= 0:
            return False
        for r in range(i + 1, N):
            f = A[r][i] / A[i][i]
            if f:
                for c in range(i, N):
                    A[r][c] -= f * A[i][c]
    return True


@pytest.mark.parametrize("slopes", [(0.0, 1.0), (0.1, 1.0)])
def test_certification_is_exact_and_tight(slopes):
    """The structured certificate (block Cholesky with rounding margins) is right in exact
    rational arithmetic, and just below the Schur value M(rho, T) is not <= 0."""
    from baselines.verify.eclipse import eclipse
    rng = np.random.default_rng(5)
    a, b = slopes
    ch = Chain([rng.normal(size=(5, 3)), rng.normal(size=(4, 5)), rng.normal(size=(2, 4))], [a, a], [b, b])
    T = [1.05 * t for t in eclipse(ch, fast=True)[0]]
    value, stats = certify(ch, T)
    rho = stats["rho_certified"]
    assert exact_negative_definite(ch, rho, T)
    assert not exact_negative_definite(ch, stats["rho_schur"] * (1 - 1e-9), T)
    assert check(ch, rho, T)[1] < 0 and not check(ch, stats["rho_schur"] * (1 - 1e-6), T)[0]  # the dense check agrees
    assert rho <= stats["rho_schur"] * (1 + 1e-9) and value == pytest.approx(math.sqrt(rho))


def test_certification_raises_rho_and_refuses_infeasible_multipliers():
    rng = np.random.default_rng(0)
    ch = Chain([rng.normal(size=(6, 3)), rng.normal(size=(2, 6))], [0.0], [1.0])
    with pytest.raises(RepairError, match="indefinite"):
        certify(ch, [np.zeros(6)])  # T = 0: the hidden block is W^T W, not negative definite
    value, stats = certify(ch, [np.full(6, 5.0)])
    rho = stats["rho_certified"]
    assert stats["T_enlarged_by"] == 0.0
    assert exact_negative_definite(ch, rho, [np.full(6, 5.0)])
    assert not check(ch, stats["rho_schur"] * (1 - 1e-6), [np.full(6, 5.0)])[0]  # just below fails
    assert value == pytest.approx(math.sqrt(rho))
    # multipliers on the boundary of the hidden block's feasibility are enlarged until it is strict
    W1 = ch.Ws[1]
    t_edge = np.full(6, float(np.linalg.eigvalsh(W1.T @ W1)[-1]) / 2)  # 2 T - W^T W singular
    value, stats = certify(ch, [t_edge])
    assert stats["T_enlarged_by"] > 0
    assert exact_negative_definite(ch, stats["rho_certified"], [t_edge * (1 + stats["T_enlarged_by"])])


def test_unsupported_inputs_say_why():
    net = mlp([3, 4, 2])
    b = bench.verify(net, "lipsdp", p=math.inf)
    assert b.status == "unsupported" and "supports p in {2}" in b.error
    gelu = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))  # a negative slope, no ReLU form
    for name in ("eclipse", "eclipse-fast"):
        b = bench.verify(gelu, name, p=2)
        assert b.status == "unsupported" and "lower slope >= 0" in b.error
    assert bench.verify(gelu, "lipsdp", p=2).status == "ok"  # LipSDP takes the slope range [-0.13, 1.13]


@pytest.mark.slow
@pytest.mark.parametrize("act", ["abs", "maxmin", "crelu"])
def test_polyactivations_through_their_relu_forms_are_sound(act):
    """|x|, MaxMin and CReLU: every SDP verifier answers (|x| in its sector [-1, 1] where
    the verifier takes it, else through its exact ReLU form), above the exact constant."""
    from methods.layers import Abs, CReLU, MaxMin
    cls, w = {"abs": (Abs, 6), "maxmin": (MaxMin, 6), "crelu": (CReLU, 12)}[act]
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 6), cls(), nn.Linear(w, 6), cls(), nn.Linear(w, 2)).double()
    exact = exact_lipschitz(net, 2.0, None)
    runs = [("lipsdp", {}), ("lipsdp", {"form": "layer"}), ("eclipse", {}), ("eclipse-fast", {})]
    runs += [("lipsdp", {"solver": "NATIVE"}), ("lipsdp", {"solver": "NATIVE", "form": "layer"})]
    for name, kw in runs:
        b = bench.verify(net, name, p=2, **kw)
        assert b.status == "ok" and b.value >= exact * (1 - 1e-9), (name, kw, b.value, exact, b.error)
        sector = act == "abs" and name == "lipsdp"
        assert ("relu_forms" in b.stats) != sector, (name, b.stats.get("relu_forms"))


def test_small_conv_network_is_unrolled():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    b = bench.verify(net, "lipsdp", p=2, input_shape=(1, 5, 5))
    low = bench.lower_bound(net, p=2, input_shape=(1, 5, 5), samples=300, restarts=4, steps=10).value
    assert b.status == "ok" and low <= b.value <= bench.verify(net, "trivial", p=2, input_shape=(1, 5, 5)).value


@pytest.mark.eclipse_nn
def test_our_fast_equals_the_eclipse_nn_package():
    for seed in range(3):
        net = mlp([6, 16, 12, 3], seed=seed)
        ours = bench.verify(net, "eclipse-fast", p=2)
        ref = bench.verify(net, "eclipse-nn", p=2, method="fast")
        assert ref.stats["certified"] is False
        assert ours.stats["raw_value"] == pytest.approx(ref.value, rel=1e-10)
        assert ours.value == pytest.approx(ref.value, rel=1e-8)


def test_symmetric_sectors_are_a_product_of_rescaled_norms():
    """For |x| (slopes [-c, c]) LipSDP splits into diagonal blocks, and the multipliers of
    ``symmetric_multipliers`` make each block singular: rho(u) is the least rho for them
    (the dense LMI passes just above it and fails just below), u = 0 gives the trivial
    bound, and the class-pair row is read the same way."""
    from baselines.verify.sdp.chain import torch_chain
    from baselines.verify.sdp.symmetric import symmetric, symmetric_factors, symmetric_multipliers
    rng = np.random.default_rng(0)
    for c, pair in [(1.0, False), (0.5, True)]:
        Ws = [rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(1 if pair else 3, 5))]
        ch = Chain(Ws, [-c, -c], [c, c])
        assert symmetric(ch) and not symmetric(Chain(Ws, [-c, 0.0], [c, 1.0]))
        tc = torch_chain(ch)
        us = [torch.as_tensor(rng.normal(size=n)) for n in ch.hidden]
        T, rho = symmetric_multipliers(tc, us)
        # block diagonal: the hidden blocks are singular (lambda_max 0), the input block decides
        above, below = check(ch, rho * (1 + 1e-7), T)[1], check(ch, rho * (1 - 1e-7), T)[1]
        assert abs(above) <= 1e-12 * rho and below >= 0.9e-7 * rho
        assert certify(ch, T)[0] == pytest.approx(math.sqrt(rho), rel=1e-6)  # repaired to strict, then certified
        assert math.prod(float(f[-1]) for f in symmetric_factors(tc, us)) == pytest.approx(rho, rel=1e-12)
        zero = symmetric_multipliers(tc, [torch.zeros(n, dtype=torch.float64) for n in ch.hidden])[1]
        tb = c ** 4 * math.prod(np.linalg.norm(W, 2) ** 2 for W in Ws)
        assert zero == pytest.approx(tb, rel=1e-12)


@pytest.mark.slow
def test_native_on_abs_equals_an_interior_point_solver():
    """NATIVE on |x| networks (the product of rescaled norms, from the trivial bound) reaches
    Clarabel's LipSDP value; its layer form is the trivial bound; a chain that mixes |x|
    with ReLU is refused with the reason."""
    from methods.layers import Abs
    for seed in range(3):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(5, 12), Abs(), nn.Linear(12, 10), Abs(), nn.Linear(10, 3)).double()
        ref = bench.verify(net, "lipsdp", p=2, solver="CLARABEL", eps=1e-9).value
        native = bench.verify(net, "lipsdp", p=2, solver="NATIVE", eps=1e-7)
        assert native.stats["symmetric_sectors"] and native.value == pytest.approx(ref, rel=1e-5)
        tb = bench.verify(net, "trivial", p=2).value
        assert bench.verify(net, "lipsdp", p=2, solver="NATIVE", form="layer").value == pytest.approx(tb, rel=1e-8)
        assert native.value < 0.95 * tb
    mixed = nn.Sequential(nn.Linear(3, 4), Abs(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    b = bench.verify(mixed, "lipsdp", p=2, solver="NATIVE")
    assert b.status == "unsupported" and "use solver SCS" in b.error
    assert bench.verify(mixed, "lipsdp", p=2).status == "ok"


def _dense(terms, sizes, zeros):
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    M = zeros(int(offs[-1]))
    for i, j, term in terms:
        M[offs[i]:offs[i + 1], offs[j]:offs[j + 1]] += term
    return M


@pytest.mark.parametrize("slopes", [(0.0, 1.0), (0.1, 1.0), (-1.0, 1.0)])  # relu, leaky relu, abs
def test_one_block_description_builds_the_same_matrix_in_numpy_torch_and_cvxpy(slopes):
    """assemble (numpy) and the CVXPY terms of lmi_terms are one matrix, and the block
    elimination of NATIVE (torch, differentiable) gives that matrix's least rho."""
    import cvxpy as cp
    from baselines.verify.sdp.chain import torch_chain
    from baselines.verify.sdp.elimination import rho_of
    from baselines.verify.sdp.lmi import assemble, block_offsets, CVXPY, lmi_terms, NUMPY
    rng = np.random.default_rng(3)
    a, b = slopes
    ch = Chain([rng.normal(size=(5, 3)), rng.normal(size=(4, 5)), rng.normal(size=(2, 4))], [a, a], [b, b])
    T = [rng.uniform(0.5, 2.0, size=n) for n in ch.hidden]
    rho = 1.7
    sizes = np.diff(block_offsets(ch))
    M = assemble(ch, rho, T)
    assert np.array_equal(M[3:8, :3], M[:3, 3:8].T)  # O_0 and its transpose: one block
    # the block structure in the module's docstring, written out
    W0, W1, W2 = ch.Ws
    T1, T2 = np.diag(T[0]), np.diag(T[1])
    ref = np.block([[-rho * np.eye(3) - 2 * a * b * W0.T @ T1 @ W0, (a + b) * W0.T @ T1, np.zeros((3, 4))],
                    [(a + b) * T1 @ W0, -2 * T1 - 2 * a * b * W1.T @ T2 @ W1, (a + b) * W1.T @ T2],
                    [np.zeros((4, 3)), (a + b) * T2 @ W1, -2 * T2 + W2.T @ W2]])
    assert np.allclose(M, ref, rtol=0, atol=1e-13)
    assert np.array_equal(M, _dense(lmi_terms(ch, T, NUMPY, rho), sizes, lambda n: np.zeros((n, n))))
    # absolute: every term's entries by their absolute values
    Mabs = assemble(ch, rho, T, absolute=True)
    absch = Chain([np.abs(W) for W in ch.Ws], ch.a, ch.b)
    refabs = np.block([[rho * np.eye(3) + 2 * abs(a * b) * absch.Ws[0].T @ T1 @ absch.Ws[0],
                        abs(a + b) * absch.Ws[0].T @ T1, np.zeros((3, 4))],
                       [abs(a + b) * T1 @ absch.Ws[0], 2 * T1 + 2 * abs(a * b) * absch.Ws[1].T @ T2 @ absch.Ws[1],
                        abs(a + b) * absch.Ws[1].T @ T2],
                       [np.zeros((4, 3)), abs(a + b) * T2 @ absch.Ws[1], 2 * T2 + absch.Ws[2].T @ absch.Ws[2]]])
    assert np.allclose(Mabs, refabs, rtol=0, atol=1e-13) and np.all(Mabs >= np.abs(M) - 1e-13)
    # cvxpy: T = diag(parameter), rho a parameter
    Tc = [cp.diag(cp.Parameter(len(t), value=t)) for t in T]
    blocks = [[np.zeros((m, n)) for n in sizes] for m in sizes]
    for i, j, term in lmi_terms(ch, Tc, CVXPY, cp.Parameter(value=rho)):
        blocks[i][j] = blocks[i][j] + term
    assert np.allclose(cp.bmat(blocks).value, M, rtol=0, atol=1e-13)
    # cvxpy, one multiplier per layer: T = parameter * I
    Tl = [np.full(n, c) for n, c in zip(ch.hidden, (0.7, 1.3))]
    blocks = [[np.zeros((m, n)) for n in sizes] for m in sizes]
    for i, j, term in lmi_terms(ch, [cp.Parameter(value=t[0]) * np.eye(len(t)) for t in Tl], CVXPY, rho):
        blocks[i][j] = blocks[i][j] + term
    assert np.allclose(cp.bmat(blocks).value, assemble(ch, rho, Tl), rtol=0, atol=1e-13)
    # the block elimination of NATIVE (torch, differentiable): rho(L) is the least rho with
    # M(rho, rho L / 2) <= 0, the a b terms included (here with a negative lower slope too)
    # multipliers that keep every Y_k positive definite: L_1 <= 1/2 ||W_0||^-2, then each
    # layer's at most half the previous one's smallest over ||W_k||^2
    L, top = [], 0.5 / np.linalg.norm(ch.Ws[0], 2) ** 2
    for k, n in enumerate(ch.hidden):
        L.append(torch.tensor(rng.uniform(0.5, 1.0, size=n) * top, requires_grad=True))
        top = 0.5 * float(L[-1].detach().min()) / np.linalg.norm(ch.Ws[k + 1], 2) ** 2
    r = rho_of(torch_chain(ch), L)[-1]
    rho = float(r.detach())
    def top(r):  # M(r, T) with T = r L / 2
        return check(ch, r, [r * l.detach().numpy() / 2 for l in L])[1]
    assert top(rho * (1 + 1e-6)) < 0 < top(rho * (1 - 1e-6))
    r.backward()
    assert all(bool(torch.isfinite(l.grad).all()) for l in L)


@pytest.mark.parametrize("slopes", [(0.0, 1.0), (-0.1, 1.1), (-0.5, 0.3)])
def test_the_elimination_gradient_in_closed_form_equals_autograd(slopes):
    """rho_of's backward is the adjoint of the elimination written out (rank r, no autograd
    through Cholesky factors); it must equal autograd through the same steps (input_gram,
    stage), the a b terms of negative lower slopes included, for any weights on the
    eigenvalues (the soft maximum's)."""
    from baselines.verify.sdp.chain import torch_chain
    from baselines.verify.sdp.elimination import input_gram, rho_of, stage
    from baselines.verify.sdp.linalg import eigs
    rng = np.random.default_rng(1)
    Ws = [rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(7, 5)), rng.normal(size=(3, 7))]
    tc = torch_chain(Chain([W / np.linalg.norm(W, 2) for W in Ws], [slopes[0]] * 3, [slopes[1]] * 3))
    Ls = [torch.tensor(rng.uniform(0.2, 0.4, size=n), requires_grad=True) for n in tc.hidden]

    def autograd_path():
        G = input_gram(tc, Ls[0])
        for k in range(len(Ls)):
            G = stage(tc, k, G, Ls[k], Ls[k + 1] if k + 1 < len(Ls) else None)
        return eigs(G)
    assert torch.allclose(rho_of(tc, Ls), autograd_path().detach(), rtol=1e-12, atol=0)
    # every weight counts; or, as a soft maximum's, the lowest one is negligible (the adjoint drops it)
    for weights in ([0.1, 0.3, 0.6], [1e-30, 1e-3, 1.0]):
        grads = []
        for f in (lambda: rho_of(tc, Ls), autograd_path):
            lam = f()
            (lam * torch.tensor(weights, dtype=torch.float64)).sum().backward()
            grads.append([l.grad.clone() for l in Ls])
            for l in Ls:
                l.grad = None
        for ours, ref in zip(*grads):
            assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("slopes", [(0.0, 1.0), (0.1, 1.0)])
def test_an_eclipse_stage_is_the_elimination_of_one_stage(slopes):
    """ECLipsE's stage objective (``eclipse._stage_value``: ``rho_of`` on the one-stage chain
    of the sector [0, a + b]) equals the eigenvalues of the stage's G_k with the a b term
    dropped (``stage(..., drop_ab=True)``), and its closed-form gradient equals autograd
    through that stage, a leaky ReLU's a > 0 included."""
    from baselines.verify.eclipse import _stage_value
    from baselines.verify.sdp.chain import torch_chain
    from baselines.verify.sdp.elimination import input_gram, stage
    from baselines.verify.sdp.linalg import eigs
    rng = np.random.default_rng(2)
    Ws = [rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(3, 5))]
    tc = torch_chain(Chain([W / np.linalg.norm(W, 2) for W in Ws], [slopes[0]] * 2, [slopes[1]] * 2))
    G = input_gram(tc, drop_ab=True)
    L0 = torch.tensor(rng.uniform(0.3, 0.5, size=6), requires_grad=True)
    G1 = stage(tc, 0, G, L0.detach(), drop_ab=True)
    for k, Gk in ((0, G), (1, G1)):
        L = L0 if k == 0 else torch.tensor(rng.uniform(0.3, 0.5, size=5), requires_grad=True)
        ours = _stage_value(tc, k, Gk, L)
        weights = torch.linspace(0.1, 1, ours.numel(), dtype=torch.float64)  # a soft maximum's
        (ours * weights).sum().backward()
        g_ours, L.grad = L.grad.clone(), None
        ref = eigs(stage(tc, k, Gk, L, drop_ab=True))
        (ref * weights).sum().backward()
        assert torch.allclose(ours.detach(), ref.detach(), rtol=1e-12, atol=1e-15)
        assert torch.allclose(g_ours, L.grad, rtol=1e-9, atol=1e-12 * float(L.grad.abs().max()))
        L.grad = None


@pytest.mark.slow
def test_native_reaches_the_sdp_optimum_of_an_interior_point_solver():
    """NATIVE (L-BFGS on the block elimination) against Clarabel at a tight tolerance:
    the same SDP value, on MLPs and on a small conv net, there both matrix-free (operator
    'layers', what 'auto' picks for a wide conv) and on the unrolled layers ('dense'), which
    agree with each other to the optimiser's tolerance."""
    for seed in range(3):
        net = mlp([5, 12, 10, 3], seed=seed)
        ref = bench.verify(net, "lipsdp", p=2, solver="CLARABEL", eps=1e-9).value
        assert bench.verify(net, "lipsdp", p=2, solver="NATIVE", eps=1e-7).value == pytest.approx(ref, rel=1e-5)
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    kw = {"p": 2, "input_shape": (1, 5, 5)}
    ref = bench.verify(conv, "lipsdp", solver="CLARABEL", eps=1e-9, **kw).value
    free = bench.verify(conv, "lipsdp", solver="NATIVE", eps=1e-7, operator="layers", **kw)
    dense = bench.verify(conv, "lipsdp", solver="NATIVE", eps=1e-7, **kw)  # 'auto': too small for 'layers'

    assert free.stats["operator"] == "layers" and free.stats["cg_steps"] > 0 and dense.stats["operator"] == "dense"
    for native in (free.value, dense.value):
        assert ref <= native <= ref * (1 + 1e-3)
    assert free.value == pytest.approx(dense.value, rel=1e-4)
    assert free.value <= bench.verify(conv, "eclipse", **kw).value <= bench.verify(conv, "eclipse-fast", **kw).value
    layer = [bench.verify(conv, "lipsdp", solver="NATIVE", form="layer", operator=op, **kw)
             for op in ("layers", "dense")]
    assert layer[0].value == pytest.approx(layer[1].value, rel=1e-4) and layer[0].value >= free.value
    from bench.api import Query
    from bench.network import walk
    from baselines.verify.lipsdp import LipSDP
    from baselines.verify.sdp.chain import chain
    wide = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 3))
    native = LipSDP(solver="NATIVE")
    assert native.operator(chain(walk(wide, (1, 16, 16)), Query(), "x")) == "layers"  # 2,048 units
    assert native.operator(chain(walk(conv, (1, 5, 5)), Query(), "x")) == "dense"
    wide_mlp = mlp([4, LipSDP.LAYERS_FROM, 2])
    assert native.operator(chain(walk(wide_mlp, (4,)), Query(), "x")) == "dense"
    with pytest.raises(bench.UserError, match="applies to solver NATIVE only"):
        bench.verify(conv, "lipsdp", operator="layers", **kw)
    from methods.layers import Abs
    torch.manual_seed(0)  # |x|: a product of layer norms whatever operator it is given
    absconv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Abs(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    given = bench.verify(absconv, "lipsdp", solver="NATIVE", operator="layers", **kw)
    assert given.stats["operator"] == "dense" and given.value == pytest.approx(
        bench.verify(absconv, "lipsdp", solver="NATIVE", **kw).value, rel=1e-12)


#: how far the certified answers may move with another eigensolver underneath (cuSOLVER,
#: LAPACK through scipy): its last bits move the optimisers' paths.  ECLipsE-Fast has none
#: (rounding only); ECLipsE's stages stop at their eps, 1e-4 each (two paths ended 1.7e-4
#: apart on mlp([20, 64, 64, 10], seed=3)); NATIVE, from ECLipsE's answer, stops at its eps,
#: 1e-5 (7e-7 apart there)
PATH_TOLERANCE = {"eclipse-fast": 1e-9, "eclipse": 5e-4, "lipsdp": 1e-5}


@pytest.mark.cuda
def test_the_gpu_path_certifies_the_same_value():
    """NATIVE, ECLipsE and the certificate on CUDA: the same certified values as on the CPU
    (float64 on both; the optimisers' paths differ in the last bits, so their answers agree
    to their tolerance, ``PATH_TOLERANCE``, and the certificate of the same multipliers to
    1e-12)."""
    from baselines.verify.eclipse import eclipse
    net = mlp([20, 64, 64, 10], seed=3)
    for name, kw in [("lipsdp", {"solver": "NATIVE"}), ("eclipse", {}), ("eclipse-fast", {})]:
        cpu = bench.verify(net, name, p=2, device="cpu", **kw)
        gpu = bench.verify(net, name, p=2, device="cuda", **kw)
        assert cpu.status == gpu.status == "ok", (name, gpu.error)
        assert gpu.value == pytest.approx(cpu.value, rel=PATH_TOLERANCE[name]), name
    torch.manual_seed(0)  # a conv net: NATIVE matrix-free, conv2d and conv_transpose2d on the device
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    cpu, gpu = (bench.verify(conv, "lipsdp", p=2, input_shape=(1, 5, 5), solver="NATIVE", operator="layers",
                             device=d) for d in ("cpu", "cuda"))
    assert gpu.status == "ok" and gpu.stats["operator"] == "layers", gpu.error
    assert gpu.value == pytest.approx(cpu.value, rel=1e-5)
    rng = np.random.default_rng(0)
    ch = Chain([rng.normal(size=(30, 8)), rng.normal(size=(20, 30)), rng.normal(size=(3, 20))], [0.0, 0.0], [1.0, 1.0])
    T = [1.05 * t for t in eclipse(ch, fast=True)[0]]
    assert certify(ch, T, "cuda")[0] == pytest.approx(certify(ch, T, "cpu")[0], rel=1e-12)


@pytest.fixture
def cusolver_like(monkeypatch):
    """torch.linalg on the CPU made to fail as cuSOLVER did on an H200, where ECLipsE and
    NATIVE stopped with "linalg.eigh: The algorithm failed to converge ... (error code: 6)"
    on networks the CPU verified: its symmetric eigensolver fails on some rank-deficient
    matrices (pytorch#94772), such as the Gram matrix W_0 W_0^T of a first layer wider than
    its input; and not every backend's Cholesky factorisation reports a NaN pivot."""
    real_eigh, real_eigvalsh, real_chol = torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.cholesky_ex

    def guard(A):
        lam = real_eigvalsh(A.detach())
        if not bool(torch.isfinite(A).all()) or float(lam[0]) <= 1e-12 * float(lam.abs().max()):
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge (error code: 6)")

    def eigh(A, *a, **k):
        guard(A)
        return real_eigh(A, *a, **k)

    def eigvalsh(A, *a, **k):
        guard(A)
        return real_eigvalsh(A, *a, **k)

    def cholesky_ex(A, *a, **k):
        C, info = real_chol(torch.nan_to_num(A), *a, **k)
        if not bool(torch.isfinite(A).all()):
            return torch.full_like(A, math.nan), torch.zeros_like(info)
        return C, info
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    monkeypatch.setattr(torch.linalg, "eigvalsh", eigvalsh)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", cholesky_ex)


def _sdp_answers(ch):
    from baselines.verify.eclipse import eclipse
    from baselines.verify.lipsdp import scaled, solve_native, unscale_T
    out = {}
    for fast in (True, False):
        T, _, _ = eclipse(ch, fast=fast)
        out[f"eclipse fast={fast}"] = certify(ch, T)[0]
    sch, s = scaled(ch)
    T, _ = solve_native(sch, "neuron", 1e-5, 100000, None)  # no deadline: the same path however busy the machine
    out["native"] = certify(ch, unscale_T(T, s))[0]
    return out


def _same_answers(ours, ref):
    """The answers of :func:`_sdp_answers`, within :data:`PATH_TOLERANCE`."""
    name = {"eclipse fast=True": "eclipse-fast", "eclipse fast=False": "eclipse", "native": "lipsdp"}
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, rel=PATH_TOLERANCE[name[k]]), k


@pytest.mark.slow
def test_the_solvers_survive_a_gpu_eigensolver(request):
    """Where torch's eigensolver fails (cuSOLVER on a rank-deficient Gram matrix), LAPACK
    on the host answers, differentiably, and a NaN factor is a step outside the feasible
    set: ECLipsE and NATIVE give the same certified values, to their optimisers'
    tolerance (the certificate, a float64 Cholesky factorisation, is unchanged)."""
    from bench.network import walk
    from bench.api import Query
    from baselines.verify.sdp.chain import chain
    ch = chain(walk(mlp([20, 64, 64, 10], seed=3), (20,)), Query(p=2), "t")  # W_0 W_0^T: rank 20 of 64
    plain = _sdp_answers(ch)
    request.getfixturevalue("cusolver_like")
    _same_answers(_sdp_answers(ch), plain)


def test_the_top_eigenvalue_survives_lanczos_failing(monkeypatch):
    """Above 512 rows ``top_eig_estimate`` uses Lanczos (ARPACK); where that does not
    converge (NATIVE stopped with ArpackNoConvergence on 784-1024-1024-10, an optimised
    ECLipsE stage leaving its top eigenvalues clustered) the dense solver answers."""
    import scipy.sparse.linalg

    from baselines.verify.sdp.linalg import top_eig_estimate
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.normal(size=(600, 600)))[0]
    lam = np.concatenate([rng.uniform(0, 1, 597), [2.0, 2.0 - 1e-13, 2.0 - 2e-13]])  # a clustered top
    G = torch.tensor((Q * lam) @ Q.T)
    assert top_eig_estimate(G) == pytest.approx(2.0, rel=1e-10)

    def fails(*a, **k):
        raise scipy.sparse.linalg.ArpackNoConvergence("ARPACK error -1: No convergence", np.zeros(0), np.zeros(0))
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", fails)
    assert top_eig_estimate(G) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.slow
def test_small_eigenproblems_may_go_to_the_host(monkeypatch):
    """On CUDA, ``eigs`` sends a size's eigenproblems to LAPACK on the host where that was
    the faster on first use (``faster``: best of three after a warm-up; a device solver
    that raises loses).  The host route must give torch's eigenvalues, eigenvectors and
    gradient, and None for a matrix that is not finite; the answers of ECLipsE and NATIVE
    must not change with it (CPU tensors here, routed as CUDA's would be)."""
    import time

    from baselines.verify.sdp import chain as sdp_chain, linalg
    from baselines.verify.sdp.linalg import eigs, faster

    def slow():
        time.sleep(0.002)

    def broken():
        raise torch.linalg.LinAlgError("error code: 6")
    assert faster(lambda: None, slow) and not faster(slow, lambda: None)
    assert faster(slow, broken) and not faster(broken, slow)
    assert not linalg.on_host(torch.eye(3, dtype=torch.float64))  # a CPU tensor stays where it is
    # the choice itself (what on_host does for a CUDA tensor, with CUDA's synchronisation)
    monkeypatch.setattr(linalg, "_EIGS_ON_HOST", {})
    real_host, real_eigvalsh = linalg.host_eigh, torch.linalg.eigvalsh
    monkeypatch.setattr(linalg, "host_eigh", lambda S: (slow(), real_host(S))[1])
    S4, S5 = torch.eye(4, dtype=torch.float64), torch.eye(5, dtype=torch.float64)
    assert not linalg.route(torch.full((4, 4), math.nan, dtype=torch.float64), False, lambda: None)
    assert linalg._EIGS_ON_HOST == {}  # no choice made on a matrix that is not finite
    assert not linalg.route(S4, False, lambda: None)  # the host is slower: torch's eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda *a, **k: broken())
    assert linalg.route(S5, False, lambda: None)  # torch's raises: the host
    assert not linalg.route(S4, False, lambda: None)  # kept per size
    assert not linalg.route(S5, True, lambda: None)  # and per kind: torch's eigh works, the host is slow
    assert linalg._EIGS_ON_HOST == {(4, "cpu", False): False, (5, "cpu", False): True, (5, "cpu", True): False}
    monkeypatch.setattr(torch.linalg, "eigvalsh", real_eigvalsh)
    monkeypatch.setattr(linalg, "host_eigh", real_host)
    rng = np.random.default_rng(0)
    A = torch.tensor(rng.normal(size=(7, 7)), requires_grad=True)
    w = torch.linspace(0.1, 1, 7, dtype=torch.float64)
    ref_lam, ref_V = eigs(A.detach(), vectors=True)
    (eigs(A) * w).sum().backward()
    ref_grad, A.grad = A.grad.clone(), None
    from bench.api import Query
    from bench.network import walk
    ch = sdp_chain.chain(walk(mlp([20, 64, 64, 10], seed=3), (20,)), Query(p=2), "t")
    plain = _sdp_answers(ch)
    monkeypatch.setattr(linalg, "on_host", lambda S, vectors=False: True)
    lam, V = eigs(A.detach(), vectors=True)
    assert torch.allclose(lam, ref_lam, rtol=0, atol=1e-12) and torch.allclose(abs(V.T @ ref_V), torch.eye(7,
                                                                                 dtype=torch.float64), atol=1e-9)
    (eigs(A) * w).sum().backward()
    assert torch.allclose(A.grad, ref_grad, atol=1e-12)
    assert eigs(torch.full((3, 3), math.nan, dtype=torch.float64)) is None
    _same_answers(_sdp_answers(ch), plain)


def _conv_chain(query=None, act=nn.ReLU):
    """A small conv net with what the matrix-free maps must reproduce: strides, padding,
    dilation, groups, a BatchNorm, an average pooling, and (MaxMin) a ReLU form."""
    from bench.api import Query
    from bench.network import walk
    from baselines.verify.sdp.chain import chain
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4).eval(), act(),
                        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2), act(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 2 * 2, 6), act(), nn.Linear(6, 3))
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    return chain(walk(net, (2, 9, 9)), query or Query(), "test"), net


@pytest.mark.parametrize("case", ["relu", "pair", "maxmin"])
def test_the_layer_maps_are_the_chain_s_matrices_and_their_adjoints(case):
    """implicit.Operator applies each W_k (and W_k^T) through the layers themselves (conv2d,
    conv_transpose2d, BatchNorm scales, pooling, ReLU forms, a pair's row): the dense
    matrices of the chain, divided by their scales, to rounding."""
    from bench.api import Query
    from methods.layers import MaxMin
    from baselines.verify.implicit import Operator
    ch, _ = _conv_chain(Query(target=(0, 2)) if case == "pair" else None, MaxMin if case == "maxmin" else nn.ReLU)
    assert case != "maxmin" or ch.relu_forms
    scales = [0.5 + k for k in range(len(ch.Ws))]
    op = Operator(ch, scales)
    g = torch.Generator().manual_seed(1)
    for k, W in enumerate(ch.Ws):
        W = torch.as_tensor(W) / scales[k]
        X = torch.randn(3, W.shape[1], generator=g, dtype=torch.float64)
        U = torch.randn(3, W.shape[0], generator=g, dtype=torch.float64)
        assert torch.allclose(op.fwd(k, X), X @ W.T, rtol=0, atol=1e-12 * float(W.abs().sum()))
        assert torch.allclose(op.adj(k, U), U @ W, rtol=0, atol=1e-12 * float(W.abs().sum()))


@pytest.mark.parametrize("slopes", [(0.0, 1.0), (0.1, 1.0)])  # ReLU, leaky ReLU (the a b terms)
def test_the_matrix_free_objective_is_the_dense_one(slopes):
    """The conjugate-gradient rho(L) and its gradient equal the dense elimination's
    (sdp.elimination.rho_of) on a conv chain; multipliers outside the feasible set, where a
    Cholesky factor fails, are infeasible for conjugate gradients too."""
    from baselines.verify.eclipse import eclipse
    from baselines.verify.implicit import Operator
    from baselines.verify.lipsdp import scaled
    from baselines.verify.sdp.chain import torch_chain
    from baselines.verify.sdp.elimination import rho_of
    ch, _ = _conv_chain()
    ch.a, ch.b = [slopes[0]] * len(ch.a), [slopes[1]] * len(ch.b)
    sch, s = scaled(ch)
    T, value, _ = eclipse(Chain(sch.Ws, [0.0] * len(ch.a), [1.0] * len(ch.a)), fast=True)
    base = [torch.as_tensor(2 * t / value ** 2) for t in T]
    tc, op = torch_chain(sch), Operator(ch, s)
    g = torch.Generator().manual_seed(0)
    for spread in (0.0, 0.1, 0.3):  # ECLipsE-Fast's multipliers, perturbed neuron by neuron
        point = [l * torch.exp(spread * torch.randn(l.shape, generator=g, dtype=l.dtype)) for l in base]
        Ls = [l.clone().requires_grad_(True) for l in point]
        Ld = [l.clone().requires_grad_(True) for l in point]
        dense, free = rho_of(tc, Ld), op.rho(Ls)
        assert dense is not None and free is not None
        assert torch.allclose(free, dense.detach(), rtol=1e-9, atol=1e-12)
        dense[-1].backward()
        free[-1].backward()
        for a, b in zip(Ls, Ld):
            assert torch.allclose(a.grad, b.grad, rtol=1e-7, atol=1e-9 * float(b.grad.abs().max()))
    # the first hidden layer's multipliers far too small: the next block, Y_2, is indefinite
    bad = [base[0] * 1e-3] + base[1:]
    assert rho_of(tc, bad) is None
    assert op.rho(bad) is None



# --- real weights: multipliers across many orders of magnitude, an activation at the output

def _deep_net(sizes, gain, act=nn.ReLU, seed=0, tail=None):
    """An MLP whose layers have norms around ``gain`` (ACAS Xu's are 15 to 30), so that
    ECLipsE's multipliers shrink by about 2 gain^2 per layer."""
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.mul_(gain / float(torch.linalg.matrix_norm(lin.weight, 2)))
        layers += [lin, act()]
    return nn.Sequential(*layers[:-1], *([tail] if tail else []))


def test_balancing_the_blocks_is_a_congruence_of_the_lmi():
    """D M(rho, T; W) D = M(rho, T'; W') for D = diag(I, 2^e_1 I, ...): the same LMI, so
    certifying the balanced one certifies the network's."""
    from baselines.verify.sdp.certificate import balanced
    from baselines.verify.sdp.lmi import assemble, block_offsets
    rng = np.random.default_rng(0)
    sizes = [4, 5, 3, 2]
    Ws = [rng.normal(size=(b, a)) * 20 for a, b in zip(sizes[:-1], sizes[1:])]
    ch = Chain(Ws, [0.0, -0.1], [1.0, 1.0])
    T = [rng.random(5) * 1e9, rng.random(3) * 1e-2]
    rho = 1e4
    bch, bT, es = balanced(ch, T, rho)
    assert es != [0, 0] and all(abs(math.log2(rho / (2 * t.max()))) <= 1 for t in bT)
    offs = block_offsets(ch)
    d = np.ones(offs[-1])
    for k, e in enumerate(es):
        d[offs[k + 1]:offs[k + 2]] = 2.0 ** e
    M, Mb = assemble(ch, rho, T), assemble(bch, rho, bT)
    assert np.allclose(d[:, None] * M * d[None, :], Mb, rtol=1e-12, atol=1e-12 * np.abs(Mb).max())


@pytest.mark.slow
@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid], ids=["relu", "sigmoid"])
def test_deep_nets_with_large_layer_norms_are_certified(act):
    """Where the multipliers span orders of magnitude (one shift sized by the largest block
    swamped the smallest), every SDP verifier certifies, above the lower bound, eclipse no
    looser than eclipse-fast, and eclipse-fast's certified value within 1e-4 of its own
    closed form."""
    net = _deep_net([5, 50, 50, 50, 50, 50, 50, 5], 20.0, act)
    low = bench.lower_bound(net, p=2, samples=300, restarts=4, steps=20).value
    got = {v: bench.verify(net, v, p=2, **params) for v, params in
           (("eclipse-fast", {}), ("eclipse", {}), ("lipsdp", {"solver": "NATIVE"}))}
    for v, b in got.items():
        assert b.status == "ok" and b.value >= low, (v, b)
    assert got["eclipse"].value <= got["eclipse-fast"].value * (1 + 1e-9)
    fast = got["eclipse-fast"]
    assert fast.value == pytest.approx(fast.stats["raw_value"], rel=1e-4)
    assert any(e != 0 for e in fast.stats["block_scales_log2"])


@pytest.mark.slow
@pytest.mark.parametrize("tail", [nn.ReLU(), nn.Sigmoid(), nn.Tanh()], ids=["relu", "sigmoid", "tanh"])
def test_a_network_that_ends_with_an_activation_is_bounded_by_dropping_it(tail):
    """An elementwise activation at the output (ERAN's nets end with a ReLU) multiplies the
    constant by at most its largest slope: the SDP verifiers bound the network without it,
    times that slope (a power of 2); a class pair's margin is refused with the reason."""
    net = _deep_net([3, 8, 6, 3], 1.5, seed=1, tail=tail)
    low = bench.lower_bound(net, p=2, samples=400, restarts=4, steps=20).value
    head = bench.verify(net[:-1], "eclipse-fast", p=2).value
    slope = 0.25 if isinstance(tail, nn.Sigmoid) else 1.0
    for v, params in (("eclipse-fast", {}), ("eclipse", {}), ("lipsdp", {"solver": "NATIVE"}), ("lipsdp", {})):
        b = bench.verify(net, v, p=2, **params)
        assert b.status == "ok" and b.value >= low * (1 - 1e-9), (v, b)
        assert b.stats["activations_dropped"] == [type(tail).__name__.lower()]
        pair = bench.verify(net, v, p=2, target=(0, 1), **params)
        assert pair.status == "unsupported" and "class pair" in pair.error
    assert bench.verify(net, "eclipse-fast", p=2).value == pytest.approx(slope * head, rel=1e-6)
    odd = nn.Sequential(*net[:-1], nn.ELU(alpha=1.5))   # largest slope 1.5: not folded exactly
    b = bench.verify(odd, "eclipse-fast", p=2)
    assert b.status == "unsupported" and "power of 2" in b.error


@pytest.mark.slow
def test_a_network_that_starts_with_an_activation_is_bounded_by_dropping_it():
    """The same at the input: the constant of the rest times the activation's (sigmoid: 1/4);
    class pairs too (the margin of the rest, evaluated at phi(x))."""
    torch.manual_seed(2)
    rest = _deep_net([3, 8, 6, 3], 1.5, seed=2)
    for head, c in ((nn.ReLU(), 1.0), (nn.Sigmoid(), 0.25)):
        net = nn.Sequential(head, *rest)
        for target in (None, (0, 2)):
            low = bench.lower_bound(net, p=2, target=target, input_shape=(3,), samples=400, restarts=4, steps=20).value
            for v, params in (("eclipse-fast", {}), ("eclipse", {}), ("lipsdp", {"solver": "NATIVE"})):
                b = bench.verify(net, v, p=2, target=target, input_shape=(3,), **params)
                assert b.status == "ok" and b.value >= low * (1 - 1e-9), (v, b)
                assert b.stats["activations_dropped"] == [type(head).__name__.lower()]
            fast = bench.verify(net, "eclipse-fast", p=2, target=target, input_shape=(3,)).value
            assert fast == pytest.approx(c * bench.verify(rest, "eclipse-fast", p=2, target=target).value, rel=1e-6)


VNN = os.path.join(REFERENCE, "vnncomp2021")


@pytest.mark.skipif(not os.path.isdir(VNN), reason="../shared/reference/vnncomp2021 absent: the VNN-COMP networks "
                                                   "are not here")
@pytest.mark.parametrize("name", ["ACASXU_run2a_1_1_batch_2000", "mnist-net_256x4", "ffnnSIGMOID__Point_6x200",
                                  "mnist_relu_9_200"])
@pytest.mark.slow
def test_the_sdp_verifiers_certify_the_vnncomp_networks(name):
    path = os.path.join(VNN, name + ".onnx")
    low = bench.lower_bound(path, p=2, samples=200, restarts=2, steps=10).value
    for v, params in (("eclipse-fast", {}), ("eclipse", {}), ("lipsdp", {"solver": "NATIVE"})):
        b = bench.verify(path, v, p=2, timeout=120, **params)
        assert b.status == "ok" and b.value >= low, (name, v, b)
