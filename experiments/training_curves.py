"""Training runs' loss curves side by side (docs/mixed_precision.md: the demo in float32 and in bfloat16).

    python experiments/training_curves.py runs/demo runs/demo_bf16 --labels float32,bfloat16 --out docs/mixed_precision

For each run directory (a training workdir with its `metrics.jsonl`) prints a Markdown table row: each loss term
averaged over the last `--last` logged steps, its largest absolute gap to the first run at any step both logged,
and the median samples/s. Writes OUT/curves.png, the runs' curves overlaid. The runs' evaluations side by side:
`python -m mmdino_jax.evaluate --compare DIR ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mmdino_jax.eval.report import plot_training_curves, read_training_log
from mmdino_jax.ssl.step import LOSS_TERMS

TERMS = ("loss", *LOSS_TERMS)


def by_step(log: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in log if r.get(key) is not None}


def largest_gap(log: list[dict], first: list[dict], key: str) -> float:
    """Largest |run - first run| over the steps both logged."""
    a, b = by_step(first, key), by_step(log, key)
    return max(abs(b[s] - a[s]) for s in set(a) & set(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories; the first is the reference")
    parser.add_argument("--labels", default="", help="comma-separated, one per run (default: directory names)")
    parser.add_argument("--last", type=int, default=5, help="logged steps averaged at the end of each run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(labels)} labels for {len(args.runs)} runs")
    files = {label: run / "metrics.jsonl" for label, run in zip(labels, args.runs)}
    logs = {label: read_training_log(path) for label, path in files.items()}
    first = logs[labels[0]]
    args.out.mkdir(parents=True, exist_ok=True)
    plot_training_curves(args.out / "curves.png", files)
    print("| run | " + " | ".join(f"{t} (last {args.last}; largest gap)" for t in TERMS) + " | samples/s |")
    print("|---" * (len(TERMS) + 2) + "|")
    for label, log in logs.items():
        cells = []
        for term in TERMS:
            mean = np.mean(list(by_step(log, term).values())[-args.last:])
            cells.append(f"{mean:.4f}" + ("" if log is first else f"; {largest_gap(log, first, term):.4f}"))
        speed = np.median(list(by_step(log, "samples_per_s").values()))
        print(f"| {label} | " + " | ".join(cells) + f" | {speed:.1f} |")


if __name__ == "__main__":
    main()
