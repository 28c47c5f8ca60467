"""The factor batch: the one object underneath every Fisher-type matrix (docs/guide/conventions.rst).

For an MLP with layers ``l = 0..L−1``, ``a[l]`` holds the bias-augmented inputs ``ā`` of
layer ``l`` (``(N, d_in+1)``) and ``g[l]`` the ``K`` vectors back-propagated to its
pre-activation per sample (``(N, K, d_out)``). Models produce factor batches (see
:func:`fimlab.factor_batch`); every curvature object consumes them; any framework can
build one from its own arrays with ``fl.FactorBatch(a=..., g=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._errors import ShapeError
from ._validation import check_dense_memory, check_finite
from .backend import array_namespace, asarray_on, device_of, to_numpy

__all__ = ["FactorBatch"]


def c_order(x, xp):  # xp: NumPy-only branch (C order for BLAS)
    """``x`` in C order for NumPy (a stacked ``matmul`` with a transposed operand takes
    NumPy's non-BLAS loop: measured 50x slower), unchanged for other namespaces."""
    from .backend import is_numpy_namespace

    if is_numpy_namespace(xp):
        import numpy as np

        return np.ascontiguousarray(x)
    return x


class FactorBatch:
    """Per-layer inputs ``ā`` and back-propagated vectors ``g`` of a batch of samples.

    Parameters
    ----------
    a : sequence of arrays
        ``a[l]`` of shape ``(N, d_in_l + 1)``: bias-augmented input of layer ``l``. For a
        layer applied at ``T`` positions (a convolution), ``(N, T, d_a)``: the unfolded
        input patches ``ā_{n,t}`` (bias entry included).
    g : sequence of arrays
        ``g[l]`` of shape ``(N, K, d_out_l)``: the ``K`` vectors back-propagated to the
        pre-activation of layer ``l`` for each sample (docs/guide/conventions.rst table). For a positional layer
        ``(N, K, T, d_out)``: the vectors ``g_{n,k,t}`` at every position.
    fisher : str, optional
        A label of what ``g`` holds (``"exact"``, ``"mc"``, ``"empirical"``); informative.

    Notes
    -----
    The arrays keep their namespace and device (NumPy, CuPy, ``array_api_strict``): no
    conversion happens here. Shapes, dtypes and finiteness are checked.

    A positional layer's per-sample gradient matrices are ``J_nk = Σ_t g_nkt ā_ntᵀ``
    (``d_g × d_a``; the parameter block is ``vec([W | b])``), and its Fisher block is
    ``(1/N) Σ_{n,k} vec(J_nk) vec(J_nk)ᵀ``: the rows :meth:`jacobian` returns. A dense
    layer is the case ``T = 1`` and keeps its 2-D ``a`` and 3-D ``g``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> b = FactorBatch(a=[rng.normal(size=(5, 4))], g=[rng.normal(size=(5, 1, 3))])
    >>> b.n_samples, b.n_vectors, b.n_params
    (5, 1, 12)
    """

    def __init__(self, a: Sequence, g: Sequence, fisher: str | None = None):
        if fisher is not None:
            from ._validation import check_choice

            check_choice(fisher, ("exact", "mc", "empirical"), "Fisher type (fisher=)")
        from ._validation import as_array

        a = [as_array(al, f"a[{l}]") for l, al in enumerate(a)]
        g = [as_array(gl, f"g[{l}]") for l, gl in enumerate(g)]
        if len(a) == 0 or len(a) != len(g):
            raise ShapeError(
                f"a FactorBatch needs one 'a' and one 'g' array per layer, got {len(a)} and "
                f"{len(g)}"
            )
        xp = array_namespace(*a, *g)
        N = a[0].shape[0] if a[0].ndim >= 1 else None
        K = g[0].shape[1] if g[0].ndim >= 3 else None
        dtype = a[0].dtype
        positions = []
        for l, (al, gl) in enumerate(zip(a, g)):
            if al.ndim not in (2, 3):
                raise ShapeError(
                    f"a[{l}] must have shape (N, d_in+1), or (N, T, d_a) for a layer with T "
                    f"positions (convolution), got {tuple(al.shape)}"
                )
            if gl.ndim != al.ndim + 1:
                raise ShapeError(
                    f"g[{l}] must have shape (N, K, d_out) (or (N, K, T, d_out) when a[{l}] "
                    f"is (N, T, d_a)), got {tuple(gl.shape)} with a[{l}] of shape "
                    f"{tuple(al.shape)}; for one vector per sample use g[:, None, ...]"
                )
            if al.ndim == 3 and gl.shape[2] != al.shape[1]:
                raise ShapeError(
                    f"layer {l}: a has {al.shape[1]} positions and g has {gl.shape[2]}"
                )
            positions.append(int(al.shape[1]) if al.ndim == 3 else 1)
            if al.shape[0] != N or gl.shape[0] != N:
                raise ShapeError(
                    f"layer {l}: a has {al.shape[0]} samples and g has {gl.shape[0]}, layer 0 "
                    f"has {N}; every layer must hold the same samples"
                )
            if gl.shape[1] != K:
                raise ShapeError(
                    f"layer {l}: g holds {gl.shape[1]} vectors per sample, layer 0 holds {K}"
                )
            for name, arr in (("a", al), ("g", gl)):
                if not (xp.isdtype(arr.dtype, "real floating")
                        and str(arr.dtype).rsplit(".", 1)[-1] in ("float32", "float64")):
                    from ._errors import InputTypeError

                    raise InputTypeError(
                        f"{name}[{l}] has dtype {arr.dtype}; factor batches hold float32 or "
                        "float64 arrays (convert with .astype('float32'))"
                    )
                if arr.dtype != dtype:
                    raise TypeError(
                        f"{name}[{l}] has dtype {arr.dtype} but a[0] has {dtype}; use one dtype"
                    )
                check_finite(arr, f"{name}[{l}]")
        if N == 0 or K == 0:
            raise ShapeError("a FactorBatch needs at least one sample and one vector")
        for l, (al, gl) in enumerate(zip(a, g)):
            if al.shape[1] == 0 or gl.shape[2] == 0:
                raise ShapeError(
                    f"layer {l} has d_in+1 = {al.shape[1]} and d_out = {gl.shape[2]}: every "
                    "layer needs at least one input column and one output")
        self.a, self.g = a, g
        self.xp = xp
        self.dtype = dtype
        self.fisher = fisher
        self.n_samples = int(N)
        self.n_vectors = int(K)
        self.n_layers = len(a)
        self.d_a = [int(al.shape[-1]) for al in a]
        self.d_g = [int(gl.shape[-1]) for gl in g]
        #: ``T_l``: positions of layer ``l`` (1 for a dense layer)
        self.positions = positions
        #: whether layer ``l`` carries a position axis (``a`` 3-D, ``g`` 4-D)
        self.positional = [al.ndim == 3 for al in a]
        self.block_sizes = [da * dg for da, dg in zip(self.d_a, self.d_g)]
        self.offsets = [0]
        for s in self.block_sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.n_params = self.offsets[-1]

    @property
    def device(self):
        return device_of(self.a[0])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{da}x{dg}" for da, dg in zip(self.d_a, self.d_g))
        return (
            f"<FactorBatch N={self.n_samples} K={self.n_vectors} layers=[{shapes}] "
            f"fisher={self.fisher!r} dtype={self.dtype}>"
        )

    def layer(self, l: int) -> FactorBatch:
        """The one-layer factor batch of layer ``l``."""
        from ._validation import check_index

        l = check_index(l, self.n_layers, "layer index")
        return FactorBatch([self.a[l]], [self.g[l]], fisher=self.fisher)

    def subset(self, idx) -> FactorBatch:
        """The factor batch of the samples ``idx`` (a slice, an integer index array of any
        backend or a sequence of ints, or a boolean mask)."""
        if isinstance(idx, slice):
            return FactorBatch([al[idx, ...] for al in self.a],
                               [gl[idx, ...] for gl in self.g], fisher=self.fisher)
        xp, ref = self.xp, self.a[0]
        if isinstance(idx, (list, tuple, range)):
            idx = xp.asarray(list(idx), dtype=xp.int64, device=device_of(ref))
        elif array_namespace(idx) is not xp or device_of(idx) != device_of(ref):
            idx = asarray_on(to_numpy(idx), ref)
        if xp.isdtype(idx.dtype, "bool"):
            if idx.shape != (self.n_samples,):
                from ._errors import BadIndexError

                raise BadIndexError(f"a boolean mask for subset() needs shape "
                                    f"({self.n_samples},), got {tuple(idx.shape)}")
            idx = xp.nonzero(idx)[0]
        elif not xp.isdtype(idx.dtype, "integral"):
            from ._errors import InputTypeError

            raise InputTypeError(f"subset() takes integer indices, a slice or a boolean "
                                 f"mask, got an array of dtype {idx.dtype}")
        if idx.shape[0] and (int(xp.min(idx)) < -self.n_samples
                             or int(xp.max(idx)) >= self.n_samples):
            from ._errors import BadIndexError

            raise BadIndexError(
                f"subset() indices must lie in [0, {self.n_samples - 1}] (the batch has "
                f"{self.n_samples} samples); got values from {int(xp.min(idx))} to "
                f"{int(xp.max(idx))}")
        # xp.take: the standard has no mixed integer-array/ellipsis indexing
        return FactorBatch([xp.take(al, idx, axis=0) for al in self.a],
                           [xp.take(gl, idx, axis=0) for gl in self.g], fisher=self.fisher)

    def astype(self, dtype) -> FactorBatch:
        xp = self.xp
        return FactorBatch([xp.astype(al, dtype) for al in self.a],
                           [xp.astype(gl, dtype) for gl in self.g], fisher=self.fisher)

    # -- dense per-sample Jacobians (tests, teaching, dense assembly) -------------------
    def jacobian(self, l: int, start: int = 0, stop: int | None = None):
        """Rows ``j_nk`` of layer ``l`` for samples ``start:stop``: shape ``(n·K, d_a·d_g)``,
        row ``(n, k)`` equal to ``ā_n ⊗ g_nk`` (column-major vec of ``g_nk ā_nᵀ``); for a
        positional layer ``vec(J_nk)``, ``J_nk = Σ_t g_nkt ā_ntᵀ`` (one batched GEMM)."""
        xp = self.xp
        a = self.a[l][start:stop, ...]
        g = self.g[l][start:stop, ...]
        n = a.shape[0]
        if self.positional[l]:
            # (n, 1, d_a, T) @ (n, K, T, d_g) -> (n, K, d_a, d_g): J_nkᵀ
            J = xp.matmul(c_order(xp.matrix_transpose(a), xp)[:, None, ...], g)
        else:
            J = a[:, None, :, None] * g[:, :, None, :]  # (n, K, d_a, d_g)
        return xp.reshape(J, (n * self.n_vectors, self.d_a[l] * self.d_g[l]))

    def jacobian_matrix(self, start: int = 0, stop: int | None = None, max_bytes=None):
        """All layers' rows side by side: ``U`` of shape ``(n·K, P)`` with ``F = UᵀU/N``."""
        stop = self.n_samples if stop is None else stop
        check_dense_memory(
            ((stop - start) * self.n_vectors, self.n_params), self.dtype, max_bytes,
            "per-sample Jacobian U", "FisherOperator.matmat",
        )
        xp = self.xp
        from .backend import is_numpy_namespace

        if is_numpy_namespace(xp):
            # NumPy: write each layer's outer products straight into its column block of
            # one preallocated U (no per-layer temporaries, no concatenation copy): the
            # Numba kernel on all threads where it serves (it also spreads the page faults
            # of the fresh U), else NumPy's broadcasting multiply into a view
            import numpy as np

            from . import _kernels

            n, K = stop - start, self.n_vectors
            U = np.empty((n * K, self.n_params), dtype=self.dtype)
            for l in range(self.n_layers):
                if self.positional[l]:
                    U[:, self.offsets[l]:self.offsets[l + 1]] = self.jacobian(l, start, stop)
                    continue
                _kernels.outer_rows(self.a[l][start:stop], self.g[l][start:stop], U,
                                    self.offsets[l])
            return U
        return xp.concat([self.jacobian(l, start, stop) for l in range(self.n_layers)], axis=1)

    def gram(self, l: int | None = None):
        """Gram matrix ``U Uᵀ`` of the rows ``j_nk`` (``N·K × N·K``), of layer ``l`` or of
        the whole network: ``(ā_nᵀ ā_n')·(g_nkᵀ g_n'k')`` summed over layers (for a
        positional layer ``⟨J_nk, J_n'k'⟩_F`` from its rows)."""
        xp = self.xp
        N, K = self.n_samples, self.n_vectors
        layers = range(self.n_layers) if l is None else [l]
        out = None
        for i in layers:
            if self.positional[i]:
                # ⟨J_nk, J_n'k'⟩ from the rows vec(J_nk) (memory-guarded)
                check_dense_memory((N * K, self.block_sizes[i]), self.dtype, None,
                                   f"per-sample Jacobian rows of layer {i}",
                                   "a smaller batch (FactorBatch.subset)")
                Ji = self.jacobian(i)
                term = Ji @ xp.matrix_transpose(Ji)
                out = term if out is None else out + term
                continue
            Ga = self.a[i] @ xp.matrix_transpose(self.a[i])  # (N, N)
            gf = xp.reshape(self.g[i], (N * K, self.d_g[i]))
            Gg = xp.reshape(gf @ xp.matrix_transpose(gf), (N, K, N, K))
            term = xp.reshape(Ga[:, None, :, None] * Gg, (N * K, N * K))
            out = term if out is None else out + term
        return out
