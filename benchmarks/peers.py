"""The PyTorch curvature libraries, on the same network, batch, dtype and thread count.

Peers are optional (``pip install 'fimlab[bench]'``: ``torch==2.13.0`` CPU,
``curvlinops-for-pytorch``, ``backpack-for-pytorch``). :func:`status` says which are
importable; the suite skips the rows of the missing ones with that message.

:class:`TorchTwin` copies an :class:`fimlab.MLP` into an ``nn.Sequential`` (same
weights, same activations; the loss that matches the likelihood, mean-reduced like
fimlab's Fisher) and exposes one callable per measured operation. Each callable does the
whole job a user of that library would run to get the object (e.g. building the
curvlinops operator *and* computing its Kronecker factors), nothing cached across calls.
"""

from __future__ import annotations

import importlib

import numpy as np

__all__ = ["status", "TorchTwin"]


def _version(mod: str) -> str | None:
    try:
        m = importlib.import_module(mod)
    except Exception:  # noqa: BLE001 - absent or broken: not available
        return None
    return getattr(m, "__version__", "installed")


def status() -> dict:
    """Versions of ``torch``, ``curvlinops`` and ``backpack`` (``None`` when absent), the
    KFOC operator's presence, and a message for the report."""
    s = {"torch": _version("torch"), "curvlinops": _version("curvlinops"),
         "backpack": _version("backpack")}
    s["kfoc"] = False
    if s["curvlinops"]:
        import curvlinops

        s["kfoc"] = hasattr(curvlinops, "KFOCLinearOperator")
    missing = [k for k in ("torch", "curvlinops", "backpack") if s[k] is None]
    s["message"] = (
        "all peers importable" if not missing else
        f"peer rows skipped for {', '.join(missing)}: not installed (pip install "
        "'fimlab[bench]' installs torch==2.13.0, curvlinops-for-pytorch and "
        "backpack-for-pytorch)"
    )
    return s


