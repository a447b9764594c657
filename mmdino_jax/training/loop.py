"""The one training loop: every trainer (MM-DINOv2 SSL, the supervised baseline, fine-tuning) runs through it.

    learner = build_learner(config)                      # a training.learner.Learner
    run = shard_learner(learner, sharding.make_mesh(config.mesh.fsdp))
    result = train_loop(LoopSettings.from_config(config), workdir, run, batches, evaluate_fn, meta)

The loop brings: the tqdm progress bar (`Learner.progress`), health warnings (`Learner.health`),
`metrics.jsonl` + TensorBoard (`run_log.RunLog`), Orbax checkpoints
of the state with the Grain iterator position (`checkpoint.RunCheckpoints`), exact resume from the newest
intact checkpoint of `workdir`, SIGTERM / Orbax preemption (save at a step boundary and return), the NaN stop,
multi-device and multi-process batches (`ShardedLearner.global_batch`), and best-checkpoint selection by
`evaluate_fn`.

Contract of a step function (`Learner.make_step(mesh)` returns it; it is jitted by `shard_learner`):
- `step(state, batch, key) -> (state, metrics)`, pure and jittable; `state` is a pytree of arrays
  (`Learner.init(params)`), returned with the same structure, shapes and dtypes. It is donated: the step
  must not expect its input state to survive.
- `batch` is `Learner.host_batch(pipeline batch)` assembled into global arrays whose leading axis is the
  sample axis, split over every device of the mesh (so every entry needs the global batch size first).
- `key` is the run's base key, the same every step: the step derives its randomness from
  `jax.random.fold_in(key, state step counter)`, so a resumed run repeats the same masks and dropout.
  The state must therefore carry its own step counter (an int32 scalar, +1 per call).
- `metrics` is a dict of scalar arrays and must hold "loss" (checked for NaN / inf at logging steps).
  The loop adds "lr" (`Learner.lr` at the step's optimizer update) and "samples_per_s".
- `mesh` is the run's ("data", "fsdp") mesh, for steps that need collectives (e.g. `shard_map`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterator

import jax
import jax.experimental.multihost_utils
import numpy as np
from tqdm import tqdm

from mmdino_jax import checkpoint as ckpt_lib
from mmdino_jax.run_log import RunLog
from mmdino_jax.training.sharded import ShardedLearner


class NonFiniteLoss(FloatingPointError):
    pass


@dataclasses.dataclass
class LoopResult:
    """The state the loop ended with, its step, the last logged metrics and whether it stopped early."""
    state: Any
    step: int
    last: dict
    preempted: bool = False


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The run-config fields the loop reads (`from_config`)."""
    run_config: Any                  # the run's config: a checkpoint of other model shapes is refused on resume
    total_steps: int
    seed: int = 0
    batch_size: int = 1              # global samples per step, for samples_per_s
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    eval_every: int = 0              # 0: no periodic evaluation
    desc: str = "train"              # progress-bar label

    @classmethod
    def from_config(cls, config, desc: str = "train") -> "LoopSettings":
        return cls(run_config=config, total_steps=config.total_steps, seed=config.seed,
                   batch_size=config.data.batch_size, log_every=config.log_every,
                   checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
                   eval_every=config.eval_every, desc=desc)


def stop_agreed(stop: ckpt_lib.StopSignal, sync_point: bool) -> bool:
    """Whether to save and stop now. Every process must decide alike (they save together), so with
    several processes the SIGTERM flags are compared, with a collective, at logging steps only."""
    if jax.process_count() == 1:
        return bool(stop)
    if not sync_point:
        return False
    return bool(jax.experimental.multihost_utils.process_allgather(np.array(bool(stop))).any())


def train_loop(settings: LoopSettings, workdir: str, run: ShardedLearner, batches: Iterator[dict],
               evaluate_fn: Callable[[Any], float] | None = None, meta: dict | None = None) -> LoopResult:
    """Run (or resume) training to `settings.total_steps`, or until SIGTERM / preemption.

    `batches` yields pipeline batches (this process's part) and is checkpointable (a Grain iterator, or
    anything with get_state / set_state). `evaluate_fn(state) -> float` (validation MCC) runs every
    `eval_every` steps and drives best-checkpoint selection. `meta` (JSON) is saved with each checkpoint.
    """
    s, learner = settings, run.learner
    checkpoints = ckpt_lib.RunCheckpoints(workdir, s.keep_checkpoints)
    state = run.state
    start, restored = checkpoints.restore_latest(ckpt_lib.abstract(state), batches, s.run_config)
    if start:
        state = restored
        tqdm.write(f"resumed from step {start} ({workdir}/checkpoints)")
    key = run.key(s.seed)
    log = RunLog(workdir, enabled=jax.process_index() == 0)
    health = learner.health() if learner.health else (lambda record: [])
    stop = ckpt_lib.StopSignal()
    last, done, preempted = {}, start, False
    tick, tick_step = time.perf_counter(), start
    bar = tqdm(range(start, s.total_steps), initial=start, total=s.total_steps, desc=s.desc, unit="step",
               disable=jax.process_index() != 0)
    try:
        for step in bar:
            state, metrics = run.step(state, run.global_batch(learner.host_batch(next(batches))), key)
            done = step + 1
            logging_now = done % s.log_every == 0 or done == s.total_steps
            saving = done % s.checkpoint_every == 0 or done == s.total_steps
            evaluating = evaluate_fn is not None and s.eval_every > 0 and done % s.eval_every == 0
            preempted = stop_agreed(stop, logging_now) or checkpoints.reached_preemption(done)
            if not (logging_now or saving or evaluating or preempted):
                continue
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(values["loss"]):
                raise NonFiniteLoss(
                    f"non-finite loss at step {done}: {values}; the newest checkpoint "
                    f"(step {checkpoints.latest_step()}) in {workdir}/checkpoints is from before it. "
                    "Lower optim.base_lr or use model.dtype=float32, then restart.")
            now = time.perf_counter()
            values["lr"] = float(learner.lr[min(step // learner.grad_accum_steps, len(learner.lr) - 1)])
            values["samples_per_s"] = (done - tick_step) * s.batch_size / (now - tick)
            tick, tick_step = now, done
            last = {"step": done, **values}
            if logging_now:
                log.write(last)
                bar.set_postfix(learner.progress(values))
                for warning in health(last):
                    tqdm.write(f"warning: {warning}")
            scores = None
            if evaluating:
                scores = {ckpt_lib.BEST_METRIC: float(evaluate_fn(state))}
                log.write({"step": done, **scores})
            if saving or evaluating or preempted:
                checkpoints.save(done, state, batches, meta or {}, metrics=scores, force=True)
            if preempted:
                logging.warning("stop requested at step %d: checkpoint saved, exiting", done)
                break
    finally:
        checkpoints.wait()
        checkpoints.close()
        log.close()
    return LoopResult(state, done, last, preempted)
