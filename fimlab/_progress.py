"""A step and time budget, with a progress bar, for long iterative computations
(Lanczos-based metrics): a run that takes longer than a few seconds shows a bar on
stderr; one that passes ``max_seconds`` stops with a :class:`~fimlab.ConvergenceError`
saying how far it got and what to change."""

from __future__ import annotations

import sys
import time

from ._errors import ConvergenceError

__all__ = ["StepBudget"]

#: seconds after which a progress bar appears (progress=None: automatic)
SHOW_AFTER = 2.0


class StepBudget:
    """Wrap ``op`` so that each call counts as one step of ``what``.

    Parameters
    ----------
    op : callable
    what : str
        Named in the bar and in the error.
    total : int
        The step cap (the bar's length).
    max_seconds : float, optional
        Stop with :class:`ConvergenceError` once this much time has passed.
    progress : bool, optional
        ``True``: always a bar; ``False``: never; ``None``: after ``SHOW_AFTER`` s.
    """

    def __init__(self, op, what: str, total: int, max_seconds=None, progress=None):
        from ._validation import check_real

        if max_seconds is not None:
            max_seconds = check_real(max_seconds, "max_seconds", lo=0, lo_open=True)
        self.op, self.what, self.total = op, what, int(total)
        self.max_seconds, self.progress = max_seconds, progress
        self.steps = 0
        self.t0 = time.perf_counter()
        self.bar = None

    def __call__(self, *args):
        out = self.op(*args)
        self.steps += 1
        elapsed = time.perf_counter() - self.t0
        if self.bar is None and self.progress is not False and (
                self.progress or elapsed > SHOW_AFTER):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.steps, desc=self.what,
                            unit="step", file=sys.stderr, leave=False, mininterval=0.5)
        elif self.bar is not None:
            self.bar.update(1)
        if self.max_seconds is not None and elapsed > self.max_seconds:
            self.close()
            raise ConvergenceError(
                f"{self.what}: stopped after {self.steps} of at most {self.total} steps and "
                f"{elapsed:.1f} s, past max_seconds={self.max_seconds:g}; pass fewer steps "
                "(steps=...), a looser tol, or a larger max_seconds")
        return out

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
