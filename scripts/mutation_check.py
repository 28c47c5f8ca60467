#!/usr/bin/env python
"""Mutation check of fimlab's numerical core: seeded bugs the test suite must catch.

Each mutant is one small, plausible bug — an exact snippet of the current source and its
mutated replacement. The script copies the repository into a temporary directory (the
working tree is never touched), applies one mutant at a time to the copy, runs a fast
subset of the tests against it (``pytest -x`` with a timeout) and reports which mutants
were killed (a test failed) and which survived.

A snippet is located by searching every ``.py`` file under ``fimlab/`` — not a fixed
path — so the list survives modules being moved or split; it must occur exactly once in
the tree (the script stops with a clear error naming the mutant otherwise, e.g. after a
refactor changed the code: update the snippet).

Usage::

    python scripts/mutation_check.py            # every mutant (about 10-25 min, 2 cores)
    python scripts/mutation_check.py --list     # names and descriptions
    python scripts/mutation_check.py --only inverse-cache-without-rule
    python scripts/mutation_check.py --check    # only verify every snippet is found
    python scripts/mutation_check.py --tests tests/test_kron.py --timeout 300

Exit status 0 when every non-equivalent mutant is killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutant(NamedTuple):
    name: str
    where: str  # where the snippet lives today (informative; the search is tree-wide)
    original: str
    mutated: str
    description: str


MUTANTS: list[Mutant] = [
    # -- curvature: factor batches and the Fisher operator ------------------------------
    Mutant("kfac-factors-G-count-blockview", "curvature.py FisherBlock.kfac_factors",
           "G = xp.matrix_transpose(gf) @ gf / N\n",
           "G = xp.matrix_transpose(gf) @ gf / (N * K)\n",
           "FisherBlock.kfac_factors averages G over N·K instead of N"),
    Mutant("kfac-factors-G-count", "approx/kfac.py kfac_factors",
           "G = gram_of_rows(xp.reshape(g, (N * K, dg)), 1.0 / N)",
           "G = gram_of_rows(xp.reshape(g, (N * K, dg)), 1.0 / (N * K))",
           "KFAC's G averaged over N·K instead of N"),
    Mutant("woodbury-cache-ignores-damping", "curvature.py _woodbury_factor",
           "        key = (lam, route)\n",
           "        key = (0, route)\n",
           "the Woodbury Cholesky cache is keyed without λ"),
    Mutant("woodbury-scale", "curvature.py _woodbury_factor",
           "M = M + (b.n_samples * lam) * xp.eye(NK,",
           "M = M + lam * xp.eye(NK,",
           "Woodbury's inner matrix uses λI instead of NλI"),
    Mutant("fisher-trace-count", "curvature.py FisherOperator.trace",
           "            t += float(xp.sum(an[:, None] * gn))\n        return t / b.n_samples",
           "            t += float(xp.sum(an[:, None] * gn))\n"
           "        return t / (b.n_samples * b.n_vectors)",
           "tr F divided by N·K"),
    Mutant("fisher-frobenius-scale", "curvature.py FisherOperator.frobenius_norm_sq",
           "out = float(xp.sum(Gm * Gm)) / b.n_samples**2",
           "out = float(xp.sum(Gm * Gm)) / b.n_samples",
           "‖F‖² from the Gram matrix divided by N instead of N²"),
    Mutant("inner-kron-product-of-sums", "curvature.py FisherBlock.inner_kron",
           "total += float(xp.sum(qa * qg))",
           "total += float(xp.sum(qa) * xp.sum(qg)) / N",
           "⟨F_l, A⊗G⟩ as a product of sums instead of a per-sample sum"),
    Mutant("dense-syrk-chunks-overwrite", "curvature.py _dense_syrk",
           "C = syrk(1.0 / N, U.T, beta=1.0, c=C, trans=0, lower=0, overwrite_c=1)",
           "C = syrk(1.0 / N, U.T, beta=0.0, c=C, trans=0, lower=0, overwrite_c=1)",
           "the chunked dense Fisher keeps only the last chunk"),
    Mutant("batch-gram-layer-sum", "batch.py FactorBatch.gram",
           "            out = term if out is None else out + term\n        return out",
           "            out = term\n        return out",
           "the whole-network Gram matrix keeps only the last layer"),
    # -- operators and the Kronecker algebra ----------------------------------------------
    Mutant("inverse-cache-without-rule", "operators.py KroneckerOperator.solve",
           "key = (lam, rule, tuple(sorted(kwargs.items())))",
           "key = (lam, tuple(sorted(kwargs.items())))",
           "the inverse cache is keyed without the damping rule"),
    Mutant("inverse-cache-without-damping", "operators.py KroneckerOperator.solve",
           "key = (lam, rule, tuple(sorted(kwargs.items())))",
           "key = (rule, tuple(sorted(kwargs.items())))",
           "the inverse cache is keyed without λ"),
    Mutant("inverse-cache-without-options", "operators.py KroneckerOperator.solve",
           "key = (lam, rule, tuple(sorted(kwargs.items())))",
           "key = (lam, rule)",
           "the inverse cache ignores solver options (signed=, tol=)"),
    Mutant("factor-rule-shift", "kron/algebra.py kron_sum_inverse",
           "da_shift, dg_shift = sq, sq",
           "da_shift, dg_shift = sq, lam",
           "K2 adds λ instead of √λ to G"),
    Mutant("pi-rule-swapped", "kron/algebra.py kron_sum_inverse",
           "da_shift, dg_shift = pi * sq, sq / pi",
           "da_shift, dg_shift = sq / pi, pi * sq",
           "K3 with π on the wrong factor"),
    Mutant("exact-rank1-vec-order", "kron/algebra.py _exact_rank1_inverse",
           "D = vec(wg[:, None] * wa[None, :], xp) + lam",
           "D = vec(wg[None, :] * wa[:, None], xp) + lam",
           "K4's eigenvalue grid in row-major instead of column-major order"),
    Mutant("i1-signed-abs-dropped", "kron/algebra.py _rank2_inverse",
           "        s1, s2 = xp.abs(s1), xp.abs(s2)\n",
           "        s1, s2 = s1, s2\n",
           "I1 ignores the papers' |s| rule (signed eigenvalues always)"),
    Mutant("pcg-inverse-drops-preconditioner", "kron/algebra.py _pcg_inverse",
           "Y, info = pcg(op, X, precond, tol=tol, maxiter=cap, xp=xp,",
           "Y, info = pcg(op, X, None, tol=tol, maxiter=cap, xp=xp,",
           "Kronecker-sum CG silently loses its preconditioner"),
    Mutant("pcg-loop-ignores-preconditioner", "kron/algebra.py pcg",
           "        Z = precond(R) if precond is not None else R\n        rz_new",
           "        Z = R\n        rz_new",
           "pcg applies the preconditioner only to the first residual"),
    Mutant("kron-matmat-transposed-G", "kron/algebra.py kron_matmat",
           "Y = xp.reshape(G @ xp.reshape(T, (d_a, d_g, k)), (d_a * d_g, k))",
           "Y = xp.reshape(xp.matrix_transpose(G) @ xp.reshape(T, (d_a, d_g, k)), "
           "(d_a * d_g, k))",
           "(A⊗G)X with Gᵀ for 8+ columns"),
    Mutant("rearrange-permutation", "kron/rearrange.py rearrange",
           "xp.permute_dims(M4, (2, 0, 3, 1))",
           "xp.permute_dims(M4, (0, 2, 3, 1))",
           "R(M) with the block grid transposed"),
    Mutant("gk-drop-left-reorth", "kron/krylov.py _GK.step",
           "        x = self._orth(x, self.U, j)\n",
           "        x = self._orth(x, self.U[:, max(j - 1, 0):], min(j, 1))\n",
           "Golub–Kahan: left vectors only orthogonalised against the previous one"),
    Mutant("gk-drop-right-reorth", "kron/krylov.py _GK.step",
           "        y = self._orth(y, self.V, j + 1)\n",
           "        y = self._orth(y, self.V[:, j:], 1)\n",
           "Golub–Kahan: right vectors only orthogonalised against the current one"),
    Mutant("gram-gk-local-reorth", "kron/krylov.py gram_golub_kahan",
           "p, Mp, a2 = _reorth(p, Mp, Xt[:j, :], MXt[:j, :], xp)",
           "p, Mp, a2 = _reorth(p, Mp, Xt[j - 1:j, :], MXt[j - 1:j, :], xp)",
           "Gram-coefficient Golub–Kahan: left re-orthogonalisation against one vector"),
    Mutant("gram-gk-no-full-reorth", "kron/krylov.py _reorth",
           "        c = MBt @ p\n"
           "        p, Mp = p - xp.matrix_transpose(Bt) @ c, Mp - xp.matrix_transpose(MBt) @ c\n",
           "        c = MBt[-1:, :] @ p\n"
           "        p, Mp = (p - xp.matrix_transpose(Bt[-1:, :]) @ c,\n"
           "                 Mp - xp.matrix_transpose(MBt[-1:, :]) @ c)\n",
           "Gram-coefficient Golub–Kahan: both sides orthogonalised against the last vector only"),
    Mutant("lanczos-local-only", "kron/krylov.py lanczos",
           "        w = w - xp.matrix_transpose(Qm) @ c\n        c2 = MQm @ w\n"
           "        w = w - xp.matrix_transpose(Qm) @ c2\n",
           "        w = w - xp.matrix_transpose(Qm[-2:, ...]) @ c[-2:]\n        c2 = 0 * c\n",
           "symmetric Lanczos without full re-orthogonalisation (three-term only)"),
    Mutant("kfac-residual-core", "kron/gram.py RearrangedGram.kfac_residual_core",
           "return _Core(1.0 / self.m, -one / self.m**2, one)",
           "return _Core(1.0 / self.m, -one / self.m, one)",
           "KFAC-corrected deflates vec(A)vec(G)ᵀ scaled by m"),
    Mutant("psd-sign-dropped", "kron/rearrange.py psd_sign",
           "return (A, G) if tr >= 0 else (-A, -G)",
           "return (A, G)",
           "the KPSVD sign rule is dropped (negative-definite factor pairs)"),
    # -- metrics -------------------------------------------------------------------------
    Mutant("e1-gram-cross-term", "metrics.py relative_frobenius_error",
           "return math.sqrt(max(nF - 2.0 * inner + nFt, 0.0) / nF)",
           "return math.sqrt(max(nF - inner + nFt, 0.0) / nF)",
           "E1's Gram route with the cross term once instead of twice"),
    Mutant("e2-unsorted", "metrics.py singular_value_error",
           "s2 = xp.flip(xp.sort(xp.abs(xp.linalg.eigvalsh(0.5 * (D2 + xp.matrix_transpose(D2))))))",
           "s2 = xp.abs(xp.linalg.eigvalsh(0.5 * (D2 + xp.matrix_transpose(D2))))",
           "E2 compares sorted with unsorted singular values"),
    # -- kernels -------------------------------------------------------------------------
    Mutant("kernel-sq-gram-no-square", "_kernels/numpy_impl.py sq_gram_reduce",
           "    S = xp.reshape(Gg * Gg, (n * K * N, K))\n",
           "    S = xp.reshape(xp.abs(Gg), (n * K * N, K))\n",
           "NumPy twin of sq_gram_reduce sums |·| instead of squares"),
    Mutant("kernel-outer-rows-order", "_kernels/numpy_impl.py outer_rows",
           "    rows = xp.reshape(a[:, None, :, None] * g[:, :, None, :], (n * K, da * dg))\n",
           "    rows = xp.reshape(a[:, None, None, :] * g[:, :, :, None], (n * K, da * dg))\n",
           "NumPy twin of outer_rows writes g ⊗ ā instead of ā ⊗ g"),
    Mutant("kernel-symmetrize-diag", "_kernels/numpy_impl.py symmetrize_lower",
           "M[i0:i1, i0:i1] = xp.tril(blk) + xp.matrix_transpose(xp.tril(blk, k=-1))",
           "M[i0:i1, i0:i1] = xp.tril(blk) + xp.matrix_transpose(xp.tril(blk))",
           "NumPy twin of symmetrize_lower doubles the diagonal"),
    # -- models --------------------------------------------------------------------------
    Mutant("mc-scaling", "models/likelihoods.py mc_vectors",
           "return xp.stack(vecs, axis=1) / float(np.sqrt(n_samples))",
           "return xp.stack(vecs, axis=1) / float(n_samples)",
           "MC vectors scaled by 1/S instead of 1/√S"),
    Mutant("tanh-derivative", "models/mlp.py _dact",
           "        return 1.0 - h * h\n",
           "        return 1.0 - h\n",
           "tanh' = 1 − h instead of 1 − h²"),
    Mutant("sqrt-fisher-categorical", "models/likelihoods.py Categorical.sqrt_fisher",
           "return xp.sqrt(p)[:, :, None] * (eye[None, :, :] - p[:, None, :])",
           "return p[:, :, None] * (eye[None, :, :] - p[:, None, :])",
           "H^{1/2} of the categorical likelihood uses p instead of √p"),
    # -- two-level -----------------------------------------------------------------------
    Mutant("two-level-residual-rhs", "approx/twolevel.py TwoLevel.solve",
           'rhs = self.coarse.apply(r if self.form == "residual" else g)',
           "rhs = self.coarse.apply(g)",
           "the residual form corrects with g instead of r"),
    Mutant("two-level-energy-gain", "approx/twolevel.py TwoLevel.energy_gain",
           "return float(-2.0 * xp.sum(d * r) + xp.sum(d * self._F_lambda(d)))",
           "return float(-1.0 * xp.sum(d * r) + xp.sum(d * self._F_lambda(d)))",
           "energy gain with the cross term once"),
    # -- optimizers ----------------------------------------------------------------------
    Mutant("adam-no-bias-correction", "optim/baselines.py Adam._update",
           "mhat = self.m / (1.0 - b1**t)",
           "mhat = self.m",
           "Adam without the first-moment bias correction"),
    Mutant("sgd-nesterov-ignored", "optim/baselines.py SGD._update",
           "step = d + self.momentum * v if self.nesterov else v",
           "step = v",
           "SGD ignores nesterov=True"),
    Mutant("ngd-ema-constant", "optim/ngd.py NGD._refresh_statistics",
           "                rho = min(1.0 - 1.0 / (t + 1), self.ema_max)\n",
           "                rho = self.ema_max\n",
           "NGD's running average without the 1 − 1/(t+1) warm-up"),
    Mutant("ngd-kl-clip-no-sqrt", "optim/ngd.py NGD.kl_factor",
           "return min(1.0, math.sqrt(self.kl_clip / total))",
           "return min(1.0, self.kl_clip / total)",
           "KL clipping factor without the square root"),
    # -- comparators: EKFAC / EigenCorrected / DiagonalFisher ----------------------------
    Mutant("ekfac-moments-count", "approx/eigencorrected.py projected_second_moments",
           "    return (xp.matrix_transpose(PA) @ PG) / N\n",
           "    return (xp.matrix_transpose(PA) @ PG) / (N * g.shape[1])\n",
           "EK1 scalings averaged over N·K instead of N"),
    Mutant("ekfac-moments-k-sum-dropped", "approx/eigencorrected.py projected_second_moments",
           "PG = xp.sum(pg * pg, axis=1)  # (N, d_g)",
           "PG = pg[:, 0, :] * pg[:, 0, :]  # (N, d_g)",
           "EK1 scalings keep only the first of the K vectors"),
    Mutant("eigenbasis-not-transposed", "approx/eigencorrected.py EigenbasisBlock._rotate",
           "            QA, QG = xp.matrix_transpose(QA), xp.matrix_transpose(QG)\n",
           "            QA, QG = QA, QG\n",
           "Q diag(s) Q instead of Q diag(s) Qᵀ (the eigenbasis not transposed on the way in)"),
    Mutant("eigenbasis-solve-damping", "approx/eigencorrected.py EigenbasisBlock.solve",
           "        d = self.diagonal_values + lam\n",
           "        d = self.diagonal_values + lam ** 0.5\n",
           "EKFAC/diagonal solve adds √λ instead of λ"),
    Mutant("eigenbasis-fisher-inner", "approx/eigencorrected.py EigenbasisBlock.fisher_inner",
           "return float(self.xp.sum(SF * self.S))",
           "return float(self.xp.sum(SF * SF))",
           "⟨F_l, E⟩ for another batch as ‖s(F_l)‖² (the block's own scalings ignored)"),
    Mutant("eigencorrected-rescaled-rho-swapped", "approx/eigencorrected.py EigenCorrected.rescaled",
           "rho * o.S + (1.0 - rho) * b.S",
           "rho * b.S + (1.0 - rho) * o.S",
           "moving average of the scalings with ρ on the new batch"),
    # -- comparators: BlockExact, LowRank -------------------------------------------------
    Mutant("blockexact-inner-not-squared", "approx/blockexact.py ExactBlock.fisher_inner",
           "return float(xp.sum(Ga * Ga * Gg)) / (N * N2)",
           "return float(xp.sum(Ga * Gg)) / (N * N2)",
           "⟨F'_l, F_l⟩ from Gram matrices with (ā_nᵀā'_m) not squared"),
    Mutant("lowrank-gram-scale", "approx/lowrank.py top_eigenpairs",
           "scale = xp.asarray(1.0 / np.sqrt(N * lam), dtype=b.dtype, device=b.device)",
           "scale = xp.asarray(1.0 / np.sqrt(lam), dtype=b.dtype, device=b.device)",
           "Gram coefficients C = W (Λ)^{-1/2} without the 1/N"),
    Mutant("lowrank-block-gram-weights-squared", "approx/lowrank.py LowRankBlock.fisher_inner",
           "out = float(xp.sum(self.lam[None, :] * HC * HC)) / gr[2]",
           "out = float(xp.sum(self.lam[None, :] ** 2 * HC * HC)) / gr[2]",
           "per-block ⟨F_l, (F_k)_ll⟩ by the Gram route with λ_i² weights"),
    Mutant("lowrank-block-vtv-weights", "approx/lowrank.py LowRankBlock._vtv",
           "        return G * s[:, None] * s[None, :]\n",
           "        return G * self.lam[:, None] * self.lam[None, :]\n",
           "‖(F_k)_ll‖² from Λ V_lᵀV_l Λ instead of Λ^{1/2} V_lᵀV_l Λ^{1/2}"),
    Mutant("lowrank-solve-damping", "approx/lowrank.py LowRank.solve",
           "        w = self._lam / (self._lam + lam)\n",
           "        w = self._lam / (self._lam + lam ** 0.5)\n",
           "LowRank's Woodbury weights λ_i/(λ_i + √λ)"),
    Mutant("lowrank-diagonal-not-remainder", "approx/lowrank.py LowRankPlusDiagonal.__init__",
           "self.D = xp.maximum(dF - dk, xp.zeros_like(dF))",
           "self.D = xp.maximum(dF, xp.zeros_like(dF))",
           "LowRank+Diagonal adds diag(F) instead of diag(F − F_k)"),
    Mutant("lowrank-woodbury-core", "approx/lowrank.py _woodbury_lowrank",
           "core = _diag(1.0 / lam_k, xp) + xp.matrix_transpose(V) @ Vd",
           "core = _diag(lam_k, xp) + xp.matrix_transpose(V) @ Vd",
           "Woodbury core with Λ instead of Λ⁻¹"),
    # -- KFC factors and R(F_l) of convolution blocks --------------------------------------
    Mutant("kfc-positions-off-by-one", "approx/kfc.py kfc_factors",
           "A = gram_of_rows(xp.reshape(a, (N * T, da)), 1.0 / (N * T))",
           "A = gram_of_rows(xp.reshape(a, (N * T, da)), 1.0 / (N * (T - 1)))",
           "KFC's A averaged over T − 1 positions"),
    Mutant("kfc-G-over-positions", "approx/kfc.py kfc_factors",
           "G = gram_of_rows(xp.reshape(g, (N * K * T, dg)), 1.0 / N)",
           "G = gram_of_rows(xp.reshape(g, (N * K * T, dg)), 1.0 / (N * T))",
           "KFC's G averaged over positions too (1/T twice)"),
    Mutant("conv-positions-transposed", "approx/conv_rearranged.py RearrangedConvFisher.matvec",
           "            B = S @ self.a  # (N, T, d_a)\n",
           "            B = xp.matrix_transpose(S) @ self.a  # (N, T, d_a)\n",
           "R(F_l) products by positions with the T × T matrix transposed"),
    Mutant("conv-products-not-symmetric", "approx/conv_rearranged.py RearrangedConvFisher._sym",
           "return 0.5 * (V + xp.matrix_transpose(V)) if self.symmetric else V",
           "return V",
           "R_s products without the projection onto symmetric factors"),
    # -- spectral --------------------------------------------------------------------------
    Mutant("slq-weights-not-squared", "spectral.py _slq_nodes",
           "t[: th.size], w[: th.size] = th, mass * tau ** 2",
           "t[: th.size], w[: th.size] = th, mass * np.abs(tau)",
           "SLQ quadrature weights τ instead of τ²"),
    Mutant("slq-exact-eigenvalues-count", "spectral.py _range_projector",
           "    ev = np.sort(lam_h)[::-1] / b.n_samples\n",
           "    ev = np.sort(lam_h)[::-1] / (b.n_samples * b.n_vectors)\n",
           "exact outliers from the Gram matrix divided by N·K"),
    Mutant("slq-null-part-not-projected", "spectral.py _range_projector",
           "        c = Wr @ ((xp.matrix_transpose(Wr) @ y) * inv)\n",
           "        c = Wr @ (xp.matrix_transpose(Wr) @ y)\n",
           "the range projector of the SLQ probes without Λ_r⁻¹ (not a projector)"),
    Mutant("slq-null-node-dropped", "spectral.py _slq_nodes",
           "t, w = np.append(t, 0.0), np.append(w, 1.0 - mass)",
           "t, w = np.append(t, 0.0), np.append(w, 0.0)",
           "the null-space part of an SLQ probe given no weight at 0"),
    # -- conv and batch-norm layers (round 5) ---------------------------------------------
    Mutant("inner-kron-positions-transposed", "curvature.py FisherBlock.inner_kron",
           "total += float(xp.sum(P[:, None, ...] * Q))",
           "total += float(xp.sum(xp.matrix_transpose(P)[:, None, ...] * Q))",
           "⟨F_l, A ⊗ G⟩ by positions with Ā A Āᵀ transposed (wrong for non-symmetric A)"),
    Mutant("maxpool-tie-to-last", "models/_pool.py max_pool_forward",
           "idx = np.argmax(flat, axis=-1)",
           "idx = flat.shape[-1] - 1 - np.argmax(flat[..., ::-1], axis=-1)",
           "max pooling sends a tied window's gradient to its last maximum, not the first"),
    Mutant("bn-include-rows-interleaved", "models/network.py network_factor_batch",
           "np.swapaxes(Gm, 2, 3).reshape(N, K, 2 * Gm.shape[2])",
           "Gm.reshape(N, K, 2 * Gm.shape[2])",
           "batch-norm rows [dγ; dβ] interleaved per channel instead of γ then β"),
    Mutant("hutchpp-projection-dropped", "spectral.py hutchpp",
           "    G = G - Q @ (xp.matrix_transpose(Q) @ G)\n",
           "    G = G\n",
           "Hutch++ without projecting the Hutchinson probes off the sketch"),
    Mutant("xtrace-projection-dropped", "spectral.py xtrace",
           "        r = w - Q @ (xp.matrix_transpose(Q) @ w)\n",
           "        r = w\n",
           "XTrace's leave-one-out probe not projected off Q_i"),
    Mutant("inverse-sqrt-pi-swapped", "spectral.py _kron_inv_sqrt",
           "Ah, Gh = _sym_pow(A, xp, pi * s, -0.5), _sym_pow(G, xp, s / pi, -0.5)",
           "Ah, Gh = _sym_pow(A, xp, s / pi, -0.5), _sym_pow(G, xp, pi * s, -0.5)",
           "F̃^{-1/2} of the π rule with π on the wrong factor"),
    Mutant("inverse-sqrt-gram-count", "spectral.py _gram_inv_sqrt",
           "coef = ((mu + lam) ** -0.5 - lam ** -0.5) / (N * mu)",
           "coef = ((mu + lam) ** -0.5 - lam ** -0.5) / mu",
           "(F + λI)^{-1/2} from the Gram eigenpairs without the 1/N of u_i"),
]

#: mutants that no test can kill because the program's behaviour does not change, with
#: the reason (an equivalent mutant is not a gap in the tests)
EQUIVALENT: dict[str, str] = {
    "gram-gk-local-reorth": (
        "one-sided re-orthogonalisation suffices: with the right (Y) vectors fully "
        "re-orthogonalised, x_j's components on x_i (i < j−1) are x_iᵀ(C M_V y_j) = "
        "(α_i y_i + β_i y_i+1)ᵀ M_V y_j = 0 to working precision (Simon & Zha, 2000), so "
        "dropping the left pass changes nothing: the outputs (σ, w, d) were bit-identical "
        "with and without it on three problems of 78-122 steps (m = 260-400, k = 24-60); "
        "'gram-gk-no-full-reorth' (both sides local) is the non-equivalent mutant and is "
        "killed"),
}

#: the fast subset: the registry cross-checks, the stateful and Krylov tests, and the
#: module tests of the numerical core
FAST_TESTS = [
    "tests/test_crosscheck.py",
    "tests/test_crosscheck_comparators.py",
    "tests/test_crosscheck_spectral.py",
    "tests/test_stateful.py",
    "tests/test_krylov_scale.py",
    "tests/test_kron.py",
    "tests/test_curvature.py",
    "tests/test_kfac.py",
    "tests/test_kernels.py",
    "tests/test_operators.py",
    "tests/test_models.py",
    "tests/test_twolevel.py",
    "tests/test_metrics.py",
    "tests/test_optim.py",
    "tests/test_kpsvd.py",
]

_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache",
                                 ".hypothesis", "build", "dist", "*.egg-info", "_build",
                                 "out", "results", ".ruff_cache")


def locate(tree: Path, m: Mutant) -> Path:
    """The one file under ``tree/fimlab`` that contains ``m.original`` exactly once."""
    hits = []
    for p in sorted((tree / "fimlab").rglob("*.py")):
        n = p.read_text(encoding="utf-8").count(m.original)
        if n:
            hits.append((p, n))
    if not hits:
        raise SystemExit(
            f"mutant {m.name!r}: its snippet is not in fimlab/ any more (was in {m.where}); "
            f"the code changed — update the snippet in scripts/mutation_check.py:\n"
            f"{m.original!r}")
    if len(hits) > 1 or hits[0][1] > 1:
        where = ", ".join(f"{p.relative_to(tree)} ×{n}" for p, n in hits)
        raise SystemExit(f"mutant {m.name!r}: its snippet is not unique ({where}); make it "
                         "longer so that it names one place")
    return hits[0][0]


def _env(tree: Path) -> dict:
    # one BLAS thread per run: the check runs on shared machines
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}


def _pytest(tests: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            "--no-header", *tests]


def run_one(tree: Path, m: Mutant, tests: list[str], timeout: float) -> tuple[str, float, str]:
    path = locate(tree, m)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(m.original, m.mutated), encoding="utf-8")
    env = _env(tree)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(_pytest(tests), cwd=tree, env=env, capture_output=True,
                              text=True, timeout=timeout)
        status = "survived" if proc.returncode == 0 else "killed"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        tail = proc.stdout.strip().splitlines()
        detail = lines[0] if lines else (tail[-1] if tail else "")
    except subprocess.TimeoutExpired:
        status, detail = "killed", f"timeout after {timeout:.0f} s"
    finally:
        path.write_text(text, encoding="utf-8")
    return status, time.perf_counter() - t0, str(detail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check", action="store_true",
                    help="only check that every snippet is found exactly once")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run this mutant only (repeatable)")
    ap.add_argument("--tests", nargs="+", default=None, help="test files to run")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    args = ap.parse_args(argv)

    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate mutant names")
    if args.list:
        for m in MUTANTS:
            eq = "  [equivalent]" if m.name in EQUIVALENT else ""
            print(f"{m.name:38s} {m.where:45s} {m.description}{eq}")
        return 0
    chosen = MUTANTS
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            raise SystemExit(f"unknown mutant(s) {sorted(unknown)}; see --list")
        chosen = [m for m in MUTANTS if m.name in args.only]
    tests = args.tests or FAST_TESTS
    for m in chosen:  # fail fast on a stale snippet, before any test runs
        locate(ROOT, m)
    if args.check:
        print(f"all {len(chosen)} snippets found exactly once under fimlab/")
        return 0

    results = []
    with tempfile.TemporaryDirectory(prefix="fimlab-mutants-") as tmp:
        tree = Path(tmp) / "repo"
        shutil.copytree(ROOT, tree, ignore=_IGNORE)
        # the unmutated copy must pass, or every "kill" would be meaningless
        print(f"baseline: {len(tests)} test files on an unmutated copy ...", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(_pytest(tests), cwd=tree, env=_env(tree), capture_output=True,
                              text=True, timeout=args.timeout * 3)
        if proc.returncode != 0:
            print(proc.stdout[-3000:])
            raise SystemExit("the unmutated copy fails the test subset: fix that first")
        print(f"baseline passes in {time.perf_counter() - t0:.0f} s", flush=True)
        for i, m in enumerate(chosen, 1):
            status, secs, detail = run_one(tree, m, tests, args.timeout)
            if status == "survived" and m.name in EQUIVALENT:
                status = "equivalent"
            results.append((m, status, secs, detail))
            print(f"[{i:2d}/{len(chosen)}] {status:10s} {secs:6.1f} s  {m.name}: "
                  f"{m.description}" + (f"\n      {detail}" if status == "killed" else ""),
                  flush=True)
    killed = sum(s == "killed" for _, s, _, _ in results)
    equiv = sum(s == "equivalent" for _, s, _, _ in results)
    survived = [m for m, s, _, _ in results if s == "survived"]
    tried = len(results) - equiv
    rate = killed / tried if tried else 1.0
    print(f"\nkilled {killed} of {tried} non-equivalent mutants ({100 * rate:.0f} %); "
          f"{equiv} equivalent; {len(survived)} survived"
          + (": " + ", ".join(m.name for m in survived) if survived else ""))
    for m in survived:
        print(f"  SURVIVED {m.name} ({m.where}): {m.description}")
    return 0 if not survived else 1


if __name__ == "__main__":
    sys.exit(main())
