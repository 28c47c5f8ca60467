"""The core needs neither PyTorch nor JAX: importing and running it loads none of them.

CI also runs the whole suite once with ``FIMLAB_WITHOUT_EXTRAS=1`` (see ``conftest.py``):
every import of an optional framework then fails as on a machine without it.
"""

import os
import subprocess
import sys

from conftest import EXTRAS

CORE = ("fimlab", "fimlab.testing", "fimlab.testing.oracles", "fimlab.compare",
        "fimlab.study", "fimlab.study_spectra", "fimlab.train", "fimlab.sweep", "fimlab.cli",
        "fimlab.spectral", "fimlab.models.network", "fimlab.approx.kfc",
        "fimlab.approx.conv_rearranged", "fimlab.approx.eigencorrected")


def test_core_modules_and_a_computation_load_no_framework():
    code = (
        "import sys, importlib, numpy as np\n"
        f"for m in {CORE!r}: importlib.import_module(m)\n"
        "import fimlab as fl\n"
        "net = fl.MLP([4, 5, 3], seed=0)\n"
        "b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))\n"
        "t = fl.compare(b, methods='KFAC,EKFAC,KPSVD')\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {EXTRAS!r})\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FIMLAB_WITHOUT_EXTRAS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_blocker_makes_frameworks_unimportable():
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest\n"
            "for m in ('torch', 'jax', 'curvlinops'):\n"
            "    try:\n"
            "        __import__(m)\n"
            "    except ImportError:\n"
            "        pass\n"
            "    else:\n"
            "        raise SystemExit(f'{m} imported')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FIMLAB_WITHOUT_EXTRAS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=root, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
