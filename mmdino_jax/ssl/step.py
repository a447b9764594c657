"""The MM-DINOv2 student-teacher update: one pure function, jitted over a mesh by training/sharded.py.

Batch on device (sample axis first, split over the mesh):
  global (B, n_g, S, H, W), local (B, n_l, S, h, w), present (B, S) bool, label (B,) int32.
Crops are processed sample-major (row b * n_crops + c) so the sample axis stays the split axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from mmdino_jax.models.vit import take_rows
from mmdino_jax.ssl import losses, masking, signals
from mmdino_jax.ssl import teacher as teacher_lib

LOSS_TERMS = ("dino_local", "dino_global", "ibot", "koleo", "semi")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static the step needs (from the run config)."""
    sequences: tuple[int, ...]
    patch_size: int
    student_temp: float
    centering: str                   # centering | sinkhorn_knopp
    center_momentum: float
    weights: dict[str, float]        # loss weights by LOSS_TERMS name
    semi_temperature: float
    semi_label_smoothing: float
    semi_class_weights: str          # batch | dataset | none
    mask_sample_probability: float
    mask_ratio_min_max: tuple[float, float]
    modality_masked: int
    grad_accum_steps: int = 1        # micro-batches per optimizer update (optax.MultiSteps in optim.py)


def init_state(student: dict, tx: optax.GradientTransformation, n_prototypes: int) -> dict:
    """Train state: student and teacher (a copy) parameters, optimizer state, centres, step."""
    return {
        "student": student,
        "teacher": jax.tree.map(jnp.copy, student),
        "opt": tx.init(student),
        "center": jnp.zeros((n_prototypes,), jnp.float32),
        "ibot_center": jnp.zeros((n_prototypes,), jnp.float32),
        "step": jnp.zeros((), jnp.int32),
    }


def _at(schedule: jax.Array, update: jax.Array) -> jax.Array:
    return schedule[jnp.minimum(update, schedule.shape[0] - 1)]


