"""Per-device memory of the train state (student + teacher parameters, optimizer state) under FSDP.

Two measurements, neither of which materialises a weight:
  * compiled: the real train step (`ssl.learner.build_learner` placed by `training.sharded.shard_learner`,
    shardings from `sharding.state_shardings`) lowered from abstract inputs on N simulated CPU devices for
    each `--compile-fsdp` value; `memory_analysis()` of the executable gives per-device argument /
    output / temporary bytes. The state share of the arguments is the argument size minus the
    per-device batch and key.
  * shapes: per-device state bytes from the shard shapes `sharding.fsdp_spec` gives, for device
    counts too large to simulate (pure FSDP: mesh.fsdp = number of devices).

    python bench/bench_fsdp_memory.py [--archs vitb14,vitl14,vitg14] [--devices 8] [--compile-fsdp 1,8]
        [--shape-devices 1,8,64,256] [--depth D] [--batch-per-device 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from mmdino_jax import sharding
from mmdino_jax.config_base import base_config
from mmdino_jax.ssl.learner import build_learner
from mmdino_jax.training.sharded import shard_learner

MiB = 2**20


def bench_config(arch: str, batch: int, depth: int = 0):
    """MM-DINOv2's base config for `arch` (optionally fewer blocks) with global batch `batch`."""
    c = base_config()
    c.model.arch, c.model.depth, c.data.batch_size = arch, depth, batch
    return c


def abstract_batch(config) -> dict[str, jax.ShapeDtypeStruct]:
    """The step's sample-major batch (see ssl/step.py) as ShapeDtypeStructs."""
    d = config.data
    b, s = d.batch_size, len(d.sequences.split(","))
    return {"global": jax.ShapeDtypeStruct((b, 2, s, d.global_crops_size, d.global_crops_size), np.float32),
            "local": jax.ShapeDtypeStruct((b, d.local_crops_number, s, d.local_crops_size, d.local_crops_size),
                                          np.float32),
            "present": jax.ShapeDtypeStruct((b, s), np.bool_),
            "label": jax.ShapeDtypeStruct((b,), np.int32)}


def _nbytes(x) -> int:
    return math.prod(x.shape) * x.dtype.itemsize


def state_bytes_per_device(abstract_state, fsdp: int) -> dict[str, int]:
    """Per-device bytes of each state group (student, teacher, opt, other) under `fsdp_spec`."""
    out = {}
    for group, subtree in abstract_state.items():
        total = 0
        for leaf in jax.tree.leaves(subtree):
            split = "fsdp" in tuple(sharding.fsdp_spec(tuple(leaf.shape), fsdp))
            total += _nbytes(leaf) // (fsdp if split else 1)
        name = group if group in ("student", "teacher", "opt") else "other"
        out[name] = out.get(name, 0) + total
    return out


def compiled_memory(learner, config, mesh) -> dict[str, float]:
    """Compile the train step over `mesh` from abstract inputs; per-device bytes from memory_analysis."""
    run = shard_learner(learner, mesh, abstract=True)
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    batch = {k: with_sharding(v, run.batch_sharding) for k, v in abstract_batch(config).items()}
    key = with_sharding(jax.eval_shape(lambda: jax.random.key(0)), run.replicated)
    start = time.perf_counter()
    compiled = run.step.lower(run.state, batch, key).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    n = mesh.devices.size
    batch_bytes = sum(_nbytes(v) for v in batch.values()) // n + _nbytes(key)
    return {"argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
            "temp": stats.temp_size_in_bytes, "alias": stats.alias_size_in_bytes,
            "state_in_arguments": stats.argument_size_in_bytes - batch_bytes, "compile_s": seconds}


def measure(arch: str, devices: int, compile_fsdp, shape_devices, depth: int = 0,
            batch_per_device: int = 1) -> dict:
    config = bench_config(arch, devices * batch_per_device, depth)
    learner = build_learner(config, abstract=True)
    abstract_state = jax.eval_shape(learner.init, learner.params)
    params = sum(_nbytes(x) for x in jax.tree.leaves(learner.params)) // 4
    result = {"arch": arch, "depth": depth or None, "params": params, "shapes": {}, "compiled": {}}
    for n in shape_devices:
        result["shapes"][n] = state_bytes_per_device(abstract_state, n)
    for fsdp in compile_fsdp:
        mesh = sharding.make_mesh(fsdp, jax.devices()[:devices])
        result["compiled"][fsdp] = {**compiled_memory(learner, config, mesh),
                                    "state_from_shapes": sum(state_bytes_per_device(abstract_state, fsdp).values())}
    return result


def _name(result: dict) -> str:
    return result["arch"] + (f" (depth {result['depth']})" if result["depth"] else "")


def markdown(results: list[dict], devices: int) -> str:
    lines = ["Per-device train-state bytes (student + teacher + AdamW moments + centres), from the shard shapes:",
             "", "| model | params | devices (= fsdp) | student | teacher | optimizer | total | reduction |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = _name(r)
        base = sum(r["shapes"][min(r["shapes"])].values())
        for n, groups in r["shapes"].items():
            total = sum(groups.values())
            lines.append(f"| {name} | {r['params'] / 1e6:.0f} M | {n} | {groups['student'] / MiB:,.1f} MiB | "
                         f"{groups['teacher'] / MiB:,.1f} MiB | {groups['opt'] / MiB:,.1f} MiB | "
                         f"{total / MiB:,.1f} MiB | {base / total:.1f}x |")
    if not any(r["compiled"] for r in results):
        return "\n".join(lines)
    lines += ["", f"Compiled train step on {devices} simulated CPU devices (per device, memory_analysis()):", "",
              "| model | fsdp | arguments | of which state | state from shapes | outputs | temporaries | compile |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = _name(r)
        for fsdp, m in r["compiled"].items():
            lines.append(f"| {name} | {fsdp} | {m['argument'] / MiB:,.1f} MiB "
                         f"| {m['state_in_arguments'] / MiB:,.1f} MiB"
                         f" | {m['state_from_shapes'] / MiB:,.1f} MiB | {m['output'] / MiB:,.1f} MiB | "
                         f"{m['temp'] / MiB:,.1f} MiB | {m['compile_s']:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]
    p.add_argument("--archs", default="vitb14,vitl14,vitg14")
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices to compile for")
    p.add_argument("--compile-fsdp", type=ints, default=[1, 8], help="mesh.fsdp values to compile ('' = none)")
    p.add_argument("--shape-devices", type=ints, default=[1, 8, 64, 256])
    p.add_argument("--depth", type=int, default=0, help="blocks (0 = the preset's; fewer compiles faster)")
    p.add_argument("--batch-per-device", type=int, default=1)
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", args.devices)
    results = [measure(arch, args.devices, args.compile_fsdp, args.shape_devices, args.depth, args.batch_per_device)
               for arch in args.archs.split(",")]
    print(markdown(results, args.devices))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
