"""Attention forward and forward+backward time of each `mmdino_jax.models.attention` implementation that
runs on this backend, against PyTorch's `scaled_dot_product_attention`, at the step's shapes.

Inputs are the (B, T, 3*D) output of the qkv projection, as in the model, so layout changes count.
The implementations are timed interleaved (one call of each per round, --rounds rounds after a warm-up),
and the table gives the median CPU time of this process per call (or wall time with --wall).

    taskset -c 0 python bench/bench_attention.py --shape 16,197,3,64 --shape 32,65,3,64 --shape 32,197,6,64
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmdino_jax.models import attention

IMPLS = {"cpu": ("xla", "reference", "xla_cpu"), "gpu": ("xla", "reference", "cudnn"),
         "tpu": ("xla", "reference", "splash")}


def jax_fns(impl: str, shape, dtype):
    b, t, h, d = shape

    def attn(qkv):
        x = qkv.reshape(b, t, 3, h, d)
        return attention.dot_product_attention(x[:, :, 0], x[:, :, 1], x[:, :, 2], impl).reshape(b, t, h * d)

    g = jnp.ones((b, t, h * d), dtype)
    fwd = jax.jit(attn)
    grad = jax.jit(jax.grad(lambda x: jnp.vdot(attn(x).astype(jnp.float32), g.astype(jnp.float32))))
    return (lambda x: jax.block_until_ready(fwd(x))), (lambda x: jax.block_until_ready(grad(x)))


def torch_fns(shape, threads: int, dtype: str, device: str):
    import torch

    torch.set_num_threads(threads)
    b, t, h, d = shape
    qkv = torch.randn(b, t, 3 * h * d, dtype=getattr(torch, dtype), device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fwd():
        x = qkv.reshape(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2]).transpose(1, 2).reshape(b, t, -1)

    def once(_):
        fwd()
        sync()

    def both(_):
        qkv.grad = None
        fwd().sum().backward()
        sync()

    return once, both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", action="append", required=True, help="B,T,heads,head_dim; repeatable")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--wall", action="store_true", help="wall time instead of CPU time")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    clock = time.perf_counter if args.wall else time.process_time
    backend = jax.default_backend()
    impls = IMPLS.get(backend, ("xla", "reference"))
    threads = len(os.sched_getaffinity(0))
    names = [f"`{i}`" for i in impls] + ([] if args.no_torch else ["PyTorch SDPA"])
    print(f"jax {jax.__version__} {backend}, {args.dtype}, {threads} CPUs, "
          f"median {'wall' if args.wall else 'CPU'} ms per call over {args.rounds} interleaved rounds")
    print("| B, T, heads, d | pass | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for spec in args.shape:
        shape = tuple(int(v) for v in spec.split(","))
        b, t, h, d = shape
        qkv = jnp.asarray(np.random.default_rng(0).normal(size=(b, t, 3 * h * d)), args.dtype)
        fns = [jax_fns(i, shape, args.dtype) for i in impls]
        if not args.no_torch:
            fns.append(torch_fns(shape, threads, args.dtype, "cuda" if backend == "gpu" else "cpu"))
        times = np.zeros((args.rounds + 1, len(fns), 2))
        for r in range(args.rounds + 1):  # round 0 compiles and warms up
            for i, pair in enumerate(fns):
                for j, fn in enumerate(pair):
                    t0 = clock()
                    fn(qkv)
                    times[r, i, j] = clock() - t0
        med = np.median(times[1:], axis=0) * 1e3
        for j, name in enumerate(("fwd", "fwd+bwd")):
            print(f"| {spec} | {name} | " + " | ".join(f"{m:.1f}" for m in med[:, j]) + " |", flush=True)


if __name__ == "__main__":
    main()
