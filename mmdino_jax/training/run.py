"""A whole training run on the loop: data, learner on the mesh, periodic validation, the best checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax

from mmdino_jax import checkpoint as ckpt_lib
from mmdino_jax import run_checks, sharding
from mmdino_jax.eval import backbone as eval_backbone
from mmdino_jax.eval.extract import FeatureExtractor
from mmdino_jax.training.data import prepared_cache, train_dataset
from mmdino_jax.training.learner import Learner
from mmdino_jax.training.loop import LoopResult, LoopSettings, train_loop
from mmdino_jax.training.sharded import ShardedLearner, shard_learner
from mmdino_jax.workdir_lock import WorkdirLock


@dataclasses.dataclass
class Fitted:
    """What `fit` leaves: the prepared cache, the learner on its mesh and the loop's result."""
    cache: Path
    run: ShardedLearner
    result: LoopResult

    @property
    def finished(self) -> bool:
        return not self.result.preempted


@contextlib.contextmanager
def checked_run(config, workdir: str):
    """The checks a training CLI makes before any work (config values, the run directory, a resumable newest
    checkpoint of the same model), then the workdir lock held for the run; yields (config, workdir)."""
    run_checks.check_train_config(config, jax.device_count())
    workdir = run_checks.check_workdir(workdir)
    with WorkdirLock(workdir, "training", enabled=jax.process_index() == 0):
        checkpoints = ckpt_lib.RunCheckpoints(workdir)
        try:
            checkpoints.check_resumable(config)  # before the data and the model are built
        finally:
            checkpoints.close()
        yield config, workdir


def validation_fn(config, cache, run: ShardedLearner) -> Callable[[Any], float]:
    """`fn(state) -> val MCC` of the learner's backbone (a linear probe), for best-checkpoint selection."""
    splits = eval_backbone.load_splits(config, cache)
    if "val" not in splits:
        raise ValueError(f"eval_every={config.eval_every} needs a prepared val split in {cache}")
    learner = run.learner
    extractor = FeatureExtractor(learner.backbone_def, learner.backbone_of(run.state),
                                 config.data.sequences.split(","), config.eval.batch_size)

    def fn(state) -> float:
        extractor.params = learner.backbone_of(state)
        return eval_backbone.validation_mcc(config, splits, extractor)

    return fn


def fit(config, workdir: str, build: Callable[[Any, Path], Learner], batches=None, desc: str = "train",
        validation: Callable[[Any, Path, ShardedLearner], Callable[[Any], float]] = validation_fn) -> Fitted:
    """Train (or resume) `build(config, cache)` in `workdir` to `config.total_steps` through the loop.

    `batches` defaults to this process's Grain batches of the run's cache (`training.data.train_dataset`).
    Validates every `config.eval_every` steps when that is > 0 with `validation(config, cache, run)`
    (default: a linear probe on the backbone; fine-tuning scores its own classifier).
    """
    Path(workdir).mkdir(parents=True, exist_ok=True)
    cache = prepared_cache(config, workdir)
    learner = build(config, cache)
    run = shard_learner(learner, sharding.make_mesh(config.mesh.fsdp))
    batches = iter(train_dataset(config, cache)) if batches is None else batches
    evaluate_fn = validation(config, cache, run) if config.eval_every else None
    meta = {"config": json.loads(config.to_json_best_effort()), "fresh_params": list(learner.fresh)}
    result = train_loop(LoopSettings.from_config(config, desc), workdir, run, batches, evaluate_fn, meta)
    return Fitted(cache, run, result)


def selected_state(workdir: str, learner: Learner) -> tuple[Any, int]:
    """(state, step) of the run's best intact checkpoint by validation MCC, else its newest intact one."""
    checkpoints = ckpt_lib.RunCheckpoints(workdir)
    try:
        step = checkpoints.usable_step(prefer_best=True)
        if step is None:
            raise FileNotFoundError(f"no usable checkpoint in {workdir}/checkpoints: train first")
        state, _ = checkpoints.restore_state(step, jax.eval_shape(learner.init, learner.params))
    finally:
        checkpoints.close()
    return state, step


def final_evaluation(config, workdir: str, learner: Learner) -> dict | None:
    """Probe evaluation of the best (else final) backbone; prints the headline numbers and the report path."""
    if jax.process_count() > 1:
        print(f"multi-process run: evaluate with python -m mmdino_jax.evaluate --workdir {workdir} ...")
        return None
    state, step = selected_state(workdir, learner)
    payload = eval_backbone.evaluate_backbone(config, workdir, learner.backbone_def, learner.backbone_of(state), step)
    print(eval_backbone.summary_line(payload, workdir))
    return payload
