"""Naive dense references ("oracles"), written for clarity, not for speed.

Each function here computes a matrix of fimlab the slow, obvious way — explicit loops
over samples, explicit Kronecker products, ``numpy.linalg`` — so that a fast,
matrix-free implementation (fimlab's own or yours) can be compared with it on tiny
cases. Inputs of any array namespace are accepted (they are copied to the host); the
results are NumPy ``float64`` arrays. Nothing in fimlab's library code calls these.

Conventions (the same as fimlab's): ``vec`` is column-major, the parameter vector of a
layer is ``vec(W)`` with ``W`` of shape ``(d_g, d_a)`` (bias in the last column of the
input side), so the gradient of one sample is ``ā ⊗ g``; averages are over samples.

Examples
--------
>>> import numpy as np, fimlab as fl
>>> from fimlab.testing import oracles
>>> net = fl.MLP([3, 4, 2], likelihood="categorical", seed=0)
>>> batch = fl.factor_batch(net, np.random.default_rng(0).normal(size=(5, 3)))
>>> F = oracles.dense_fisher(batch)                 # from per-sample Jacobian rows
>>> bool(np.allclose(F, fl.FisherOperator(batch).to_dense()))
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._errors import DampingError, ShapeError, UnknownNameError
from ..backend import to_numpy

__all__ = [
    "fd_gradient",
    "output_jacobians",
    "output_hessians",
    "per_sample_loss_gradients",
    "finite_difference_fisher",
    "jacobian_rows",
    "dense_fisher",
    "dense_kfac_factors",
    "dense_kfac",
    "rearrange",
    "dense_kpsvd",
    "dense_damped_inverse",
    "block_diagonal",
]


def _host(x) -> np.ndarray:
    return np.asarray(to_numpy(x), dtype=np.float64)


# -- finite differences of a model --------------------------------------------------------
def fd_gradient(f, theta, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar function of a flat vector.

    Examples
    --------
    >>> import numpy as np
    >>> np.round(fd_gradient(lambda t: float(t @ t), np.array([1.0, -2.0])), 6)
    array([ 2., -4.])
    """
    theta = np.asarray(theta, dtype=np.float64)
    g = np.zeros_like(theta)
    for i in range(theta.size):
        t = theta.copy()
        t[i] += h
        fp = f(t)
        t[i] -= 2 * h
        fm = f(t)
        g[i] = (fp - fm) / (2 * h)
    return g


def output_jacobians(net, X, h: float = 1e-6) -> np.ndarray:
    """Per-sample Jacobians of the network output with respect to θ, by central
    differences: shape ``(N, C, P)``. The network's parameters are restored.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([2, 3], likelihood="gaussian")
    >>> output_jacobians(net, np.ones((4, 2))).shape
    (4, 3, 9)
    """
    theta = _host(net.get_flat()).copy()
    N, C, P = X.shape[0], net.layer_sizes[-1], theta.size
    J = np.zeros((N, C, P))
    try:
        for i in range(P):
            t = theta.copy()
            t[i] += h
            net.set_flat(t)
            zp = _host(net.forward(X))
            t[i] -= 2 * h
            net.set_flat(t)
            zm = _host(net.forward(X))
            J[:, :, i] = (zp - zm) / (2 * h)
    finally:
        net.set_flat(theta)
    return J


def output_hessians(net, X) -> np.ndarray:
    """``H_n``: the Fisher of the likelihood in output space, explicit ``(N, C, C)``.

    Softmax: ``diag(p) − p pᵀ``; unit Gaussian: ``I``; Bernoulli: ``diag(p (1 − p))``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([2, 3], likelihood="gaussian")
    >>> output_hessians(net, np.ones((1, 2)))[0]
    array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]])
    """
    z = _host(net.forward(X))
    name = net.likelihood.name
    N, C = z.shape
    if name == "categorical":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])
    if name == "gaussian":
        return np.broadcast_to(np.eye(C), (N, C, C)).copy()
    if name == "bernoulli":
        p = 1 / (1 + np.exp(-z))
        return np.stack([np.diag(pi * (1 - pi)) for pi in p])
    raise UnknownNameError(f"no output-space Fisher oracle for likelihood {name!r}")


