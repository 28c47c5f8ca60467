r"""Old (main's tip) and new NumPy layers in one process, calls interleaved old/new/old/new
(issue 18, devnotes/issue-18-pool.md). Setup, from the branch's root:

    git archive HEAD | tar -x -C /tmp/ab
    git show <main's tip>:fimlab/models/layers.py > /tmp/ab/fimlab/models/layers_old.py
    git show <main's tip>:fimlab/models/network.py \
        | sed 's/from \.layers import/from .layers_old import/' \
        > /tmp/ab/fimlab/models/network_old.py
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/ab python devnotes/issue-18-pool-ab.py 64 fb,exact,mc,kfc 5

Prints, per job, the best and median of ``reps`` old/new pairs and the load average.
"""

import os
import sys
import time

import numpy as np

import fimlab as fl
from fimlab.models import network as new_net
from fimlab.models import network_old as old_net


def main(N, jobs, reps):
    rng = np.random.default_rng(0)
    X = rng.random((N, 3, 32, 32))
    y = rng.integers(0, 10, N)
    nets = {}
    for tag, mod in (("old", old_net), ("new", new_net)):
        net = mod.cuda_convnet(seed=0)
        net.update_running_stats(X)
        nets[tag] = (mod, net)

    def job(tag, name):
        mod, net = nets[tag]
        if name == "fb":
            return lambda: net.loss_and_gradient(X, y, train=True)
        if name in ("exact", "mc"):
            return lambda: mod.network_factor_batch(net, X, fisher=name, rng=0)
        return lambda: fl.KFAC(mod.network_factor_batch(net, X, fisher="exact"))

    go = nets["old"][1].loss_and_gradient(X, y, train=True)[1]
    gn = nets["new"][1].loss_and_gradient(X, y, train=True)[1]
    err = max(np.abs(a - b).max() / np.abs(a).max() for a, b in zip(go, gn))
    print(f"N={N} load {os.getloadavg()[0]:.1f}; gradient agreement old/new {err:.1e}")
    for name in jobs:
        t = {"old": [], "new": []}
        for tag in ("old", "new"):
            job(tag, name)()
        for _ in range(reps):
            for tag in ("old", "new"):
                f = job(tag, name)
                s = time.perf_counter()
                f()
                t[tag].append(time.perf_counter() - s)
        mo, mn = min(t["old"]), min(t["new"])
        medo, medn = np.median(t["old"]), np.median(t["new"])
        print(f"{name:6s} N={N}: old best {mo * 1e3:7.0f} ms median {medo * 1e3:7.0f} | "
              f"new best {mn * 1e3:7.0f} ms median {medn * 1e3:7.0f} | speed-up best "
              f"{mo / mn:.2f}x median {medo / medn:.2f}x | load {os.getloadavg()[0]:.1f}",
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]))
