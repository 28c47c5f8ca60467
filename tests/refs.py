"""Independent references shared by the tests of issue 21 (nothing here is fimlab code):
the E1 of the Kronecker approximations from the definition, in orthonormal coordinates
of the rearranged Fisher block."""

from __future__ import annotations

import numpy as np

#: methods whose E1 follows from Eckart–Young on R(F_l) (solver="exact")
KNOWN = ("KFAC", "KPSVD", "Deflation", "Lanczos", "KFAC-corrected")


def explicit_rows(batch):
    """Rows ``[ā_0,n ⊗ g_0,nk, …]`` by ``np.kron``, one (sample, vector) at a time."""
    N, K = batch.n_samples, batch.n_vectors
    a_s = [np.asarray(a, dtype=np.float64) for a in batch.a]
    g_s = [np.asarray(g, dtype=np.float64) for g in batch.g]
    return np.array([np.concatenate([np.kron(a[n], g[n, k]) for a, g in zip(a_s, g_s)])
                     for n in range(N) for k in range(K)])


def independent_e1(batch):
    """E1 of each known method per block ``l`` and for the whole network (``"all"``).

    ``R(F_l) = (1/m) Σ_n vec(ā_n ā_nᵀ) vec(G_n)ᵀ`` is written in orthonormal coordinates
    (a QR of each side), then Eckart–Young gives the best Kronecker sums (KPSVD rank 1;
    Deflation and Lanczos: the best two terms; KFAC-corrected: KFAC plus the best term of
    the residual) and the KFAC term is ``vec(A) vec(G)ᵀ`` itself. Call it under
    ``threadpool_limits(1)`` on a busy machine (tall-skinny QR)."""
    out = {}
    N = batch.n_samples
    norms, errs = [], {}
    for l, (a, g) in enumerate(zip(batch.a, batch.g)):
        a, g = np.asarray(a, dtype=np.float64), np.asarray(g, dtype=np.float64)
        Ua = np.einsum("ni,nj->nij", a, a).reshape(N, -1)
        Gn = np.einsum("nki,nkj->nij", g, g).reshape(N, -1)
        _, Ra = np.linalg.qr(Ua.T)  # R = Qa (Ra Rgᵀ / N) Qgᵀ
        _, Rg = np.linalg.qr(Gn.T)
        C = Ra @ Rg.T / N
        s = np.linalg.svd(C, compute_uv=False)
        s = np.concatenate([s, [0.0, 0.0]])
        D = C - np.outer(Ra.sum(axis=1) / N, Rg.sum(axis=1) / N)
        sd = np.linalg.svd(D, compute_uv=False)
        nF2 = float(np.sum(C * C))
        e2 = {"KFAC": float(np.sum(D * D)),
              "KPSVD": nF2 - s[0] ** 2,
              "Deflation": nF2 - s[0] ** 2 - s[1] ** 2,
              "Lanczos": nF2 - s[0] ** 2 - s[1] ** 2,
              "KFAC-corrected": float(np.sum(D * D)) - sd[0] ** 2}
        norms.append(nF2)
        for m, v in e2.items():
            errs.setdefault(m, []).append(max(v, 0.0))
            out[(m, l)] = float(np.sqrt(max(v, 0.0) / nF2))
    J = explicit_rows(batch)
    total = float(np.sum((J @ J.T) ** 2)) / N**2
    for m, e in errs.items():
        out[(m, "all")] = float(np.sqrt((total - sum(norms) + sum(e)) / total))
    return out
