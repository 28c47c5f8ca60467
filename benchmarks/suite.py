"""``fimlab bench`` / ``python -m benchmarks``: the performance suite.

Measures, in one run, every row of ``docs/performance.md`` — forward + factor batch,
per-sample gradients, KFAC factors, the dense exact Fisher against ``U.T @ U``, Fisher
products, the Woodbury natural gradient, each KPSVD-family method per block against that
block's KFAC factors, E1 per block and at the auto-encoder's full size, a training
iteration per method, the Numba kernels against their NumPy twins, and the PyTorch peers
(curvlinops, BackPACK, ``torch.func``) on the same networks — then checks the targets of
the performance issue and writes everything to a JSON file and a Markdown table.

The report begins with the machine: CPU, the BLAS libraries and their kernels
(threadpoolctl), thread counts, load average, and the measured GEMM rate and memory
bandwidth that the rows' GFLOP/s and GB/s are compared with.

Modes: ``--quick`` (about a minute: float64, the key sizes), the default full run
(float64 and float32, every size; several minutes), and ``--tiny`` (seconds; what the
test suite runs). ``--no-peers`` leaves the PyTorch libraries out; when they are not
installed their rows are skipped with a message saying how to install them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

__all__ = ["add_arguments", "run", "run_suite", "TARGETS", "format_markdown"]

#: The targets of the performance issue: (key, description, threshold, direction).
TARGETS = {
    "dense_vs_syrk": ("dense exact-Fisher assembly throughput / U.T @ U throughput", 0.60,
                      ">="),
    "kpsvd_rank1": ("rank-1 KPSVD time / KFAC factors time, blocks d_a, d_g ≥ 250", 3.0, "<="),
    "kpsvd_rank2": ("rank-2 methods time / KFAC factors time, blocks d_a, d_g ≥ 250", 4.0,
                    "<="),
    "e1_full_size": ("E1 of every method on every auto-encoder block, approximations "
                     "built (s)", 10.0, "<="),
    "peers": ("peer time / fimlab time (KFAC factors, matvec, per-sample gradients, dense "
              "Fisher)", 2.0, ">="),
    "kfoc": ("curvlinops KFOC time / fimlab rank-1 KPSVD time", 3.0, ">="),
    "kernels": ("Numba kernel speed-up over its NumPy twin", 1.5, ">="),
    # issue 20: the pipeline end to end, against its unavoidable BLAS work in the same run
    "fb_vs_gemm": ("MC factor batch time / its forward + back-prop GEMMs alone "
                   "(auto-encoder)", 1.3, "<="),
    "kfac_vs_blas": ("MC KFAC from data, end to end / its GEMMs + factor SYRKs alone "
                     "(auto-encoder)", 1.5, "<="),
    "train_vs_blas": ("KFAC training iteration (curvature and inverses refreshed) / its "
                      "BLAS+LAPACK work alone (auto-encoder)", 1.5, "<="),
}


#: 1-minute load average per core above which the end-to-end targets are not judged
LOADED_PER_CORE = 1.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fimlab bench``."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick",
                   help="float64 only, the key sizes (about a minute)")
    g.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                   help="tiny sizes, a few seconds (the test suite's smoke run)")
    g.add_argument("--full", dest="mode", action="store_const", const="full",
                   help="float64 and float32, every size (the default)")
    p.set_defaults(mode="full")
    p.add_argument("--sections", help="comma-separated subset of: " + ", ".join(_section_names()))
    p.add_argument("--no-peers", dest="peers", action="store_false", default=True,
                   help="leave out the PyTorch libraries (curvlinops, BackPACK, torch.func)")
    p.add_argument("--out", default=None,
                   help="JSON file to write [default: fimlab-out/bench/bench-MODE.json]")
    p.add_argument("--markdown", default=None, help="also write the Markdown table here")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS, Numba and PyTorch [default: all cores]")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each section, wait up to this long for the 1-minute load "
                   "average to fall below --quiet-load (a shared machine) [default: 0]")
    p.add_argument("--quiet-load", type=float, default=1.5,
                   help="load average regarded as quiet [default: 1.5]")


def _section_names():
    from .cases import SECTIONS

    return list(SECTIONS)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``fimlab bench`` and ``python -m benchmarks``."""
    sections = None
    if getattr(args, "sections", None):
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    report = run_suite(mode=args.mode, sections=sections, use_peers=args.peers,
                       threads=args.threads, out=args.out, markdown=args.markdown,
                       wait_quiet=args.wait_quiet, quiet_load=args.quiet_load)
    return 0 if report is not None else 1