def per_sample_loss_gradients(net, X, y, h: float = 1e-6) -> np.ndarray:
    """``∇θ`` of each sample's loss by central differences: ``(N, P)``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([2, 2], likelihood="gaussian")
    >>> per_sample_loss_gradients(net, np.ones((3, 2)), np.zeros((3, 2))).shape
    (3, 6)
    """
    theta = _host(net.get_flat()).copy()
    N = X.shape[0]
    out = np.zeros((N, theta.size))
    try:
        for n in range(N):
            Xn, yn = X[n : n + 1], y[n : n + 1]

            def loss_n(t, Xn=Xn, yn=yn):
                net.set_flat(t)
                return float(net.loss(Xn, yn))

            out[n] = fd_gradient(loss_n, theta, h)
    finally:
        net.set_flat(theta)
    return out


def finite_difference_fisher(net, X, y=None, fisher: str = "exact", h: float = 1e-6):
    """The dense Fisher of a model from finite-difference derivatives only.

    ``fisher="exact"``: ``(1/N) Σ_n J_nᵀ H_n J_n`` with ``J_n`` from
    :func:`output_jacobians` and ``H_n`` from :func:`output_hessians`;
    ``fisher="empirical"``: ``(1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ`` with the per-sample loss gradients
    of :func:`per_sample_loss_gradients` (needs ``y``). Monte-Carlo Fishers are random
    and have no such oracle.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([2, 2], likelihood="gaussian")
    >>> X = np.random.default_rng(0).normal(size=(3, 2))
    >>> bool(np.allclose(finite_difference_fisher(net, X), fl.exact_fisher(net, X), atol=1e-8))
    True
    """
    N = X.shape[0]
    if fisher == "exact":
        J = output_jacobians(net, X, h)
        H = output_hessians(net, X)
        return np.einsum("ncp,ncd,ndq->pq", J, H, J) / N
    if fisher == "empirical":
        if y is None:
            raise ShapeError("the empirical Fisher needs the true targets y")
        G = per_sample_loss_gradients(net, X, y, h)
        return G.T @ G / N
    raise UnknownNameError(
        f"finite_difference_fisher supports fisher='exact' or 'empirical', got {fisher!r}"
    )


# -- the Fisher of a factor batch -------------------------------------------------------
def _layers(batch):
    a = [_host(x) for x in batch.a]
    g = [_host(x) for x in batch.g]
    return a, g


def jacobian_rows(batch) -> np.ndarray:
    """The ``N·K`` per-sample Jacobian rows ``j_nk = [ā_0 ⊗ g_0,nk ; … ; ā_{L−1} ⊗
    g_{L−1},nk]``, built one ``numpy.kron`` at a time: shape ``(N, K, P)``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> b = fl.FactorBatch(a=[np.array([[1.0, 2.0]])], g=[np.array([[[3.0, 5.0]]])])
    >>> jacobian_rows(b)[0, 0]           # ā ⊗ g = vec(g āᵀ), column-major
    array([ 3.,  5.,  6., 10.])
    """
    a, g = _layers(batch)
    N, K = g[0].shape[0], g[0].shape[1]
    rows = []
    for n in range(N):
        per_k = []
        for k in range(K):
            per_k.append(np.concatenate([np.kron(al[n], gl[n, k]) for al, gl in zip(a, g)]))
        rows.append(per_k)
    return np.asarray(rows, dtype=np.float64).reshape(N, K, -1)


def dense_fisher(batch) -> np.ndarray:
    """The dense Fisher ``(1/N) Σ_n Σ_k j_nk j_nkᵀ`` of a factor batch, from its explicit
    per-sample Jacobian rows (:func:`jacobian_rows`), one outer product at a time.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> b = fl.FactorBatch(a=[np.array([[1.0, 1.0]])], g=[np.array([[[2.0]]])])
    >>> dense_fisher(b)
    array([[4., 4.],
           [4., 4.]])
    """
    J = jacobian_rows(batch)
    N, K, P = J.shape
    F = np.zeros((P, P))
    for n in range(N):
        for k in range(K):
            F += np.outer(J[n, k], J[n, k])
    return F / N


def dense_kfac_factors(batch) -> list[tuple[np.ndarray, np.ndarray]]:
    """KFAC's factors of each layer by explicit sums over samples:
    ``A = (1/N) Σ_n ā_n ā_nᵀ`` and ``G = (1/N) Σ_n Σ_k g_nk g_nkᵀ``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> b = fl.FactorBatch(a=[np.array([[1.0, 1.0], [3.0, 1.0]])],
    ...                    g=[np.array([[[1.0]], [[2.0]]])])
    >>> A, G = dense_kfac_factors(b)[0]
    >>> A, G
    (array([[5., 2.],
           [2., 1.]]), array([[2.5]]))
    """
    a, g = _layers(batch)
    out = []
    for al, gl in zip(a, g):
        N = al.shape[0]
        A = sum(np.outer(al[n], al[n]) for n in range(N)) / N
        G = sum(np.outer(gl[n, k], gl[n, k]) for n in range(N) for k in range(gl.shape[1])) / N
        out.append((A, G))
    return out


