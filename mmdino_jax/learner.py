"""A run's learner: models, optimizer, schedules and train step, built from its config."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmdino_jax import optim
from mmdino_jax.constants import sequence_indices
from mmdino_jax.models.build import build_models
from mmdino_jax.ssl import step as step_lib


def optimizer_updates(config) -> int:
    """Optimizer updates in a run: `total_steps` counts micro-batches when gradients are accumulated;
    the schedule lengths in `config.optim` (warmup, freezes) count updates."""
    return config.total_steps // config.optim.grad_accum_steps


def optimizer_config(config, depth: int) -> dict:
    """The optim.make_optimizer fields of a run config (lr scaled by sqrt(effective batch / 1024))."""
    o = config.optim
    batch = config.data.batch_size * o.grad_accum_steps
    return {**o.to_dict(), "base_lr": optim.lr_scale(o.base_lr, batch),
            "total_steps": optimizer_updates(config), "depth": depth}


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Dataset-level log inverse-frequency weights log(N / n_c) over the labeled subjects."""
    labeled = labels[labels >= 0]
    counts = np.bincount(labeled, minlength=n_classes).astype(np.float64)
    return np.log(max(len(labeled), 1) / np.maximum(counts, 1.0)).astype(np.float32)


def build_learner(config, class_weight_labels: np.ndarray | None = None, abstract: bool = False) -> dict:
    """Models, optimizer, schedules and the (unjitted) train step of a run config.

    Keys: backbone_def, head_def, student (pure-dict parameters), tx, lr (per-step array), init
    (student -> train state), make_step (mesh -> step), sequences, fresh (parameters left at random init).
    `abstract=True` gives ShapeDtypeStruct parameters (nothing allocated: memory and compile studies).
    """
    if abstract:
        backbone, head = nnx.eval_shape(lambda: build_models(config.model, config.seed)[:2])
        fresh = []
    else:
        backbone, head, fresh = build_models(config.model, config.seed)
    backbone_def, backbone_params = nnx.split(backbone)
    head_def, head_params = nnx.split(head)
    student = {"backbone": backbone_params.to_pure_dict(), "head": head_params.to_pure_dict()}
    opt_cfg = optimizer_config(config, backbone.cfg.depth)
    schedules = optim.optimizer_schedules(opt_cfg)
    tx = optim.make_optimizer(student, schedules, opt_cfg)
    s = config.ssl
    ssl_schedules = {
        "teacher_temp": jnp.asarray(optim.teacher_temp_schedule(
            s.teacher_temp, s.warmup_teacher_temp, s.warmup_teacher_temp_steps), jnp.float32),
        "teacher_momentum": jnp.asarray(optim.cosine_schedule(
            s.momentum_teacher, s.final_momentum_teacher, optimizer_updates(config)), jnp.float32),
        "koleo_scale": jnp.asarray(optim.linear_warmup(s.koleo_warmup_steps), jnp.float32),
    }
    n_classes = config.model.head_n_prototypes
    weights = None if class_weight_labels is None else jnp.asarray(class_weights(class_weight_labels, n_classes))
    sequences = sequence_indices(config.data.sequences)
    step_cfg = step_lib.step_config(config, sequences, backbone.cfg.patch_size)
    return dict(
        backbone_def=backbone_def, head_def=head_def, student=student, tx=tx, lr=schedules["lr"],
        init=lambda params: step_lib.init_state(params, tx, n_classes), sequences=sequences, fresh=fresh,
        make_step=lambda mesh: step_lib.make_train_step(
            step_cfg, backbone_def, head_def, tx, ssl_schedules, mesh, weights))


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """A deterministic random batch in the step's sample-major layout (tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    d = config.data
    b, s = d.batch_size, len(d.sequences.split(","))
    present = rng.random((b, s)) > 0.2
    present[:, 0] = True
    return {
        "global": rng.normal(size=(b, 2, s, d.global_crops_size, d.global_crops_size)).astype(np.float32),
        "local": rng.normal(size=(b, d.local_crops_number, s, d.local_crops_size, d.local_crops_size)
                            ).astype(np.float32),
        "present": present,
        "label": rng.integers(-1, 3, size=b).astype(np.int32),
    }
