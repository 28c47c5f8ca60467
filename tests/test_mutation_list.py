"""The mutation check (scripts/mutation_check.py) stays runnable: every seeded bug's
snippet is found exactly once in fimlab/ (a refactor that changes one must update the
list), names are unique, equivalent mutants are named and explained."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("mutation_check",
                                                  ROOT / "scripts" / "mutation_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_mutant_snippet_is_found_once_and_changes_the_code():
    mc = _script()
    assert len(mc.MUTANTS) >= 25
    names = [m.name for m in mc.MUTANTS]
    assert len(set(names)) == len(names)
    for m in mc.MUTANTS:
        assert m.original != m.mutated, m.name
        path = mc.locate(ROOT, m)  # raises SystemExit with the mutant's name if stale
        assert path.suffix == ".py"
    assert set(mc.EQUIVALENT) <= set(names)
    assert all(len(why) > 40 for why in mc.EQUIVALENT.values())
    for test in mc.FAST_TESTS:
        assert (ROOT / test).is_file(), test


#: modules of the numerical core that must carry at least one seeded bug
SEEDED_MODULES = [
    "fimlab/curvature.py", "fimlab/batch.py", "fimlab/operators.py", "fimlab/metrics.py",
    "fimlab/spectral.py", "fimlab/approx/kfac.py", "fimlab/approx/kfc.py",
    "fimlab/approx/eigencorrected.py", "fimlab/approx/blockexact.py",
    "fimlab/approx/lowrank.py", "fimlab/approx/conv_rearranged.py",
    "fimlab/approx/twolevel.py", "fimlab/kron/algebra.py", "fimlab/kron/krylov.py",
    "fimlab/kron/gram.py", "fimlab/kron/rearrange.py",
]


def test_every_core_module_carries_a_mutant():
    mc = _script()
    seeded = {mc.locate(ROOT, m).relative_to(ROOT).as_posix() for m in mc.MUTANTS}
    missing = [p for p in SEEDED_MODULES if (ROOT / p).is_file() and p not in seeded]
    assert not missing, f"no mutant in {missing}: add one to scripts/mutation_check.py"