def block_diagonal(blocks: Sequence) -> np.ndarray:
    """The dense block-diagonal matrix of square ``blocks`` (in order).

    Examples
    --------
    >>> block_diagonal([np.ones((1, 1)), 2 * np.eye(2)])
    array([[1., 0., 0.],
           [0., 2., 0.],
           [0., 0., 2.]])
    """
    blocks = [_host(b) for b in blocks]
    P = sum(b.shape[0] for b in blocks)
    out = np.zeros((P, P))
    i = 0
    for b in blocks:
        n = b.shape[0]
        out[i : i + n, i : i + n] = b
        i += n
    return out


def dense_kfac(batch) -> np.ndarray:
    """Dense KFAC: ``blockdiag(A_0 ⊗ G_0, …, A_{L−1} ⊗ G_{L−1})`` with the factors of
    :func:`dense_kfac_factors` and ``numpy.kron``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([3, 4, 2], seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(6, 3)))
    >>> bool(np.allclose(dense_kfac(b), fl.KFAC(b).to_dense()))
    True
    """
    return block_diagonal([np.kron(A, G) for A, G in dense_kfac_factors(batch)])


# -- rearrangement and the Kronecker product SVD ------------------------------------------
def rearrange(M, d_a: int, d_g: int) -> np.ndarray:
    """``R(M)`` by explicit loops over blocks: ``M`` is a ``d_a × d_a`` grid of
    ``d_g × d_g`` blocks ``M_kl`` and row ``l·d_a + k`` of ``R(M)`` is ``vec(M_kl)``.
    Then ``R(A ⊗ G) = vec(A) vec(G)ᵀ``.

    Examples
    --------
    >>> import numpy as np
    >>> A, G = np.array([[1.0, 2.0], [3.0, 4.0]]), np.eye(2)
    >>> bool(np.array_equal(rearrange(np.kron(A, G), 2, 2),
    ...                     np.outer(A.ravel(order="F"), G.ravel(order="F"))))
    True
    """
    M = _host(M)
    if M.shape != (d_a * d_g, d_a * d_g):
        raise ShapeError(f"M must have shape ({d_a * d_g}, {d_a * d_g}), got {M.shape}")
    R = np.zeros((d_a * d_a, d_g * d_g))
    for l in range(d_a):
        for k in range(d_a):
            blk = M[k * d_g : (k + 1) * d_g, l * d_g : (l + 1) * d_g]
            R[l * d_a + k] = blk.ravel(order="F")
    return R


def dense_kpsvd(M, d_a: int, d_g: int, rank: int = 1):
    """The best approximation of ``M`` by a sum of ``rank`` Kronecker products, by the
    explicit rearrangement :func:`rearrange` and ``numpy.linalg.svd`` (Van Loan &
    Pitsianis): ``R(M) = Σ σ_r u_r v_rᵀ`` gives ``A_r = √σ_r mat(u_r)``,
    ``G_r = √σ_r mat(v_r)``.

    Each pair's sign is chosen so that ``tr A_r ≥ 0`` (``A ⊗ G = (−A) ⊗ (−G)``); for a
    symmetric positive semi-definite ``M`` the leading factors are then PSD.

    Returns
    -------
    terms : list of (A, G)
        ``rank`` pairs, ``A`` of shape ``(d_a, d_a)``, ``G`` of shape ``(d_g, d_g)``.
    approximation : numpy.ndarray
        ``Σ_r A_r ⊗ G_r``, dense.

    Examples
    --------
    >>> import numpy as np
    >>> A, G = np.diag([1.0, 2.0]), np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> terms, M1 = dense_kpsvd(np.kron(A, G), 2, 2, rank=1)
    >>> bool(np.allclose(M1, np.kron(A, G)))
    True
    """
    Rm = rearrange(M, d_a, d_g)
    if not (isinstance(rank, (int, np.integer)) and 1 <= rank <= min(Rm.shape)):
        raise ShapeError(f"rank must be an integer in [1, {min(Rm.shape)}], got {rank!r}")
    U, s, Vt = np.linalg.svd(Rm)
    terms = []
    approx = np.zeros((d_a * d_g, d_a * d_g))
    for r in range(int(rank)):
        A = np.sqrt(s[r]) * U[:, r].reshape(d_a, d_a, order="F")
        G = np.sqrt(s[r]) * Vt[r].reshape(d_g, d_g, order="F")
        if np.trace(A) < 0:
            A, G = -A, -G
        terms.append((A, G))
        approx += np.kron(A, G)
    return terms, approx


