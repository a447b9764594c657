"""Exact GELU forward and forward+backward time: `jax.nn.gelu(approximate=False)` (through `erfc`) against
`mmdino_jax.models.activations.gelu` (through `erf`, PyTorch's formula), interleaved, median of --rounds.

    taskset -c 0 python bench/bench_gelu.py --shape 3152,768
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from mmdino_jax.models.activations import gelu

FORMULAS = {"erfc (jax.nn.gelu)": lambda x: jax.nn.gelu(x, approximate=False), "erf (activations.gelu)": gelu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="3152,768", help="rows,columns (default: the demo's fc1 output)")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=tuple(map(int, a.shape.split(",")))), "float32")
    fns = {(name, "fwd"): jax.jit(f) for name, f in FORMULAS.items()}
    fns |= {(name, "fwd+bwd"): jax.jit(jax.grad(lambda v, f=f: f(v).sum())) for name, f in FORMULAS.items()}
    times = {k: [] for k in fns}
    for r in range(a.rounds + 1):  # round 0 warms up (compiles)
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(x))
            if r:
                times[k].append(time.perf_counter() - t)
    print(f"shape {a.shape}, float32, {jax.devices()[0].platform}, jax {jax.__version__}\n")
    print("| pass | " + " | ".join(f"{n} ms" for n in FORMULAS) + " | ratio |\n|---|---|---|---|")
    for pass_ in ("fwd", "fwd+bwd"):
        ms = [1e3 * np.median(times[(n, pass_)]) for n in FORMULAS]
        print(f"| {pass_} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[0] / ms[1]:.2f} |")


if __name__ == "__main__":
    main()
