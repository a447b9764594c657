"""The one helper that places a learner's state on a mesh and compiles its step (train, tests, bench)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mmdino_jax import sharding
from mmdino_jax.training.device_crops import expand_crops
from mmdino_jax.training.learner import Learner


@dataclasses.dataclass
class ShardedLearner:
    """A learner on a mesh: its state (arrays, or sharded ShapeDtypeStructs when abstract) and jitted step."""
    learner: Learner
    mesh: Mesh
    state: Any
    step: Callable
    state_sharding: Any
    batch_sharding: NamedSharding
    replicated: NamedSharding

    def global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's part of a step batch (`learner.host_batch` output) -> global arrays."""
        return sharding.to_global(batch, self.batch_sharding)

    def key(self, seed: int) -> jax.Array:
        """The run's base key, replicated (made in-graph: device_put cannot target other processes' devices)."""
        return jax.jit(lambda: jax.random.key(seed), out_shardings=self.replicated)()


def shard_learner(learner: Learner, mesh: Mesh, *, abstract: bool = False, donate: bool = True) -> ShardedLearner:
    """Shardings of the state (FSDP rule of `sharding.state_shardings`) and of the batch, the state made on
    the mesh (or only described, `abstract=True`), and the step jitted with those shardings.

    `donate=True` lets the step update the state in place (the caller must not reuse the state it passed).
    A batch of slices and crop operators (`data.augment_on = device`) has its crops made first, in the step.
    """
    abstract_state = jax.eval_shape(learner.init, learner.params)
    state_sh = sharding.state_shardings(abstract_state, mesh)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    if abstract:
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_sh)
    else:
        state = jax.jit(learner.init, out_shardings=state_sh)(learner.params)
    inner = learner.make_step(mesh)
    step = jax.jit(lambda state, batch, key: inner(state, expand_crops(batch), key),
                   in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
                   donate_argnums=0 if donate else ())
    return ShardedLearner(learner, mesh, state, step, state_sh, batch_sh, repl)