class TorchTwin:
    """An :class:`fimlab.MLP` and its data, in PyTorch.

    Parameters
    ----------
    net : fimlab.MLP
    X, y : NumPy arrays (inputs; targets as fimlab takes them)
    threads : int
        ``torch.set_num_threads``: the same number of threads as NumPy's BLAS.
    """

    def __init__(self, net, X, y, threads: int):
        import torch
        from torch import nn

        torch.set_num_threads(int(threads))
        self.torch, self.nn = torch, nn
        dt = torch.float64 if str(net.dtype) == "float64" else torch.float32
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                "linear": nn.Identity}
        mods = []
        for l, W in enumerate(net.params):
            W = np.asarray(W)
            lin = nn.Linear(W.shape[1] - 1, W.shape[0]).to(dt)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W[:, :-1])))
                lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(W[:, -1])))
            mods.append(lin)
            if l < net.n_layers - 1:
                mods.append(acts[net.activations[l]]())
        self.model = nn.Sequential(*mods)
        lik = net.likelihood.name
        self.likelihood = lik
        self.loss = {"categorical": nn.CrossEntropyLoss, "bernoulli": nn.BCEWithLogitsLoss,
                     "gaussian": nn.MSELoss}[lik]()
        self.X = torch.from_numpy(np.ascontiguousarray(X)).to(dt)
        if lik == "categorical":
            self.y = torch.from_numpy(np.asarray(y)).long()
        else:
            self.y = torch.from_numpy(np.ascontiguousarray(y)).to(dt)
        self.N = int(X.shape[0])
        self.params = list(self.model.parameters())
        self.n_params = sum(p.numel() for p in self.params)
        self.dtype = dt

    # -- curvlinops -------------------------------------------------------------------
    def curvlinops_kfac(self, fisher: str):
        """Build curvlinops' KFAC operator and compute its factors (bias folded into the
        input factor, ``separate_weight_and_bias=False``, like fimlab)."""
        from curvlinops import KFACLinearOperator

        ftype = {"exact": "type-2", "mc": "mc", "empirical": "empirical"}[fisher]

        def run():
            K = KFACLinearOperator(
                self.model, self.loss, self.params, [(self.X, self.y)],
                fisher_type=ftype, check_deterministic=False,
                separate_weight_and_bias=False, num_data=self.N,
                num_per_example_loss_terms=1)
            K.compute_kronecker_factors()
            return K

        return run

    def curvlinops_kfoc(self):
        """curvlinops' KFOC (rank-1 nearest Kronecker product of the exact GGN blocks),
        when the installed curvlinops has it."""
        from curvlinops import KFOCLinearOperator  # noqa: F401 - checked by the caller

        def run():
            return KFOCLinearOperator(self.model, self.loss, dict(self.model.named_parameters()),
                                      [(self.X, self.y)], check_deterministic=False,
                                      separate_weight_and_bias=False, num_data=self.N)

        return run

    def curvlinops_ggn(self):
        from curvlinops import GGNLinearOperator

        return GGNLinearOperator(self.model, self.loss, self.params, [(self.X, self.y)],
                                 check_deterministic=False, num_data=self.N)

    def curvlinops_matvec(self):
        """One exact-Fisher (= GGN) vector product with curvlinops (operator built once,
        outside the timing; every product re-runs the network on the batch)."""
        G = self.curvlinops_ggn()
        gen = self.torch.Generator().manual_seed(0)
        v = self.torch.randn(self.n_params, generator=gen, dtype=self.dtype)
        return lambda: G @ v

    def curvlinops_dense(self):
        """The dense GGN from curvlinops: the operator applied to the identity."""
        G = self.curvlinops_ggn()
        eye = self.torch.eye(self.n_params, dtype=self.dtype)
        return lambda: G @ eye

    # -- BackPACK ---------------------------------------------------------------------
    def _backpack(self):
        """BackPACK's extended copies of the model and loss (its hooks would break the
        ``torch.func`` transforms that curvlinops and ``torch.func`` rely on)."""
        import copy

        from backpack import extend

        if getattr(self, "bp_model", None) is None:
            self.bp_model = extend(copy.deepcopy(self.model))
            self.bp_loss = extend(type(self.loss)())
            self.bp_params = list(self.bp_model.parameters())
        return self.bp_model, self.bp_loss, self.bp_params

    def backpack_kfac(self, fisher: str):
        """BackPACK's KFLR (exact, type-2) or KFAC (one Monte-Carlo sample). BackPACK keeps
        the bias as its own Kronecker factor (fimlab folds it into ``A``)."""
        from backpack import backpack
        from backpack.extensions import KFAC, KFLR

        model, loss, params = self._backpack()
        ext = {"exact": KFLR, "mc": KFAC}[fisher]

        def run():
            model.zero_grad()
            with backpack(ext()):
                loss(model(self.X), self.y).backward()
            return [getattr(p, ext.__name__.lower()) for p in params]

        return run

    def backpack_batch_grad(self):
        """Per-sample gradients with BackPACK's BatchGrad (one tensor per parameter, not
        concatenated: the peer is not charged for assembling the ``N × P`` matrix)."""
        from backpack import backpack
        from backpack.extensions import BatchGrad

        model, loss, params = self._backpack()

        def run():
            model.zero_grad()
            with backpack(BatchGrad()):
                loss(model(self.X), self.y).backward()
            return [p.grad_batch for p in params]

        return run

    def backpack_dense(self):
        """The dense exact Fisher from BackPACK: the per-sample square root of the GGN
        (SqrtGGNExact, ``C × N × P``), then ``VᵀV`` (a GEMM)."""
        from backpack import backpack
        from backpack.extensions import SqrtGGNExact

        model, loss, params = self._backpack()
        torch = self.torch

        def run():
            model.zero_grad()
            with backpack(SqrtGGNExact()):
                loss(model(self.X), self.y).backward()
            V = torch.cat([p.sqrt_ggn_exact.flatten(start_dim=2) for p in params], dim=2)
            V = V.reshape(-1, V.shape[-1])
            return V.T @ V

        return run

    # -- torch.func -------------------------------------------------------------------
    def torchfunc_per_sample(self):
        """Per-sample gradients with ``torch.func.vmap(grad(...))`` (PyTorch's own way)."""
        torch = self.torch
        from torch.func import functional_call, grad, vmap

        params = {k: v.detach() for k, v in self.model.named_parameters()}
        model, lossf = self.model, self.loss

        def loss1(p, x, t):
            out = functional_call(model, p, (x[None],))
            return lossf(out, t[None])

        g = vmap(grad(loss1), in_dims=(None, 0, 0))

        def run():
            with torch.no_grad():
                return g(params, self.X, self.y)

        return run


def curvlinops_ekfac(self, fisher: str):
    """curvlinops' EKFAC: Kronecker factors, their eigenvectors and the eigenvalue
    correction (bias folded into the input factor, like fimlab)."""
    from curvlinops import EKFACLinearOperator

    ftype = {"exact": "type-2", "mc": "mc", "empirical": "empirical"}[fisher]

    def run():
        E = EKFACLinearOperator(
            self.model, self.loss, self.params, [(self.X, self.y)], fisher_type=ftype,
            check_deterministic=False, separate_weight_and_bias=False, num_data=self.N,
            num_per_example_loss_terms=1)
        E.compute_kronecker_factors()
        E.compute_eigenvalue_correction()
        return E

    return run


TorchTwin.curvlinops_ekfac = curvlinops_ekfac  # issue 17 (kept apart: a small additive change)
