"""One call from a factor batch to an approximation-quality table: :func:`compare`.

Whatever produced the factor batch — fimlab's MLP, :mod:`fimlab.torch`,
:mod:`fimlab.jax`, or arrays of your own — ``fl.compare(batch)`` builds every registered
approximation (``fimlab.approx.APPROXIMATIONS``: KFAC, the KPSVD family, and whatever
else is registered there) and measures, per layer block and for the whole network, the
relative Frobenius error E1 ``‖F − F̃‖_F / ‖F‖_F`` against the Fisher of the same batch,
the singular-value error E2 where it is affordable, and the build time. The result is a
:class:`ComparisonTable`.

Examples
--------
>>> import numpy as np, fimlab as fl
>>> net = fl.MLP([6, 8, 3], activation="tanh", likelihood="categorical", seed=0)
>>> batch = fl.factor_batch(net, np.random.default_rng(0).normal(size=(40, 6)))
>>> table = fl.compare(batch, methods=["KFAC", "KPSVD"])
>>> len(table), table.columns[:4]
(6, ['method', 'solver', 'block', 'block_size'])
>>> row = table.get("KFAC", block=0)
>>> bool(0 <= row["e1"] < 1), bool(row["e2"] == row["e2"])   # E2 computed (small block)
(True, True)
"""

from __future__ import annotations

import csv
import io
import math
import time
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from ._errors import ConvergenceWarning, ShapeError, UnknownNameError
from ._validation import check_choice

__all__ = ["compare", "ComparisonTable", "method_pairs"]

COLUMNS = ["method", "solver", "block", "block_size", "e1", "e2", "build_time_s",
           "converged"]


class ComparisonTable:
    """Rows of an approximation-quality comparison (the result of :func:`compare`).

    One row per method, solver and block (``block`` an int for a layer block, ``"all"``
    for the whole network), with the columns :attr:`columns`:

    - ``method``, ``solver``: the approximation (a key of ``APPROXIMATIONS``) and its
      solver (``"exact"`` or ``"paper"``);
    - ``block_size``: the block's number of parameters;
    - ``e1``: relative Frobenius error ``‖F − F̃‖_F / ‖F‖_F`` of the block (whole
      network: of the full matrices, off-diagonal blocks of ``F`` included);
    - ``e2``: relative error of the sorted singular values (NaN where not computed:
      the whole network, or blocks above ``e2_max_size`` without a shortcut);
    - ``build_time_s``: seconds to build the approximation (all its blocks);
    - ``converged``: False when the method's iterative solver stopped at its budget.

    Attributes
    ----------
    rows : list of dict
    meta : dict
        ``n_samples``, ``n_vectors``, ``fisher`` of the batch.
    approximations : dict
        ``(method, solver)`` -> the built approximation (per selected block when
        ``blocks=`` was given: ``(method, solver, block)``).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(30, 4)))
    >>> t = fl.compare(b, methods=["KFAC"])
    >>> [r["block"] for r in t], t.to_csv().splitlines()[0]
    ([0, 1, 'all'], 'method,solver,block,block_size,e1,e2,build_time_s,converged')
    """

    columns = COLUMNS

    def __init__(self, rows: Iterable[dict], meta: dict | None = None,
                 approximations: dict | None = None):
        self.rows = [dict(r) for r in rows]
        self.meta = dict(meta or {})
        self.approximations = dict(approximations or {})

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def get(self, method: str, block="all", solver: str | None = None) -> dict:
        """The row of ``method`` on ``block`` (and ``solver``, if it has several)."""
        for r in self.rows:
            if r["method"] == method and r["block"] == block and (
                    solver is None or r["solver"] == solver):
                return r
        raise KeyError(f"no row for method {method!r}, block {block!r}"
                       + (f", solver {solver!r}" if solver else ""))

    def to_csv(self, path=None) -> str:
        """The table as CSV text (written to ``path`` too when given)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", newline="") as fh:
                fh.write(text)
        return text

    def to_pandas(self):
        """The table as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover
            raise ImportError("ComparisonTable.to_pandas needs pandas: pip install pandas"
                              ) from exc
        return pd.DataFrame(self.rows, columns=self.columns)

    def __repr__(self) -> str:
        m = self.meta
        head = (f"ComparisonTable: {len({(r['method'], r['solver']) for r in self.rows})} "
                f"method(s) on N={m.get('n_samples')} K={m.get('n_vectors')} "
                f"fisher={m.get('fisher')!r}")
        lines = [head, f"{'method':<16}{'solver':<8}{'block':>6}{'size':>9}{'E1':>10}"
                       f"{'E2':>10}{'build ms':>10}"]
        for r in self.rows:
            e2 = "—" if r["e2"] != r["e2"] else f"{r['e2']:.4f}"
            mark = "" if r["converged"] else " *"
            lines.append(f"{r['method']:<16}{r['solver']:<8}{r['block']!s:>6}"
                         f"{r['block_size']:>9}{r['e1']:>10.4f}{e2:>10}"
                         f"{1e3 * r['build_time_s']:>10.2f}{mark}")
        if any(not r["converged"] for r in self.rows):
            lines.append("* the solver stopped at its iteration budget")
        return "\n".join(lines)


