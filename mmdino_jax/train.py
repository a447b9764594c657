"""MM-DINOv2 training: `python -m mmdino_jax.train --config configs/x.py[:arg] --workdir DIR [--config.a.b=v]`.

Restarting with the same --workdir resumes from its newest checkpoint. SIGTERM saves and exits.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import jax
import jax.experimental.multihost_utils
import numpy as np
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from mmdino_jax import checkpoint as ckpt_lib
from mmdino_jax import evaluate, run_checks, sharding
from mmdino_jax.cli_errors import parse_absl_flags, run_cli
from mmdino_jax.data import pipeline
from mmdino_jax.data.setup import ensure_cache
from mmdino_jax.eval.extract import FeatureExtractor
from mmdino_jax.learner import build_learner
from mmdino_jax.run_log import RunLog, quiet_library_logs
from mmdino_jax.ssl import signals
from mmdino_jax.ssl import step as step_lib
from mmdino_jax.workdir_lock import WorkdirLock


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so the module imports cleanly)."""
    if "workdir" not in flags.FLAGS:  # shared with the evaluation CLI when both run in one process (tests)
        config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
        flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard, cache.")
    flags.DEFINE_enum("distributed", "none", ["none", "auto", "explicit"],
                      "Multi-process start-up: auto = detect TPU VM / SLURM; explicit = the flags below "
                      "(implied by --coordinator_address).")
    flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 (--distributed explicit).")
    flags.DEFINE_integer("num_processes", 1, "Number of processes (--distributed explicit).")
    flags.DEFINE_integer("process_id", 0, "This process's index (--distributed explicit).")
    flags.DEFINE_integer("local_device_count", 0, "Simulate this many CPU devices per process (testing).")


class NonFiniteLoss(FloatingPointError):
    pass


def host_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Crop-major pipeline arrays (n*B, ...) -> sample-major (B, n, ...), so samples lead."""
    b = batch["label"].shape[0]
    out = dict(batch)
    for name in ("global", "local"):
        x = batch[name]
        out[name] = np.swapaxes(x.reshape(x.shape[0] // b, b, *x.shape[1:]), 0, 1)
    return out


def train_dataset(config, cache, process_index: int | None = None, process_count: int | None = None):
    """The Grain dataset of training batches of one process (default: this one)."""
    d = config.data
    return pipeline.train_dataset(
        cache, sequences=d.sequences.split(","), batch_size=d.batch_size, seed=config.seed,
        labeled_fraction=None if d.labeled_fraction < 0 else d.labeled_fraction,
        label_keep_fraction=d.label_keep_fraction,
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count,
        num_workers=d.workers, min_tumour_voxels=d.min_tumour_voxels,
        global_size=d.global_crops_size, global_scale=tuple(d.global_crops_scale),
        local_crops=d.local_crops_number, local_size=d.local_crops_size,
        local_scale=tuple(d.local_crops_scale))


def prepared_cache(config, workdir: str):
    """The run's prepared data cache; process 0 prepares it while the others wait."""
    if jax.process_index() == 0:
        ensure_cache(config.data, workdir, config.seed)
    jax.experimental.multihost_utils.sync_global_devices("cache ready")
    return ensure_cache(config.data, workdir, config.seed)