def run_suite(mode: str = "quick", sections=None, use_peers: bool = True,
              threads: int | None = None, out: str | os.PathLike | None = None,
              markdown: str | os.PathLike | None = None, log=print,
              wait_quiet: float = 0.0, quiet_load: float = 1.5) -> dict:
    """Run the suite and return the report (also written as JSON to ``out``)."""
    # OpenMP worker threads (PyTorch, MKL, Numba's omp layer) busy-wait after each parallel
    # region by default; on a 2-core machine they steal the cores from the next timed
    # call. Passive waiting must be set before those runtimes start (see harness.measure).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from threadpoolctl import threadpool_limits

    from fimlab._errors import UnknownNameError

    from . import cases, harness, peers

    if mode not in cases.MODES:
        raise UnknownNameError(f"unknown bench mode {mode!r}; choose tiny, quick or full")
    known = list(cases.SECTIONS)
    sections = list(sections) if sections else known
    bad = [s for s in sections if s not in known]
    if bad:
        raise UnknownNameError(f"unknown bench section(s) {bad}; choose from {known}")
    threads = int(threads or os.cpu_count() or 1)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        pass

    t0 = time.perf_counter()
    with threadpool_limits(limits=threads):
        info = harness.machine()
        pst = peers.status() if use_peers else {"message": "peers left out (--no-peers)"}
        info["peers"] = pst
        info["threads"] = threads
        info["pool_warning"] = pool_warning(info["threadpools"])
        log(_header(info, mode))
        ctx = cases.Context(mode=mode, threads=threads, peers=pst, use_peers=use_peers,
                            log=log, sections=tuple(sections))
        if use_peers and pst.get("message") != "all peers importable":
            ctx.skip("peers", pst["message"])
        limits = {}
        if "limits" in sections:
            limits = harness.machine_limits(ctx.cfg["gemm_n"], ctx.cfg["budget"],
                                            bw_mb=ctx.cfg["bw_mb"])
            log("machine limits: " + ", ".join(f"{k} = {v:.1f}" for k, v in limits.items()
                                               if k.endswith(("_s",))))
        ctx.limits = limits
        rows = []
        for name in sections:
            fn = cases.SECTIONS[name]
            if fn is None:
                continue
            waited = _wait_quiet(wait_quiet, quiet_load)
            log(f"[{name}] ..." + (f" (waited {waited:.0f} s; load now "
                                   f"{os.getloadavg()[0]:.2f})" if waited >= 1 else ""))
            ts = time.perf_counter()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook")
                new = fn(ctx)
            rows += new
            for r in new:
                log("  " + _one_line(r))
            log(f"[{name}] {time.perf_counter() - ts:.1f} s")
        info["loadavg_end"] = list(os.getloadavg())
    report = {
        "mode": mode,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "machine": info,
        "limits": limits,
        "rows": rows,
        "skipped": ctx.skipped,
        "targets": evaluate_targets(rows, ctx),
        "wall_time_s": time.perf_counter() - t0,
    }
    out = Path(out) if out else Path("fimlab-out/bench") / f"bench-{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_json_default))
    md = format_markdown(report)
    if markdown:
        Path(markdown).write_text(md)
    log("\n" + _targets_text(report["targets"]))
    log(f"\nwrote {out}" + (f" and {markdown}" if markdown else "")
        + f" ({report['wall_time_s']:.0f} s)")
    return report


def _wait_quiet(limit: float, load: float) -> float:
    """Sleep until the 1-minute load average is below ``load`` or ``limit`` seconds have
    passed; returns the seconds waited."""
    t0 = time.perf_counter()
    while limit > 0 and os.getloadavg()[0] >= load and time.perf_counter() - t0 < limit:
        time.sleep(5.0)
    return time.perf_counter() - t0 if limit > 0 else 0.0


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


