"""What the SDP verifiers (lipsdp, eclipse, eclipse-fast) share, one idea a module: the network as (weights, slopes), the LipSDP-Neuron
matrix M(rho, T) and its certification in float64.

LipSDP (Fazlyab et al., NeurIPS 2019) for f = W_L phi(W_{L-1} ... phi(W_0 x)) with
elementwise activations whose slopes lie in [a_k, b_k]: if, for diagonal T_k >= 0,

  M(rho, T) = [A; B]^T [[-2ab T, (a+b) T], [(a+b) T, -2T]] [A; B] + diag(-rho I, 0, ..., W_L^T W_L) <= 0

(block-tridiagonal: diagonal blocks D_0 = -rho I - 2 a_1 b_1 W_0^T T_1 W_0,
D_k = -2 T_k - 2 a_{k+1} b_{k+1} W_k^T T_{k+1} W_k, D_last = -2 T_last + W_L^T W_L;
off-diagonal blocks O_k = (a_{k+1} + b_{k+1}) W_k^T T_{k+1}), then sqrt(rho) bounds the
l2 Lipschitz constant.  Biases do not enter.

The blocks are written once, in :func:`.lmi.lmi_terms`, for the backends that need the
assembled matrix (:class:`Ops`): :data:`CVXPY` for lipsdp's SDP, :data:`NUMPY` for
:func:`.lmi.assemble` and :func:`.lmi.check`, the dense reference that the tests hold the
structured certificate against.

Everything else works block by block, one dense matrix per layer and never the whole LMI,
in torch (float64) on the verifier's device, CPU or CUDA:

- the forward elimination (:mod:`.elimination`): for
  normalised multipliers L_k = 2 T_k / rho the least rho is the largest eigenvalue of
  an output-sized matrix, after one Cholesky factor per hidden layer: NATIVE's
  objective, and ECLipsE's stages one layer at a time; :mod:`.optimise` is the solver
  both use (L-BFGS on a soft maximum of the eigenvalues);
- certification (:mod:`.certificate`): a block Cholesky factorisation of -M(rho, T) - delta I
  from the output backwards, with the rounding of the assembly and of the factorisation
  bounded a posteriori and covered by the shift delta; rho comes from the input block's
  Schur complement, and only a rho whose factorisation succeeds is reported.

NATIVE's matrix-free solve (:mod:`baselines.verify.implicit`) computes the elimination's
rho(L) without the dense blocks, from the layers each W_k composes (``Chain.factors``).
Modules, each one idea, only public names crossing them: :mod:`.chain` (the network as a
chain of layers, the ReLU forms, what is refused), :mod:`.lmi` (the matrix, assembled),
:mod:`.linalg` (device linear algebra), :mod:`.elimination`, :mod:`.symmetric` (the |x|
route), :mod:`.optimise` (L-BFGS), :mod:`.certificate`.
"""