def setup(config, workdir: str) -> dict:
    """Mesh, data iterator, learner, jitted step and the initial (sharded) state."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh.fsdp)
    cache = prepared_cache(config, workdir)
    run = build_learner(config, pipeline.CachedSplit(cache, "train").labels)
    state_sh = sharding.state_shardings(jax.eval_shape(run["init"], run["student"]), mesh)
    state = jax.jit(run["init"], out_shardings=state_sh)(run["student"])
    batch_sh = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    step_fn = jax.jit(run["make_step"](mesh), in_shardings=(state_sh, batch_sh, repl),
                      out_shardings=(state_sh, repl), donate_argnums=0)
    return dict(run, mesh=mesh, cache=cache, iterator=iter(train_dataset(config, cache)), state=state,
                step_fn=step_fn, batch_sh=batch_sh, repl=repl)


def stop_agreed(stop: ckpt_lib.StopSignal, sync_point: bool) -> bool:
    """Whether to save and stop now. Every process must decide alike (they save together), so with
    several processes the SIGTERM flags are compared, with a collective, at logging steps only."""
    if jax.process_count() == 1:
        return bool(stop)
    if not sync_point:
        return False
    return bool(jax.experimental.multihost_utils.process_allgather(np.array(bool(stop))).any())


def train(config, workdir: str, run: dict, evaluate_fn=None) -> dict:
    """Run (or resume) training to `config.total_steps`; returns the last logged metrics.

    `run` comes from `setup`. `evaluate_fn(state) -> float` (validation MCC) is called every
    `config.eval_every` steps and drives best-checkpoint selection.
    """
    checkpoints = ckpt_lib.RunCheckpoints(workdir, config.keep_checkpoints)
    state, iterator = run["state"], run["iterator"]
    start, restored = checkpoints.restore_latest(ckpt_lib.abstract(state), iterator, config)
    if start:
        state = restored
        tqdm.write(f"resumed from step {start} ({workdir}/checkpoints)")
    meta = {"config": json.loads(config.to_json_best_effort()), "fresh_params": run["fresh"]}
    # Made in-graph: device_put cannot target devices of other processes.
    key = jax.jit(lambda: jax.random.key(config.seed), out_shardings=run["repl"])()
    log = RunLog(workdir, enabled=jax.process_index() == 0)
    health = signals.HealthCheck(config.model.head_n_prototypes, grace=config.ssl.warmup_teacher_temp_steps)
    stop = ckpt_lib.StopSignal()
    last = {}
    tick, tick_step = time.perf_counter(), start
    bar = tqdm(range(start, config.total_steps), initial=start, total=config.total_steps, desc="train",
               unit="step", disable=jax.process_index() != 0)
    try:
        for step in bar:
            batch = sharding.to_global(host_batch(next(iterator)), run["batch_sh"])
            state, metrics = run["step_fn"](state, batch, key)
            done = step + 1
            logging_now = done % config.log_every == 0 or done == config.total_steps
            saving = done % config.checkpoint_every == 0 or done == config.total_steps
            evaluating = bool(evaluate_fn) and config.eval_every > 0 and done % config.eval_every == 0
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
            values["lr"] = float(run["lr"][min(step // config.optim.grad_accum_steps, len(run["lr"]) - 1)])
            values["samples_per_s"] = (done - tick_step) * config.data.batch_size / (now - tick)
            tick, tick_step = now, done
            last = {"step": done, **values}
            if logging_now:
                log.write(last)
                bar.set_postfix(signals.progress_fields(values))
                for warning in health.update(last):
                    tqdm.write(f"warning: {warning}")
            scores = None
            if evaluating:
                scores = {ckpt_lib.BEST_METRIC: float(evaluate_fn(state))}
                log.write({"step": done, **scores})
            if saving or evaluating or preempted:
                checkpoints.save(done, state, iterator, meta, metrics=scores, force=True)
            if preempted:
                logging.warning("stop requested at step %d: checkpoint saved, exiting", done)
                break
    finally:
        checkpoints.wait()
        checkpoints.close()
        log.close()
    return last


def validation_fn(config, run: dict):
    """`fn(state) -> val MCC` of the teacher backbone, for best-checkpoint selection."""
    splits = evaluate.load_splits(config, run["cache"])
    if "val" not in splits:
        raise ValueError(f"eval_every={config.eval_every} needs a prepared val split in {run['cache']}")
    extractor = FeatureExtractor(run["backbone_def"], run["state"]["teacher"]["backbone"],
                                 config.data.sequences.split(","), config.eval.batch_size)

    def fn(state) -> float:
        extractor.params = state["teacher"]["backbone"]
        return evaluate.validation_mcc(config, splits, extractor)

    return fn


def final_evaluation(config, workdir: str, run: dict) -> None:
    """Probe evaluation of the final teacher; prints the headline numbers and the report path."""
    if jax.process_count() > 1:
        print(f"multi-process run: evaluate with python -m mmdino_jax.evaluate --workdir {workdir} ...")
        return
    checkpoints = ckpt_lib.RunCheckpoints(workdir)
    step = checkpoints.usable_step(prefer_best=True)
    state, _ = checkpoints.restore_state(step, jax.eval_shape(run["init"], run["student"]))
    checkpoints.close()
    payload = evaluate.evaluate_backbone(config, workdir, run["backbone_def"], state["teacher"]["backbone"], step)
    print(evaluate.summary_line(payload, workdir))


def main(argv) -> None:
    del argv
    quiet_library_logs()
    if flags.FLAGS.local_device_count:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={flags.FLAGS.local_device_count}")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    mode = flags.FLAGS.distributed
    if mode == "none" and flags.FLAGS.coordinator_address:
        mode = "explicit"  # launch/local_multiprocess.sh passes only the explicit flags
    sharding.initialize_distributed(mode, flags.FLAGS.coordinator_address,
                                    flags.FLAGS.num_processes, flags.FLAGS.process_id)
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local devices, "
          f"{jax.device_count()} in all", flush=True)
    config = flags.FLAGS.config
    run_checks.check_train_config(config, jax.device_count())
    workdir = run_checks.check_workdir(flags.FLAGS.workdir)
    with WorkdirLock(workdir, "training", enabled=jax.process_index() == 0):
        checkpoints = ckpt_lib.RunCheckpoints(workdir)
        checkpoints.check_resumable(config)  # before the data and the model are built
        checkpoints.close()
        run = setup(config, workdir)
        train(config, workdir, run, validation_fn(config, run) if config.eval_every else None)
        if config.eval.at_end:
            final_evaluation(config, workdir, run)


def cli(argv=None) -> None:
    """The command line (flags defined on first use); errors end in one line (``cli_errors``)."""
    if "distributed" not in flags.FLAGS:
        define_flags()
    run_cli(lambda args: main(parse_absl_flags(args)), argv, prog="python -m mmdino_jax.train")


if __name__ == "__main__":
    cli()