def _fisher_block_svals(Fb, max_size: int):
    """Sorted singular values of a Fisher block: from the ``N·K`` Gram matrix when that is
    smaller than the block (same non-zero spectrum, zeros padded), dense otherwise."""
    from .backend import to_numpy

    b = Fb.batch.layer(Fb.l)
    nk = b.n_samples * b.n_vectors
    n = Fb.shape[0]
    if nk < n:
        ev = np.linalg.eigvalsh(to_numpy(b.gram())) / b.n_samples
        ev = np.concatenate([np.abs(ev), np.zeros(n - nk)])
    elif n <= max_size:
        ev = np.abs(np.linalg.eigvalsh(to_numpy(Fb.to_dense())))
    else:
        return None
    return np.sort(ev)[::-1]


def _approx_block_svals(block, max_size: int):
    """Sorted singular values of a Kronecker-structured block: products of the factors'
    eigenvalues for one term, dense spectra (up to ``max_size``) otherwise."""
    from .backend import to_numpy

    terms = getattr(block, "terms", None)
    if terms is not None and len(terms) == 1:
        A, G = terms[0]
        ev = np.outer(np.linalg.eigvalsh(to_numpy(A)), np.linalg.eigvalsh(to_numpy(G)))
        return np.sort(np.abs(ev).ravel())[::-1]
    if block.shape[0] > max_size:
        return None
    D = to_numpy(block.to_dense())
    return np.sort(np.abs(np.linalg.eigvalsh(0.5 * (D + D.T))))[::-1]


def method_pairs(methods, solver) -> list[tuple[str, str]]:
    """The ``(method, solver)`` pairs that :func:`compare` builds, checked.

    ``methods`` as in :func:`compare`; ``solver`` one of ``"exact"``, ``"paper"``,
    ``"both"``. Closed-form methods (KFAC, EKFAC, the diagonal, block-exact and low-rank
    Fishers) get one pair whatever ``solver`` says.

    Examples
    --------
    >>> from fimlab.compare import method_pairs
    >>> method_pairs("KFAC,KPSVD", "both")
    [('KFAC', 'exact'), ('KPSVD', 'exact'), ('KPSVD', 'paper')]
    """
    from .approx import APPROXIMATIONS, CLOSED_FORM

    check_choice(solver, ("exact", "paper", "both"), "solver")
    if methods is None:
        methods = list(APPROXIMATIONS)
    elif isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    pairs = []
    for m in methods:
        if isinstance(m, (tuple, list)):
            name, s = m
            pairs.append((name, s))
            continue
        solvers = ["exact", "paper"] if solver == "both" else [solver]
        if m in CLOSED_FORM:  # closed form: the solver makes no difference
            solvers = ["exact"]
        pairs += [(m, s) for s in solvers]
    for name, _ in pairs:
        if name == "KPSVD-r":
            if "KPSVD" not in APPROXIMATIONS:  # pragma: no cover
                raise UnknownNameError("KPSVD-r needs the KPSVD approximation")
        else:
            check_choice(name, APPROXIMATIONS, "approximation")
    if not pairs:
        raise UnknownNameError("compare needs at least one method")
    return pairs


def _build(name, batch, solver, options, warm):
    from .approx import APPROXIMATIONS

    kw = dict(options.get(name, {}))
    if warm is not None:
        kw["warm_start"] = warm
    if name == "KPSVD-r":
        kw.setdefault("rank", 3)
        return APPROXIMATIONS["KPSVD"](batch, solver=solver, **kw)
    return APPROXIMATIONS[name](batch, solver=solver, **kw)


