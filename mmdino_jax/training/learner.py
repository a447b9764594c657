"""The typed object a trainer hands to the training loop: what to train and how one step updates it."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mmdino_jax.data.pipeline import host_batch

# step(state, batch, key) -> (state, metrics); see training/loop.py for the contract.
StepFn = Callable[[Any, dict, jax.Array], tuple[Any, dict]]


def loss_and_rate(values: dict) -> dict[str, str]:
    """The default progress-bar postfix: loss and samples/s."""
    return {"loss": f"{values['loss']:.4f}", "sps": f"{values['samples_per_s']:.1f}"}


@dataclasses.dataclass(frozen=True)
class Learner:
    """A model, its optimizer and its step, unplaced and uncompiled (see `training.sharded.shard_learner`).

    params: the initial trainable parameters (pure dicts; ShapeDtypeStructs for an abstract learner).
    init: params -> train state, a pytree of arrays.
    make_step: mesh -> the pure, unjitted step function.
    lr: learning rate per optimizer update (logged by the loop).
    backbone_def / backbone_of: the backbone's graphdef and state -> backbone parameters (evaluation, export).
    host_batch: a pipeline batch (this process's numpy part) -> the arrays the step takes.
    grad_accum_steps: steps per optimizer update (the lr is looked up per update).
    fresh: parameter names left at random initialisation by `model.init_from` (recorded in checkpoints).
    progress: a logged record -> the progress bar's postfix fields.
    health: None, or a factory of the run's health check: record -> warnings, called at every log step.
    """
    params: Any
    init: Callable[[Any], Any]
    make_step: Callable[[Mesh], StepFn]
    lr: np.ndarray
    backbone_def: nnx.GraphDef
    backbone_of: Callable[[Any], Any]
    host_batch: Callable[[dict], dict] = host_batch
    grad_accum_steps: int = 1
    fresh: tuple[str, ...] = ()
    progress: Callable[[dict], dict[str, str]] = loss_and_rate
    health: Callable[[], Callable[[dict], list[str]]] | None = None
