"""fimlab's performance suite (``fimlab bench`` or ``python -m benchmarks``).

See :mod:`benchmarks.suite` for what it measures and ``docs/performance.md`` for the
results on the development machine.
"""
