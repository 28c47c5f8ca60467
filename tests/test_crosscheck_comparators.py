"""Registry cross-checks (issue 21) for the comparators and the convolution blocks:
EKFAC / EigenCorrected / DiagonalFisher (fimlab.approx.eigencorrected), BlockExact
(blockexact), LowRank / LowRankPlusDiagonal / LowRankBlock (lowrank), KFC factors (kfc)
and R(F_l) of convolution blocks (conv_rearranged); the spectral module's entries are in
``tests/test_crosscheck_spectral.py`` on the same contexts.

The same ``Entry`` pattern as ``tests/test_crosscheck.py`` (whose completeness test also
reads ``REGISTRY``, ``CLASSES``, ``MODULES`` and ``EXEMPT`` here): every route is compared
with the explicit definition written here — the per-sample rows ``Σ_t ā_nt ⊗ g_nkt`` by
``np.kron`` and loops, ``F = JᵀJ/N``, KFAC/KFC factors by loops, eigenbases by
``numpy.linalg.eigh``, inverses by dense solves, ``R(F_l)`` by the loop rearrangement —
and consecutive routes with each other, on the four contexts of the base module (exact
and MC Fisher with ``K = 3``, empirical, synthetic ``K = 4``) and four with a convolution
layer (a small conv net's exact (``K = 3``), MC (``K = 2``) and empirical Fisher, and a
synthetic positional batch with ``K = 3``, ``T = 4``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import test_crosscheck as base

import fimlab as fl
import fimlab.approx.blockexact as blockexact_mod
import fimlab.approx.conv_rearranged as conv_mod
import fimlab.approx.eigencorrected as eigen_mod
import fimlab.approx.kfc as kfc_mod
import fimlab.approx.lowrank as lowrank_mod
from fimlab import kron
from fimlab import metrics as M
from fimlab.approx import KFAC, KPSVD
from fimlab.approx.blockexact import BlockExact, ExactBlock
from fimlab.approx.conv_rearranged import RearrangedConvFisher, conv_top_triplets
from fimlab.approx.eigencorrected import (
    EKFAC,
    DiagonalFisher,
    EigenbasisBlock,
    EigenCorrected,
    projected_second_moments,
)
from fimlab.approx.kfc import kfc_factors
from fimlab.approx.lowrank import (
    LowRank,
    LowRankBlock,
    LowRankPlusDiagonal,
    top_eigenpairs,
)
from fimlab.curvature import FisherBlock, FisherOperator
from fimlab.models.layers import Activation, Conv2d, Flatten, Linear
from fimlab.models.network import Network, network_factor_batch

import naive

LAM = base.LAM
KR = 3  # eigenpairs of the low-rank comparators
DENSE = ("exact", "mc", "empirical", "synthetic")
CONV = ("conv-exact", "conv-mc", "conv-empirical", "conv-synthetic")
ALL = DENSE + CONV


# -------------------------------------------------------------------------------------
# contexts with a convolution layer (the dense ones come from the base module)
# -------------------------------------------------------------------------------------
def explicit_rows(batch):
    """Row (n, k) = [Σ_t ā_l,nt ⊗ g_l,nkt]_l by np.kron and loops (T = 1: a dense layer)."""
    N, K = batch.n_samples, batch.n_vectors
    rows = []
    for n in range(N):
        for k in range(K):
            parts = []
            for a, g in zip(batch.a, batch.g):
                if a.ndim == 2:
                    parts.append(np.kron(a[n], g[n, k]))
                else:
                    parts.append(sum(np.kron(a[n, t], g[n, k, t]) for t in range(a.shape[1])))
            rows.append(np.concatenate(parts))
    return np.array(rows)


def _conv_ctx(name):
    rng = np.random.default_rng(8)
    if name == "conv-synthetic":
        N, K, T = 5, 3, 4
        b = fl.FactorBatch([rng.normal(size=(N, T, 4)), rng.normal(size=(N, 5))],
                           [rng.normal(size=(N, K, T, 3)), rng.normal(size=(N, K, 2))])
    else:
        net = Network([Conv2d(2, 2, 2, stride=2), Activation("tanh"), Flatten(), Linear(8, 3)],
                      (2, 4, 4), "categorical", seed=1)
        X = rng.normal(size=(6, 2, 4, 4))
        y = rng.integers(0, 3, size=6)
        b = network_factor_batch(net, X, y, fisher=name.split("-")[1], mc_samples=2, rng=3)
    J = explicit_rows(b)
    return base.Ctx(name, b, J=J, F=J.T @ J / b.n_samples)


def get_ctx(name) -> base.Ctx:
    if name in DENSE:
        return base.get_ctx(name)
    if name not in base._CTX_CACHE:
        base._CTX_CACHE[name] = _conv_ctx(name)
    return base._CTX_CACHE[name]


def test_conv_contexts():
    # K > 1 where the Fisher type allows it; a positional layer (T = 4) beside a dense one
    assert [get_ctx(n).batch.n_vectors for n in CONV] == [3, 2, 1, 3]
    for n in CONV:
        b = get_ctx(n).batch
        assert b.positional == [True, False] and b.positions == [4, 1]
        # the loop rows are the batch's rows (and so F is the definition of the batch's F)
        np.testing.assert_allclose(b.jacobian_matrix(), get_ctx(n).J, atol=1e-12)


# -------------------------------------------------------------------------------------
# explicit definitions
# -------------------------------------------------------------------------------------
def _cached(c, key, make):
    if key not in c.cache:
        c.cache[key] = make()
    return c.cache[key]


def _kfc_def(c, l):
    """KFAC/KFC factors by loops: A = Σ_nt ā āᵀ/(N T), G = Σ_nkt g gᵀ/N (T = 1: dense)."""
    a, g = c.batch.a[l], c.batch.g[l]
    if a.ndim == 2:
        a, g = a[:, None, :], g[:, :, None, :]
    N, T, _ = a.shape
    K = g.shape[1]
    A = sum(np.outer(a[n, t], a[n, t]) for n in range(N) for t in range(T)) / (N * T)
    G = sum(np.outer(g[n, k, t], g[n, k, t]) for n in range(N) for k in range(K)
            for t in range(T)) / N
    return A, G


def _eig_corrected_def(c, l, A, G):
    """Q diag(s) Qᵀ with Q = eigvecs(A) ⊗ eigvecs(G), s = diag(Qᵀ F_l Q) (EK1)."""
    Q = np.kron(np.linalg.eigh(A)[1], np.linalg.eigh(G)[1])
    return Q @ np.diag(np.diag(Q.T @ c.block(l) @ Q)) @ Q.T


def _ekfac_def(c, l):
    return _eig_corrected_def(c, l, *_kfc_def(c, l))


def _sym_projector(d):
    """P vec(V) = vec((V + Vᵀ)/2) in column-major vec."""
    T = np.zeros((d * d, d * d))
    for i in range(d):
        for k in range(d):
            T[i + d * k, k + d * i] = 1.0
    return 0.5 * (np.eye(d * d) + T)


def _R_def(c, l, symmetric=True):
    b = c.batch
    R = naive.rearrange(c.block(l), b.d_a[l], b.d_g[l])
    return R @ _sym_projector(b.d_g[l]) if symmetric else R


def _kpsvd_def(c, l, r):
    """Σ_{i<r} σ_i mat(u_i) ⊗ mat(v_i) from the SVD of the symmetric part of R(F_l)."""
    b = c.batch
    U, s, Vt = np.linalg.svd(_R_def(c, l))
    return sum(s[i] * np.kron(base._mat(U[:, i], b.d_a[l]), base._mat(Vt[i], b.d_g[l]))
               for i in range(r))


def _kpsvd1_factors_def(c, l):
    b = c.batch
    U, s, Vt = np.linalg.svd(_R_def(c, l))
    return base._mat(U[:, 0], b.d_a[l]), base._mat(Vt[0], b.d_g[l])


def _blocks_def(c, f):
    return base._blockdiag([f(c, l) for l in range(c.batch.n_layers)])


def _lowrank_def(c, k=KR):
    w, V = np.linalg.eigh(c.F)
    return (V[:, -k:] * w[-k:]) @ V[:, -k:].T


def _lowrank_diag_def(c, k=KR):
    Fk = _lowrank_def(c, k)
    return Fk + np.diag(np.maximum(np.diag(c.F) - np.diag(Fk), 0.0))


def _inv(Md, V):
    return np.linalg.solve(Md + LAM * np.eye(Md.shape[0]), V)


def _mpow(Md, shift=0.0, p=-0.5):
    w, Q = np.linalg.eigh(0.5 * (Md + Md.T))
    return (Q * (w + shift) ** p) @ Q.T


def _layers(c, f):
    return [np.asarray(f(c, l)) for l in range(c.batch.n_layers)]


def _copy_batch(b):
    """The same numbers in fresh arrays: methods that recognise "their" batch by identity
    take the general route on it."""
    return fl.FactorBatch([np.array(a) for a in b.a], [np.array(g) for g in b.g])


def _other_batch(c):
    """A different batch of the same layers (the first half of the samples)."""
    return c.batch.subset(slice(0, max(1, c.batch.n_samples // 2)))


def _F_other(c):
    return _cached(c, "F_other", lambda: (lambda J: J.T @ J / _other_batch(c).n_samples)(
        explicit_rows(_other_batch(c))))


def _sl_dense(c, D, l):
    return D[c.sl(l), c.sl(l)]


# -------------------------------------------------------------------------------------
# the registry
# -------------------------------------------------------------------------------------
@dataclass
class Entry(base.Entry):
    contexts: tuple = ALL


def _V(c, k=3):
    return base._V(c, k)


def _cols(op, X):
    return np.stack([op.matvec(x) for x in X.T], axis=1)


def _ekfac(c):
    return _cached(c, "ekfac", lambda: EKFAC(c.batch))


def _diag(c):
    return _cached(c, "diagonal", lambda: DiagonalFisher(c.batch))


def _bex(c):
    return _cached(c, "blockexact", lambda: BlockExact(c.batch))


def _lr(c, kind="explicit"):
    def make():
        if kind == "explicit":
            return LowRank(c.batch, k=KR, method="gram", explicit=True)
        if kind == "implicit":
            return LowRank(c.batch, k=KR, method="gram", explicit=False)
        if kind == "lanczos":
            return LowRank(c.batch, k=KR, method="lanczos")
        return LowRankPlusDiagonal(c.batch, k=KR)
    return _cached(c, ("lowrank", kind), make)


def _lr_block(c, l, route):
    """Diagonal block l of F_k: its Gram route (N·K × N·K Gram of the layer) or its rows
    route (the eigenvector rows V_l), both forced, or whatever diagonal_block picks."""
    L, b = _lr(c), c.batch
    if route == "rows":
        return LowRankBlock(np.array(L.V[c.sl(l)]), L.values_array)
    if route == "gram":
        return LowRankBlock(lambda: L.eigenvectors(layers=[l]), L.values_array,
                            gram=(b.gram(l), L._C, b.n_samples, b.a[l], b.g[l]),
                            shape=b.block_sizes[l], dtype=L.dtype, device=b.device)
    return _lr(c, route).diagonal_block(l)


REGISTRY: list[Entry] = []


def add(*args, **kw):
    REGISTRY.append(Entry(*args, **kw))


# -- EKFAC / EigenCorrected / DiagonalFisher ------------------------------------------
add("ekfac-dense", ("EigenCorrected.__init__", "EKFAC.__init__", "EigenbasisBlock.to_dense",
                    "EigenbasisBlock.apply_diagonal", "EigenCorrected.from_terms",
                    "EigenCorrected.block", "EigenbasisBlock.matmat",
                    "eigencorrected.EigenbasisBlock", "eigencorrected.EigenCorrected",
                    "eigencorrected.EKFAC", "eigencorrected.projected_second_moments"),
    {"EKFAC.to_dense": lambda c: _ekfac(c).to_dense(),
     "EigenCorrected(KFAC).to_dense": lambda c: EigenCorrected(KFAC(c.batch)).to_dense(),
     "EKFAC @ I": lambda c: _ekfac(c) @ np.eye(c.batch.n_params),
     "matvec columns": lambda c: _cols(_ekfac(c), np.eye(c.batch.n_params)),
     "blocks: EigenbasisBlock.to_dense": lambda c: base._blockdiag(
         [b.to_dense() for b in _ekfac(c).blocks]),
     "blocks: apply_diagonal(I, s)": lambda c: base._blockdiag(
         [b.apply_diagonal(np.eye(b.shape[0]), b.diagonal_values) for b in _ekfac(c).blocks]),
     "block(l)": lambda c: base._blockdiag(
         [_ekfac(c).block(l) for l in range(c.batch.n_layers)]),
     "from_terms(KFAC factors)": lambda c: EigenCorrected.from_terms(
         [[f] for f in KFAC(c.batch).factors], c.batch).to_dense(),
     "EigenbasisBlock(eigh bases, projected_second_moments)": lambda c: base._blockdiag(
         [(lambda QA, QG: EigenbasisBlock(QA, QG, projected_second_moments(
             c.batch.a[l], c.batch.g[l], QA, QG)).to_dense())(
             np.linalg.eigh(_kfc_def(c, l)[0])[1], np.linalg.eigh(_kfc_def(c, l)[1])[1])
          for l in range(c.batch.n_layers)])},
    lambda c: _blocks_def(c, _ekfac_def), rtol=1e-8, atol=1e-10)
add("eigencorrected-kpsvd", ("EigenCorrected.__init__",),
    {"EigenCorrected(KPSVD rank 1)": lambda c: EigenCorrected(KPSVD(c.batch, rank=1)).to_dense(),
     "from_terms(KPSVD terms)": lambda c: EigenCorrected.from_terms(
         [b.terms for b in KPSVD(c.batch, rank=1).blocks], c.batch).to_dense()},
    lambda c: _blocks_def(c, lambda c, l: _eig_corrected_def(c, l, *_kpsvd1_factors_def(c, l))),
    rtol=1e-7, atol=1e-9)


def _rescaled_def(c, rho):
    """Basis of KFAC(batch), scalings ρ s(batch) + (1 − ρ) s(other batch)."""
    b2 = _other_batch(c)
    J2 = explicit_rows(b2)
    F2 = J2.T @ J2 / b2.n_samples
    out = []
    for l in range(c.batch.n_layers):
        A, G = _kfc_def(c, l)
        Q = np.kron(np.linalg.eigh(A)[1], np.linalg.eigh(G)[1])
        s1 = np.diag(Q.T @ c.block(l) @ Q)
        s2 = np.diag(Q.T @ F2[c.sl(l), c.sl(l)] @ Q)
        out.append(Q @ np.diag(rho * s1 + (1 - rho) * s2) @ Q.T)
    return base._blockdiag(out)


add("eigencorrected-rescaled", ("EigenCorrected.rescaled", "EigenCorrected.from_terms",
                                 "EigenCorrected.with_scalings"),
    {"rescaled(other, ρ=0)": lambda c: _ekfac(c).rescaled(_other_batch(c)).to_dense(),
     "with_scalings(the other batch's s)": lambda c: _ekfac(c).with_scalings(
         [projected_second_moments(_other_batch(c).a[l], _other_batch(c).g[l], b.QA, b.QG)
          for l, b in enumerate(_ekfac(c).blocks)]).to_dense(),
     "from_terms(KFAC factors, other)": lambda c: EigenCorrected.from_terms(
         [[f] for f in KFAC(c.batch).factors], _other_batch(c)).to_dense()},
    lambda c: _rescaled_def(c, 0.0), rtol=1e-8, atol=1e-10)
add("eigencorrected-rescaled-average", ("EigenCorrected.rescaled",),
    {"rescaled(other, ρ=0.3)": lambda c: _ekfac(c).rescaled(_other_batch(c), rho=0.3).to_dense(),
     "EigenbasisBlocks of ρ S + (1 − ρ) S'": lambda c: base._blockdiag(
         [EigenbasisBlock(b.QA, b.QG, 0.3 * b.S + 0.7 * o.S).to_dense() for b, o in
          zip(_ekfac(c).blocks, _ekfac(c).rescaled(_other_batch(c)).blocks)])},
    lambda c: _rescaled_def(c, 0.3), rtol=1e-8, atol=1e-10)
add("ekfac-solve", ("EigenCorrected.solve", "EigenbasisBlock.solve"),
    {"solve(rule=exact)": lambda c: _ekfac(c).solve(_V(c), LAM),
     "solve(rule=factor) (same: no rule applies)": lambda c: _ekfac(c).solve(
         _V(c), LAM, rule="factor"),
     "solve(rule=pi)": lambda c: _ekfac(c).solve(_V(c), LAM, rule="pi"),
     "vector by vector": lambda c: np.stack([_ekfac(c).solve(v, LAM) for v in _V(c).T], 1),
     "blocks: apply_diagonal(V, 1/(s+λ))": lambda c: np.concatenate(
         [b.apply_diagonal(_V(c)[c.sl(l)], 1.0 / (b.diagonal_values + LAM))
          for l, b in enumerate(_ekfac(c).blocks)]),
     "CG on the operator": lambda c: (_ekfac(c) + 0.0 * _ekfac(c)).solve(_V(c), LAM, tol=1e-13)},
    lambda c: _inv(_blocks_def(c, _ekfac_def), _V(c)), rtol=1e-7, atol=1e-9)
add("ekfac-block-norms", ("EigenbasisBlock.frobenius_norm_sq", "EigenbasisBlock.trace",
                          "EigenbasisBlock.diagonal_values"),
    {"frobenius_norm_sq, trace": lambda c: [np.array([b.frobenius_norm_sq(), b.trace()])
                                            for b in _ekfac(c).blocks],
     "dense": lambda c: [(lambda D: np.array([np.sum(D * D), np.trace(D)]))(b.to_dense())
                         for b in _ekfac(c).blocks],
     "‖s‖², Σ s": lambda c: [np.array([np.sum(b.diagonal_values ** 2),
                                       np.sum(b.diagonal_values)]) for b in _ekfac(c).blocks]},
    lambda c: _layers(c, lambda c, l: (lambda D: np.array([np.sum(D * D), np.trace(D)]))(
        _ekfac_def(c, l))))
add("ekfac-fisher-inner", ("EigenbasisBlock.fisher_inner",),
    {"same batch (EK2: ‖s‖²)": lambda c: [b.fisher_inner(FisherBlock(c.batch, l))
                                           for l, b in enumerate(_ekfac(c).blocks)],
     "equal copy (projected GEMM)": lambda c: [
         b.fisher_inner(FisherBlock(_copy_batch(c.batch), l))
         for l, b in enumerate(_ekfac(c).blocks)],
     "dense": lambda c: [float(np.sum(c.op.block(l) * b.to_dense()))
                         for l, b in enumerate(_ekfac(c).blocks)]},
    lambda c: _layers(c, lambda c, l: np.sum(c.block(l) * _ekfac_def(c, l))))
add("ekfac-fisher-inner-other-batch", ("EigenbasisBlock.fisher_inner",),
    {"fisher_inner(FisherBlock(other))": lambda c: [
        b.fisher_inner(FisherBlock(_other_batch(c), l)) for l, b in enumerate(_ekfac(c).blocks)]},
    lambda c: _layers(c, lambda c, l: np.sum(_sl_dense(c, _F_other(c), l) * _ekfac_def(c, l))))
add("ekfac-E1", ("metrics.relative_frobenius_error",),
    {"E1 per block (gram)": lambda c: [M.relative_frobenius_error(c.op, _ekfac(c), block=l)
                                       for l in range(c.batch.n_layers)],
     "E1 per block (dense)": lambda c: [M.relative_frobenius_error(
         c.op, _ekfac(c), block=l, method="dense") for l in range(c.batch.n_layers)]},
    lambda c: _layers(c, lambda c, l: base._E1_block_def(c, l, _ekfac_def(c, l))),
    rtol=1e-6, atol=1e-8)
add("diagonal-fisher", ("DiagonalFisher.diagonal", "DiagonalFisher.__init__",
                        "eigencorrected.DiagonalFisher", "EigenbasisBlock.diagonal_values",
                        "eigencorrected.projected_second_moments"),
    {"DiagonalFisher.diagonal()": lambda c: _diag(c).diagonal(),
     "diag(to_dense())": lambda c: np.diag(_diag(c).to_dense()),
     "blocks' diagonal_values": lambda c: [b.diagonal_values for b in _diag(c).blocks],
     "projected_second_moments(a, g)": lambda c: [
         projected_second_moments(a, g).reshape(-1) for a, g in zip(c.batch.a, c.batch.g)],
     "projected_second_moments(a, g, I, I)": lambda c: [
         projected_second_moments(a, g, np.eye(a.shape[-1]), np.eye(g.shape[-1])).reshape(-1)
         for a, g in zip(c.batch.a, c.batch.g)],
     "D @ 1": lambda c: _diag(c) @ np.ones(c.batch.n_params),
     "diag(FisherOperator.to_dense())": lambda c: np.diag(c.op.to_dense())},
    lambda c: np.diag(c.F))
add("diagonal-fisher-solve", ("DiagonalFisher.solve",),
    {"solve(rule=exact)": lambda c: _diag(c).solve(_V(c), LAM),
     "solve(rule=pi)": lambda c: _diag(c).solve(_V(c), LAM, rule="pi"),
     "blocks": lambda c: np.concatenate([b.solve(_V(c)[c.sl(l)], LAM, rule="factor")
                                         for l, b in enumerate(_diag(c).blocks)])},
    lambda c: _V(c) / (np.diag(c.F) + LAM)[:, None])
add("diagonal-fisher-E1", ("metrics.relative_frobenius_error",),
    {"gram": lambda c: M.relative_frobenius_error(c.op, _diag(c)),
     "dense": lambda c: M.relative_frobenius_error(c.op, _diag(c), method="dense")},
    lambda c: base._E1_def(c, np.diag(np.diag(c.F))), rtol=1e-6, atol=1e-8)

# -- BlockExact --------------------------------------------------------------------------
add("blockexact-dense", ("BlockExact.__init__", "blockexact.BlockExact", "blockexact.ExactBlock",
                         "BlockExact.to_dense"),
    {"to_dense": lambda c: _bex(c).to_dense(),
     "@ I": lambda c: _bex(c) @ np.eye(c.batch.n_params),
     "blocks": lambda c: base._blockdiag([b.to_dense() for b in _bex(c).blocks]),
     "FisherOperator.block_diagonal()": lambda c: c.op.block_diagonal().to_dense()},
    lambda c: _blocks_def(c, lambda c, l: c.block(l)))
add("blockexact-solve", ("BlockExact.solve", "ExactBlock.solve"),
    {"solve(rule=exact)": lambda c: _bex(c).solve(_V(c), LAM),
     "solve(rule=factor) (same)": lambda c: _bex(c).solve(_V(c), LAM, rule="factor"),
     "blocks, rule=pi": lambda c: np.concatenate(
         [b.solve(_V(c)[c.sl(l)], LAM, rule="pi") for l, b in enumerate(_bex(c).blocks)]),
     "vector by vector": lambda c: np.stack([_bex(c).solve(v, LAM) for v in _V(c).T], 1)},
    lambda c: _inv(_blocks_def(c, lambda c, l: c.block(l)), _V(c)), rtol=1e-7, atol=1e-9)
add("blockexact-fisher-inner", ("ExactBlock.fisher_inner",),
    {"same batch (‖F_l‖²)": lambda c: [b.fisher_inner(FisherBlock(c.batch, l))
                                        for l, b in enumerate(_bex(c).blocks)],
     "equal copy (Gram matrices)": lambda c: [
         b.fisher_inner(FisherBlock(_copy_batch(c.batch), l))
         for l, b in enumerate(_bex(c).blocks)]},
    lambda c: _layers(c, lambda c, l: np.sum(c.block(l) ** 2)))
add("blockexact-fisher-inner-other-batch", ("ExactBlock.fisher_inner",),
    {"fisher_inner(FisherBlock(other))": lambda c: [
        b.fisher_inner(FisherBlock(_other_batch(c), l)) for l, b in enumerate(_bex(c).blocks)]},
    lambda c: _layers(c, lambda c, l: np.sum(_sl_dense(c, _F_other(c), l) * c.block(l))))
add("blockexact-E1", ("metrics.relative_frobenius_error",),
    {"gram": lambda c: M.relative_frobenius_error(c.op, _bex(c)),
     "dense": lambda c: M.relative_frobenius_error(c.op, _bex(c), method="dense")},
    lambda c: base._E1_def(c, _blocks_def(c, lambda c, l: c.block(l))), rtol=1e-6, atol=1e-8)

# -- LowRank / LowRankPlusDiagonal / LowRankBlock ----------------------------------------
add("lowrank-values", ("lowrank.top_eigenpairs", "LowRank.values_array"),
    {"LowRank (gram)": lambda c: _lr(c).values,
     "values_array": lambda c: _lr(c).values_array,
     "LowRank (lanczos)": lambda c: _lr(c, "lanczos").values,
     "top_eigenpairs (lanczos)": lambda c: top_eigenpairs(c.op, KR, method="lanczos")[0]},
    lambda c: np.linalg.eigvalsh(c.F)[::-1][:KR], rtol=1e-8)
_LR_ROUTES = {"gram, explicit": lambda c: _lr(c), "gram, implicit": lambda c: _lr(c, "implicit"),
              "lanczos": lambda c: _lr(c, "lanczos")}
add("lowrank-dense", ("LowRank.__init__", "lowrank.LowRank", "LowRank.to_dense",
                      "LowRank.block", "LowRank.eigenvectors", "LowRank.block_slice"),
    {f"{k}: @ I": lambda c, f=f: f(c) @ np.eye(c.batch.n_params)
     for k, f in _LR_ROUTES.items()}
    | {"to_dense": lambda c: _lr(c, "implicit").to_dense(),
       "block(i, j)": lambda c: np.block([[_lr(c, "implicit").block(i, j)
                                           for j in range(c.batch.n_layers)]
                                          for i in range(c.batch.n_layers)]),
       "eigenvectors() Λ eigenvectors()ᵀ": lambda c: (lambda V: (V * _lr(c).values) @ V.T)(
           _lr(c, "implicit").eigenvectors())},
    lambda c: _lowrank_def(c), rtol=1e-7, atol=1e-9)
add("lowrank-solve", ("LowRank.solve",),
    {f"{k}: solve": lambda c, f=f: f(c).solve(_V(c), LAM) for k, f in _LR_ROUTES.items()}
    | {"vector by vector": lambda c: np.stack([_lr(c, "implicit").solve(v, LAM)
                                               for v in _V(c).T], 1)},
    lambda c: _inv(_lowrank_def(c), _V(c)), rtol=1e-7, atol=1e-9)
add("lowrank-norms", ("LowRank.frobenius_norm_sq", "LowRank.trace", "LowRank.fisher_inner"),
    {"frobenius_norm_sq, trace, fisher_inner(F)": lambda c: np.array([
        _lr(c).frobenius_norm_sq(), _lr(c).trace(), _lr(c).fisher_inner(c.op)]),
     "lanczos route": lambda c: np.array([
         _lr(c, "lanczos").frobenius_norm_sq(), _lr(c, "lanczos").trace(),
         _lr(c, "lanczos").fisher_inner(c.op)]),
     "fisher_inner(equal copy): Σ λ uᵀFu": lambda c: np.array([
         _lr(c).frobenius_norm_sq(), _lr(c).trace(),
         _lr(c, "implicit").fisher_inner(FisherOperator(_copy_batch(c.batch)))])},
    lambda c: (lambda Fk: np.array([np.sum(Fk * Fk), np.trace(Fk), np.sum(c.F * Fk)]))(
        _lowrank_def(c)), rtol=1e-8, atol=1e-10)
add("lowrank-fisher-inner-other-batch", ("LowRank.fisher_inner",),
    {"explicit": lambda c: _lr(c).fisher_inner(FisherOperator(_other_batch(c))),
     "implicit": lambda c: _lr(c, "implicit").fisher_inner(FisherOperator(_other_batch(c)))},
    lambda c: np.sum(_F_other(c) * _lowrank_def(c)), rtol=1e-8, atol=1e-10)
_LRB_ROUTES = ("gram", "rows", "explicit", "implicit", "lanczos")
add("lowrank-block-norms", ("LowRankBlock.frobenius_norm_sq", "LowRankBlock.fisher_inner",
                            "LowRank.diagonal_block", "LowRank.blocks", "lowrank.LowRankBlock",
                            "LowRank.n_blocks"),
    {f"{r}: ‖(F_k)_ll‖², ⟨F_l, (F_k)_ll⟩": lambda c, r=r: [
        np.array([_lr_block(c, l, r).frobenius_norm_sq(),
                  _lr_block(c, l, r).fisher_inner(FisherBlock(c.batch, l))])
        for l in range(c.batch.n_layers)] for r in _LRB_ROUTES}
    | {"blocks property": lambda c: [np.array([b.frobenius_norm_sq(), b.fisher_inner(
        FisherBlock(c.batch, l))]) for l, b in enumerate(_lr(c, "implicit").blocks)]},
    lambda c: _layers(c, lambda c, l: (lambda B: np.array([np.sum(B * B), np.sum(
        c.block(l) * B)]))(_sl_dense(c, _lowrank_def(c), l))), rtol=1e-8, atol=1e-10)
add("lowrank-block-ops", ("LowRankBlock.to_dense", "LowRankBlock.diagonal", "LowRankBlock.solve",
                          "LowRankBlock.V"),
    {f"{r}: to_dense, diagonal, solve": lambda c, r=r: [
        np.concatenate([_lr_block(c, l, r).to_dense().ravel(), _lr_block(c, l, r).diagonal(),
                        _lr_block(c, l, r).solve(_V(c)[c.sl(l)], LAM).ravel()])
        for l in range(c.batch.n_layers)] for r in _LRB_ROUTES}
    | {"V Λ Vᵀ": lambda c: [np.concatenate([(lambda V: (V * _lr(c).values) @ V.T)(
        _lr_block(c, l, "gram").V).ravel(), np.diag(_lr_block(c, l, "rows").to_dense()),
        _lr_block(c, l, "rows").solve(_V(c)[c.sl(l)], LAM).ravel()])
        for l in range(c.batch.n_layers)]},
    lambda c: _layers(c, lambda c, l: (lambda B: np.concatenate([
        B.ravel(), np.diag(B), _inv(B, _V(c)[c.sl(l)]).ravel()]))(
        _sl_dense(c, _lowrank_def(c), l))), rtol=1e-7, atol=1e-9)
add("lowrank-E1-block", ("metrics.relative_frobenius_error",),
    {"gram": lambda c: [M.relative_frobenius_error(c.op, _lr(c, "implicit"), block=l)
                        for l in range(c.batch.n_layers)],
     "dense": lambda c: [M.relative_frobenius_error(c.op, _lr(c), block=l, method="dense")
                         for l in range(c.batch.n_layers)]},
    lambda c: _layers(c, lambda c, l: base._E1_block_def(
        c, l, _sl_dense(c, _lowrank_def(c), l))), rtol=1e-6, atol=1e-8)
add("lowrank-diagonal-dense", ("LowRankPlusDiagonal.__init__", "lowrank.LowRankPlusDiagonal"),
    {"to_dense": lambda c: _lr(c, "diag").to_dense(),
     "@ I": lambda c: _lr(c, "diag") @ np.eye(c.batch.n_params),
     "block(i, j)": lambda c: np.block([[_lr(c, "diag").block(i, j)
                                         for j in range(c.batch.n_layers)]
                                        for i in range(c.batch.n_layers)])},
    _lowrank_diag_def, rtol=1e-7, atol=1e-9)
add("lowrank-diagonal-solve", ("LowRankPlusDiagonal.solve", "LowRankBlock.solve"),
    {"solve": lambda c: _lr(c, "diag").solve(_V(c), LAM),
     "vector by vector": lambda c: np.stack([_lr(c, "diag").solve(v, LAM) for v in _V(c).T], 1)},
    lambda c: _inv(_lowrank_diag_def(c), _V(c)), rtol=1e-7, atol=1e-9)
add("lowrank-diagonal-norms", ("LowRankPlusDiagonal.frobenius_norm_sq",
                               "LowRankPlusDiagonal.fisher_inner", "LowRankBlock.fisher_inner",
                               "LowRankBlock.frobenius_norm_sq", "LowRankBlock.diagonal"),
    {"whole: ‖·‖², ⟨F, ·⟩": lambda c: [np.array([_lr(c, "diag").frobenius_norm_sq(),
                                                 _lr(c, "diag").fisher_inner(c.op)])],
     "whole, equal copy": lambda c: [np.array([_lr(c, "diag").frobenius_norm_sq(),
                                               _lr(c, "diag").fisher_inner(
                                                   FisherOperator(_copy_batch(c.batch)))])],
     "dense": lambda c: [(lambda D: np.array([np.sum(D * D), np.sum(c.op.to_dense() * D)]))(
         _lr(c, "diag").to_dense())]},
    lambda c: [(lambda D: np.array([np.sum(D * D), np.sum(c.F * D)]))(_lowrank_diag_def(c))],
    rtol=1e-8, atol=1e-10)
add("lowrank-diagonal-blocks", ("LowRankBlock.fisher_inner", "LowRankBlock.frobenius_norm_sq",
                                "LowRankBlock.diagonal"),
    {"blocks: ‖·‖², ⟨F_l, ·⟩, diagonal": lambda c: [np.concatenate([
        [b.frobenius_norm_sq(), b.fisher_inner(FisherBlock(c.batch, l))], b.diagonal()])
        for l, b in enumerate(_lr(c, "diag").blocks)],
     "dense": lambda c: [(lambda B: np.concatenate([[np.sum(B * B), np.sum(c.op.block(l) * B)],
                                                    np.diag(B)]))(_lr(c, "diag").block(l))
                         for l in range(c.batch.n_layers)]},
    lambda c: _layers(c, lambda c, l: (lambda B: np.concatenate([
        [np.sum(B * B), np.sum(c.block(l) * B)], np.diag(B)]))(
        _sl_dense(c, _lowrank_diag_def(c), l))), rtol=1e-8, atol=1e-10)

# -- KFC factors and R(F_l) of convolution blocks ----------------------------------------
def _POS(c):
    return [l for l in range(c.batch.n_layers) if c.batch.positional[l]]


def _per_pos(f):
    return lambda c: [np.asarray(x) for l in _POS(c) for x in f(c, l)]


add("kfc-factors", ("kfc.kfc_factors", "FisherBlock.kfac_factors", "KFAC.__init__"),
    {"kfc_factors(a, g)": _per_pos(lambda c, l: kfc_factors(c.batch.a[l], c.batch.g[l])),
     "KFAC(batch).factors": _per_pos(lambda c, l: KFAC(c.batch).factors[l]),
     "FisherBlock.kfac_factors": _per_pos(lambda c, l: FisherBlock(c.batch, l).kfac_factors()),
     "KFAC blocks' terms": _per_pos(lambda c, l: KFAC(c.batch).blocks[l].terms[0])},
    _per_pos(_kfc_def), contexts=CONV)


def _rcf(c, l, route, symmetric):
    return _cached(c, ("rcf", l, route, symmetric), lambda: RearrangedConvFisher(
        c.batch.a[l], c.batch.g[l], symmetric=symmetric, route=route))


def _conv_R_entry(symmetric):
    impls = {}
    for route in ("samples", "positions"):
        impls[f"{route}: to_dense"] = (lambda r: _per_pos(
            lambda c, l: [_rcf(c, l, r, symmetric).to_dense()]))(route)
        impls[f"{route}: matvec columns"] = (lambda r: _per_pos(lambda c, l: [(lambda R: np.stack(
            [R.matvec(e) for e in np.eye(R.shape[1])], axis=1))(_rcf(c, l, r, symmetric))]))(route)
        impls[f"{route}: rmatvec rows"] = (lambda r: _per_pos(lambda c, l: [(lambda R: np.stack(
            [R.rmatvec(e) for e in np.eye(R.shape[0])], axis=0))(_rcf(c, l, r, symmetric))]))(route)
    if not symmetric:
        impls["kron.rearrange(F_l)"] = _per_pos(lambda c, l: [kron.rearrange(
            c.op.block(l), c.batch.d_a[l], c.batch.d_g[l])])
    return Entry(f"conv-rearranged-{'symmetric' if symmetric else 'full'}",
                 ("RearrangedConvFisher.to_dense", "RearrangedConvFisher.matvec",
                  "RearrangedConvFisher.rmatvec", "conv_rearranged.RearrangedConvFisher"),
                 impls, _per_pos(lambda c, l: [_R_def(c, l, symmetric)]), contexts=CONV)


REGISTRY += [_conv_R_entry(False), _conv_R_entry(True)]


def _conv_top_lanczos(c, l):
    old = conv_mod.DENSE_MAX_ENTRIES
    conv_mod.DENSE_MAX_ENTRIES = 0
    try:
        return conv_top_triplets(_rcf(c, l, "positions", True), 2, tol=1e-12,
                                 rng=np.random.default_rng(0))[0]
    finally:
        conv_mod.DENSE_MAX_ENTRIES = old


add("conv-top-triplets", ("conv_rearranged.conv_top_triplets",),
    {"dense SVD": _per_pos(lambda c, l: [conv_top_triplets(_rcf(c, l, "samples", True), 2)[0]]),
     "Golub–Kahan": _per_pos(lambda c, l: [_conv_top_lanczos(c, l)])},
    _per_pos(lambda c, l: [np.linalg.svd(_R_def(c, l), compute_uv=False)[:2]]),
    rtol=1e-8, atol=1e-10, contexts=CONV)
def _sample_matrices_def(c, l):
    """``M_nk = Σ_t ā_nt g_nktᵀ`` (``d_a × d_g``) by loops over n, k, t."""
    a, g = np.asarray(c.batch.a[l]), np.asarray(c.batch.g[l])
    N, K, T = g.shape[:3]
    M = np.zeros((N * K, a.shape[2], g.shape[3]))
    for n in range(N):
        for k in range(K):
            for t in range(T):
                M[n * K + k] += np.outer(a[n, t], g[n, k, t])
    return M


add("conv-sample-matrices", ("RearrangedConvFisher.sample_matrices",),
    {f"{route}: sample_matrices": (lambda r: _per_pos(
        lambda c, l: [_rcf(c, l, r, True).sample_matrices()]))(route)
     for route in ("samples", "positions")},
    _per_pos(lambda c, l: [_sample_matrices_def(c, l)]), contexts=CONV)


def _normal_def(c, l, symmetric):
    """``R_sᵀR_s`` when ``d_g ≤ d_a``, else ``R_sR_sᵀ``, of the explicit rearrangement."""
    R = _R_def(c, l, symmetric)
    return R.T @ R if c.batch.d_g[l] <= c.batch.d_a[l] else R @ R.T


def _normal_impl(route, symmetric):
    return _per_pos(lambda c, l: [conv_mod.normal_matrix(_rcf(c, l, route, symmetric))[0]])


def _normal_ref(c, symmetric):
    return _per_pos(lambda c, l: [_normal_def(c, l, symmetric)])(c)


_NORMAL_CASES = [(r, sym) for r in ("samples", "positions") for sym in (True, False)]
add("conv-normal-matrix", ("conv_rearranged.normal_matrix",),
    {f"{r}, {'symmetric' if sym else 'full'}": _normal_impl(r, sym) for r, sym in _NORMAL_CASES},
    lambda c: {f"{r}, {'symmetric' if sym else 'full'}": _normal_ref(c, sym)
               for r, sym in _NORMAL_CASES},
    rtol=1e-8, atol=1e-10, contexts=CONV)
add("conv-kpsvd", ("KPSVD.__init__",),
    {"KPSVD rank 1": lambda c: base._dense_of(KPSVD(c.batch, rank=1)),
     "KPSVD rank 2 (first term)": lambda c: base._blockdiag(
         [np.kron(*b.terms[0]) for b in KPSVD(c.batch, rank=2).blocks])},
    lambda c: _blocks_def(c, lambda c, l: _kpsvd_def(c, l, 1)), rtol=1e-7, atol=1e-9,
    contexts=CONV)

# -------------------------------------------------------------------------------------
# the test
# -------------------------------------------------------------------------------------
CASES = [(e.name, ctx) for e in REGISTRY for ctx in e.contexts]


@pytest.mark.parametrize("entry,ctx", CASES)
def test_crosscheck(entry, ctx):
    base.check_entry(next(x for x in REGISTRY if x.name == entry), get_ctx(ctx))


def test_registry_entries():
    assert len({e.name for e in REGISTRY}) == len(REGISTRY)
    for e in REGISTRY:
        assert e.definition is not None and e.impls and e.covers, e.name


# -------------------------------------------------------------------------------------
# completeness (read by tests/test_crosscheck.py::test_registry_is_complete)
# -------------------------------------------------------------------------------------
CLASSES = {
    "EigenbasisBlock": EigenbasisBlock,
    "EigenCorrected": EigenCorrected,
    "EKFAC": EKFAC,
    "DiagonalFisher": DiagonalFisher,
    "BlockExact": BlockExact,
    "ExactBlock": ExactBlock,
    "LowRank": LowRank,
    "LowRankPlusDiagonal": LowRankPlusDiagonal,
    "LowRankBlock": LowRankBlock,
    "RearrangedConvFisher": RearrangedConvFisher,
}
MODULES = {"eigencorrected": eigen_mod, "blockexact": blockexact_mod, "lowrank": lowrank_mod,
           "kfc": kfc_mod, "conv_rearranged": conv_mod}
EXEMPT = {
    "EigenbasisBlock.to_scipy": "interop view",
    "LowRankBlock.to_scipy": "interop view",
    "LowRank.to_scipy": "interop view",
    "EigenCorrected.n_blocks": "metadata",
    "conv_rearranged.DENSE_MAX_ENTRIES": "a constant (the dense/Golub–Kahan switch; both "
                                         "routes in conv-top-triplets)",
}


# -------------------------------------------------------------------------------------
# entries that need no spectral gap, as a property: random shapes, dense and conv layers
# -------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPERTY = ["blockexact-dense", "blockexact-solve", "kfc-factors", "conv-rearranged-full",
            "conv-rearranged-symmetric", "diagonal-fisher", "diagonal-fisher-solve"]


@st.composite
def random_conv_batches(draw):
    N, K = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    r = np.random.default_rng(draw(st.integers(0, 2**16)))
    a, g = [], []
    for _ in range(draw(st.integers(1, 2))):
        T, da, dg = draw(st.integers(0, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        if T == 0:  # a dense layer
            a.append(r.normal(size=(N, da)))
            g.append(r.normal(size=(N, K, dg)))
        else:
            a.append(r.normal(size=(N, T, da)))
            g.append(r.normal(size=(N, K, T, dg)))
    b = fl.FactorBatch(a, g)
    J = explicit_rows(b)
    return base.Ctx("random", b, J=J, F=J.T @ J / N)


@settings(max_examples=12)
@given(c=random_conv_batches())
def test_gap_free_entries_on_random_batches(c):
    for name in PROPERTY:
        e = next(x for x in REGISTRY if x.name == name)
        if name.startswith(("kfc", "conv")) and not any(c.batch.positional):
            continue  # about positional layers only
        base.check_entry(e, c)