# -- damped inverses ----------------------------------------------------------------------
def _sqrtm_spd(M):
    w, Q = np.linalg.eigh(M)
    return (Q * np.sqrt(w)) @ Q.T


def _absolute_in_metric(B, S):
    """``|B|`` measured in the metric of the SPD ``S``: ``S^{1/2} |S^{-1/2} B S^{-1/2}|
    S^{1/2}``, where ``|C| = E |Λ| Eᵀ`` for ``C = E Λ Eᵀ``."""
    Sh = _sqrtm_spd(S)
    Shi = np.linalg.inv(Sh)
    C = Shi @ B @ Shi
    w, E = np.linalg.eigh((C + C.T) / 2)
    return Sh @ ((E * np.abs(w)) @ E.T) @ Sh


def dense_damped_inverse(terms: Sequence, damping: float, rule: str = "factor",
                         *, signed: bool = False) -> np.ndarray:
    """The dense damped inverse of ``Σ_r A_r ⊗ G_r`` that each damping rule defines.

    Parameters
    ----------
    terms : sequence of (A, G)
        Kronecker terms, the leading one first.
    damping : float
        ``λ > 0``.
    rule : {"factor", "pi", "exact"}
        - ``"exact"``: ``(Σ_r A_r ⊗ G_r + λI)⁻¹``.
        - ``"factor"``, one term: ``(A + √λI)⁻¹ ⊗ (G + √λI)⁻¹``; two terms: the inverse
          of ``X = (A₁+λI) ⊗ (G₁+λI) + A₂ ⊗ G₂`` — with ``signed=False`` (the papers'
          code) the second term is first replaced by its absolute value in the metric of
          the first, ``|A₂| ⊗ |G₂|`` with ``|B| = S^{1/2} |S^{-1/2} B S^{-1/2}| S^{1/2}``;
          three or more terms: as ``"exact"``.
        - ``"pi"`` (one term): ``(A + π√λI)⁻¹ ⊗ (G + √λ/π I)⁻¹`` with
          ``π² = (tr A / d_a) / (tr G / d_g)``.
    signed : bool
        For two terms with ``rule="factor"`` only, see above.

    Returns
    -------
    numpy.ndarray
        The ``(d_a·d_g, d_a·d_g)`` inverse, formed with ``numpy.linalg.inv`` and
        ``numpy.kron``.

    Examples
    --------
    >>> import numpy as np
    >>> A, G = np.diag([1.0, 4.0]), np.diag([2.0])
    >>> np.round(dense_damped_inverse([(A, G)], 0.25, rule="factor"), 6)   # √λ = 0.5
    array([[0.266667, 0.      ],
           [0.      , 0.088889]])
    """
    if not (isinstance(damping, (int, float, np.floating)) and np.isfinite(damping)
            and damping > 0):
        raise DampingError(f"damping must be a positive finite number, got {damping!r}")
    lam = float(damping)
    terms = [(_host(A), _host(G)) for A, G in terms]
    if not terms:
        raise ShapeError("dense_damped_inverse needs at least one (A, G) term")
    d_a, d_g = terms[0][0].shape[0], terms[0][1].shape[0]
    Ia, Ig, I = np.eye(d_a), np.eye(d_g), np.eye(d_a * d_g)
    r = len(terms)
    if rule == "exact" or (rule == "factor" and r >= 3):
        return np.linalg.inv(sum(np.kron(A, G) for A, G in terms) + lam * I)
    if rule == "factor" and r == 1:
        A, G = terms[0]
        s = np.sqrt(lam)
        return np.kron(np.linalg.inv(A + s * Ia), np.linalg.inv(G + s * Ig))
    if rule == "factor" and r == 2:
        (A1, G1), (A2, G2) = terms
        A1d, G1d = A1 + lam * Ia, G1 + lam * Ig
        if not signed:
            A2, G2 = _absolute_in_metric(A2, A1d), _absolute_in_metric(G2, G1d)
        return np.linalg.inv(np.kron(A1d, G1d) + np.kron(A2, G2))
    if rule == "pi":
        if r != 1:
            raise DampingError("the 'pi' rule is defined for one Kronecker term")
        A, G = terms[0]
        pi = np.sqrt((np.trace(A) / d_a) / (np.trace(G) / d_g))
        s = np.sqrt(lam)
        return np.kron(np.linalg.inv(A + pi * s * Ia), np.linalg.inv(G + s / pi * Ig))
    raise DampingError(f"unknown damping rule {rule!r}; expected 'factor', 'pi' or 'exact'")
