"""Shared test configuration: Hypothesis profiles, tolerances, small networks."""

from __future__ import annotations

import os
import sys

# FIMLAB_WITHOUT_EXTRAS=1: run the suite as on a fresh machine without the optional
# frameworks — importing them fails as if they were not installed (their tests skip), so
# CI proves the core needs neither PyTorch nor JAX even where they are installed.
EXTRAS = ("torch", "jax", "jaxlib", "flax", "equinox", "optax", "curvlinops", "backpack")
if os.environ.get("FIMLAB_WITHOUT_EXTRAS", "") not in ("", "0"):
    class _BlockExtras:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in EXTRAS:
                raise ModuleNotFoundError(f"No module named {name!r} (FIMLAB_WITHOUT_EXTRAS)",
                                          name=name)
            return None

    loaded = sorted(m for m in sys.modules if m.split(".")[0] in EXTRAS)
    if loaded:  # pragma: no cover - a plugin imported one before this file
        raise RuntimeError(f"FIMLAB_WITHOUT_EXTRAS: already imported: {loaded[:5]}")
    sys.meta_path.insert(0, _BlockExtras())

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# The shared cases and tolerances live in the public fimlab.testing (issue 14); re-exported
# here so that ``from conftest import SMALL_NETS, make_targets, rtol_for`` keeps working.
from fimlab.testing import SMALL_NETS, make_targets, rtol_for  # noqa: F401, E402

# Deterministic in CI, randomised locally (FIMLAB_HYPOTHESIS=random).
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("random", deadline=None, max_examples=50,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FIMLAB_HYPOTHESIS", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=range(len(SMALL_NETS)), ids=[f"{s}-{a}-{l}" for s, a, l in SMALL_NETS])
def small_net(request):
    import fimlab as fl

    sizes, act, lik = SMALL_NETS[request.param]
    return fl.MLP(sizes, activation=act, likelihood=lik, seed=request.param)


# -- array backends (issue 7): the `xp` fixture ------------------------------------------
# NumPy, array_api_strict (a CPU namespace that fails on anything non-portable; its arrays
# are put on its non-default "device1", so an array created without the inputs' device
# cannot be combined with them and the test fails), and CuPy when a GPU is usable.


class ArrayBackend:
    """One backend of the test matrix: its namespace ``xp``, device and helpers."""

    def __init__(self, name: str, device=None):
        from fimlab import backend as B

        self.name, self.device_arg = name, device
        with B.use_backend(name, device):
            self.xp = B.default_namespace()
            self.device = B.default_device()

    def asarray(self, a, dtype=None):
        """A host (NumPy) array or nested list on this backend and device."""
        from fimlab.backend import from_host

        return from_host(np.asarray(a), self.xp, dtype=dtype, device=self.device)

    def use(self):
        """``with backend.use(): ...`` creates new arrays (models) on this backend."""
        from fimlab.backend import use_backend

        return use_backend(self.name, self.device_arg)

    def __repr__(self) -> str:
        return f"ArrayBackend({self.name!r}, device={self.device!r})"


def _backend_or_skip(name: str) -> ArrayBackend:
    from fimlab import BackendError

    if name == "cupy":
        try:
            return ArrayBackend("cupy")
        except BackendError as exc:  # not installed, or no GPU: the CPU suite skips it
            pytest.skip(f"CuPy backend unavailable: {exc}")
    if name == "array_api_strict":
        return ArrayBackend(name, "device1")
    return ArrayBackend(name)


@pytest.fixture(params=["numpy", "array_api_strict",
                        pytest.param("cupy", marks=pytest.mark.gpu)])
def xp_backend(request) -> ArrayBackend:
    """The array backend of the test (namespace, device, ``asarray``, ``use()``)."""
    return _backend_or_skip(request.param)


@pytest.fixture
def xp(xp_backend):
    """The array namespace of the test: NumPy, ``array_api_strict`` or CuPy."""
    return xp_backend.xp
