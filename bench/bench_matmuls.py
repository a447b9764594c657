"""The linear layers' matmuls of a config's train step, one at a time, against PyTorch's at the same shapes.

For each linear layer of the backbone (qkv, attention projection, and the FFN's two layers) and each crop
kind (global crops: batch x 2 images, local crops: batch x n_local images, every token as rows), times its
three matmuls as the train step computes them: the forward `x W`, the input gradient `dy W^T` and the kernel
gradient (`models/linear.py`'s `_rows_matmul`, whose orientation depends on the kernel's shape), each jitted
alone; and with `--torch` PyTorch's matmuls of `nn.Linear` (`x W^T`, `dy W`, `dy^T x`) on the same threads.
Each figure is the median of `--repeats` calls after a warm-up, alternated between the libraries.

  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 taskset -c 0
      python bench/bench_matmuls.py --config configs/mmdino_vits14.py --batch-size 16 --torch      (one line)
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from bench_step import _timed, cpu_model

from mmdino_jax.config_base import load_config
from mmdino_jax.models.build import vit_config
from mmdino_jax.models.linear import ROWS, rows_dot_general

OPS = ("forward", "input gradient", "kernel gradient")


def layer_shapes(config) -> list[tuple[str, int, int, int]]:
    """(name, rows, d_in, d_out) of every backbone linear layer at the config's full-token rows."""
    cfg, d = vit_config(config.model), config.data
    batch, sequences = d.batch_size, len(d.sequences.split(","))

    def tokens(size):
        return 1 + cfg.num_registers + sequences * (size // cfg.patch_size) ** 2

    dim, hidden = cfg.embed_dim, cfg.hidden_dim
    ffn = [("fc1", dim, hidden), ("fc2", hidden, dim)] if cfg.ffn == "mlp" else [("w12", dim, 2 * hidden),
                                                                                 ("w3", hidden, dim)]
    layers = [("qkv", dim, 3 * dim), ("proj", dim, dim), *ffn]
    crops = [("global", batch * 2 * tokens(d.global_crops_size)),
             ("local", batch * d.local_crops_number * tokens(d.local_crops_size))]
    return [(f"{crop} {name}", rows, din, dout) for crop, rows in crops if rows for name, din, dout in layers]


def jax_matmuls(rows: int, din: int, dout: int, dtype):
    """The three jitted matmuls of one layer and their arguments."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (rows, din), dtype)
    w = jax.random.normal(keys[1], (din, dout), dtype)
    dy = jax.random.normal(keys[2], (rows, dout), dtype)

    def forward(x, w):
        return rows_dot_general(x, w, ROWS)

    def gradient(i):
        return jax.jit(lambda x, w, dy: jax.vjp(forward, x, w)[1](dy)[i])

    fns = (jax.jit(forward), gradient(0), gradient(1))
    args = ((x, w), (x, w, dy), (x, w, dy))
    return [(lambda f=f, a=a: jax.block_until_ready(f(*a))) for f, a in zip(fns, args)]


def torch_matmuls(rows: int, din: int, dout: int):
    """`nn.Linear`'s three matmuls (weight (d_out, d_in)) as PyTorch's autograd runs them."""
    import torch

    g = torch.Generator().manual_seed(0)
    x, w, dy = (torch.randn(*s, generator=g) for s in ((rows, din), (dout, din), (rows, dout)))
    return [lambda: torch.nn.functional.linear(x, w), lambda: dy.mm(w), lambda: dy.t().mm(x)]


def median_s(fns, repeats: int) -> np.ndarray:
    """Median seconds of each function, called alternated `repeats` times after one warm-up call each."""
    times = np.zeros((repeats + 1, len(fns)))
    for r in range(repeats + 1):
        for i, fn in enumerate(fns):
            times[r, i] = _timed(fn)[0]
    return np.median(times[1:], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
    parser.add_argument("--batch-size", type=int, default=0, help="override data.batch_size (0: the config's)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--torch", action="store_true", help="also time PyTorch's matmuls")
    args = parser.parse_args()
    config = load_config(args.config)
    if args.batch_size:
        config.data.batch_size = args.batch_size
    dtype = vit_config(config.model).compute_dtype
    print(f"device: {jax.devices()[0].device_kind} ({cpu_model()}), jax {jax.__version__}, {jnp.dtype(dtype).name}")
    head, rule = "| layer | rows | d_in | d_out | matmul | JAX GFLOP/s |", "|---|---|---|---|---|---|"
    if args.torch:
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        head, rule = head + " PyTorch GFLOP/s | JAX / PyTorch |", rule + "---|---|"
    print(head + "\n" + rule)
    for name, rows, din, dout in layer_shapes(config):
        fns = jax_matmuls(rows, din, dout, dtype) + (torch_matmuls(rows, din, dout) if args.torch else [])
        seconds = median_s(fns, args.repeats)
        gflop = 2 * rows * din * dout / 1e9
        for i, op in enumerate(OPS):
            line = f"| {name} | {rows} | {din} | {dout} | {op} | {gflop / seconds[i]:.1f} |"
            if args.torch:
                line += f" {gflop / seconds[3 + i]:.1f} | {seconds[3 + i] / seconds[i]:.2f} |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
