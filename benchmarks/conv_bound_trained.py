"""Tightness of the conv layers' p = 2 bound on trained networks: for every conv layer of
every network in a results folder, the DFT bound (``methods.trivial.conv_spectral_upper``,
what ``trivial`` uses) against the layer's exact spectral norm, computed by Lanczos
(ARPACK ``svds``, top singular value, tol 1e-10) on the layer as a linear operator
(the conv and its adjoint; nothing unrolled), and the time of each.

    python benchmarks/conv_bound_trained.py results/cifar
"""
import json
import sqlite3
import sys
import time

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, svds

from bench import network as netmod
from methods.trivial import conv_spectral_upper


def exact_norm(layer) -> float:
    m = layer.module.double()
    shp = layer.in_shape

    def fwd(x):
        with torch.no_grad():
            y = torch.nn.functional.conv2d(torch.as_tensor(x, dtype=torch.float64).reshape(1, *shp), m.weight,
                                           None, m.stride, m.padding)
        return y.reshape(-1).numpy()

    out_dim = fwd(np.zeros(layer.in_dim)).size

    def adj(y):
        x = torch.zeros(1, *shp, dtype=torch.float64, requires_grad=True)
        out = torch.nn.functional.conv2d(x, m.weight.detach(), None, m.stride, m.padding)
        (g,) = torch.autograd.grad(out, x, torch.as_tensor(y, dtype=torch.float64).reshape(out.shape))
        return g.reshape(-1).numpy()

    op = LinearOperator((out_dim, layer.in_dim), matvec=fwd, rmatvec=adj, dtype=np.float64)
    return float(svds(op, k=1, tol=1e-10, maxiter=3000, return_singular_vectors=False, random_state=0)[0])


def main(out_dir: str):
    torch.set_num_threads(1)
    db = sqlite3.connect(f"{out_dir}/lipbench.sqlite")
    rows = db.execute("SELECT id, path FROM networks ORDER BY id").fetchall()
    print(f"{'network':<58} {'layer':<28} {'input':>10} {'bound s':>8} {'exact s':>8} {'bound/exact':>11}")
    ratios = []   # layers whose Lanczos iteration does not converge are printed with ratio nan
    for nid, path in rows:
        module, shape = netmod.load(path)
        for layer in netmod.walk(module, shape).affines:
            if not getattr(layer, "is_conv", False):
                continue
            t = time.perf_counter()
            ub = conv_spectral_upper(layer)
            tb = time.perf_counter() - t
            t = time.perf_counter()
            try:
                ex = exact_norm(layer)
            except ArpackNoConvergence:   # clustered top singular values (an orthogonal layer): no ratio
                ex = float("nan")
            te = time.perf_counter() - t
            if ex == ex:
                ratios.append(ub / ex)
            c = layer.module
            name = f"Conv2d({c.in_channels},{c.out_channels},{c.kernel_size[0]},s={c.stride[0]})"
            print(f"{nid[:58]:<58} {name:<28} {'x'.join(map(str, layer.in_shape)):>10} {tb:8.3f} {te:8.2f} "
                  f"{ub / ex:11.4f}", flush=True)
    if ratios:
        print(json.dumps({"layers": len(ratios), "median": float(np.median(ratios)), "max": float(max(ratios))}))


if __name__ == "__main__":
    main(sys.argv[1])
