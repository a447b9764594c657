"""Where the train step's time goes on XLA:CPU: a `jax.profiler` trace of the compiled step, summed by kind of op.

Compiles the step as bench_step.py does, runs two warm-up steps, traces `--steps` more and sums the time of the
XLA ops the CPU runtime reports (per thread, nested events counted once, in their outermost op), by kind:

- 2-D matmuls: dots, and fusions around a dot, without batch dimensions: the linear layers on their rows view,
  the patch embedding and the DINO head, forward and backward;
- batched matmuls: dots with batch dimensions (the attention's per-head products) and their fusions;
- reductions, elementwise fusions, copies and transpositions, loops (`while`, with their bodies), the rest.

The table gives milliseconds per step and shares, then the `--top` slowest ops with their output shapes. The
figure to compare with a step's time is the sum over ops; at more than one thread ops on different threads
overlap, so the sum can exceed the step. XLA:CPU only: other backends report their kernels elsewhere.

  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 taskset -c 0
      python bench/profile_step.py --config configs/demo.py      (one line)
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax
from bench_step import compile_step

from mmdino_jax import host_memory

KINDS = ("2-D matmuls", "batched matmuls", "reductions", "elementwise", "copies and transpositions", "loops",
         "other")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\(")


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Every instruction of a compiled module's text -> (kind, output shape)."""
    bodies: dict[str, list[tuple[str, str]]] = {}
    lines: dict[str, tuple[str, str, str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if not line.startswith(" ") and (m := _COMPUTATION.match(line)):
            current = m.group(1)
            bodies[current] = []
        elif m := _INSTRUCTION.match(line):
            name, shape, opcode = m.groups()
            lines[name] = (shape, opcode, line)
            if current is not None:
                bodies[current].append((opcode, line))

    def kind(opcode: str, line: str) -> str:
        inner = [(opcode, line)]
        if opcode == "fusion" and (called := re.search(r"calls=%?([\w.\-]+)", line)):
            inner = bodies.get(called.group(1), [])
        opcodes = {op for op, _ in inner}
        dots = [ln for op, ln in inner if op in ("dot", "convolution")]
        if dots:
            return "batched matmuls" if any("lhs_batch_dims" in ln for ln in dots) else "2-D matmuls"
        if opcode == "while":
            return "loops"
        if "reduce" in opcodes:
            return "reductions"
        if opcodes & {"copy", "transpose"}:
            return "copies and transpositions"
        return "elementwise" if opcode == "fusion" else "other"

    return {name: (kind(opcode, line), shape) for name, (shape, opcode, line) in lines.items()}


def op_times(events: list[dict]) -> collections.Counter:
    """Microseconds per XLA op from trace events, each thread's nested events counted in their outermost op."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {}):
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    times = collections.Counter()
    for thread_events in by_thread.values():
        end = float("-inf")
        for e in sorted(thread_events, key=lambda e: (e["ts"], -e["dur"])):
            if e["ts"] >= end:
                times[e["args"]["hlo_op"]] += e["dur"]
                end = e["ts"] + e["dur"]
    return times


def summarize(times: collections.Counter, ops: dict[str, tuple[str, str]], steps: int) -> dict:
    """Per-step milliseconds by kind, their total and the ops by time."""
    by_kind = dict.fromkeys(KINDS, 0.0)
    for name, us in times.items():
        by_kind[ops.get(name, ("other", ""))[0]] += us / 1e3 / steps
    top = [(name, us / 1e3 / steps, *ops.get(name, ("other", "?"))) for name, us in times.most_common()]
    return {"by_kind": by_kind, "total_ms": sum(by_kind.values()), "ops": top}


def profile(spec: str, batch_size: int | None, steps: int) -> dict:
    step = compile_step(spec, batch_size)
    state, compiled = step.state, step.compiled
    for _ in range(2):
        state, metrics = compiled(state, step.batch, step.key)
        jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = compiled(state, step.batch, step.key)
                jax.block_until_ready(metrics)
        (trace,) = Path(trace_dir).glob("**/*.trace.json.gz")
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    times = op_times(events)
    if not times:
        raise SystemExit(f"no XLA op events in the trace on backend {jax.default_backend()!r}: this profile is "
                         "for XLA:CPU; run it with JAX_PLATFORMS=cpu")
    return summarize(times, hlo_ops(compiled.as_text()), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
    parser.add_argument("--batch-size", type=int, default=0, help="override data.batch_size (0: the config's)")
    parser.add_argument("--steps", type=int, default=2, help="traced steps after two warm-up steps")
    parser.add_argument("--top", type=int, default=15, help="slowest ops to list")
    parser.add_argument("--json", default="", help="also write the summary to this JSON file")
    args = parser.parse_args()
    host_memory.keep_freed_memory()
    result = profile(args.config, args.batch_size or None, args.steps)
    total = result["total_ms"]
    print(f"{args.config}: {total:.1f} ms of XLA ops per step, {jax.device_count()} device(s)")
    print("| kind | ms per step | share |\n|---|---|---|")
    for kind, ms in result["by_kind"].items():
        print(f"| {kind} | {ms:.1f} | {100 * ms / total:.1f} % |")
    print("\n| op | ms per step | kind | output |\n|---|---|---|---|")
    for name, ms, kind, shape in result["ops"][: args.top]:
        print(f"| {name} | {ms:.2f} | {kind} | {shape[:60]} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
