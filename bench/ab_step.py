"""A/B of the compiled train step under XLA compiler options: the config's step as it is against the same step
compiled with `--option KEY=VALUE` (XLA debug options, e.g. `xla_cpu_prefer_vector_width=512`).

Both steps are compiled in this process from the same initial state and batch, checked to give the same
metrics on their first step (to float32 rounding; an option that changes the numbers is reported, not
hidden), then timed alternated, A then B, `--rounds` times after one warm-up round, each after `--pause` s
idle. The line gives the median step of each, the ratio B / A of the medians (below 1: the option is
faster) and the range of the per-round ratios, which shows how noisy the machine was.

  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 taskset -c 0
      python bench/ab_step.py --config configs/demo.py --option xla_cpu_prefer_vector_width=512      (one line)
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np
from bench_step import _spread, _timed, compile_step, cpu_model

from mmdino_jax import host_memory


def parse_option(text: str) -> tuple[str, bool | int | str]:
    """`KEY=VALUE` -> (key, value as bool, int or string), the types XLA's compiler options take."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option {text!r}: expected KEY=VALUE, e.g. xla_cpu_enable_fast_math=true")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, int(value) if value.lstrip("-").isdigit() else value


def metrics_difference(a: dict, b: dict) -> float:
    """Largest relative difference between two steps' scalar metrics."""
    return max(abs(float(a[k]) - float(b[k])) / max(abs(float(a[k])), 1e-12) for k in a)


def ab(spec: str, batch_size: int | None, options: dict, rounds: int, pause: float) -> dict:
    variant = compile_step(spec, batch_size, compiler_options=options)  # first: an unknown option fails at once
    steps = [compile_step(spec, batch_size), variant]
    states = [s.state for s in steps]
    first = []
    for i, s in enumerate(steps):
        states[i], metrics = s.compiled(states[i], s.batch, s.key)
        first.append(jax.device_get(metrics))

    def run(i):
        states[i], metrics = steps[i].compiled(states[i], steps[i].batch, steps[i].key)
        jax.block_until_ready(metrics)

    times = np.zeros((rounds + 1, 2))
    for r in range(rounds + 1):  # round 0 is the warm-up
        for i in (0, 1):
            time.sleep(pause)
            times[r, i] = _timed(functools.partial(run, i))[0]
    a, b = times[1:, 0], times[1:, 1]
    return {"config": spec, "batch": steps[0].config.data.batch_size, "a_s": float(np.median(a)),
            "b_s": float(np.median(b)), "ratio": float(np.median(b) / np.median(a)), "spread": _spread(b / a),
            "metrics_rel_diff": metrics_difference(*first)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="configs/x.py[:arg]; repeatable")
    parser.add_argument("--batch-size", type=int, default=0, help="override data.batch_size (0: the config's)")
    parser.add_argument("--option", type=parse_option, action="append", required=True,
                        help="KEY=VALUE, an XLA compiler option of step B; repeatable")
    parser.add_argument("--rounds", type=int, default=11, help="timed A, B rounds after one warm-up round")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds idle before each timed step")
    args = parser.parse_args()
    host_memory.keep_freed_memory()
    options = dict(args.option)
    print(f"device: {jax.devices()[0].device_kind} x1 ({cpu_model()}), jax {jax.__version__}; B: {options}")
    print("| config | batch | A step s | B step s | B / A | per-round B / A | metrics rel. diff |\n"
          "|---|---|---|---|---|---|---|")
    for spec in args.config:
        r = ab(spec, args.batch_size or None, options, args.rounds, args.pause)
        print(f"| {r['config']} | {r['batch']} | {r['a_s']:.3f} | {r['b_s']:.3f} | {r['ratio']:.3f} | {r['spread']} | "
              f"{r['metrics_rel_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