# -- targets -------------------------------------------------------------------------------
def evaluate_targets(rows: list, ctx) -> list:
    """Each target with its measured value(s) and whether it is met (``None``: not
    measured in this run, with the reason)."""
    out = []

    def add(key, items, reason=None, aggregate=None):
        desc, thr, op = TARGETS[key]
        ok = (lambda v: v >= thr) if op == ">=" else (lambda v: v <= thr)
        checks = [dict(it, met=bool(ok(it["value"]))) for it in items]
        out.append({"target": key, "description": desc, "threshold": thr, "op": op,
                    "checks": checks, "met": (all(c["met"] for c in checks) if checks else None),
                    "reason": reason if not checks else None})

    dense = [r for r in rows if r["section"] == "dense exact Fisher" and r["impl"] == "fimlab"]
    add("dense_vs_syrk", [{"case": f"{r['sizes']} N={r['N']} K={r['K']} P={r['P']} {r['dtype']}",
                           "value": r["ratio"]} for r in dense],
        reason="dense section not run")
    kp = [r for r in rows if r["section"] == "KPSVD family per block" and r["impl"] != "KFAC"
          and r["d_a"] >= 250 and r["d_g"] >= 250]
    why = ("the KPSVD family is not registered in this checkout" if any(
        s["section"] == "KPSVD per block" for s in ctx.skipped) else "blocks section not run")
    add("kpsvd_rank1", [{"case": f"block {r['block']} ({r['d_a']}×{r['d_g']}) {r['impl']}",
                         "value": r["ratio"]} for r in kp if r["rank"] == 1], reason=why)
    add("kpsvd_rank2", [{"case": f"block {r['block']} ({r['d_a']}×{r['d_g']}) {r['impl']}",
                         "value": r["ratio"]} for r in kp if r["rank"] == 2], reason=why)
    e1 = [r for r in rows if r["section"] == "E1 at full size"]
    add("e1_full_size", [{"case": f"{r['sizes']} m={r['N']} {r['dtype']}, methods: "
                          f"{', '.join(r['methods'])}", "value": r["time_s"]} for r in e1],
        reason="e1_total section not run")
    pr = [r for r in rows if r.get("ratio") is not None and r["section"] in (
        "KFAC factors", "Fisher matvec", "per-sample gradients", "dense exact Fisher")
        and not r["impl"].startswith(("fimlab", "NumPy"))]
    add("peers", [{"case": f"{r['section']}: {r['impl']} {r.get('fisher', '')} {r['sizes']} "
                   f"N={r['N']} {r['dtype']}", "value": r["ratio"]} for r in pr],
        reason=ctx.peers.get("message") if ctx.use_peers else "peers left out (--no-peers)")
    kf = [r for r in rows if r["section"] == "KFOC"]
    add("kfoc", [{"case": r["sizes"], "value": r["ratio"]} for r in kf],
        reason=("the installed curvlinops has no KFOCLinearOperator (added after its 3.0.1 "
                "release)" if ctx.use_peers and ctx.peers.get("curvlinops")
                and not ctx.peers.get("kfoc") else "KFOC not measured (peers absent)"))
    # only the sizes a kernel serves: where the dispatcher keeps NumPy (a dtype measured
    # below 1.5×), the row is reported but is not a case of the target
    kr = [r for r in rows if r["section"] == "Numba kernels" and r["impl"] == "numba"
          and r.get("served", True)]
    add("kernels", [{"case": f"{r['kernel']}: {r['what']} {r['dtype']}", "value": r["ratio"]}
                    for r in kr], reason="kernels section not run")
    pl = [r for r in rows if r["section"] == "end to end" and r.get("net") == "ae"
          and r.get("ratio") is not None]
    # a ratio to "work timed alone" means nothing when other processes hold the cores:
    # above LOADED_PER_CORE × cores the end-to-end targets are reported, not judged
    cores = os.cpu_count() or 1
    for key, step in (("fb_vs_gemm", "factor batch"), ("kfac_vs_blas", "KFAC from data"),
                      ("train_vs_blas", "KFAC training iteration")):
        items = [{"case": f"{r['sizes']} N={r['N']} {r['dtype']} (median ratio "
                          f"{r['ratio_median']:.2f}, load {r['load']:.1f})",
                  "value": r["ratio"], "load": r["load"]} for r in pl if r["step"] == step]
        loaded = [it for it in items if it["load"] > LOADED_PER_CORE * cores]
        if loaded:
            desc, thr, op = TARGETS[key]
            out.append({"target": key, "description": desc, "threshold": thr, "op": op,
                        "checks": [], "met": None,
                        "reason": "not judged: load average " + ", ".join(
                            f"{it['load']:.1f}" for it in loaded) + f" on {cores} cores "
                            "(measured: " + ", ".join(f"{it['value']:.2f}" for it in items)
                            + "); re-run on a quiet machine"})
            continue
        add(key, items, reason="pipeline section not run on the auto-encoder")
    return out