def _flatten_crops(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _by_crop(x: jax.Array, n_crops: int) -> jax.Array:
    """(B*n, ...) sample-major rows -> (n, B, ...) crop-major chunks, the layout the losses take."""
    return jnp.swapaxes(x.reshape(-1, n_crops, *x.shape[1:]), 0, 1)


def make_train_step(cfg: StepConfig, backbone_def: nnx.GraphDef, head_def: nnx.GraphDef,
                    tx: optax.GradientTransformation, schedules: dict[str, jax.Array],
                    mesh: Mesh, class_weights: jax.Array | None = None) -> Callable:
    """Returns `train_step(state, batch, key) -> (state, metrics)`.

    `schedules` holds per-step arrays `teacher_temp`, `teacher_momentum` and `koleo_scale` (KoLeo warmup,
    multiplying its loss weight); past an array's end its last entry holds. `key` is the run's base
    key: the step folds its step number in, so masks and stochastic depth repeat on resume.
    """

    def backbone(params, images, patch_rows, masks=None, rng=None, present=None):
        return nnx.merge(backbone_def, params)(images, cfg.sequences, masks=masks, rng=rng, present=present,
                                               patch_rows=patch_rows)

    def head(params, x):
        return nnx.merge(head_def, params)(x)

    def teacher_targets(teacher, globals_, present_g, temp, center, ibot_center, rows, valid):
        out = backbone(teacher["backbone"], globals_, rows, present=present_g)  # patch tokens: the iBOT targets
        cls_logits = head(teacher["head"], out["cls"])
        patch_logits = head(teacher["head"], out["patch"])
        if cfg.centering == "centering":
            cls_probs = teacher_lib.softmax_center(cls_logits, center, temp)
            patch_probs = teacher_lib.softmax_center(patch_logits, ibot_center, temp)
        elif cfg.centering == "sinkhorn_knopp":
            cls_probs = teacher_lib.sinkhorn_knopp(cls_logits, temp)
            # over the iBOT target tokens only, as DINOv2 (`sinkhorn_knopp_teacher` of the masked tokens)
            patch_probs = teacher_lib.sinkhorn_knopp(patch_logits, temp, mask=valid)
        else:
            raise ValueError(f"ssl.centering must be centering or sinkhorn_knopp, not {cfg.centering!r}")
        return cls_logits, patch_logits, cls_probs, patch_probs

    def loss_fn(student, batch, targets, masks, rows, token_weights, key, weights):
        cls_probs, patch_probs = targets
        n_g, n_l = batch["global"].shape[1], batch["local"].shape[1]
        k_g, k_l = jax.random.split(key)
        globals_ = _flatten_crops(batch["global"])
        locals_ = _flatten_crops(batch["local"])
        present_l = jnp.repeat(batch["present"], n_l, axis=0)
        out_g = backbone(student["backbone"], globals_, rows, masks=masks, rng=k_g)
        cls_only = jnp.zeros((rows.shape[0], 0), rows.dtype)  # no loss reads a local crop's patch tokens
        out_l = backbone(student["backbone"], locals_, cls_only, rng=k_l, present=present_l)
        s_global = _by_crop(head(student["head"], out_g["cls"]), n_g)
        s_local = _by_crop(head(student["head"], out_l["cls"]), n_l)
        s_patch = head(student["head"], out_g["patch"])
        terms = {}
        terms["dino_local"], terms["dino_global"] = losses.dino_loss(
            s_global, s_local, _by_crop(cls_probs, n_g), cfg.student_temp)
        terms["ibot"] = losses.ibot_loss(s_patch, patch_probs, token_weights, cfg.student_temp)
        terms["koleo"] = jnp.sum(losses.koleo_loss_sharded(_by_crop(out_g["cls"], n_g), mesh, "data"))
        terms["semi"] = losses.semi_supervised_loss(
            jnp.concatenate([s_local, s_global]), batch["label"], cfg.semi_temperature,
            cfg.semi_label_smoothing, class_weights, cfg.semi_class_weights)
        total = sum(weights[k] * terms[k] for k in LOSS_TERMS)
        return total, (terms, signals.labeled_accuracy(s_global, batch["label"]))

    def train_step(state, batch, key):
        step = state["step"]
        # With gradient accumulation the teacher follows optimizer updates, not micro-batches.
        update = step // cfg.grad_accum_steps
        updated = (step + 1) % cfg.grad_accum_steps == 0
        key = jax.random.fold_in(key, step)
        k_mask, k_drop = jax.random.split(key)
        n_g = batch["global"].shape[1]
        globals_ = _flatten_crops(batch["global"])
        present_g = jnp.repeat(batch["present"], n_g, axis=0)
        grid = (globals_.shape[-2] // cfg.patch_size, globals_.shape[-1] // cfg.patch_size)
        masks, target_tokens = masking.student_masks(
            k_mask, present_g, grid, cfg.modality_masked,
            mask_sample_prob=cfg.mask_sample_probability, ratio_min_max=cfg.mask_ratio_min_max)
        temp = _at(schedules["teacher_temp"], update)
        weights = {**cfg.weights, "koleo": cfg.weights["koleo"] * _at(schedules["koleo_scale"], update)}
        # The heads see only the iBOT targets, gathered per device up to a static bound (as DINOv2); the
        # backbones' last block computes only the tokens the losses read (`DinoViT` `patch_rows`).
        tokens = target_tokens.reshape(globals_.shape[0], -1)
        bound = masking.target_bound(tokens.shape[0], tokens.shape[0] // mesh.size, len(cfg.sequences),
                                     grid[0] * grid[1], cfg.modality_masked, cfg.mask_sample_probability,
                                     cfg.mask_ratio_min_max)
        rows, valid = masking.target_rows(tokens, mesh.size, bound)
        token_weights = take_rows(losses.ibot_token_weights(tokens), rows) * valid
        cls_logits, patch_logits, cls_probs, patch_probs = teacher_targets(
            state["teacher"], globals_, present_g, temp, state["center"], state["ibot_center"], rows, valid)
        targets = jax.lax.stop_gradient((cls_probs, patch_probs))
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (terms, semi_acc)), grads = grad_fn(state["student"], batch, targets, masks, rows, token_weights,
                                                   k_drop, weights)
        updates, opt = tx.update(grads, state["opt"], state["student"])
        student = optax.apply_updates(state["student"], updates)
        momentum = _at(schedules["teacher_momentum"], update)
        teacher = jax.tree.map(lambda new, old: jnp.where(updated, new, old),
                               teacher_lib.ema_update(state["teacher"], student, momentum), state["teacher"])
        new_state = {
            "student": student,
            "teacher": teacher,
            "opt": opt,
            "center": teacher_lib.update_center(state["center"], cls_logits, cfg.center_momentum),
            "ibot_center": teacher_lib.update_center(state["ibot_center"], patch_logits,
                                                     cfg.center_momentum, mask=valid),
            "step": step + 1,
        }
        metrics = {"loss": loss, **terms, "teacher_temp": temp, "teacher_momentum": momentum,
                   "grad_norm": optax.global_norm(grads),
                   "masked_token_fraction": jnp.mean(masks), "koleo_weight": weights["koleo"],
                   "semi_acc": semi_acc, **signals.teacher_signals(cls_probs)}
        return new_state, metrics

    return train_step


def step_config(config: Any, sequences: tuple[int, ...], patch_size: int) -> StepConfig:
    """StepConfig from the run's ml_collections config."""
    s = config.ssl
    return StepConfig(
        sequences=sequences, patch_size=patch_size, student_temp=s.student_temp,
        centering=s.centering, center_momentum=s.center_momentum,
        weights={"dino_local": s.dino_loss_weight, "dino_global": s.dino_loss_weight,
                 "ibot": s.ibot_loss_weight, "koleo": s.koleo_loss_weight, "semi": s.semi_loss_weight},
        semi_temperature=s.semi_temperature, semi_label_smoothing=s.semi_label_smoothing,
        semi_class_weights=s.semi_class_weights, mask_sample_probability=s.mask_sample_probability,
        mask_ratio_min_max=tuple(s.mask_ratio_min_max), modality_masked=s.modality_masked,
        grad_accum_steps=config.optim.grad_accum_steps)
