"""The Krylov basis of :func:`fimlab.kron.krylov.lanczos` as the rows of one array."""

from __future__ import annotations

from ..backend import device_of


class RowBasis:
    """Krylov basis vectors as the rows of one array that grows by doubling (up to
    ``cap`` rows), so the vectors so far are a contiguous ``(j, n)`` block."""

    def __init__(self, v, cap: int, xp):
        self.xp, self.cap, self.n = xp, int(cap), 1
        self.data = xp.zeros((min(self.cap, 8), v.shape[0]), dtype=v.dtype,
                             device=device_of(v))
        self.data[0, ...] = v

    def append(self, v):
        if self.n == self.data.shape[0]:
            xp = self.xp
            grown = xp.zeros((min(self.cap, 2 * self.n), self.data.shape[1]),
                             dtype=self.data.dtype, device=device_of(self.data))
            grown[: self.n, ...] = self.data
            self.data = grown
        self.data[self.n, ...] = v
        self.n += 1

    def row(self, j: int):
        return self.data[j, ...]

    def rows(self):
        return self.data[: self.n, ...]