def _targets_text(targets: list) -> str:
    lines = ["targets:"]
    for t in targets:
        state = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append(f"- {t['description']} {t['op']} {t['threshold']}: {state}"
                     + (f" ({t['reason']})" if t["reason"] else ""))
        for c in t["checks"]:
            lines.append(f"    {'ok ' if c['met'] else 'NO '} {c['value']:.3g}  {c['case']}")
    return "\n".join(lines)


# -- formatting ----------------------------------------------------------------------------------
def _header(info: dict, mode: str) -> str:
    cpu = info["cpu"]
    blas = _pools(info)
    return (f"fimlab bench ({mode})\nCPU: {cpu.get('Model name', '?')}, {cpu.get('CPU(s)', '?')} "
            f"CPU(s), {cpu.get('SIMD', '')}\nBLAS: {blas}\nNumba threads: "
            f"{info.get('numba_threads')} ({info.get('numba_threading_layer')}); load average "
            f"{info['loadavg_start'][0]:.2f}\npeers: {info['peers'].get('message')}"
            + (f"\n{info['pool_warning']}" if info.get("pool_warning") else ""))


def pool_warning(pools: list) -> str | None:
    """A warning when two or more BLAS libraries each run more than one thread: calls
    that alternate between them pay for the other pool's spinning threads (issue 20)."""
    busy = [d for d in pools if d.get("user_api") == "blas" and d.get("num_threads", 1) > 1]
    if len(busy) < 2:
        return None
    libs = ", ".join(f"{d['internal_api']} {d.get('version') or ''} "
                     f"({d.get('filepath') or d.get('library')}, {d['num_threads']} threads)"
                     for d in busy)
    return (f"warning: {len(busy)} BLAS libraries with more than one thread each are loaded "
            f"({libs}); code that alternates between them pays for the other pool's "
            "spinning threads (fimlab's hot paths use NumPy's BLAS only)")


def _pools(info: dict) -> str:
    parts = []
    for d in info["threadpools"]:
        arch = f"{d['architecture']} kernel, " if d.get("architecture") else ""
        ver = f" {d['version']}" if d.get("version") else ""
        parts.append(f"{d['internal_api']}{ver} ({arch}{d['num_threads']} threads, "
                     f"{d.get('library') or d['prefix']})")
    return "; ".join(parts)


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def _one_line(r: dict) -> str:
    t = r.get("time_s")
    parts = [r["impl"], r["what"], r.get("fisher", ""), r.get("dtype", ""),
             f"{t * 1e3:.2f} ms" if t is not None else ""]
    if r.get("gflop_s"):
        parts.append(f"{r['gflop_s']:.1f} GFLOP/s")
    if r.get("gb_s") and not r.get("gflop_s"):
        parts.append(f"{r['gb_s']:.1f} GB/s")
    if r.get("ratio") is not None:
        parts.append(f"ratio {r['ratio']:.2f}")
    return " | ".join(p for p in parts if p)


