"""Train-step throughput and FLOP accounting of the MM-DINOv2 update.

For each config: compile the jitted step (1 device), compare XLA's cost-analysis FLOP count with the
analytic matmul count of the model, then time steps on a fixed random batch (compile excluded).
With --torch, the same process then times the PyTorch reference step (bench/torch_step.py) on the same
batch, after one warm-up step, with torch.set_num_threads(number of CPUs this process may use), which
is the size of XLA's CPU intra-op thread pool (--torch-threads overrides it); the ratio column is
JAX samples/s / PyTorch samples/s.

  python bench/bench_step.py --config configs/demo.py --steps 5
  python bench/bench_step.py --config configs/demo.py --steps 3 --torch
  python bench/bench_step.py --config configs/mmdino_vits14.py --batch-size 8 --steps 2
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from mmdino_jax import sharding
from mmdino_jax.config_base import load_config
from mmdino_jax.models.build import vit_config
from mmdino_jax.ssl.learner import build_learner, random_batch
from mmdino_jax.training.sharded import shard_learner


def vit_flops(cfg, images: int, sequences: int, size: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one backbone forward over `images` multi-sequence images."""
    d, p = cfg.embed_dim, cfg.patch_size
    n = sequences * (size // p) ** 2
    tokens = 1 + cfg.num_registers + n
    hidden = cfg.hidden_dim
    ffn = 2 * (3 if cfg.ffn == "swiglu" else 2) * d * hidden
    per_block = tokens * (2 * 4 * d * d + ffn) + 2 * 2 * tokens * tokens * d
    return images * (cfg.depth * per_block + n * 2 * p * p * d)


def head_flops(model_cfg, embed_dim: int, vectors: int) -> float:
    h, b, k = model_cfg.head_hidden_dim, model_cfg.head_bottleneck_dim, model_cfg.head_n_prototypes
    dims = [embed_dim] + [h] * (model_cfg.head_nlayers - 1) + [b, k]
    return vectors * sum(2 * a * c for a, c in zip(dims[:-1], dims[1:]))


def step_flops(config) -> float:
    """Analytic FLOPs of one step: teacher forward + student forward and backward (2x forward)."""
    d, m = config.data, config.model
    cfg = vit_config(m)
    b, s = d.batch_size, len(d.sequences.split(","))
    n_g = s * (d.global_crops_size // cfg.patch_size) ** 2
    g_images, l_images = 2 * b, d.local_crops_number * b
    globals_ = vit_flops(cfg, g_images, s, d.global_crops_size)
    locals_ = vit_flops(cfg, l_images, s, d.local_crops_size)
    heads_g = head_flops(m, cfg.embed_dim, g_images * (1 + n_g))
    teacher = globals_ + heads_g
    student = globals_ + locals_ + heads_g + head_flops(m, cfg.embed_dim, l_images)
    return teacher + 3 * student


def bench(spec: str, batch_size: int | None, steps: int, torch_threads: int = 0) -> dict:
    config = load_config(spec)
    if batch_size:
        config.data.batch_size = batch_size
    config.optim.freeze_backbone_steps = 0
    run = shard_learner(build_learner(config), sharding.make_mesh(1, jax.devices()[:1]))
    host_batch = random_batch(config)
    state, batch, key = run.state, run.global_batch(host_batch), run.key(0)
    t0 = time.perf_counter()
    compiled = run.step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / steps
    analytic = step_flops(config)
    result = {"config": spec, "batch": config.data.batch_size, "compile_s": compile_s, "step_s": step_s,
              "samples_per_s": config.data.batch_size / step_s, "xla_gflop": cost["flops"] / 1e9,
              "analytic_gflop": analytic / 1e9, "achieved_gflops": analytic / step_s / 1e9}
    if torch_threads:
        del state, compiled
        result["torch"] = torch_rate(config, host_batch, steps, torch_threads)
    return result


def torch_rate(config, host_batch: dict, steps: int, threads: int) -> dict:
    """Time the PyTorch reference step on the JAX bench's batch (same shapes and values)."""
    import torch
    from torch_step import rate

    torch.set_num_threads(threads)
    return rate(config, steps, {k: torch.from_numpy(v) for k, v in host_batch.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="configs/x.py[:arg]; repeatable")
    parser.add_argument("--batch-size", type=int, default=0, help="override data.batch_size")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch reference step")
    parser.add_argument("--torch-threads", type=int, default=0, help="default: CPUs available (as XLA)")
    args = parser.parse_args()
    threads = (args.torch_threads or len(os.sched_getaffinity(0))) if args.torch else 0
    print(f"device: {jax.devices()[0].device_kind} x1, jax {jax.__version__}")
    head = "| config | batch | compile s | step s | samples/s | XLA GFLOP | analytic GFLOP | XLA/analytic | GFLOP/s |"
    rule = "|---|---|---|---|---|---|---|---|---|"
    if args.torch:
        import torch
        cpus = len(os.sched_getaffinity(0))
        print(f"torch {torch.__version__}, {threads} threads; {cpus} CPUs available to jax")
        head += " PyTorch step s | PyTorch samples/s | JAX/PyTorch |"
        rule += "---|---|---|"
    print(head + "\n" + rule)
    for spec in args.config:
        r = bench(spec, args.batch_size, args.steps, threads)
        line = (f"| {r['config']} | {r['batch']} | {r['compile_s']:.0f} | {r['step_s']:.2f} | "
                f"{r['samples_per_s']:.1f} | {r['xla_gflop']:.1f} | {r['analytic_gflop']:.1f} | "
                f"{r['xla_gflop'] / r['analytic_gflop']:.2f} | {r['achieved_gflops']:.1f} |")
        if "torch" in r:
            t = r["torch"]
            ratio = r["samples_per_s"] / t["samples_per_s"]
            line += f" {t['step_s']:.2f} | {t['samples_per_s']:.1f} | {ratio:.2f} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
