"""The guide ``docs/guide/own_model.rst`` runs as written, and its numbers are right.

Every ``.. code-block:: python`` of the page runs, in order, in one namespace; a
``.. code-block:: text`` that follows a code block directly is its printed output, and
must match what the code prints (numbers to the printed precision). Then the numbers
are checked against an independent computation that does not go through fimlab: the
exact Fisher of each model, built densely from per-sample Jacobians (``torch.func`` for
the PyTorch model, ``jax.jacrev`` for the Flax and Equinox models) and the loss Hessian
``diag(p) − ppᵀ``; KFAC's factors from the layer inputs and the bias blocks of that
Fisher; the nearest Kronecker product (KPSVD's optimum) from the SVD of the rearranged
block; the natural-gradient step from ``(A ⊗ G + λI)⁻¹`` applied to the gradient
``(1/N) Σ_n J_nᵀ (p_n − e_{y_n})``.

Skipped cleanly when PyTorch, JAX, Flax, Equinox or optax is not installed (the page
needs them all).
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest

for _mod in ("torch", "jax", "flax", "equinox", "optax"):
    pytest.importorskip(_mod)

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "own_model.rst"
_NUM = re.compile(r"[-+]?\d+\.\d+(?:[eE][-+]?\d+)?")


def parse_page(text: str):
    """``[(section title, code, expected output or None)]`` in page order."""
    lines = text.splitlines()
    out, section, i, end = [], None, 0, -1
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and set(lines[i + 1]) == {"-"} and len(lines[i + 1]) >= len(line) > 0:
            section = line.strip()
        m = re.match(r"\.\. code-block:: (\w+)\s*$", line)
        if not m:
            i += 1
            continue
        start = i
        while start > 0 and not lines[start - 1].strip():
            start -= 1
        lang, body, i = m.group(1), [], i + 1
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
            body.append(lines[i][3:])
            i += 1
        block = "\n".join(body).strip("\n") + "\n"
        if lang == "python":
            out.append([section, block, None])
            end = i
            while end > 0 and not lines[end - 1].strip():
                end -= 1
        elif lang == "text" and out and out[-1][2] is None and end == start:
            out[-1][2] = block  # directly after its code block: its output
    return [tuple(b) for b in out]


def same_output(got: str, want: str) -> bool:
    """Equal text, numbers equal to the printed precision (within 1.5 units of the last
    printed digit: another BLAS may round the fourth decimal differently)."""
    g, w = got.strip().split(), want.strip().split()
    if len(g) != len(w):
        return False
    for a, b in zip(g, w):
        na, nb = _NUM.fullmatch(a.rstrip(",:)")), _NUM.fullmatch(b.rstrip(",:)"))
        if na and nb:
            dec = len(nb.group(0).split(".")[1].split("e")[0])
            if abs(float(na.group(0)) - float(nb.group(0))) > 1.5 * 10.0 ** -dec:
                return False
        elif a != b:
            return False
    return True


#: the names kept after each block (torch modules deep-copied: the step changes them)
KEEP = ("model", "X", "y", "batch", "table", "grad", "step", "flax_model", "params",
        "Xj", "yj", "eqx_model")


@pytest.fixture(scope="module")
def page():
    return run_page()


def run_page():
    """Run the page's code blocks in order; per block its code, the output the page
    shows, the output printed, and the names of :data:`KEEP` as they were after it."""
    import jax

    blocks = parse_page(PAGE.read_text(encoding="utf-8"))
    ns: dict = {"__name__": "own_model_guide"}
    runs = []
    x64 = jax.config.jax_enable_x64
    try:
        for section, code, want in blocks:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(code, f"{PAGE.name}[{section}]", "exec"), ns)
            kept = {}
            for k in KEEP:
                if k in ns:
                    v = ns[k]
                    kept[k] = copy.deepcopy(v) if type(v).__module__.startswith("torch") else v
            runs.append(dict(section=section, code=code, want=want, got=buf.getvalue(),
                             ns=kept))
    finally:
        jax.config.update("jax_enable_x64", x64)
    return runs


def _run(page, section, contains):
    hits = [r for r in page if r["section"] == section and contains in r["code"]]
    assert hits, f"no block of {section!r} contains {contains!r}"
    return hits[0]


# -- the page ---------------------------------------------------------------------------
def test_page_has_the_three_frameworks_and_no_untested_code():
    blocks = parse_page(PAGE.read_text(encoding="utf-8"))
    sections = {s for s, _, _ in blocks}
    assert {"PyTorch", "Flax", "Equinox", "How θ is ordered",
            "What is supported, and the errors"} <= sections
    assert len(blocks) >= 10
    text = PAGE.read_text(encoding="utf-8")
    assert "not run by the test suite" not in text
    # every code block is python (run here), text (checked here), or a doctest
    langs = set(re.findall(r"\.\. code-block:: (\w+)", text))
    assert langs <= {"python", "text"}, langs


def test_every_block_prints_what_the_page_shows(page):
    for r in page:
        if r["want"] is None:
            assert r["got"] == "", f"{r['section']}: prints output the page does not show"
            continue
        assert "TODO" not in r["want"]
        assert same_output(r["got"], r["want"]), (
            f"{r['section']}: the page shows\n{r['want']}\nthe code prints\n{r['got']}")


def test_same_output_is_not_vacuous():
    assert same_output("E1 KFAC 0.2025, x", "E1 KFAC 0.2026, x")
    assert not same_output("E1 KFAC 0.2025, x", "E1 KFAC 0.2045, x")
    assert not same_output("loss 1.0", "loss 1.0 more")
    assert not same_output("True", "False")


# -- the independent computation --------------------------------------------------------
def _dense(JW, Jb, logits, inputs, y):
    """Per layer: the exact Fisher block, KFAC's factors, the gradient (all NumPy).

    ``JW[l]`` ``(N, C, d_out·d_in)`` in column-major ``vec(W)`` order, ``Jb[l]``
    ``(N, C, d_out)``, ``logits`` ``(N, C)``, ``inputs[l]`` ``(N, d_in)``."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    N, C = p.shape
    H = np.einsum("nc,cd->ncd", p, np.eye(C)) - p[:, :, None] * p[:, None, :]
    r = p - np.eye(C)[np.asarray(y)]
    out = []
    for jw, jb, x in zip(JW, Jb, inputs):
        J = np.concatenate([jw, jb], axis=2)  # vec([W | b]): the bias is the last column
        F = np.einsum("ncp,ncd,ndq->pq", J, H, J) / N
        G = np.einsum("ncp,ncd,ndq->pq", jb, H, jb) / N
        a = np.hstack([x, np.ones((N, 1))])
        A = a.T @ a / N
        grad = np.einsum("ncp,nc->p", J, r) / N
        out.append(dict(F=F, A=A, G=G, grad=grad))
    return out


