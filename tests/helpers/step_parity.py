"""Run in a subprocess with 8 simulated CPU devices: two train steps on several meshes, compared, for the
MM-DINOv2 step and the supervised-baseline step (`python tests/helpers/step_parity.py ssl|supervised` prints an
OK line; the two run as separate processes so that a parallel test run can take them side by side)."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmdino_jax import sharding  # noqa: E402
from mmdino_jax.config_base import load_config  # noqa: E402
from mmdino_jax.finetune.learner import BATCH_KEYS  # noqa: E402
from mmdino_jax.ssl.learner import build_learner, random_batch  # noqa: E402
from mmdino_jax.supervised.learner import build_classifier  # noqa: E402
from mmdino_jax.training.sharded import shard_learner  # noqa: E402


def run_steps(learner, mesh, batch, steps=2):
    run = shard_learner(learner, mesh)
    state, key = run.state, run.key(0)
    for _ in range(steps):
        state, metrics = run.step(state, run.global_batch(batch), key)
    return jax.device_get(state), jax.device_get(metrics)


def compare(name, build, batch, metric_names, params_of):
    devices = jax.devices()
    ref_state, ref_metrics = run_steps(build(), sharding.make_mesh(1, devices[:1]), batch)
    # 8 devices as data=4 x fsdp=2: the batch split 8 ways, parameters and Adam state split 2 ways.
    state, metrics = run_steps(build(), sharding.make_mesh(2, devices), batch)
    for metric in metric_names:
        np.testing.assert_allclose(metrics[metric], ref_metrics[metric], rtol=2e-4, atol=1e-5,
                                   err_msg=f"{name} {metric}")
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params_of(state), params_of(ref_state))
    worst = max(jax.tree.leaves(diffs))
    assert worst < 1e-4, (name, worst)
    print(f"OK {name}: max parameter difference {worst:.2e}")


def ssl():
    config = load_config("configs/demo.py:smoke")
    config.ssl.koleo_loss_weight = 0.0  # KoLeo is per device by design: it differs with the mesh
    config.optim.freeze_last_layer_steps = 0
    compare("ssl", lambda: build_learner(config, np.array([0, 1, 2, 2, -1])), random_batch(config),
            ("loss", "dino_local", "dino_global", "ibot", "semi"), lambda s: s["student"])


def supervised():
    config = load_config("configs/supervised_baseline.py:smoke")
    labeled = {k: v for k, v in random_batch(load_config("configs/demo.py:smoke")).items() if k in BATCH_KEYS}
    labeled["label"] = np.arange(len(labeled["label"]), dtype=np.int32) % 3
    compare("supervised", lambda: build_classifier(config), labeled, ("loss", "train_accuracy"),
            lambda s: s["params"])


if __name__ == "__main__":
    {"ssl": ssl, "supervised": supervised}[sys.argv[1]]()