def format_markdown(report: dict) -> str:
    """The report as Markdown: machine, targets, then one table per section."""
    info = report["machine"]
    cpu = info["cpu"]
    lim = report["limits"]
    out = ["### Machine\n",
           f"- CPU: {cpu.get('Model name', '?')} ({cpu.get('CPU(s)', '?')} CPUs, "
           f"{cpu.get('Thread(s) per core', '?')} thread(s) per core, "
           f"{cpu.get('Hypervisor vendor', 'bare metal')} VM); SIMD: {cpu.get('SIMD', '')}; "
           f"L2 {cpu.get('L2 cache', '?')}, L3 {cpu.get('L3 cache', '?')}",
           "- BLAS and thread pools: " + _pools(info)
           + (f" — **{info['pool_warning']}**" if info.get("pool_warning") else ""),
           f"- Python {info['python']}, NumPy {info['numpy']}, SciPy {info.get('scipy')}, "
           f"Numba {info.get('numba')} ({info.get('numba_threads')} threads, "
           f"{info.get('numba_threading_layer')} layer)",
           f"- peers: torch {info['peers'].get('torch')}, curvlinops "
           f"{info['peers'].get('curvlinops')}, BackPACK {info['peers'].get('backpack')}",
           f"- environment: {info['env'] or 'no BLAS/OpenMP variables set'}",
           f"- load average at start / end: {info['loadavg_start'][0]:.2f} / "
           f"{info.get('loadavg_end', [float('nan')])[0]:.2f}"]
    if lim:
        out.append(f"- measured limits: DGEMM {lim['gemm_float64_gflop_s']:.1f} GFLOP/s, SGEMM "
                   f"{lim['gemm_float32_gflop_s']:.1f} GFLOP/s (n = {lim['gemm_float64_n']}), "
                   f"copy bandwidth {lim['copy_gb_s']:.1f} GB/s")
    out.append(f"- mode `{report['mode']}`, wall time {report['wall_time_s']:.0f} s\n")
    out.append("### Targets\n")
    out.append("| target | threshold | measured | met |\n|---|---|---|---|")
    for t in report["targets"]:
        if not t["checks"]:
            out.append(f"| {t['description']} | {t['op']} {t['threshold']} | not measured: "
                       f"{t['reason']} | — |")
            continue
        vals = "<br>".join(f"{c['value']:.3g} ({c['case']})" for c in t["checks"])
        out.append(f"| {t['description']} | {t['op']} {t['threshold']} | {vals} | "
                   f"{'yes' if t['met'] else '**no**'} |")
    sections = list(dict.fromkeys(r["section"] for r in report["rows"]))
    for s in sections:
        rs = [r for r in report["rows"] if r["section"] == s]
        out.append(f"\n### {s}\n")
        out.append("| what | impl | Fisher | dtype | net (N, K) | time (ms) | GFLOP/s (% GEMM) "
                   "| GB/s | peak MB (alloc / RSS) | ratio | load |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            net = f"{r.get('sizes', r.get('kernel', ''))} ({r.get('N', '')}, {r.get('K', '')})"
            gf = ""
            if r.get("gflop_s"):
                gf = f"{r['gflop_s']:.1f}" + (f" ({r['pct_of_gemm']:.0f}%)"
                                              if r.get("pct_of_gemm") else "")
            mem = ""
            if r.get("rss_mb") is not None:
                mem = f"{_fmt(r.get('alloc_mb'), '.0f') or '—'} / {r['rss_mb']:.0f}"
            ratio = _fmt(r.get("ratio"), ".2f")
            if r.get("ratio_with_factor_batch") is not None:
                ratio += f" ({r['ratio_with_factor_batch']:.2f} with the factor batch)"
            if r.get("note"):
                ratio += f" ({r['note']})"
            out.append(f"| {r['what']} | {r['impl']} | {r.get('fisher', '')} | "
                       f"{r.get('dtype', '')} | {net} | {r['time_s'] * 1e3:.3g} | {gf} | "
                       f"{_fmt(r.get('gb_s'), '.1f') if not r.get('gflop_s') else ''} | {mem} "
                       f"| {ratio} | {_fmt(r.get('load'), '.1f')} |")
    if report["skipped"]:
        out.append("\n### Skipped\n")
        out += [f"- {s['section']}: {s['message']}" for s in report["skipped"]]
    return "\n".join(out) + "\n"