def compare(batch, methods: Sequence | str | None = None, *, solver: str = "exact",
            blocks: Sequence[int] | None = None, e2: bool = True, e2_max_size: int = 2500,
            options: dict | None = None, warm_start: dict | None = None
            ) -> ComparisonTable:
    """Build approximations of the Fisher of ``batch`` and tabulate their errors.

    Parameters
    ----------
    batch : FactorBatch
        From :func:`fimlab.factor_batch`, :func:`fimlab.torch.factor_batch`,
        :func:`fimlab.jax.factor_batch`, or built by hand.
    methods : list of str, or str, optional
        Names from ``fimlab.approx.APPROXIMATIONS`` (a comma-separated string works too;
        ``"KPSVD-r"`` is KPSVD of rank ``options["KPSVD-r"]["rank"]``, 3 by default);
        ``(name, solver)`` pairs are taken as they are. Default: every registered method.
    solver : {"exact", "paper", "both"}
        The solver of the iterative methods (KFAC has one row whatever this says).
    blocks : list of int, optional
        Measure these layer blocks only: each method is built on the one-layer batches
        of these blocks (the approximations are block-diagonal, so a block comes out the
        same) and no whole-network row is produced. Default: every block and the whole
        network.
    e2 : bool
        Also compute E2 where affordable (exact shortcuts, or dense spectra up to
        ``e2_max_size``).
    options : dict, optional
        Per-method keyword arguments, ``{"KPSVD": {"rank": 2}}``.
    warm_start : dict, optional
        ``(method, solver[, block])`` -> a previous approximation, passed to the
        ``"paper"`` solvers (as ``fimlab study`` does along a run).

    Returns
    -------
    ComparisonTable

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(30, 4)))
    >>> t = fl.compare(b, methods="KFAC,KPSVD", blocks=[1])
    >>> [(r["method"], r["block"]) for r in t]
    [('KFAC', 1), ('KPSVD', 1)]

    Raises
    ------
    UnknownNameError
        For a method that is not registered, an unknown solver.
    ShapeError
        For a block index out of range.
    """
    from .curvature import FisherOperator
    from .metrics import relative_frobenius_error

    pairs = method_pairs(methods, solver)
    options = dict(options or {})
    warm_start = warm_start or {}
    L = batch.n_layers
    if blocks is not None:
        blocks = [int(b) for b in blocks]
        bad = [b for b in blocks if not 0 <= b < L]
        if bad:
            raise ShapeError(f"blocks {bad} out of range: the batch has {L} layer blocks "
                             f"(0..{L - 1})")
    F = FisherOperator(batch)
    todo = list(range(L)) if blocks is None else blocks
    ref_sv = {l: (_fisher_block_svals(F.diagonal_block(l), e2_max_size) if e2 else None)
              for l in todo}
    rows, built = [], {}
    for name, solv in pairs:
        if blocks is None:
            jobs = [(None, batch)]
        else:
            jobs = [(l, batch.layer(l)) for l in blocks]
        for l_sel, b in jobs:
            key = (name, solv) if l_sel is None else (name, solv, l_sel)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                approx = _build(name, b, solv, options,
                                warm_start.get(key) if solv == "paper" else None)
            t_build = time.perf_counter() - t0
            converged = True
            for w in caught:
                if issubclass(w.category, ConvergenceWarning):
                    converged = False
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            built[key] = approx
            layers = range(L) if l_sel is None else [l_sel]
            for l in layers:
                if l_sel is None:
                    e1 = relative_frobenius_error(F, approx, block=l)
                    blk = approx.blocks[l]
                else:
                    e1 = relative_frobenius_error(FisherOperator(b), approx, block=0)
                    blk = approx.blocks[0]
                sv = ref_sv[l]
                e2v = float("nan")
                if sv is not None:
                    sa = _approx_block_svals(blk, e2_max_size)
                    if sa is not None:
                        e2v = float(np.linalg.norm(sv - sa) / np.linalg.norm(sv))
                rows.append({"method": name, "solver": solv, "block": l,
                             "block_size": batch.block_sizes[l], "e1": float(e1), "e2": e2v,
                             "build_time_s": t_build, "converged": converged})
            if l_sel is None:
                rows.append({"method": name, "solver": solv, "block": "all",
                             "block_size": batch.n_params,
                             "e1": float(relative_frobenius_error(F, approx)),
                             "e2": float("nan"), "build_time_s": t_build,
                             "converged": converged})
    for r in rows:
        if not math.isfinite(r["e1"]):  # pragma: no cover - defensive
            raise ShapeError(f"E1 of {r['method']} on block {r['block']} is {r['e1']}")
    meta = {"n_samples": batch.n_samples, "n_vectors": batch.n_vectors,
            "fisher": batch.fisher}
    return ComparisonTable(rows, meta, built)
