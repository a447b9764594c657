"""The 1-process reference of tests/test_multihost.py: `python tests/helpers/multihost_reference.py WORKDIR CACHE`
trains the smoke config to TOTAL in one process on 8 simulated devices over the union of a 2-process run's
data shards."""

from __future__ import annotations

import json
import sys

import numpy as np

SMOKE = "configs/demo.py:smoke"
# Shared by both runs. mesh.fsdp=2 also splits the position embedding (the smoke model's one array of
# >= 2**16 elements) and its teacher / Adam copies; KoLeo then sees 2 samples per "data" group, not 1.
OVERRIDES = {"checkpoint_every": 2, "log_every": 1, "eval.at_end": False, "mesh.fsdp": 2}
TOTAL = 4


class ProcessUnion:
    """The batches of all `n` processes of an n-process run, concatenated per step in process order.

    Checkpointed by Grain's Orbax handler like one iterator (bytes state = the n iterator states).
    """

    def __init__(self, config, cache, n: int):
        from mmdino_jax.training.data import train_dataset
        self.parts = [iter(train_dataset(config, cache, i, n)) for i in range(n)]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(p) for p in self.parts]
        b = batches[0]["label"].shape[0]
        out = {}
        for name in batches[0]:
            arrays = [x[name] for x in batches]
            if name in ("global", "local"):  # crop-major (crops*b, ...): join the sample axis per crop
                crops = arrays[0].shape[0] // b
                joined = np.concatenate([a.reshape(crops, b, *a.shape[1:]) for a in arrays], axis=1)
                out[name] = joined.reshape(-1, *arrays[0].shape[1:])
            else:
                out[name] = np.concatenate(arrays)
        return out

    def get_state(self) -> bytes:
        return json.dumps([p.get_state() for p in self.parts]).encode()

    def set_state(self, state: bytes) -> None:
        for part, s in zip(self.parts, json.loads(state)):
            part.set_state(s)

    def start_prefetch(self) -> None:
        for part in self.parts:
            getattr(part, "start_prefetch", lambda: None)()


def reference(workdir: str, cache: str) -> None:
    """Train to TOTAL in one process on 8 devices over the union of the 2 processes' data shards."""
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    from mmdino_jax.config_base import load_config
    from mmdino_jax.ssl.learner import learner_for_cache
    from mmdino_jax.training.data import prepared_cache
    from mmdino_jax.training.run import fit

    config = load_config(SMOKE)
    for key, value in {**OVERRIDES, "total_steps": TOTAL, "data.cache": cache}.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    assert jax.device_count() == 8 and jax.process_count() == 1
    fit(config, workdir, learner_for_cache, batches=ProcessUnion(config, prepared_cache(config, workdir), 2))


if __name__ == "__main__":
    reference(*sys.argv[1:3])
