"""Which route a whole-network Fisher computation takes, chosen by cost, and each route's
peak working memory checked against the memory budget before it starts.

With ``U`` the ``N·K × P`` matrix of per-sample Jacobian rows (``F = UᵀU/N``), the exact
damped solve ``(F + λI)⁻¹ v`` and the norm ``‖F‖²_F`` have three routes:

``"gram"``
    the ``N·K × N·K`` Gram matrix ``UUᵀ`` (Woodbury for the solve): cheap when
    ``N·K ≪ P``; peak about five ``(N·K)²`` arrays (Gram terms, ``NλI + UUᵀ``, its
    Cholesky factor) for the solve, three for the norm.
``"dense"``
    the ``P × P`` matrix ``F`` (Cholesky of ``F + λI`` for the solve): cheap when
    ``P ≪ N·K``; peak about three ``P × P`` arrays plus one chunk of ``U``.
``"cg"`` / ``"chunked"``
    matrix-free conjugate gradients (solve) or the Gram matrix a block of rows at a
    time (norm): memory linear in ``P`` and ``N·K``, always within the budget.

``"auto"`` takes the cheaper (flop count) of the first two among those whose peak fits
the budget, else the third. An explicitly requested route whose peak does not fit is
refused with :class:`~fimlab.DenseMemoryError` naming the bytes and the alternatives.
"""

from __future__ import annotations

import math

from ._budget import check_memory, get_memory_budget

__all__ = ["SOLVE_ROUTES", "NORM_ROUTES", "solve_route", "norm_route", "route_costs",
           "gram_frobenius_sq_chunked"]

SOLVE_ROUTES = ("auto", "gram", "dense", "cg")
NORM_ROUTES = ("auto", "gram", "dense", "chunked")
_U_CHUNK = 256 * 1024**2  # bytes of U held at once by the dense route


def _item(dtype) -> int:
    return 4 if "32" in str(dtype) else 8


def route_costs(batch, what: str = "solve") -> dict:
    """``{route: (peak_bytes, flops)}`` for the Gram and dense routes of ``batch``."""
    N, K, P = batch.n_samples, batch.n_vectors, batch.n_params
    NK, it = N * K, _item(batch.dtype)
    gram_build = sum(N * N * da + NK * NK * dg + NK * NK
                     for da, dg in zip(batch.d_a, batch.d_g, strict=True))
    u_bytes = min(NK * P * it, max(_U_CHUNK, P * K * it))
    if what == "solve":
        gram = (5 * NK * NK * it + N * N * it, gram_build + NK**3 / 3)
        dense = (3 * P * P * it + u_bytes, NK * P * P + P**3 / 3)
    else:
        gram = (3 * NK * NK * it + N * N * it, gram_build + NK * NK)
        dense = (P * P * it + u_bytes, NK * P * P + P * P)
    return {"gram": gram, "dense": dense}


def _pick(batch, route: str, what: str, fallback: str, max_bytes) -> str:
    costs = route_costs(batch, what)
    limit = get_memory_budget() if max_bytes is None else int(max_bytes)
    N, K, P = batch.n_samples, batch.n_vectors, batch.n_params
    alt = (f"route={fallback!r} (matrix-free, memory linear in P = {P:,} and "
           f"N·K = {N * K:,})")
    if route in costs:
        check_memory(costs[route][0],
                     f"the {route!r} route of the whole-network Fisher {what} "
                     f"(N·K = {N * K:,}, P = {P:,})", alt, max_bytes)
        return route
    if route == fallback:
        return route
    fits = [r for r, (mem, _) in costs.items() if mem <= limit]
    if not fits:
        return fallback
    return min(fits, key=lambda r: costs[r][1])


def solve_route(batch, route: str = "auto", max_bytes=None) -> str:
    """The route of ``FisherOperator.solve`` (see the module documentation)."""
    from ._validation import check_choice

    check_choice(route, SOLVE_ROUTES, "Fisher solve route")
    return _pick(batch, route, "solve", "cg", max_bytes)


def norm_route(batch, route: str = "auto", max_bytes=None) -> str:
    """The route of ``FisherOperator.frobenius_norm_sq``."""
    from ._validation import check_choice

    check_choice(route, NORM_ROUTES, "Fisher norm route")
    return _pick(batch, route, "Frobenius norm", "chunked", max_bytes)


def gram_frobenius_sq_chunked(batch, max_bytes=None) -> float:
    """``‖UUᵀ‖²_F`` a block of sample rows at a time: rows ``s:e`` of the Gram matrix
    (``(e−s)·K × N·K``) per layer, summed, squared and accumulated; working memory two
    such blocks, sized to a quarter of the budget."""
    xp = batch.xp
    N, K = batch.n_samples, batch.n_vectors
    it = _item(batch.dtype)
    limit = get_memory_budget() if max_bytes is None else int(max_bytes)
    row_bytes = 3 * K * N * K * it
    c = max(1, min(N, (limit // 4) // max(row_bytes, 1)))
    gflat = [xp.reshape(g, (N * K, dg)) for g, dg in zip(batch.g, batch.d_g, strict=True)]
    total = 0.0
    for s in range(0, N, c):
        e = min(N, s + c)
        out = None
        for a, gf, g in zip(batch.a, gflat, batch.g, strict=True):
            Ga = a[s:e, ...] @ xp.matrix_transpose(a)  # (c, N)
            gc = xp.reshape(g[s:e, ...], ((e - s) * K, g.shape[2]))
            Gg = xp.reshape(gc @ xp.matrix_transpose(gf), (e - s, K, N, K))
            term = Ga[:, None, :, None] * Gg
            out = term if out is None else out + term
        total += float(xp.sum(out * out))
    return total


def flops_note(batch) -> str:  # pragma: no cover - used in messages only
    c = route_costs(batch)
    return ", ".join(f"{r}: {m / 2**20:.0f} MiB, {f / 1e9:.2g} GFLOP"
                     for r, (m, f) in c.items() if math.isfinite(f))


def cholesky_or_singular(M, lam: float, route: str, xp):
    """Cholesky factor of the damped matrix, or :class:`SingularMatrixError` naming the
    damping when it is below the round-off of the Fisher (``F.solve(v, 1e-300)``)."""
    from ._errors import SingularMatrixError

    try:
        L = xp.linalg.cholesky(M)
    except Exception as exc:  # numpy.linalg.LinAlgError, and its kin in other libraries
        if "LinAlgError" not in type(exc).__name__ and "positive" not in str(exc):
            raise
        L = None
    if L is None or not bool(xp.all(xp.isfinite(L))):
        d = xp.linalg.diagonal(M)
        scale = float(xp.max(xp.abs(d)))
        raise SingularMatrixError(
            f"F + λI is numerically singular at damping λ = {lam:g} ({route} route): λ is "
            f"below the round-off of the Fisher's scale (largest diagonal entry of the "
            f"factored matrix {scale:.3g}); use a damping of at least about "
            f"{max(scale, 1e-300) * 1e-12:.1g} (relative 1e-12), typical values 1e-4 .. 1e-1")
    return L
