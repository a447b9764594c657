"""Input pipeline throughput: the cached Grain pipeline against a naive per-sample NIfTI loader.

    python bench/bench_pipeline.py [--subjects 12] [--batch-size 32] [--batches 8] [--naive-samples 24]
    python bench/bench_pipeline.py --workers 8 --target 1500     (also: 8 Grain worker processes vs 1500 samples/s)
    python bench/bench_pipeline.py --target-config configs/mmdino_vitb14.py --mfu 0.5 --peak-tflops 989
        (without --target, the target is the rate that config's train step consumes at that MFU, from the
        analytic FLOPs of bench_step.py; defaults: configs/mmdino_vits14.py, 50 %, 989 = H100/H200 bf16 dense)

Both produce the same training sample (random axis and tumour slice, 96x96 crop, percentile scaling, 2 global +
8 local crops of all 4 sequences). The pipeline is also timed with `crops_on_device` (`data.augment_on =
device`): it then sends the slice and each crop's operators, and the step makes the crops. The naive loader
reads and reorients the subject's 5 NIfTI files for every sample; the pipeline reads one cached slice. Both
run in this one process, so samples/s is the rate of one worker.
Writes the figures to bench/pipeline.md.
"""

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mmdino_jax.constants import SEQUENCES
from mmdino_jax.data.augment import CropConfig, choose_slice, multi_crop
from mmdino_jax.data.cohort import discover
from mmdino_jax.data.phantom import generate_cohort
from mmdino_jax.data.pipeline import train_dataset
from mmdino_jax.data.prepare import crop_slice, prepare, read_subject


def step_rate(spec: str, mfu: float, peak_tflops: float) -> float:
    """Samples/s that `spec`'s train step consumes at `mfu` of a `peak_tflops` device (analytic FLOPs of the
    JAX step, `bench_step.step_flops`)."""
    from bench_step import step_flops

    from mmdino_jax.config_base import load_config

    config = load_config(spec)
    return mfu * peak_tflops * 1e12 * config.data.batch_size / step_flops(config)


def naive_sample(subject, rng: np.random.Generator, cfg: CropConfig, min_voxels: int):
    """One training sample straight from NIfTI."""
    volumes, labels, _, voxel_mm, _ = read_subject(subject)
    mask = labels > 0
    axis = int(rng.integers(3))
    planes = np.moveaxis(mask, axis, 0)
    counts = planes.sum(axis=(1, 2))
    index = choose_slice(np.zeros(len(counts)), counts, rng, min_voxels)
    in_plane = tuple(v for a, v in enumerate(voxel_mm) if a != axis)
    image, seg = crop_slice(np.moveaxis(volumes, axis + 1, 1)[:, index], planes[index], in_plane)
    return multi_crop(image, seg > 0, np.ones(len(SEQUENCES), bool), cfg, rng)


def rate(step, samples_per_step: int, steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return samples_per_step * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--naive-samples", type=int, default=24)
    parser.add_argument("--min-tumour-voxels", type=int, default=100)
    parser.add_argument("--workers", type=int, default=0, help="also time the pipeline with this many workers")
    parser.add_argument("--target", type=float, default=None, help="samples/s the workers must reach (a measured "
                        "step rate); default: from --target-config")
    parser.add_argument("--target-config", default="configs/mmdino_vits14.py", help="without --target: the "
                        "rate this config's step consumes at --mfu of --peak-tflops")
    parser.add_argument("--mfu", type=float, default=0.5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="989: H100/H200 SXM bf16 dense")
    parser.add_argument("--out", default=str(Path(__file__).with_name("pipeline.md")))
    args = parser.parse_args()
    target_note = ""
    if args.target is None:
        args.target = step_rate(args.target_config, args.mfu, args.peak_tflops)
        target_note = (f" (the step of `{args.target_config}` at {args.mfu:.0%} MFU of {args.peak_tflops:.0f} "
                       "TFLOP/s, analytic FLOPs)")
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        cohort, cache = Path(tmp) / "cohort", Path(tmp) / "cache"
        generate_cohort(cohort, args.subjects, seed=0)
        start = time.perf_counter()
        prepare(cohort, "mmdino", cache, workers=cores)
        prepare_s = (time.perf_counter() - start) / args.subjects
        cache_mb = sum(f.stat().st_size for f in (cache / "train").glob("*.npy")) / 2**20 / args.subjects
        common = dict(sequences=SEQUENCES, batch_size=args.batch_size, seed=0,
                      min_tumour_voxels=args.min_tumour_voxels)
        fast, parallel = {}, {}
        for where in ("host", "device"):
            it = iter(train_dataset(cache, prefetch=0, crops_on_device=where == "device", **common))
            fast[where] = rate(lambda it=it: next(it), args.batch_size, args.batches)
        for where in ("host", "device") if args.workers else ():  # one pool at a time, closed before the next
            pool = iter(train_dataset(cache, num_workers=args.workers, crops_on_device=where == "device", **common))
            for _ in range(2 * args.workers):  # start the workers and fill their buffers
                next(pool)
            parallel[where] = rate(lambda pool=pool: next(pool), args.batch_size, args.batches * args.workers)
            pool.close()
        subjects, _ = discover(cohort, "mmdino")
        rng, cfg = np.random.default_rng(0), CropConfig()
        naive = rate(lambda: naive_sample(subjects[rng.integers(len(subjects))], rng, cfg, args.min_tumour_voxels),
                     1, args.naive_samples)
    lines = [
        "# Input pipeline throughput (`bench/bench_pipeline.py`)",
        "",
        f"Command: `python bench/bench_pipeline.py --subjects {args.subjects} --batch-size {args.batch_size} "
        f"--batches {args.batches} --naive-samples {args.naive_samples}"
        + (f" --workers {args.workers}" if args.workers else "")
        + (f" --target-config {args.target_config} --mfu {args.mfu} --peak-tflops {args.peak_tflops:.0f}`"
           if target_note else f" --target {args.target:.0f}`"),
        f"Machine: {cores} CPU cores; the per-worker rates come from this one process.",
        f"Cohort: {args.subjects} `mmdino_jax.data.phantom` subjects (2 mm, ~99x117x95 voxels, 4 sequences + seg).",
        "",
        "| loader | samples/s per worker |",
        "|---|---|",
        f"| naive: NIfTI load + reorient + scale + crop + multi-crop per sample | {naive:.1f} |",
        f"| cached Grain pipeline (`train_dataset`, 2x98 + 8x56 crops, 4 sequences) | {fast['host']:.1f} |",
        f"| the same with the crops made in the step (`crops_on_device`: slices + crop operators) | "
        f"{fast['device']:.1f} |",
        "",
        f"Speed-up over the naive loader: {fast['host'] / naive:.1f}x (crops on the host).",
        f"Workers to feed {args.target:.0f} samples/s{target_note} (`num_workers`, one core each): "
        f"{math.ceil(args.target / fast['host'])} with the crops on the host, "
        f"{math.ceil(args.target / fast['device'])} with the crops on the device "
        f"(naive loader: {math.ceil(args.target / naive)}).",
        f"Prepare: {prepare_s:.2f} s per subject on {cores} workers; cache {cache_mb:.1f} MB per subject "
        "(all tumour-bearing slices of 3 axes, float16).",
    ]
    for where, samples_per_s in parallel.items():
        verdict = "keeps up" if samples_per_s >= args.target else "does NOT keep up"
        lines.append(f"{args.workers} Grain worker processes (`num_workers`), crops on the {where}: "
                     f"{samples_per_s:.0f} samples/s against the target {args.target:.0f} samples/s: {verdict}.")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
