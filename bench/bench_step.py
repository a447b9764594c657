"""Train-step throughput and FLOP accounting of the MM-DINOv2 update, against a PyTorch reference step.

For each config: compile the jitted step (1 device), compare XLA's cost-analysis FLOP count with the
analytic matmul count of the model, then time steps on a fixed random batch (compile excluded).
With --torch, the same process also builds the PyTorch reference step (bench/torch_step.py) on the same
batch and the two are timed interleaved (JAX step, PyTorch step, repeated --steps times after --warmup
untimed rounds), so load from other jobs hits both alike; the table gives medians and the ratio of the
medians (PyTorch step s / JAX step s = JAX samples/s over PyTorch samples/s), with the range of the
per-round ratios and the ratio of the median CPU times of this process (PyTorch / JAX: the work
done, insensitive to time lost to other jobs' threads). PyTorch uses
torch.set_num_threads(number of CPUs this process may use), the size of XLA's CPU intra-op thread
pool (--torch-threads overrides it). On a GPU, --torch-device cuda --torch-compile full --torch-dtype
bfloat16 gives the torch.compile'd, bf16-autocast reference (--torch-compile regional: each block compiled);
MFU is the analytic FLOP rate over --peak-tflops.
With --gemm, each library's rate on one large square matmul (the step's compute dtype, same threads) is
measured in the same process: the table then gives each step's analytic FLOP rate as a share of its library's
GEMM rate, and the bound on JAX/PyTorch: the ratio the JAX step would reach if every one of its FLOPs ran at
that GEMM rate and nothing else took time (PyTorch step s / (JAX analytic FLOPs / JAX GEMM rate)).

  python bench/bench_step.py --config configs/demo.py --steps 5
  taskset -c 0 python bench/bench_step.py --config configs/demo.py --config configs/mmdino_vits14.py
      --batch-size 0 --batch-size 16 --steps 5 --torch --gemm      (one line)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mmdino_jax import host_memory, sharding
from mmdino_jax.config_base import load_config
from mmdino_jax.data.prepare import CROP
from mmdino_jax.models.build import vit_config
from mmdino_jax.ssl import masking
from mmdino_jax.ssl.learner import build_learner, random_batch
from mmdino_jax.training.sharded import shard_learner


def vit_flops(cfg, images: int, sequences: int, size: int, last_block_rows: int | None = None,
              branch_share: float = 1.0) -> float:
    """Matmul FLOPs (2 per multiply-add) of one backbone forward over `images` multi-sequence images.

    `last_block_rows`: the rows (over all images) on which the last block runs its output projection and
    FFN (`DinoViT` `patch_rows`; that block's attention branch sees every image); None: every token, every
    block alike. `branch_share`: the share of images whose residual branches run (DINOv2's batch-subset
    stochastic depth)."""
    d, p = cfg.embed_dim, cfg.patch_size
    n = sequences * (size // p) ** 2
    tokens = 1 + cfg.num_registers + n
    qkv, out = 2 * 3 * d * d, 2 * d * d + 2 * (3 if cfg.ffn == "swiglu" else 2) * d * cfg.hidden_dim
    per_block = tokens * (qkv + out) + 2 * 2 * tokens * tokens * d
    embed = n * 2 * p * p * d
    if last_block_rows is None:
        return images * (cfg.depth * per_block * branch_share + embed)
    dropped = images * tokens - last_block_rows
    return images * ((cfg.depth - 1) * per_block * branch_share + per_block + embed) - dropped * out


def head_flops(model_cfg, embed_dim: int, vectors: int) -> float:
    h, b, k = model_cfg.head_hidden_dim, model_cfg.head_bottleneck_dim, model_cfg.head_n_prototypes
    dims = [embed_dim] + [h] * (model_cfg.head_nlayers - 1) + [b, k]
    return vectors * sum(2 * a * c for a, c in zip(dims[:-1], dims[1:]))


def crop_flops(config) -> float:
    """Matmul FLOPs of making one batch's crops in the step (`data.augment_on = device`,
    `training/device_crops.crops`): per crop and sequence, rows @ slice, @ cols^T, then the blur on both sides."""
    d = config.data
    s = len(d.sequences.split(","))
    per_crop = lambda size: 2 * s * size * (CROP * CROP + size * CROP + 2 * size * size)
    return d.batch_size * (2 * per_crop(d.global_crops_size) + d.local_crops_number * per_crop(d.local_crops_size))


def step_flops(config, reference: bool = False, crops_on_device: bool = False) -> float:
    """Analytic FLOPs of one step on one device: teacher forward + student forward and backward (2x
    forward); the heads run on the CLS tokens and on the iBOT targets gathered up to their bound. In the JAX
    step the backbones' last block runs its projection and FFN only on the tokens the losses read, and the
    student runs its branches on a batch subset at drop_path_rate > 0.1, as upstream DINOv2. The PyTorch
    reference step (`reference=True`) computes every token in every block and every sample (its HF modules
    drop paths by a mask). `crops_on_device`: the step also makes its crops (`crop_flops`)."""
    d, m, o = config.data, config.model, config.ssl
    cfg = vit_config(m)
    b, s = d.batch_size, len(d.sequences.split(","))
    n_g = s * (d.global_crops_size // cfg.patch_size) ** 2
    g_images, l_images = 2 * b, d.local_crops_number * b
    targets = masking.target_bound(g_images, g_images, s, n_g // s, o.modality_masked, o.mask_sample_probability,
                                   tuple(o.mask_ratio_min_max))

    def share(images):  # `_kept_samples` of models/vit.py
        subset = not reference and cfg.drop_path_rate > 0.1
        return max(int(images * (1.0 - cfg.drop_path_rate)), 1) / images if subset else 1.0

    g_rows, l_rows = (None, None) if reference else (g_images + targets, l_images)
    heads_g = head_flops(m, cfg.embed_dim, g_images + targets)
    teacher = vit_flops(cfg, g_images, s, d.global_crops_size, g_rows) + heads_g
    student = (vit_flops(cfg, g_images, s, d.global_crops_size, g_rows, share(g_images))
               + vit_flops(cfg, l_images, s, d.local_crops_size, l_rows, share(l_images))
               + heads_g + head_flops(m, cfg.embed_dim, l_images))
    return teacher + 3 * student + (crop_flops(config) if crops_on_device else 0.0)


def _timed(fn) -> tuple[float, float, int]:
    """(wall s, CPU s, minor page faults) of this process over one call."""
    t0, c0, f0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return time.perf_counter() - t0, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def gemm_gflops(dtype, size: int, repeats: int = 5) -> float:
    """JAX's rate (GFLOP/s) on one `size` x `size` matmul in `dtype`, the best of `repeats` after a warm-up."""
    import jax.numpy as jnp

    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = min(_timed(lambda: jax.block_until_ready(matmul(a)))[0] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def torch_gemm_gflops(device: str, dtype: str, size: int, repeats: int = 5) -> float:
    """PyTorch's rate (GFLOP/s) on the same matmul (its current thread count), as `gemm_gflops`."""
    import torch

    a = torch.ones(size, size, device=device, dtype=getattr(torch, dtype))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        a @ a
        sync()

    run()
    return 2 * size**3 / min(_timed(run)[0] for _ in range(repeats)) / 1e9


def add_gemm_roofline(result: dict, config, torch_opts: dict | None) -> None:
    """Each library's GEMM rate at the step's compute dtype, the steps' share of it and the bound on the ratio."""
    cfg = vit_config(config.model)
    size = 2048 if jax.default_backend() == "cpu" else 8192
    gemm = gemm_gflops(cfg.compute_dtype, size)
    result["gemm_gflops"] = gemm
    result["gemm_share"] = result["achieved_gflops"] / gemm
    if "torch" in result:
        t = result["torch"]
        t["gemm_gflops"] = torch_gemm_gflops(torch_opts["device"], torch_opts["dtype"], size)
        t["gemm_share"] = t["analytic_gflop"] / t["step_s"] / t["gemm_gflops"]
        t["ratio_bound"] = t["step_s"] / (result["analytic_gflop"] / gemm)


@dataclasses.dataclass
class CompiledStep:
    """A config's train step compiled for one device, with the fixed random batch it runs on."""
    config: Any
    host_batch: dict
    batch: Any
    state: Any
    key: jax.Array
    compiled: Any
    compile_s: float


def compile_step(spec: str, batch_size: int | None, crops_on_device: bool = False,
                 compiler_options: dict | None = None) -> CompiledStep:
    """Compile `spec`'s step for one device (XLA `compiler_options` if given) with its fixed random batch."""
    config = load_config(spec)
    if batch_size:
        config.data.batch_size = batch_size
    config.optim.freeze_backbone_steps = 0
    run = shard_learner(build_learner(config), sharding.make_mesh(1, jax.devices()[:1]))
    host_batch = random_batch(config)
    state, key = run.state, run.key(0)
    batch = run.global_batch(random_batch(config, crops_on_device=True) if crops_on_device else host_batch)
    t0 = time.perf_counter()
    compiled = run.step.lower(state, batch, key).compile(compiler_options)
    return CompiledStep(config, host_batch, batch, state, key, compiled, time.perf_counter() - t0)


def bench(spec: str, batch_size: int | None, steps: int, torch_opts: dict | None = None, pause: float = 0.0,
          crops_on_device: bool = False, gemm: bool = False, warmup: int = 2) -> dict:
    step = compile_step(spec, batch_size, crops_on_device)
    config, host_batch, batch, state, key = step.config, step.host_batch, step.batch, step.state, step.key
    compiled, compile_s = step.compiled, step.compile_s
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    holder = {"state": state}

    def jax_step():
        holder["state"], metrics = compiled(holder["state"], batch, key)
        jax.block_until_ready(metrics)

    torch_step = make_torch_step(config, host_batch, **torch_opts) if torch_opts else None
    jax_times, torch_times = [], []
    for _ in range(warmup + steps):
        time.sleep(pause)
        jax_times.append(_timed(jax_step))
        if torch_step is not None:
            time.sleep(pause)
            torch_times.append(_timed(torch_step))
    jax_times, torch_times = np.asarray(jax_times[warmup:]), np.asarray(torch_times[warmup:])
    step_s = float(np.median(jax_times[:, 0]))
    analytic = step_flops(config, crops_on_device=crops_on_device)
    result = {"config": spec, "batch": config.data.batch_size, "compile_s": compile_s, "step_s": step_s,
              "samples_per_s": config.data.batch_size / step_s,
              "page_faults": int(np.median(jax_times[:, 2])), "xla_gflop": cost["flops"] / 1e9,
              "analytic_gflop": analytic / 1e9, "achieved_gflops": analytic / step_s / 1e9}
    if torch_step is not None:
        t = float(np.median(torch_times[:, 0]))
        result["torch"] = {"step_s": t, "samples_per_s": config.data.batch_size / t,
                           "analytic_gflop": step_flops(config, reference=True) / 1e9,
                           "ratio_spread": _spread(torch_times[:, 0] / jax_times[:, 0]),
                           "cpu_ratio": float(np.median(torch_times[:, 1]) / np.median(jax_times[:, 1]))}
    if gemm:
        add_gemm_roofline(result, config, torch_opts)
    return result


def cpu_model() -> str:
    """The host CPU's model name and its widest vector extensions (figures differ between CPU generations)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}; {', '.join(isa) or 'no AVX2'}"


def _spread(ratios) -> str:
    """Range of the per-round ratios, to show how noisy the run was."""
    return f"{ratios.min():.2f}-{ratios.max():.2f}"


def make_torch_step(config, host_batch: dict, threads: int, device: str, dtype: str, compile: str):
    """One PyTorch reference update on the JAX bench's batch (same shapes and values), synchronised."""
    import torch
    from torch_step import TorchStep, checked

    torch.set_num_threads(threads)
    step = TorchStep(config, device=device, dtype=getattr(torch, dtype), compile=compile)
    batch = {k: torch.from_numpy(v).to(device) for k, v in host_batch.items()}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        checked(step(batch))
        sync()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="configs/x.py[:arg]; repeatable")
    parser.add_argument("--batch-size", type=int, action="append", default=[],
                        help="override data.batch_size (0 = the config's); one value for all configs or one "
                             "per --config, in order")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds after the warm-up rounds")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed rounds first: with --torch, the second round's JAX step still grows the "
                             "process's memory (page faults) around the PyTorch step's buffers")
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch reference step")
    parser.add_argument("--torch-threads", type=int, default=0, help="default: CPUs available (as XLA)")
    parser.add_argument("--torch-device", default="cpu")
    parser.add_argument("--torch-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--torch-compile", default="", choices=("", "full", "regional"),
                        help="torch.compile the backbones and heads whole, or each block and head (a fraction of "
                             "the compile time)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="device peak (e.g. 989 for H100/H200 bf16 dense): adds an MFU column")
    parser.add_argument("--pause", type=float, default=1.0,
                        help="seconds idle before each timed step, so that neither library's idle threads (which "
                             "spin a while after a parallel region) still hold a core when the other's step starts")
    parser.add_argument("--crops-on-device", action="store_true",
                        help="the JAX step makes its crops from slices and crop operators (data.augment_on = "
                             "device; their matmuls in the analytic count); the PyTorch step still gets crops")
    parser.add_argument("--gemm", action="store_true",
                        help="also measure each library's large-matmul rate: adds each step's share of it and the "
                             "bound on JAX/PyTorch if every JAX FLOP ran at that rate")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args()
    kept = host_memory.keep_freed_memory()  # for both steps: they share the process
    sizes = args.batch_size or [0]
    if len(sizes) not in (1, len(args.config)):
        parser.error("give --batch-size once or once per --config")
    sizes = sizes * len(args.config) if len(sizes) == 1 else sizes
    torch_opts = None
    print(f"device: {jax.devices()[0].device_kind} x1 ({cpu_model()}), jax {jax.__version__}, "
          f"freed host memory kept: {kept}")
    head = ("| config | batch | compile s | step s | samples/s | page faults/step | XLA GFLOP | analytic GFLOP | "
            "XLA/analytic | GFLOP/s |")
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    if args.peak_tflops:
        head += " MFU |"
        rule += "---|"
    if args.torch:
        import torch
        cpus = len(os.sched_getaffinity(0))
        torch_opts = dict(threads=args.torch_threads or cpus, device=args.torch_device, dtype=args.torch_dtype,
                          compile=args.torch_compile)
        print(f"torch {torch.__version__} on {args.torch_device}, {torch_opts['threads']} threads, "
              f"{args.torch_dtype}, compile={args.torch_compile or 'no'}; {cpus} CPUs available to jax")
        head += (" PyTorch step s | PyTorch samples/s | PyTorch analytic GFLOP | JAX/PyTorch | per-round ratios | "
                 "CPU-time ratio |")
        rule += "---|---|---|---|---|---|"
    if args.gemm:
        head += " JAX GEMM GFLOP/s | JAX step / GEMM |"
        rule += "---|---|"
        if args.torch:
            head += " PyTorch GEMM GFLOP/s | PyTorch step / GEMM | JAX/PyTorch bound |"
            rule += "---|---|---|"
    print(head + "\n" + rule)
    results = []
    for spec, size in zip(args.config, sizes):
        r = bench(spec, size, args.steps, torch_opts, args.pause, args.crops_on_device, args.gemm, args.warmup)
        results.append(r)
        line = (f"| {r['config']} | {r['batch']} | {r['compile_s']:.0f} | {r['step_s']:.3f} | "
                f"{r['samples_per_s']:.1f} | {r['page_faults']} | {r['xla_gflop']:.1f} | {r['analytic_gflop']:.1f} | "
                f"{r['xla_gflop'] / r['analytic_gflop']:.2f} | {r['achieved_gflops']:.1f} |")
        if args.peak_tflops:
            r["mfu"] = r["achieved_gflops"] / (args.peak_tflops * 1e3)
            line += f" {100 * r['mfu']:.1f} % |"
        if "torch" in r:
            t = r["torch"]
            ratio = t["step_s"] / r["step_s"]
            line += (f" {t['step_s']:.3f} | {t['samples_per_s']:.1f} | {t['analytic_gflop']:.1f} | {ratio:.2f} | "
                     f"{t['ratio_spread']} | "
                     f"{t['cpu_ratio']:.2f} |")
        if args.gemm:
            line += f" {r['gemm_gflops']:.1f} | {100 * r['gemm_share']:.0f} % |"
            if "torch" in r:
                t = r["torch"]
                line += f" {t['gemm_gflops']:.1f} | {100 * t['gemm_share']:.0f} % | {t['ratio_bound']:.2f} |"
        print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
