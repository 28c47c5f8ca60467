"""Registry-driven cross-checks (issue 21): every quantity fimlab computes in two (or
more) ways is listed in ``REGISTRY``; each entry's implementations are compared with
each other AND with the explicit definition computed here from scratch (explicit
Kronecker products of the per-sample rows, dense NumPy linear algebra, loops), on
factor batches of every Fisher type (exact and Monte-Carlo with ``K > 1``, empirical,
and a synthetic three-layer batch with ``K = 4``).

``test_registry_is_complete`` keeps the registry honest: every public method of the
curvature classes and every public function of the numerical modules must be named by
some entry's ``covers`` (or be exempted below with the reason), so a new duplicate
implementation fails the suite until it is cross-checked here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import pytest

import fimlab as fl
from fimlab import _kernels, kron
from fimlab import metrics as M
from fimlab._kernels import numpy_impl
from fimlab.approx import KFAC, KPSVD, Deflation, KFACCorrected, Lanczos, kfac_factors
from fimlab.curvature import FisherBlock, FisherOperator
from fimlab.operators import BlockDiagonalOperator, DenseOperator, KroneckerOperator
from fimlab.testing.oracles import block_diagonal

import naive

LAM = 0.07


# -------------------------------------------------------------------------------------
# contexts: one factor batch per Fisher type, with its explicit dense definition
# -------------------------------------------------------------------------------------
@dataclass
class Ctx:
    name: str
    batch: fl.FactorBatch
    net: object = None
    X: object = None
    y: object = None
    J: np.ndarray = None  # explicit rows kron(ā_n, g_nk), (N·K, P)
    F: np.ndarray = None  # (1/N) JᵀJ
    cache: dict = field(default_factory=dict)

    @property
    def op(self):
        return FisherOperator(self.batch)

    def sl(self, l):
        o = self.batch.offsets
        return slice(o[l], o[l + 1])

    def block(self, l):
        return self.F[self.sl(l), self.sl(l)]


def _explicit_rows(batch):
    """Row (n, k) = [ā_0,n ⊗ g_0,nk, …] by np.kron, one sample at a time (the definition)."""
    N, K = batch.n_samples, batch.n_vectors
    rows = []
    for n in range(N):
        for k in range(K):
            rows.append(np.concatenate([np.kron(a[n], g[n, k]) for a, g in zip(batch.a, batch.g)]))
    return np.array(rows)


def _ctx(name):
    rng = np.random.default_rng(7)
    net = X = y = None
    if name == "synthetic":
        N, K = 9, 4
        dims = [(4, 3), (3, 5), (6, 2)]
        a = [rng.normal(size=(N, da)) for da, _ in dims]
        g = [rng.normal(size=(N, K, dg)) for _, dg in dims]
        b = fl.FactorBatch(a, g)
    else:
        net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=3)
        X = rng.normal(size=(12, 4))
        y = rng.integers(0, 3, size=12)
        kw = {"exact": {}, "mc": {"mc_samples": 3, "rng": 5}, "empirical": {"y": y}}[name]
        b = fl.factor_batch(net, X, fisher=name, **kw)
    J = _explicit_rows(b)
    return Ctx(name, b, net, X, y, J, J.T @ J / b.n_samples)


CONTEXTS = ("exact", "mc", "empirical", "synthetic")
_CTX_CACHE: dict = {}


def get_ctx(name) -> Ctx:
    if name not in _CTX_CACHE:
        _CTX_CACHE[name] = _ctx(name)
    return _CTX_CACHE[name]


def test_contexts_have_several_vectors_per_sample():
    # K > 1 where the Fisher type allows it (the empirical Fisher has K = 1 by definition)
    assert get_ctx("exact").batch.n_vectors == 3
    assert get_ctx("mc").batch.n_vectors == 3
    assert get_ctx("synthetic").batch.n_vectors == 4
    assert get_ctx("empirical").batch.n_vectors == 1


# -------------------------------------------------------------------------------------
# explicit definitions
# -------------------------------------------------------------------------------------
def _vecF(M):
    return M.reshape(-1, order="F")


def _mat(v, d):
    return v.reshape(d, d, order="F")


def _R_svd(c, l):
    b = c.batch
    R = naive.rearrange(c.block(l), b.d_a[l], b.d_g[l])
    return R, np.linalg.svd(R)


def _kron_approx(c, l, r):
    """Σ_{i<r} σ_i mat(u_i) ⊗ mat(v_i): best rank-r Kronecker sum (Eckart–Young on R)."""
    b = c.batch
    _, (U, s, Vt) = _R_svd(c, l)
    return sum(s[i] * np.kron(_mat(U[:, i], b.d_a[l]), _mat(Vt[i], b.d_g[l])) for i in range(r))


def _kfac_def(c, l):
    b = c.batch
    a, g = b.a[l], b.g[l]
    N, K = b.n_samples, b.n_vectors
    A = sum(np.outer(a[n], a[n]) for n in range(N)) / N
    G = sum(np.outer(g[n, k], g[n, k]) for n in range(N) for k in range(K)) / N
    return A, G


def _kfac_corrected_def(c, l):
    b = c.batch
    A, G = _kfac_def(c, l)
    R, _ = _R_svd(c, l)
    U, s, Vt = np.linalg.svd(R - np.outer(_vecF(A), _vecF(G)))
    return np.kron(A, G) + s[0] * np.kron(_mat(U[:, 0], b.d_a[l]), _mat(Vt[0], b.d_g[l]))


_blockdiag = block_diagonal  # fimlab.testing.oracles


def _dense_of(op):
    return _blockdiag([sum(np.kron(A, G) for A, G in b.terms) for b in op.blocks])


def _V(c, k=3):
    return np.random.default_rng(11).normal(size=(c.batch.n_params, k))


def _Y(c, k=3):
    """Values on the rows: shape ``(N, K, k)``."""
    b = c.batch
    return np.random.default_rng(12).normal(size=(b.n_samples, b.n_vectors, k))


def _spd_pair(d, seed):
    r = np.random.default_rng(seed)
    X = r.normal(size=(d, d))
    return X @ X.T / d + 0.3 * np.eye(d)


def _rule_inverse_def(A, G, lam, rule):
    """The dense damped inverses (K2, K3, K4)."""
    da, dg = A.shape[0], G.shape[0]
    s = np.sqrt(lam)
    if rule == "factor":
        return np.kron(np.linalg.inv(A + s * np.eye(da)), np.linalg.inv(G + s * np.eye(dg)))
    if rule == "pi":
        pi = np.sqrt((np.trace(A) / da) / (np.trace(G) / dg))
        return np.kron(np.linalg.inv(A + pi * s * np.eye(da)),
                       np.linalg.inv(G + s / pi * np.eye(dg)))
    return np.linalg.inv(np.kron(A, G) + lam * np.eye(da * dg))


# -------------------------------------------------------------------------------------
# the registry
# -------------------------------------------------------------------------------------
@dataclass
class Entry:
    name: str
    covers: tuple  # "Class.method" / "module.function" names this entry cross-checks
    impls: dict  # label -> f(ctx) -> array or float
    definition: object  # f(ctx) -> the explicit value
    rtol: float = 1e-9
    atol: float = 1e-10


def _per_layer(f):
    """Stack a per-layer quantity over the layers (so one entry checks every layer)."""
    def g(c):
        out = [f(c, l) for l in range(c.batch.n_layers)]
        if isinstance(out[0], tuple):
            return [np.asarray(x) for t in out for x in t]
        return [np.asarray(x) for x in out]
    return g


def _off_diag(c):
    F, L = c.op, c.batch.n_layers
    return [F.block(i, j) for i in range(L) for j in range(L) if i != j]


def _off_diag_dense(c):
    D, L = c.op.to_dense(), c.batch.n_layers
    return [D[c.sl(i), c.sl(j)] for i in range(L) for j in range(L) if i != j]


def _off_diag_def(c):
    L = c.batch.n_layers
    return [c.F[c.sl(i), c.sl(j)] for i in range(L) for j in range(L) if i != j]


def _to_dense_chunked(c, monkeypatch_bytes=0):
    """FisherOperator.to_dense through the chunked-syrk route (forced) instead of the
    one-piece route the small batches take."""
    import fimlab.curvature as cv

    old1, old2 = cv._ONE_PIECE_BYTES, cv._CHUNK_BYTES
    cv._ONE_PIECE_BYTES = monkeypatch_bytes
    cv._CHUNK_BYTES = 3 * c.batch.n_vectors * c.batch.n_params * 8  # 3 samples per chunk
    try:
        return c.op.to_dense()
    finally:
        cv._ONE_PIECE_BYTES, cv._CHUNK_BYTES = old1, old2


def _to_dense_strict(c):
    """FisherOperator.to_dense on the array-API route (array_api_strict: no syrk)."""
    import array_api_strict as xps

    b = c.batch
    sb = fl.FactorBatch([xps.asarray(a) for a in b.a], [xps.asarray(g) for g in b.g])
    return np.asarray(FisherOperator(sb).to_dense())


def _kernel_twins(kernel):
    """The Numba and NumPy twins of a kernel, as two implementations."""
    def run(c, impl):
        rng = np.random.default_rng(3)
        b = c.batch
        N, K = b.n_samples, b.n_vectors
        if kernel == "sq_gram_reduce":
            gf = b.g[0].reshape(N * K, -1)
            Gg, out = gf @ gf.T, np.zeros((N, N))
            (_kernels.sq_gram_reduce if impl == "dispatch" else numpy_impl.sq_gram_reduce)(Gg, K, out)
            return out
        if kernel == "grouped_rowdot":
            X, Y, out = rng.normal(size=(N * K, 5)), rng.normal(size=(N * K, 5)), np.zeros(N)
            (_kernels.grouped_rowdot if impl == "dispatch" else numpy_impl.grouped_rowdot)(X, Y, K, out)
            return out
        if kernel == "outer_rows":
            U = np.zeros((N * K, b.n_params))
            f = _kernels.outer_rows if impl == "dispatch" else numpy_impl.outer_rows
            for l in range(b.n_layers):
                f(b.a[l], b.g[l], U, b.offsets[l])
            return U
        Mx = np.tril(rng.normal(size=(7, 7)))
        (_kernels.symmetrize_lower if impl == "dispatch" else numpy_impl.symmetrize_lower)(Mx)
        return Mx

    def definition(c):
        rng = np.random.default_rng(3)
        b = c.batch
        N, K = b.n_samples, b.n_vectors
        if kernel == "sq_gram_reduce":
            g = b.g[0]
            return np.array([[sum((g[n, k] @ g[m, j]) ** 2 for k in range(K) for j in range(K))
                              for m in range(N)] for n in range(N)])
        if kernel == "grouped_rowdot":
            X, Y = rng.normal(size=(N * K, 5)), rng.normal(size=(N * K, 5))
            return np.array([np.sum(X[n * K:(n + 1) * K] * Y[n * K:(n + 1) * K]) for n in range(N)])
        if kernel == "outer_rows":
            return c.J
        L = np.tril(rng.normal(size=(7, 7)))
        return L + np.tril(L, -1).T

    return {"numba-or-dispatch": lambda c: run(c, "dispatch"),
            "numpy": lambda c: run(c, "numpy")}, definition


def _kpsvd_family(cls, r, definition, **kw):
    covers = (f"{cls.__name__}.__init__",)
    return Entry(
        f"{cls.__name__}-rank{r}-dense", covers,
        {"solver=exact (gram)": lambda c: _dense_of(cls(c.batch, solver="exact", **kw)),
         "solver=exact (matrix-free)": lambda c: _dense_of(
             cls(c.batch, solver="exact", products="matrix-free", **kw)),
         "solver=paper": lambda c: _dense_of(cls(c.batch, solver="paper", tol=1e-11, **kw))},
        lambda c: _blockdiag([definition(c, l) for l in range(c.batch.n_layers)]),
        rtol=2e-6, atol=2e-8,
    )


def _E1_def(c, approx_dense):
    return np.linalg.norm(c.F - approx_dense) / np.linalg.norm(c.F)


def _E1_block_def(c, l, approx_dense_block):
    return np.linalg.norm(c.block(l) - approx_dense_block) / np.linalg.norm(c.block(l))


def _E3_def(c, l, approx_dense_block):
    E = c.block(l) - approx_dense_block
    return np.max(np.abs(np.linalg.eigvalsh(E))) / np.max(np.linalg.eigvalsh(c.block(l)))


def _woodbury_def(c, V):
    return np.linalg.solve(c.F + LAM * np.eye(c.F.shape[0]), V)


def _kron_ops(c):
    """KFAC blocks and two-term KPSVD blocks of the context (cached)."""
    if "kron" not in c.cache:
        c.cache["kron"] = (KFAC(c.batch), KPSVD(c.batch, rank=2))
    return c.cache["kron"]


def _kron_matmat_impl(ncols):
    def f(c):
        return [kron.kron_matmat(A, G, np.random.default_rng(ncols).normal(
                    size=(A.shape[0] * G.shape[0], ncols)))
                for b in _kron_ops(c)[1].blocks for A, G in b.terms]
    return f


def _kron_solve_entry(rule, rank):
    def impl_op(c):
        op = _kron_ops(c)[0 if rank == 1 else 1]
        return [b.solve(_V(c)[: b.shape[0]], LAM, rule=rule) for b in op.blocks]

    def impl_fn(c):
        op = _kron_ops(c)[0 if rank == 1 else 1]
        return [kron.kron_sum_solve(b.terms, _V(c)[: b.shape[0]], LAM, rule)
                for b in op.blocks]

    def impl_cg(c):  # the generic CG of CurvatureOperator on the same matrix (exact only)
        op = _kron_ops(c)[0 if rank == 1 else 1]
        out = []
        for b in op.blocks:
            S = b + 0.0 * b  # a SumOperator: no structure, CG on (S + λI)
            out.append(S.solve(_V(c)[: b.shape[0]], LAM, tol=1e-13))
        return out

    def definition(c):
        op = _kron_ops(c)[0 if rank == 1 else 1]
        out = []
        for b in op.blocks:
            V = _V(c)[: b.shape[0]]
            if rank == 1:
                A, G = b.terms[0]
                out.append(_rule_inverse_def(A, G, LAM, rule) @ V)
            else:
                (A1, G1), (A2, G2) = b.terms
                da, dg = A1.shape[0], G1.shape[0]
                if rule == "factor":  # (I1): (A₁+λI)⊗(G₁+λI) + A₂⊗G₂, the |s| rule
                    out.append(_i1_abs_inverse(A1, G1, A2, G2, LAM) @ V)
                else:
                    out.append(np.linalg.solve(np.kron(A1, G1) + np.kron(A2, G2)
                                               + LAM * np.eye(da * dg), V))
        return out

    impls = {"KroneckerOperator.solve": impl_op, "kron_sum_solve": impl_fn}
    if rule == "exact":
        impls["CurvatureOperator.solve (CG)"] = impl_cg
    return Entry(f"kron-solve-{rule}-rank{rank}",
                 ("KroneckerOperator.solve", "kron.kron_sum_solve", "kron.kron_sum_inverse",
                  "BlockDiagonalOperator.solve", "CurvatureOperator.solve"),
                 impls, definition, rtol=1e-7, atol=1e-9)


def _i1_abs_inverse(A1, G1, A2, G2, lam):
    """(I1) with the papers' |s| rule, from scipy's generalized eigensolver written out:
    K_aᵀ(A₁+λI)K_a = I, K_aᵀA₂K_a = diag(s₁) (and likewise for G); the inverse is
    (K_a⊗K_g) diag(1 + |s₁|⊗|s₂|)⁻¹ (K_a⊗K_g)ᵀ."""
    def simdiag(B, A):
        w, Q = np.linalg.eigh(B)
        Bh = Q @ np.diag(w ** -0.5) @ Q.T
        s, E = np.linalg.eigh(Bh @ A @ Bh)
        return s, Bh @ E

    da, dg = A1.shape[0], G1.shape[0]
    s1, Ka = simdiag(A1 + lam * np.eye(da), A2)
    s2, Kg = simdiag(G1 + lam * np.eye(dg), G2)
    Kk = np.kron(Ka, Kg)
    den = 1.0 + np.kron(np.abs(s1), np.abs(s2))
    return Kk @ np.diag(1.0 / den) @ Kk.T


def _fd_gradient(c):
    theta = c.net.get_flat().copy()
    g = naive.fd_gradient(lambda t: (c.net.set_flat(t), c.net.loss(c.X, c.y))[1], theta)
    c.net.set_flat(theta)
    return g


REGISTRY: list[Entry] = [
    Entry("kfac-factors", ("FisherBlock.kfac_factors", "KFAC.__init__",
                           "approx.kfac_factors", "kron.gram_of_rows"),
          {"FisherBlock.kfac_factors": _per_layer(lambda c, l: FisherBlock(c.batch, l).kfac_factors()),
           "KFAC(batch).factors": _per_layer(lambda c, l: KFAC(c.batch).factors[l]),
           "kfac_factors(a, g)": _per_layer(lambda c, l: kfac_factors(c.batch.a[l], c.batch.g[l])),
           "KFAC(batch).blocks[l].terms": _per_layer(lambda c, l: KFAC(c.batch).blocks[l].terms[0])},
          _per_layer(_kfac_def)),
    Entry("fisher-dense", ("FisherOperator.to_dense", "FactorBatch.jacobian_matrix",
                           "kernels.symmetrize_lower"),
          {"to_dense": lambda c: c.op.to_dense(),
           "to_dense (chunked syrk)": _to_dense_chunked,
           "to_dense (array API)": _to_dense_strict,
           "UᵀU/N from jacobian_matrix": lambda c: (lambda U: U.T @ U / c.batch.n_samples)(
               c.batch.jacobian_matrix()),
           "columns of F @ I": lambda c: c.op @ np.eye(c.batch.n_params),
           "to_scipy() @ I": lambda c: c.op.to_scipy() @ np.eye(c.batch.n_params)},
          lambda c: c.F),
    Entry("fisher-diagonal-block", ("FisherOperator.block", "FisherOperator.diagonal_block",
                                    "FisherBlock.to_dense", "FisherOperator.block_diagonal",
                                    "FactorBatch.jacobian", "FactorBatch.layer",
                                    "BlockDiagonalOperator.block", "FisherOperator.block_slice",
                                    "FisherOperator.offsets", "FisherOperator.n_blocks"),
          {"block(l)": _per_layer(lambda c, l: c.op.block(l)),
           "diagonal_block(l).to_dense()": _per_layer(lambda c, l: c.op.diagonal_block(l).to_dense()),
           "to_dense()[s, s]": _per_layer(lambda c, l: c.op.to_dense()[c.op.block_slice(l), c.op.block_slice(l)]),
           "block_diagonal().block(l)": _per_layer(lambda c, l: c.op.block_diagonal().block(l)),
           "FisherOperator(layer(l))": _per_layer(lambda c, l: FisherOperator(c.batch.layer(l)).to_dense()),
           "jacobian(l)ᵀ jacobian(l)/N": _per_layer(
               lambda c, l: c.batch.jacobian(l).T @ c.batch.jacobian(l) / c.batch.n_samples)},
          _per_layer(lambda c, l: c.block(l))),
    Entry("jacobian-rows", ("FisherOperator.jacobian_rows", "FactorBatch.jacobian_matrix"),
          {"jacobian_rows(V)": lambda c: c.op.jacobian_rows(_V(c)).reshape(-1, 3),
           "jacobian_matrix() @ V": lambda c: c.batch.jacobian_matrix() @ _V(c),
           "per layer, summed": lambda c: sum(
               c.op.jacobian_rows(_V(c)[c.sl(l)], layers=[l]).reshape(-1, 3)
               for l in range(c.batch.n_layers))},
          lambda c: c.J @ _V(c)),
    Entry("jacobian-rows-transpose", ("FisherOperator.jacobian_rows_transpose",),
          {"jacobian_rows_transpose(Y)": lambda c: c.op.jacobian_rows_transpose(_Y(c)),
           "per layer, stacked": lambda c: np.concatenate(
               [c.op.jacobian_rows_transpose(_Y(c), layers=[l])
                for l in range(c.batch.n_layers)]),
           "jacobian_matrix().T @ Y": lambda c: c.batch.jacobian_matrix().T
           @ _Y(c).reshape(-1, 3)},
          lambda c: c.J.T @ _Y(c).reshape(-1, 3)),
    Entry("fisher-off-diagonal-blocks", ("FisherOperator.block",),
          {"block(i, j)": _off_diag, "to_dense()[si, sj]": _off_diag_dense}, _off_diag_def),
    Entry("fisher-block-diagonal-dense", ("FisherOperator.block_diagonal", "BlockDiagonalOperator.to_dense"),
          {"block_diagonal().to_dense()": lambda c: c.op.block_diagonal().to_dense(),
           "block_diagonal() @ I": lambda c: c.op.block_diagonal() @ np.eye(c.batch.n_params)},
          lambda c: _blockdiag([c.block(l) for l in range(c.batch.n_layers)])),
    Entry("fisher-products", ("FisherOperator.matmat", "FisherOperator.matvec",
                              "FisherBlock.matmat", "FisherBlock.matvec", "FisherOperator.dot",
                              "FisherOperator.rmatvec", "FisherOperator.rmatmat"),
          {"matmat": lambda c: c.op.matmat(_V(c)),
           "matvec per column": lambda c: np.stack([c.op.matvec(v) for v in _V(c).T], axis=1),
           "rmatmat": lambda c: c.op.rmatmat(_V(c)),
           "dot": lambda c: c.op.dot(_V(c)),
           "to_scipy matmat": lambda c: c.op.to_scipy().matmat(_V(c)),
           "diagonal blocks + off-diagonal blocks": lambda c: np.concatenate([
               sum((c.op.diagonal_block(i) @ _V(c)[c.sl(i)]) if i == j
                   else c.op.block(i, j) @ _V(c)[c.sl(j)] for j in range(c.batch.n_layers))
               for i in range(c.batch.n_layers)])},
          lambda c: c.F @ _V(c)),
    Entry("fisher-frobenius", ("FisherOperator.frobenius_norm_sq", "FactorBatch.gram"),
          {"Gram identity": lambda c: c.op.frobenius_norm_sq(),
           "dense": lambda c: float(np.sum(c.op.to_dense() ** 2))},
          lambda c: float(np.sum(c.F ** 2))),
    Entry("fisher-block-frobenius", ("FisherBlock.frobenius_norm_sq", "kernels.second_moment_gram",
                                     "kernels.sq_gram_reduce"),
          {"FisherBlock.frobenius_norm_sq": _per_layer(lambda c, l: FisherBlock(c.batch, l).frobenius_norm_sq()),
           "FisherOperator(layer).frobenius_norm_sq": _per_layer(
               lambda c, l: FisherOperator(c.batch.layer(l)).frobenius_norm_sq()),
           "dense block": _per_layer(lambda c, l: float(np.sum(c.op.block(l) ** 2)))},
          _per_layer(lambda c, l: float(np.sum(c.block(l) ** 2)))),
    Entry("fisher-trace", ("FisherOperator.trace", "KroneckerOperator.trace"),
          {"trace": lambda c: c.op.trace(),
           "sum of block traces": lambda c: sum(FisherOperator(c.batch.layer(l)).trace()
                                                for l in range(c.batch.n_layers)),
           "diag of dense": lambda c: float(np.trace(c.op.to_dense()))},
          lambda c: float(np.trace(c.F))),
    Entry("kron-trace-and-norm", ("KroneckerOperator.trace", "KroneckerOperator.frobenius_norm_sq",
                                  "kron.kron_sum_inner", "KroneckerOperator.to_dense",
                                  "KroneckerOperator.rank", "kron.kron"),
          {"formulas": lambda c: [np.array([b.trace(), b.frobenius_norm_sq(),
                                            kron.kron_sum_inner(b.terms, b.terms), b.rank])
                                  for b in _kron_ops(c)[1].blocks],
           "dense": lambda c: [np.array([np.trace(b.to_dense()), np.sum(b.to_dense() ** 2),
                                         np.sum(b.to_dense() ** 2), len(b.terms)])
                               for b in _kron_ops(c)[1].blocks]},
          lambda c: [np.array([np.trace(D), np.sum(D * D), np.sum(D * D), 2.0])
                     for D in (sum(np.kron(A, G) for A, G in b.terms)
                               for b in _kron_ops(c)[1].blocks)]),
    Entry("kron-products", ("KroneckerOperator.matmat", "KroneckerOperator.matvec",
                            "kron.kron_matmat", "BlockDiagonalOperator.matmat",
                            "BlockDiagonalOperator.block_slice"),
          {f"kron_matmat k={k}": _kron_matmat_impl(k) for k in (1, 3, 9)}
          | {"KPSVD @ V": lambda c: [_kron_ops(c)[1] @ _V(c)]},
          None),  # definition set below (depends on k)
    Entry("woodbury-solve", ("FisherOperator.solve", "FisherBlock.solve"),
          {"Woodbury": lambda c: c.op.solve(_V(c), LAM),
           "Woodbury, vector by vector": lambda c: np.stack(
               [c.op.solve(v, LAM) for v in _V(c).T], axis=1),
           "CG on the operator": lambda c: (c.op + 0.0 * c.op).solve(_V(c), LAM, tol=1e-13)},
          lambda c: _woodbury_def(c, _V(c)), rtol=1e-7, atol=1e-9),
    Entry("woodbury-block-solve", ("FisherBlock.solve",),
          {"FisherBlock.solve": _per_layer(lambda c, l: FisherBlock(c.batch, l).solve(_V(c)[c.sl(l)], LAM)),
           "block_diagonal().solve": _per_layer(
               lambda c, l: c.op.block_diagonal().solve(_V(c), LAM, rule="exact")[c.sl(l)])},
          _per_layer(lambda c, l: np.linalg.solve(c.block(l) + LAM * np.eye(c.block(l).shape[0]),
                                                  _V(c)[c.sl(l)])),
          rtol=1e-7, atol=1e-9),
    Entry("gram", ("FactorBatch.gram",),
          {"gram()": lambda c: c.batch.gram(),
           "sum of layer grams": lambda c: sum(c.batch.gram(l) for l in range(c.batch.n_layers)),
           "U Uᵀ": lambda c: (lambda U: U @ U.T)(c.batch.jacobian_matrix())},
          lambda c: c.J @ c.J.T),
    Entry("inner-kron", ("FisherBlock.inner_kron", "metrics.frobenius_terms",
                         "kernels.grouped_rowdot"),
          {"inner_kron": _per_layer(lambda c, l: FisherBlock(c.batch, l).inner_kron(
              _kron_ops(c)[1].blocks[l].terms)),
           "frobenius_terms[1]": _per_layer(lambda c, l: M.frobenius_terms(
               FisherBlock(c.batch, l), _kron_ops(c)[1].blocks[l])[1]),
           "dense": _per_layer(lambda c, l: float(np.sum(c.op.block(l) * _kron_ops(c)[1].blocks[l].to_dense())))},
          _per_layer(lambda c, l: float(np.sum(c.block(l) * sum(
              np.kron(A, G) for A, G in _kron_ops(c)[1].blocks[l].terms))))),
    Entry("E1-whole", ("metrics.relative_frobenius_error",),
          {"gram": lambda c: M.relative_frobenius_error(c.op, KFAC(c.batch), method="gram"),
           "dense": lambda c: M.relative_frobenius_error(c.op, KFAC(c.batch), method="dense"),
           "arrays": lambda c: M.relative_frobenius_error(c.op.to_dense(), KFAC(c.batch).to_dense())},
          lambda c: _E1_def(c, _blockdiag([np.kron(*_kfac_def(c, l)) for l in range(c.batch.n_layers)]))),
    Entry("E1-block", ("metrics.relative_frobenius_error",),
          {"gram": _per_layer(lambda c, l: M.relative_frobenius_error(c.op, _kron_ops(c)[1], block=l)),
           "dense": _per_layer(lambda c, l: M.relative_frobenius_error(
               c.op, _kron_ops(c)[1], block=l, method="dense")),
           "FisherBlock vs block": _per_layer(lambda c, l: M.relative_frobenius_error(
               FisherBlock(c.batch, l), _kron_ops(c)[1].blocks[l]))},
          _per_layer(lambda c, l: _E1_block_def(c, l, _kron_approx(c, l, 2))), rtol=1e-6, atol=1e-8),
    Entry("E3-block", ("metrics.spectral_error",),
          {"lanczos": _per_layer(lambda c, l: M.spectral_error(c.op, KFAC(c.batch), block=l, tol=1e-12)),
           "dense": _per_layer(lambda c, l: M.spectral_error(c.op, KFAC(c.batch), block=l, method="dense"))},
          _per_layer(lambda c, l: _E3_def(c, l, np.kron(*_kfac_def(c, l)))), rtol=1e-7, atol=1e-9),
    Entry("E2", ("metrics.singular_value_error",),
          {"operators": lambda c: M.singular_value_error(c.op, KFAC(c.batch)),
           "arrays": lambda c: M.singular_value_error(c.op.to_dense(), KFAC(c.batch).to_dense())},
          lambda c: (lambda s1, s2: np.linalg.norm(s1 - s2) / np.linalg.norm(s1))(
              np.sort(np.abs(np.linalg.eigvalsh(c.F)))[::-1],
              np.sort(np.abs(np.linalg.eigvalsh(_blockdiag(
                  [np.kron(*_kfac_def(c, l)) for l in range(c.batch.n_layers)]))))[::-1]),
          rtol=1e-8, atol=1e-10),
    Entry("rearranged-products", ("kron.RearrangedFisher", "kron.rearranged_matvec",
                                  "kron.rearranged_rmatvec", "kron.rearrange"),
          {"RearrangedFisher.to_dense": _per_layer(lambda c, l: kron.RearrangedFisher(
              c.batch.a[l], c.batch.g[l]).to_dense()),
           "rearrange(block)": _per_layer(lambda c, l: kron.rearrange(
               c.op.block(l), c.batch.d_a[l], c.batch.d_g[l])),
           "matvec columns": _per_layer(lambda c, l: (lambda R: np.stack(
               [R.matvec(e) for e in np.eye(R.shape[1])], axis=1))(
               kron.RearrangedFisher(c.batch.a[l], c.batch.g[l]))),
           "rmatvec rows": _per_layer(lambda c, l: (lambda R: np.stack(
               [R.rmatvec(e) for e in np.eye(R.shape[0])], axis=0))(
               kron.RearrangedFisher(c.batch.a[l], c.batch.g[l])))},
          _per_layer(lambda c, l: naive.rearrange(c.block(l), c.batch.d_a[l], c.batch.d_g[l]))),
    Entry("rearrange-inverse", ("kron.rearrange_inverse",),
          {"rearrange_inverse(rearrange(F_l))": _per_layer(lambda c, l: kron.rearrange_inverse(
              naive.rearrange(c.block(l), c.batch.d_a[l], c.batch.d_g[l]),
              c.batch.d_a[l], c.batch.d_g[l]))},
          _per_layer(lambda c, l: c.block(l))),
    Entry("rearranged-top-triplets", ("kron.RearrangedGram.top", "kron.RearrangedGram.golub_kahan",
                                      "kron.lanczos_svd", "kron.power_svd", "kron.kpsvd",
                                      "kron.nearest_kronecker"),
          {"RearrangedGram.top dense": _per_layer(lambda c, l: kron.RearrangedGram(
              c.batch.a[l], c.batch.g[l]).top(2, method="dense")[0]),
           "RearrangedGram.top lanczos": _per_layer(lambda c, l: kron.RearrangedGram(
               c.batch.a[l], c.batch.g[l]).top(2, method="lanczos")[0]),
           "lanczos_svd on RearrangedFisher": _per_layer(lambda c, l: kron.lanczos_svd(
               kron.RearrangedFisher(c.batch.a[l], c.batch.g[l]), k=2, steps=None, tol=1e-12)[0]),
           "kpsvd(dense)": _per_layer(lambda c, l: kron.kpsvd(
               c.op.block(l), c.batch.d_a[l], c.batch.d_g[l], rank=2).sigma),
           "power_svd σ₁ (padded)": _per_layer(lambda c, l: np.array([kron.power_svd(
               kron.RearrangedFisher(c.batch.a[l], c.batch.g[l]), tol=1e-12, maxiter=5000)[0],
               _R_svd(c, l)[1][1][1]]))},
          _per_layer(lambda c, l: _R_svd(c, l)[1][1][:2]), rtol=1e-8, atol=1e-10),
    _kpsvd_family(KPSVD, 1, lambda c, l: _kron_approx(c, l, 1), rank=1),
    _kpsvd_family(KPSVD, 2, lambda c, l: _kron_approx(c, l, 2), rank=2),
    _kpsvd_family(Deflation, 2, lambda c, l: _kron_approx(c, l, 2)),
    _kpsvd_family(Lanczos, 2, lambda c, l: _kron_approx(c, l, 2), steps=8),
    _kpsvd_family(KFACCorrected, 2, _kfac_corrected_def),
    Entry("exact-fisher-of-net", ("models.exact_fisher", "models.factor_batch"),
          {"exact_fisher": lambda c: fl.exact_fisher(c.net, c.X),
           "FisherOperator(factor_batch).to_dense": lambda c: FisherOperator(
               fl.factor_batch(c.net, c.X)).to_dense()},
          lambda c: (lambda Jo, H: np.einsum("nci,ncd,ndj->ij", Jo, H, Jo) / c.X.shape[0])(
              naive.output_jacobians(c.net, c.X), naive.output_hessians(c.net, c.X)),
          rtol=1e-6, atol=1e-8),
    Entry("empirical-fisher-of-net", ("models.empirical_fisher", "MLP.per_sample_gradients"),
          {"empirical_fisher": lambda c: fl.empirical_fisher(c.net, c.X, c.y),
           "FisherOperator(empirical batch).to_dense": lambda c: FisherOperator(
               fl.factor_batch(c.net, c.X, c.y, fisher="empirical")).to_dense(),
           "per_sample_gradients": lambda c: (lambda Gs: Gs.T @ Gs / c.X.shape[0])(
               np.asarray(c.net.per_sample_gradients(c.X, c.y)))},
          lambda c: (lambda Gs: Gs.T @ Gs / c.X.shape[0])(
              naive.per_sample_loss_gradients(c.net, c.X, c.y)),
          rtol=1e-5, atol=1e-7),
    Entry("gradient", ("MLP.gradient", "MLP.loss_and_gradient", "MLP.per_sample_gradients"),
          {"gradient": lambda c: c.net.flatten(c.net.gradient(c.X, c.y)),
           "loss_and_gradient": lambda c: c.net.flatten(c.net.loss_and_gradient(c.X, c.y)[1]),
           "mean of per_sample_gradients": lambda c: np.mean(
               np.asarray(c.net.per_sample_gradients(c.X, c.y)), axis=0)},
          lambda c: _fd_gradient(c),
          rtol=1e-6, atol=1e-8),
]
def _two_level(c, form):
    key = ("twolevel", form)
    if key not in c.cache:
        c.cache[key] = fl.TwoLevel(KFAC(c.batch), coarse_space="nicolaides", batch=c.batch,
                                   form=form, damping=LAM)
    return c.cache[key]


def _two_level_def(c, form):
    """(T1-T3) written out densely: M⁻¹ the KFAC (K2) inverse, F_c = R₀F_λR₀ᵀ."""
    T = _two_level(c, form)
    R0 = np.asarray(T.coarse.to_dense())
    Fl = c.F + LAM * np.eye(c.F.shape[0])
    Minv = _blockdiag([_rule_inverse_def(*_kfac_def(c, l), LAM, "factor")
                       for l in range(c.batch.n_layers)])
    Fc = R0 @ Fl @ R0.T
    Vs = _V(c)
    zK = Minv @ Vs
    rhs = Vs if form == "additive" else Vs - Fl @ zK
    return zK + R0.T @ np.linalg.solve(Fc, R0 @ rhs)


def _energy_def(c, form):
    T = _two_level(c, form)
    Fl = c.F + LAM * np.eye(c.F.shape[0])
    out = []
    for g in _V(c).T:
        z = T.solve(g)
        zK = T.zeta_fine
        x = np.linalg.solve(Fl, g)
        out.append(float((z - x) @ Fl @ (z - x) - (zK - x) @ Fl @ (zK - x)))
    return np.array(out)


def _energy_impl(c, form, attr):
    T = _two_level(c, form)
    out = []
    for g in _V(c).T:
        T.solve(g)
        out.append(getattr(T, attr))
    return np.array(out)


for _form in ("additive", "residual"):
    _impls = {"TwoLevel.solve per column": (lambda f: lambda c: np.stack(
        [_two_level(c, f).solve(g) for g in _V(c).T], axis=1))(_form)}
    if _form == "additive":
        _impls["as_operator() @ V"] = lambda c: _two_level(c, "additive").as_operator() @ _V(c)
    REGISTRY.append(Entry(f"two-level-{_form}", ("TwoLevel.solve", "TwoLevel.as_operator",
                                                  "approx.coarse_matrix"),
                          _impls, (lambda f: lambda c: _two_level_def(c, f))(_form),
                          rtol=1e-7, atol=1e-9))
REGISTRY.append(Entry("two-level-energy-gain", ("TwoLevel.energy_gain",
                                                "TwoLevel.optimal_energy_gain"),
                      {"energy_gain": lambda c: _energy_impl(c, "residual", "energy_gain"),
                       "optimal_energy_gain": lambda c: _energy_impl(
                           c, "residual", "optimal_energy_gain")},
                      lambda c: _energy_def(c, "residual"), rtol=1e-6, atol=1e-9))
REGISTRY.append(Entry("two-level-energy-gain-additive", ("TwoLevel.energy_gain",),
                      {"energy_gain": lambda c: _energy_impl(c, "additive", "energy_gain")},
                      lambda c: _energy_def(c, "additive"), rtol=1e-6, atol=1e-9))
REGISTRY.append(Entry("coarse-matrix", ("approx.coarse_matrix",),
                      {"coarse_matrix": lambda c: fl.approx.coarse_matrix(
                          _two_level(c, "additive").coarse, c.batch, LAM),
                       "TwoLevel.coarse_matrix": lambda c: _two_level(c, "additive").coarse_matrix},
                      lambda c: (lambda R0: R0 @ (c.F + LAM * np.eye(c.F.shape[0])) @ R0.T)(
                          np.asarray(_two_level(c, "additive").coarse.to_dense())),
                      rtol=1e-8, atol=1e-10))


# kernel twins
for _k in ("sq_gram_reduce", "grouped_rowdot", "outer_rows", "symmetrize_lower"):
    _impls, _def = _kernel_twins(_k)
    REGISTRY.append(Entry(f"kernel-{_k}", (f"kernels.{_k}",), _impls, _def))
# damped inverses of Kronecker blocks: every rule, one and two terms
for _rule, _rank in (("factor", 1), ("pi", 1), ("exact", 1), ("factor", 2), ("exact", 2)):
    REGISTRY.append(_kron_solve_entry(_rule, _rank))


def _kron_products_def(c):
    out = {}
    for k in (1, 3, 9):
        out[f"kron_matmat k={k}"] = [
            np.kron(A, G) @ np.random.default_rng(k).normal(size=(A.shape[0] * G.shape[0], k))
            for b in _kron_ops(c)[1].blocks for A, G in b.terms]
    out["KPSVD @ V"] = [_blockdiag([_kron_approx(c, l, 2) for l in range(c.batch.n_layers)])
                        @ _V(c)]
    return out


for _e in REGISTRY:
    if _e.name == "kron-products":
        _e.definition = _kron_products_def
        _e.rtol, _e.atol = 1e-7, 1e-9


def _flat(x):
    if isinstance(x, (list, tuple)):
        if not x:
            return np.zeros(0)
        return np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in x])
    return np.ravel(np.asarray(x, dtype=float))


def _needs_net(e):
    return any(s.startswith(("models.", "MLP.")) for s in e.covers)


CASES = [(e.name, c) for e in REGISTRY for c in CONTEXTS
         if not (_needs_net(e) and c == "synthetic")]


@pytest.mark.parametrize("entry,ctx", CASES)
def test_crosscheck(entry, ctx):
    check_entry(next(x for x in REGISTRY if x.name == entry), get_ctx(ctx))


def check_entry(e, c):
    """Every implementation of ``e`` vs the definition, and consecutive ones pairwise."""
    ctx = c.name
    ref = e.definition(c)
    vals = {label: f(c) for label, f in e.impls.items()}
    for label, v in vals.items():
        r = ref[label] if isinstance(ref, dict) else ref
        v, r = _flat(v), _flat(r)
        assert v.shape == r.shape, (e.name, label, v.shape, r.shape)
        scale = max(1.0, float(np.max(np.abs(r))))
        np.testing.assert_allclose(v, r, rtol=e.rtol, atol=e.atol * scale,
                                   err_msg=f"{e.name}: {label} vs the definition ({ctx})")
    # and pairwise (the same tolerance: both are within it of the definition)
    labels = list(vals)
    if not isinstance(ref, dict):
        for a, b in zip(labels, labels[1:]):
            va, vb = _flat(vals[a]), _flat(vals[b])
            scale = max(1.0, float(np.max(np.abs(va))))
            np.testing.assert_allclose(va, vb, rtol=2 * e.rtol, atol=2 * e.atol * scale,
                                       err_msg=f"{e.name}: {a} vs {b} ({ctx})")


def test_registry_entries_have_two_implementations_or_a_definition():
    for e in REGISTRY:
        assert e.definition is not None, e.name
        assert len(e.impls) >= 1 and e.covers, e.name
    assert len({e.name for e in REGISTRY}) == len(REGISTRY)


# -------------------------------------------------------------------------------------
# completeness
# -------------------------------------------------------------------------------------
#: classes whose every public method/property returning a quantity must be covered
CLASSES = {
    "FisherOperator": FisherOperator,
    "FisherBlock": FisherBlock,
    "KroneckerOperator": KroneckerOperator,
    "BlockDiagonalOperator": BlockDiagonalOperator,
    "FactorBatch": fl.FactorBatch,
    "TwoLevel": fl.TwoLevel,
}
#: modules whose public functions computing a quantity must be covered
MODULES = {"kron": kron, "metrics": M, "kernels": _kernels}

#: further registries (same pattern, same names) read by the completeness test
OTHER_REGISTRIES = ("test_crosscheck_comparators", "test_crosscheck_spectral")

#: not quantities, or cross-checked elsewhere (with the reason)
EXEMPT = {
    "FisherOperator.to_scipy": "an interop view; its products are in fisher-dense/products",
    "FisherBlock.to_scipy": "interop view (as above)",
    "KroneckerOperator.to_scipy": "interop view",
    "BlockDiagonalOperator.to_scipy": "interop view",
    "FactorBatch.subset": "data selection, no arithmetic (tests/test_curvature.py)",
    "FactorBatch.astype": "a dtype cast (tests/test_stateful.py compares dtypes)",
    "KroneckerOperator.rank": "metadata (checked in kron-trace-and-norm)",
    "BlockDiagonalOperator.n_blocks": "metadata",
    "BlockDiagonalOperator.solve": "covered by kron-solve-* (block by block)",
    "kron.vec": "reshape helpers, definition-level (test_kron vec round trip)",
    "kron.unvec": "reshape helper",
    "kron.DAMPING_RULES": "a constant",
    "kron.psd_sign": "a sign convention (test_kron PSD sign tests)",
    "kron.KronSVD": "a result container",
    "kron.ConvergenceReport": "a result container",
    "kron.as_product_pair": "an adapter",
    "kron.deflate": "used by Deflation/KFACCorrected (their kpsvd-family entries)",
    "kron.DeflatedProductPair": "as deflate",
    "kron.golub_kahan": "tests/test_krylov_scale.py checks R V = U B and orthogonality "
                        "against a dense SVD at Krylov dimension 300",
    "kron.pcg": "tests/test_krylov_scale.py (iteration bounds) and every CG entry here",
    "kron.weighted_gram": "tests/test_crosscheck.py::test_weighted_gram_definition",
    "kron.GramCoordinates": "internal coordinates of RearrangedGram (kpsvd-family entries)",
    "kron.lanczos": "symmetric Lanczos: tests/test_krylov_scale.py (250 steps vs eigh) and "
                    "the E3-block entry (spectral_error's Lanczos route vs dense)",
    "kron.LanczosResult": "a result container",
    "kernels.serves": "dispatch predicate",
    "kernels.numba_enabled": "dispatch predicate",
    "kernels.implementation": "dispatch predicate",
    "metrics.direction_angle": "tests/test_metrics_direction.py vs dense formulas",
    "metrics.energy_error": "tests/test_metrics_direction.py vs dense formulas",
    "metrics.preconditioned_spectrum": "test_preconditioned_spectrum_definition below",
    "metrics.preconditioned_condition_number": "test_preconditioned_spectrum_definition",
    "metrics.preconditioner_distance": "tests/test_metrics.py vs dense formulas",
    "TwoLevel.coarse_rank": "metadata (tests/test_twolevel.py pinv fallback)",
    "TwoLevel.residual": "the r of the residual form (two-level-residual entry)",
}


def _everything():
    """(registry, classes, modules, exemptions) of this module and of the registries in
    :data:`OTHER_REGISTRIES` (modules with the same ``REGISTRY``/``CLASSES``/``MODULES``/
    ``EXEMPT`` names), so that one completeness test covers them all."""
    import importlib

    reg, classes, modules, exempt = list(REGISTRY), dict(CLASSES), dict(MODULES), dict(EXEMPT)
    for name in OTHER_REGISTRIES:
        mod = importlib.import_module(name)
        reg += mod.REGISTRY
        classes.update(mod.CLASSES)
        modules.update(mod.MODULES)
        exempt.update(mod.EXEMPT)
    return reg, classes, modules, exempt


def test_covers_name_existing_members():
    reg, classes, modules, _ = _everything()
    for e in reg:
        for key in e.covers:
            owner, name = key.split(".", 1)
            obj = classes.get(owner) or modules.get(owner)
            if obj is not None:
                assert hasattr(obj, name.split(".")[0]), (e.name, key)


def _public_members(cls):
    out = set()
    for name, obj in inspect.getmembers(cls):
        if name.startswith("_") or name in ("dtype", "xp", "shape", "device"):
            continue
        if callable(obj) or isinstance(inspect.getattr_static(cls, name), property):
            out.add(name)
    return out


def _covered(reg):
    cov = set()
    for e in reg:
        for s in e.covers:
            cov.add(s)
            if s.startswith("kron.") and "." in s[5:]:
                cov.add(s.rsplit(".", 1)[0])
    return cov


def _inherited_cover(cls, m, classes, ok):
    """``m`` of ``cls`` is the very same attribute as on a registered base class whose
    member is covered or exempt (EKFAC's from EigenCorrected, ExactBlock's from FisherBlock)."""
    attr = inspect.getattr_static(cls, m)
    for bname, bcls in classes.items():
        if bcls is not cls and issubclass(cls, bcls) and hasattr(bcls, m) \
                and inspect.getattr_static(bcls, m) is attr and f"{bname}.{m}" in ok:
            return True
    return False


def test_registry_is_complete():
    reg, classes, modules, exempt = _everything()
    cov = _covered(reg)
    ok = cov | set(exempt)
    inherited_ok = {"matvec", "matmat", "rmatvec", "rmatmat", "dot", "to_dense", "to_scipy",
                    "solve"}
    missing = []
    for cname, cls in classes.items():
        for m in sorted(_public_members(cls)):
            key = f"{cname}.{m}"
            if key in ok or _inherited_cover(cls, m, classes, ok):
                continue
            # inherited generic products: covered once the class's own products are
            if m in inherited_ok and any(s.startswith(cname + ".") for s in cov):
                continue
            missing.append(key)
    for mname, mod in modules.items():
        names = getattr(mod, "__all__", None) or [
            n for n in dir(mod) if not n.startswith("_") and inspect.isfunction(getattr(mod, n))
            and getattr(mod, n).__module__ == mod.__name__]
        for n in names:
            key = f"{mname}.{n}"
            if key not in ok:
                missing.append(key)
    assert not missing, (
        "public quantities without a cross-check entry in the REGISTRY of "
        "tests/test_crosscheck.py or of the modules in OTHER_REGISTRIES (add one, or "
        f"exempt with the reason): {missing}")


def test_exemptions_name_existing_members():
    # a stale exemption (a renamed method) must not silently cover a new one
    _, classes, modules, exempt = _everything()
    for key in exempt:
        owner, name = key.split(".", 1)
        obj = classes.get(owner) or modules.get(owner)
        assert obj is not None and hasattr(obj, name), key


def test_weighted_gram_definition():
    rng = np.random.default_rng(0)
    for shape in ((7, 4), (6, 3, 4)):
        X = rng.normal(size=shape)
        for w in (rng.uniform(0.1, 1, 6 if len(shape) == 3 else 7),
                  rng.normal(size=6 if len(shape) == 3 else 7),
                  -rng.uniform(0.1, 1, 6 if len(shape) == 3 else 7)):
            Xn = X if X.ndim == 3 else X[:, None, :]
            ref = sum(w[n] * Xn[n].T @ Xn[n] for n in range(X.shape[0]))
            np.testing.assert_allclose(kron.weighted_gram(X, w), ref, rtol=1e-12, atol=1e-12)


def test_preconditioned_spectrum_definition():
    c = get_ctx("exact")
    K = KFAC(c.batch)
    Fl = c.F + LAM * np.eye(c.F.shape[0])
    Kinv = _blockdiag([_rule_inverse_def(*_kfac_def(c, l), LAM, "factor")
                       for l in range(c.batch.n_layers)])
    ev = np.sort(np.linalg.eigvals(Kinv @ Fl).real)
    kappa = M.preconditioned_condition_number(c.op, K, LAM, rule="factor")
    np.testing.assert_allclose(kappa, ev[-1] / ev[0], rtol=1e-6)
    for alg in ("lanczos", "dense"):
        vals = np.asarray(M.preconditioned_spectrum(c.op, K, LAM, rule="factor", algorithm=alg))
        np.testing.assert_allclose([vals[0], vals[-1]], [ev[0], ev[-1]], rtol=1e-6)
    vals = np.asarray(M.preconditioned_spectrum(c.op, K, LAM, rule="factor", algorithm="dense"))
    np.testing.assert_allclose(vals, ev, rtol=1e-8, atol=1e-10)


def test_dense_operator_solve_definition():
    c = get_ctx("mc")
    D = DenseOperator(c.F)
    V = _V(c)
    np.testing.assert_allclose(D.solve(V, LAM), _woodbury_def(c, V), rtol=1e-9, atol=1e-11)


# -------------------------------------------------------------------------------------
# the algebraic entries as a property: random shapes (N, K, layers, sizes)
# -------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ALGEBRAIC = ["kfac-factors", "fisher-dense", "fisher-diagonal-block",
             "fisher-off-diagonal-blocks", "fisher-products", "fisher-frobenius",
             "fisher-block-frobenius", "fisher-trace", "woodbury-solve", "woodbury-block-solve",
             "gram", "E1-whole", "rearranged-products", "rearrange-inverse",
             "kernel-sq_gram_reduce", "kernel-grouped_rowdot", "kernel-outer_rows"]


@st.composite
def random_batches(draw):
    N = draw(st.integers(1, 6))
    K = draw(st.integers(1, 3))
    L = draw(st.integers(1, 3))
    dims = [(draw(st.integers(1, 4)), draw(st.integers(1, 3))) for _ in range(L)]
    seed = draw(st.integers(0, 2**16))
    r = np.random.default_rng(seed)
    b = fl.FactorBatch([r.normal(size=(N, da)) for da, _ in dims],
                       [r.normal(size=(N, K, dg)) for _, dg in dims])
    J = _explicit_rows(b)
    return Ctx("random", b, J=J, F=J.T @ J / N)


@settings(max_examples=15)
@given(c=random_batches())
def test_algebraic_entries_on_random_batches(c):
    for name in ALGEBRAIC:
        e = next(x for x in REGISTRY if x.name == name)
        ref = _flat(e.definition(c))
        for label, f in e.impls.items():
            v = _flat(f(c))
            scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
            # E1's Gram route, sqrt(‖F‖² − 2⟨F, F̃⟩ + ‖F̃‖²)/‖F‖, cancels when E1 → 0
            # (KFAC is exact for one sample): its absolute accuracy is about √eps
            atol = 1e-7 if name.startswith("E1") else 1e-9 * scale
            np.testing.assert_allclose(v, ref, rtol=1e-7, atol=atol,
                                       err_msg=f"{name}: {label} ({c.batch})")
