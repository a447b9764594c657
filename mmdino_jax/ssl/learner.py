"""The MM-DINOv2 learner: student and teacher models, optimizer, schedules and the SSL step, from a run config."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmdino_jax import optim
from mmdino_jax.constants import sequence_indices
from mmdino_jax.data.augment import CropConfig, multi_crop_operators
from mmdino_jax.data.pipeline import CachedSplit
from mmdino_jax.data.prepare import CROP
from mmdino_jax.models.build import build_models
from mmdino_jax.ssl import signals
from mmdino_jax.ssl import step as step_lib
from mmdino_jax.training.data import crop_settings
from mmdino_jax.training.learner import Learner


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Dataset-level log inverse-frequency weights log(N / n_c) over the labeled subjects."""
    labeled = labels[labels >= 0]
    counts = np.bincount(labeled, minlength=n_classes).astype(np.float64)
    return np.log(max(len(labeled), 1) / np.maximum(counts, 1.0)).astype(np.float32)


def teacher_backbone(state) -> dict:
    """The parameters evaluated and exported from an SSL train state: the teacher's backbone."""
    return state["teacher"]["backbone"]


def build_learner(config, class_weight_labels: np.ndarray | None = None, abstract: bool = False) -> Learner:
    """The SSL learner of a run config; its state is ssl/step.py's `init_state` of the student parameters.

    `class_weight_labels` (the train split's labels) give the dataset-level class weights of the
    semi-supervised term. `abstract=True` gives ShapeDtypeStruct parameters (nothing allocated: memory and
    compile studies).
    """
    if abstract:
        backbone, head = nnx.eval_shape(lambda: build_models(config.model, config.seed)[:2])
        fresh = []
    else:
        backbone, head, fresh = build_models(config.model, config.seed)
    backbone_def, backbone_params = nnx.split(backbone)
    head_def, head_params = nnx.split(head)
    student = {"backbone": backbone_params.to_pure_dict(), "head": head_params.to_pure_dict()}
    opt_cfg = optim.optimizer_config(config, backbone.cfg.depth)
    schedules = optim.optimizer_schedules(opt_cfg)
    tx = optim.make_optimizer(student, schedules, opt_cfg)
    s = config.ssl
    ssl_schedules = {
        "teacher_temp": jnp.asarray(optim.teacher_temp_schedule(
            s.teacher_temp, s.warmup_teacher_temp, s.warmup_teacher_temp_steps), jnp.float32),
        "teacher_momentum": jnp.asarray(optim.cosine_schedule(
            s.momentum_teacher, s.final_momentum_teacher, optim.optimizer_updates(config)), jnp.float32),
        "koleo_scale": jnp.asarray(optim.linear_warmup(s.koleo_warmup_steps), jnp.float32),
    }
    n_classes = config.model.head_n_prototypes
    weights = None if class_weight_labels is None else jnp.asarray(class_weights(class_weight_labels, n_classes))
    step_cfg = step_lib.step_config(config, sequence_indices(config.data.sequences), backbone.cfg.patch_size)
    return Learner(
        params=student, init=lambda params: step_lib.init_state(params, tx, n_classes),
        make_step=lambda mesh: step_lib.make_train_step(step_cfg, backbone_def, head_def, tx, ssl_schedules,
                                                        mesh, weights),
        lr=schedules["lr"], backbone_def=backbone_def, backbone_of=teacher_backbone,
        grad_accum_steps=config.optim.grad_accum_steps, fresh=tuple(fresh), progress=signals.progress_fields,
        health=lambda: signals.HealthCheck(n_classes, grace=s.warmup_teacher_temp_steps).update)


def learner_for_cache(config, cache) -> Learner:
    """The learner of a run on `cache`: dataset-level class weights from its train split's labels."""
    return build_learner(config, CachedSplit(cache, "train").labels)


def random_batch(config, seed: int = 0, crops_on_device: bool = False) -> dict[str, np.ndarray]:
    """A deterministic random batch in the step's sample-major layout (tests, benchmarks). `crops_on_device`:
    random slices and the operators of crops drawn around a central tumour (`data.augment_on = device`)."""
    rng = np.random.default_rng(seed)
    d = config.data
    b, s = d.batch_size, len(d.sequences.split(","))
    present = rng.random((b, s)) > 0.2
    present[:, 0] = True
    sample = {"present": present, "label": rng.integers(-1, 3, size=b).astype(np.int32)}
    if crops_on_device:
        cfg = CropConfig(**crop_settings(d))
        mask = np.zeros((CROP, CROP), bool)
        mask[CROP // 3: 2 * CROP // 3, CROP // 3: 2 * CROP // 3] = True
        ops = [multi_crop_operators(mask, cfg, rng) for _ in range(b)]
        return {"image": rng.uniform(size=(b, s, CROP, CROP)).astype(np.float16),
                **{k: np.stack([o[k] for o in ops]) for k in ops[0]}, **sample}
    return {
        "global": rng.normal(size=(b, 2, s, d.global_crops_size, d.global_crops_size)).astype(np.float32),
        "local": rng.normal(size=(b, d.local_crops_number, s, d.local_crops_size, d.local_crops_size)
                            ).astype(np.float32),
        **sample,
    }
