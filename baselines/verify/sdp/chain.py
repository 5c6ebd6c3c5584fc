"""The network as the SDP verifiers read it: a chain of affine maps and elementwise
activations (:class:`Chain`: weights, slope bounds a_k <= phi' <= b_k, and the layers each
weight composes), built from the walk (:func:`chain`), with the activations that have no
slope bounds replaced by their exact ReLU forms (:func:`relu_form`: MaxMin, CReLU, |x|),
and the reasons a network is refused before anything is unrolled (:func:`chain_reason`,
:func:`size_reason`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.api import Query, Unsupported
from bench.network import Activation, Affine, Net

EPS = float(np.finfo(np.float64).eps)


class RepairError(Exception):
    """The multipliers cannot be made into a certificate."""


@dataclass
class Chain:
    """The network as W_0, ..., W_L (float64, out x in; the last one already the pair
    row c^T W_L for a class-pair query) and the slope range [a_k, b_k] of activation k;
    ``relu_forms`` names the activations read through their exact ReLU form."""
    Ws: list
    a: list
    b: list
    relu_forms: tuple = ()
    #: each W_k as the maps it composes, first applied first: the network's Affine layers
    #: and the numpy matrices of ReLU forms and of a pair query's row (what
    #: :mod:`baselines.verify.implicit` applies without the dense W_k); None when not read
    #: from a network
    factors: list | None = None
    #: the activations at the input and output that were dropped (see :func:`chain`), if any
    dropped: tuple = ()

    @property
    def hidden(self) -> list[int]:
        return [W.shape[0] for W in self.Ws[:-1]]


def relu_form(act: Activation) -> tuple[np.ndarray, np.ndarray] | None:
    """(A, Q) with act(z) = Q relu(A z) exactly, from the description's piecewise-linear
    form h = P z + Q relu(A z) (with P z = P relu(z) - P relu(-z)); None without one.
    |x| = relu(x) + relu(-x), CReLU = (relu(x), relu(-x)), MaxMin's max(u, v) =
    v + relu(u - v) and min(u, v) = u - relu(u - v)."""
    try:
        form = act.spec.pwl(act.in_dim) if act.spec is not None else None
    except Unsupported:
        return None
    if form is None:
        return None
    P, Q, A = form
    if np.any(P):
        eye = np.eye(P.shape[1])
        A, Q = np.vstack([A, eye, -eye]), np.hstack([Q, P, -P])
    used = np.any(Q != 0, axis=0)  # a unit whose output goes nowhere (P's zero columns) is dropped
    return A[used], Q[:, used]


def chain(net: Net, query: Query, name: str, nonnegative: bool = False) -> Chain:
    """Read the network as an alternating chain, or raise Unsupported with the reason.
    Consecutive affine maps (a Linear and the BatchNorm after it, an average pooling and
    the Linear after it, ...) are composed into one matrix: exactly the same map, and
    biases do not enter the LMI.  An activation that is not elementwise (CReLU, MaxMin),
    and with ``nonnegative`` one whose lower slope is negative (|x|: ECLipsE needs a >= 0),
    is read through its exact ReLU form (:func:`relu_form`): its A joins the affine map
    before it, its Q the one after, and the chain sees ReLUs (the same function, so the
    same constant).  Sound, but loose: LipSDP's bound of the form is at least its largest
    product W_L D ... D W_0 over 0/1 diagonal D, which for |x| = relu(x) + relu(-x) doubles
    per layer (the hard suite's ``identity`` family); |x| keeps its sector [-1, 1] where
    the verifier takes negative slopes.

    An elementwise activation at the output (ERAN's nets end with a ReLU) or at the input
    is dropped: |phi(u) - phi(v)| <= c |u - v| coordinatewise, c its Lipschitz constant
    (max(|a|, |b|) for slopes in [a, b]), so the constant of the network without it, times
    c (folded into W_L or W_0, exactly: c must be a power of 2, as for ReLU, sigmoid, tanh),
    bounds the network's.  Sound, not exact; a class pair's margin relu(u_i) - relu(u_j)
    is not bounded so by dropping the output's, and is refused."""
    layers, head, tail, head_gain, gain = _chain_layers(net, query, name)
    Ws, a, b, forms, factors = _compose(layers, name, nonnegative)
    if query.is_pair:
        i, j = query.target
        row = np.zeros((1, Ws[-1].shape[0]))
        row[0, i], row[0, j] = 1.0, -1.0
        Ws[-1] = (Ws[-1][i] - Ws[-1][j])[None, :]
        factors[-1].append(row)
    if gain:  # the dropped activation's Lipschitz constant c = 2^gain, folded into W_L exactly
        Ws[-1] = np.ldexp(Ws[-1], gain)
        factors[-1].append(np.ldexp(np.eye(Ws[-1].shape[0]), gain))
    if head_gain:   # the same for one at the input, into W_0
        Ws[0] = np.ldexp(Ws[0], head_gain)
        factors[0].insert(0, np.ldexp(np.eye(Ws[0].shape[1]), head_gain))
    return Chain(Ws, a, b, tuple(forms), factors, tuple(l.name for l in (head, tail) if l is not None))


def _chain_layers(net: Net, query: Query, name: str) -> tuple:
    """The layers between the dropped activations (:func:`dropped_activations`), those two
    and their gains (:func:`_gain`), or Unsupported where the query or the layers are not a
    chain's."""
    if query.p != 2:
        raise Unsupported(f"{name} bounds the l2 Lipschitz constant only (p = 2)")
    if query.domain != "global":
        raise Unsupported(f"{name} computes global bounds only")
    layers = net.layers
    for l in layers:
        if not isinstance(l, (Affine, Activation)):
            raise Unsupported(f"{name} reads affine layers and activations only; layer {l.index} "
                              f"({getattr(l, 'name', type(l).__name__)}) is neither")
    kinds = ["A" if isinstance(l, Affine) else "S" for l in layers]
    head, tail = dropped_activations(layers)
    if tail is not None and query.is_pair:
        raise Unsupported(f"{name} bounds a class pair's margin only for a network that ends with an affine "
                          f"layer (this one ends with {tail.name}, and dropping it bounds the whole output only)")
    head_gain, gain = (_gain(l, name) if l is not None else 0 for l in (head, tail))
    if tail is not None:
        layers, kinds = layers[:-1], kinds[:-1]
    if head is not None:
        layers, kinds = layers[1:], kinds[1:]
    if kinds[0] != "A" or kinds[-1] != "A" or any(x == y == "S" for x, y in zip(kinds, kinds[1:])):
        shown = (["S"] if head else []) + kinds + (["S"] if tail else [])
        raise Unsupported(f"{name} needs affine layers separated by single activations (one elementwise "
                          f"activation before the first and after the last is dropped) (got {' '.join(shown)})")
    return layers, head, tail, head_gain, gain


def _compose(layers: list, name: str, nonnegative: bool) -> tuple[list, list, list, list, list]:
    """(W_k, a_k, b_k, the activations read through ReLU forms, each W_k's factors) of an
    alternating chain of layers (:func:`chain`)."""
    Ws, a, b, forms, factors = [], [], [], [], []
    prev_affine, after = False, None
    for l in layers:
        if isinstance(l, Affine):   # consecutive affine maps (e.g. Linear, BatchNorm) compose exactly
            if prev_affine:
                Ws[-1] = l.matrix() @ Ws[-1]
                factors[-1].append(l)
            else:
                Ws.append(l.matrix() if after is None else l.matrix() @ after)
                factors.append([l] if after is None else [after, l])
                after = None
            prev_affine = True
            continue
        prev_affine = False
        if l.elementwise and (l.slope[0] >= 0 or not nonnegative):
            a.append(float(l.slope[0]))
            b.append(float(l.slope[1]))
            continue
        form = relu_form(l)
        if form is not None:
            A, after = form
            Ws[-1] = A @ Ws[-1]
            factors[-1].append(A)
            a.append(0.0)
            b.append(1.0)
            forms.append(l.name)
        elif l.elementwise:
            a.append(float(l.slope[0]))  # no ReLU form (GELU, ...): the caller refuses a < 0
            b.append(float(l.slope[1]))
        else:
            raise Unsupported(f"{name} needs elementwise slope-restricted activations or a piecewise-linear "
                              f"form; {l.name} has neither")
    return Ws, a, b, forms, factors


def _gain(act: Activation, name: str) -> int:
    """e with 2^e the Lipschitz constant of an activation the chain drops (see :func:`chain`)."""
    c = act.lipschitz[2.0] if act.elementwise else 0.0
    if not (c > 0 and math.frexp(c)[0] == 0.5):
        raise Unsupported(f"{name} drops an activation at the input or output only where it is elementwise with a "
                          f"Lipschitz constant that is a power of 2 ({act.name} is not)")
    return math.frexp(c)[1] - 1


#: neurons of an activation's ReLU form per input (MaxMin: 5 per pair of inputs; CReLU and
#: |x|: 2 per input), the most of them, for the size check before the form is built
RELU_FORM_WIDTH = 2.5


def dropped_activations(layers: list) -> tuple[Activation | None, Activation | None]:
    """(the activation a network starts with, before an affine layer; the one it ends
    with, after one), each None where there is none: :func:`chain` drops them, where they
    are elementwise with a Lipschitz constant that is a power of 2."""
    head = layers[0] if len(layers) > 1 and isinstance(layers[0], Activation) and isinstance(layers[1], Affine) \
        else None
    tail = layers[-1] if len(layers) > 1 and isinstance(layers[-1], Activation) and isinstance(layers[-2], Affine) \
        else None
    return head, tail


def size_reason(net: Net, name: str, max_neurons: int, per_layer: bool, nonnegative: bool = False) -> str | None:
    """Why the network is too large for an SDP verifier (None if it is not): its hidden
    neurons, all of them (``per_layer`` False: LipSDP's one LMI) or the widest layer's
    (ECLipsE's stages), counted from the walk's shapes before anything is unrolled.  A
    conv counts every channel at every pixel, so conv nets pass the limit quickly; an
    activation read through its ReLU form (see :func:`chain`; ``nonnegative`` as there)
    counts ``RELU_FORM_WIDTH`` neurons per input."""
    def width(a):
        plain = a.elementwise and (a.slope[0] >= 0 or not nonnegative)
        return a.in_dim if plain else int(math.ceil(RELU_FORM_WIDTH * a.in_dim))
    head, tail = dropped_activations(net.layers)
    acts = [a for a in net.activations if a is not head and a is not tail]   # dropped (see :func:`chain`)
    widths = [(width(a), a.index) for a in acts]
    if not widths:
        return None
    n, index = max(widths, key=lambda w: w[0]) if per_layer else (sum(w for w, _ in widths), None)
    if n <= max_neurons:
        return None
    what = f"layer {index} has {n:,} neurons" if per_layer else f"the network has {n:,} hidden neurons"
    what += " (ReLU forms counted)" if any(w != a.in_dim for (w, _), a in zip(widths, acts)) else ""
    return (f"{name} solves networks up to {max_neurons:,} {'neurons per layer' if per_layer else 'hidden neurons'} "
            f"(beyond that it cannot finish in a suite's budget); {what} (convs unrolled: channels x pixels)")


def chain_reason(net: Net, query: Query, name: str, nonnegative_slopes: bool = False) -> str | None:
    """Why :func:`chain` cannot read this network for this query (None if it can).  With
    ``nonnegative_slopes`` the chain is read as ECLipsE reads it (ReLU forms for |x|) and an
    activation left with a negative lower slope is refused (the elimination drops the
    -2ab W^T T W terms, sound only for a >= 0)."""
    try:
        ch = chain(net, query, name, nonnegative_slopes)
    except Unsupported as e:
        return str(e)
    if nonnegative_slopes and any(a < 0 for a in ch.a):
        return (f"{name} needs activations with a lower slope >= 0 or a piecewise-linear (ReLU) form "
                f"(this network has a slope range down to {min(ch.a)} and no such form)")
    return None


def device(budget) -> str:
    """Where the block machinery runs: the budget's device (CPU unless it says cuda)."""
    return budget.device if budget.device not in ("auto", None) else "cpu"


def torch_chain(ch: Chain, device=None) -> Chain:
    """The chain's matrices as float64 torch tensors on ``device``."""
    return Chain([torch.as_tensor(np.asarray(W), dtype=torch.float64, device=device) for W in ch.Ws],
                 ch.a, ch.b)