def _e1_kfac(d):
    K = np.kron(d["A"], d["G"])
    return np.linalg.norm(d["F"] - K) / np.linalg.norm(d["F"])


def _e1_nearest_kronecker(d):
    """Van Loan–Pitsianis: ‖F − best A⊗G‖ from the top singular value of R(F)."""
    da, dg = d["A"].shape[0], d["G"].shape[0]
    R = d["F"].reshape(da, dg, da, dg).transpose(0, 2, 1, 3).reshape(da * da, dg * dg)
    s1 = np.linalg.svd(R, compute_uv=False)[0]
    nF = np.linalg.norm(d["F"])
    return np.sqrt(max(nF**2 - s1**2, 0.0)) / nF


def _torch_dense(model, X, y):
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x[None],))[0]

    J = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    lin = [i for i, m in enumerate(model) if isinstance(m, torch.nn.Linear)]
    JW, Jb, inputs = [], [], []
    with torch.no_grad():
        for i in lin:
            w = J[f"{i}.weight"]  # (N, C, d_out, d_in) -> column-major vec(W)
            JW.append(w.permute(0, 1, 3, 2).reshape(w.shape[0], w.shape[1], -1).numpy())
            Jb.append(J[f"{i}.bias"].numpy())
            inputs.append(model[:i](X).numpy())
        logits = model(X).numpy()
    return _dense(JW, Jb, logits, inputs, y.numpy())


def _flax_dense(model, params, X, y):
    import jax
    import jax.numpy as jnp

    def f(p, x):
        return model.apply(p, x[None])[0]

    J = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(params, jnp.asarray(X))["params"]
    P = params["params"]
    JW, Jb, inputs, h = [], [], [], np.asarray(X)
    for l in range(len(P)):
        k = J[f"Dense_{l}"]["kernel"]  # (N, C, d_in, d_out): W = kernelᵀ, so vec(W) is
        JW.append(np.asarray(k).reshape(k.shape[0], k.shape[1], -1))  # its row-major ravel
        Jb.append(np.asarray(J[f"Dense_{l}"]["bias"]))
        inputs.append(h)
        s = h @ np.asarray(P[f"Dense_{l}"]["kernel"]) + np.asarray(P[f"Dense_{l}"]["bias"])
        h = np.tanh(s) if l < len(P) - 1 else s
    return _dense(JW, Jb, h, inputs, y)


def _eqx_dense(model, X, y):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    p, static = eqx.partition(model, eqx.is_array)

    def f(p, x):
        return eqx.combine(p, static)(x)

    J = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(p, jnp.asarray(X))
    JW, Jb, inputs = [], [], []
    h = jnp.asarray(X)
    for l, (jl, lin) in enumerate(zip(J.layers, model.layers)):
        w = np.asarray(jl.weight)  # (N, C, d_out, d_in)
        JW.append(w.transpose(0, 1, 3, 2).reshape(w.shape[0], w.shape[1], -1))
        Jb.append(np.asarray(jl.bias))
        inputs.append(np.asarray(h))
        h = jax.vmap(lin)(h)
        if l < len(model.layers) - 1:
            h = model.activation(h)
    return _dense(JW, Jb, np.asarray(h), inputs, y)


@contextlib.contextmanager
def _x64():
    import jax

    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def _check(page, section, dense):
    """E1 of KFAC and KPSVD per block as the page's table says; the page's gradient and
    natural-gradient step as the dense computation says."""
    table = _run(page, section, "fl.compare(")["ns"]["table"]
    for l, d in enumerate(dense):
        assert table.get("KFAC", block=l)["e1"] == pytest.approx(_e1_kfac(d), rel=1e-8)
        assert table.get("KPSVD", block=l)["e1"] == pytest.approx(_e1_nearest_kronecker(d),
                                                                  rel=1e-3)
    st = _run(page, section, ".solve(")["ns"]
    lam = 1e-2  # the damping of the page
    o = 0
    for d in dense:
        n = d["grad"].size
        np.testing.assert_allclose(st["grad"][o:o + n], d["grad"], rtol=1e-7, atol=1e-12)
        want = np.linalg.solve(np.kron(d["A"], d["G"]) + lam * np.eye(n), d["grad"])
        np.testing.assert_allclose(st["step"][o:o + n], want, rtol=1e-6,
                                   atol=1e-9 * np.abs(want).max())
        o += n
    assert o == st["step"].size


def test_pytorch_numbers_match_dense_torch_func_fisher(page):
    first = _run(page, "PyTorch", "flt.factor_batch(")["ns"]
    dense = _torch_dense(first["model"], first["X"], first["y"])
    assert len(dense) == 3
    _check(page, "PyTorch", dense)


def test_flax_numbers_match_dense_jax_jacrev_fisher(page):
    first = _run(page, "Flax", "flj.factor_batch(")["ns"]
    with _x64():
        dense = _flax_dense(first["flax_model"], first["params"], first["Xj"], first["yj"])
    _check(page, "Flax", dense)


def test_equinox_numbers_match_dense_jax_jacrev_fisher(page):
    first = _run(page, "Equinox", "flj.factor_batch(")["ns"]
    with _x64():
        dense = _eqx_dense(first["eqx_model"], first["Xj"], first["yj"])
    _check(page, "Equinox", dense)


def test_the_independent_check_can_fail(page):
    """The dense route is sensitive: another model's Fisher does not pass."""
    first = _run(page, "PyTorch", "flt.factor_batch(")["ns"]
    other = copy.deepcopy(first["model"])
    import torch

    with torch.no_grad():
        other[0].weight.mul_(1.5)
    dense = _torch_dense(other, first["X"], first["y"])
    with pytest.raises(AssertionError):
        _check(page, "PyTorch", dense)
