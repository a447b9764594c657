"""Schedules, parameter groups and the AdamW optimiser of MM-DINOv2 (DINOv2 `dinov2/train/train.py`,
`dinov2/utils/param_groups.py`, `dinov2/utils/utils.py`), with optax.

Parameter trees are `{"backbone": ..., "head": ...}` with the paths of docs/architecture.md. Schedules
are numpy arrays indexed by the optimiser step; `schedule_at` looks them up inside jit.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

_LAYER_ZERO = ("cls_token", "pos_embed", "mask_token", "register_tokens", "patch_embed")


def cosine_schedule(base, final, total_steps, warmup_steps=0, start_warmup=0.0, freeze_steps=0) -> np.ndarray:
    """DINOv2's CosineScheduler as an array of shape (total_steps + 1,).

    Entries [0, total_steps): freeze_steps zeros, linspace(start_warmup, base, warmup_steps), then
    final + (base - final)(1 + cos(pi i / L)) / 2 for i < L = total - warmup - freeze. The extra last
    entry is `final`, the value past the end (see `schedule_at`).
    """
    n_cosine = total_steps - warmup_steps - freeze_steps
    if n_cosine < 0:
        raise ValueError(
            f"cosine_schedule: warmup_steps {warmup_steps} + freeze_steps {freeze_steps} "
            f"exceed total_steps {total_steps}"
        )
    i = np.arange(n_cosine)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(n_cosine, 1)))
    return np.concatenate(
        [np.zeros(freeze_steps), np.linspace(start_warmup, base, warmup_steps), cosine, [final]]
    )


def teacher_temp_schedule(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_steps=1260) -> np.ndarray:
    """Teacher temperature: linspace(warmup_teacher_temp, teacher_temp, warmup_steps), then teacher_temp."""
    return cosine_schedule(teacher_temp, teacher_temp, warmup_steps, warmup_steps, warmup_teacher_temp)


def linear_warmup(steps: int) -> np.ndarray:
    """A factor ramping linearly from 0 (step 0) to 1 over ``steps`` steps, then 1; ``[1.0]`` for 0 steps."""
    return cosine_schedule(1.0, 1.0, steps, steps, 0.0)


def schedule_at(schedule, step):
    """schedule[step] for a `cosine_schedule` array, its last entry (the final value) past the end."""
    schedule = jnp.asarray(schedule, jnp.float32)
    return schedule[jnp.minimum(step, schedule.shape[0] - 1)]


def lr_scale(base_lr, global_batch):
    """DINOv2's sqrt_wrt_1024 scaling rule: base_lr * sqrt(global_batch / 1024)."""
    return base_lr * math.sqrt(global_batch / 1024)


def _names(key_path) -> tuple:
    """Plain names of a jax key path (dict keys, sequence indices, attributes; nnx's `.value` dropped)."""
    names = []
    for key in key_path:
        if isinstance(key, jax.tree_util.DictKey):
            names.append(key.key)
        elif isinstance(key, jax.tree_util.SequenceKey):
            names.append(key.idx)
        elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
            names.append(key.name)
    return tuple(names)


def layer_id(path, depth) -> int:
    """Layer id for layer-wise lr decay of a parameter path (leading "backbone" optional).

    cls_token/pos_embed/mask_token/register_tokens/patch_embed -> 0, blocks.<i> -> i + 1, everything
    else (final norm, seq_embed, the "head" subtree) -> depth + 1.
    """
    path = tuple(path[1:]) if path and path[0] == "backbone" else tuple(path)
    if path and path[0] in _LAYER_ZERO:
        return 0
    if len(path) > 1 and path[0] == "blocks":
        return int(path[1]) + 1
    return depth + 1


def _lr_multiplier(path, depth, layerwise_decay, patch_embed_mult) -> float:
    """layerwise_decay ** (depth + 1 - layer_id), times patch_embed_mult for patch_embed parameters."""
    mult = layerwise_decay ** (depth + 1 - layer_id(path, depth))
    return mult * patch_embed_mult if "patch_embed" in path else mult


def _decays(path) -> bool:
    """DINOv2's rule: no weight decay for biases, norm parameters and LayerScale gammas."""
    return path[-1] != "bias" and not any(isinstance(n, str) and ("norm" in n or "gamma" in n) for n in path)


def lr_multipliers(params, depth, layerwise_decay=0.9, patch_embed_mult=0.2):
    """Pytree of per-parameter lr multipliers (floats), same structure as params."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: _lr_multiplier(_names(p), depth, layerwise_decay, patch_embed_mult), params
    )


def weight_decay_mask(params):
    """Pytree of bools, True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _decays(_names(p)), params)


def optimizer_updates(config) -> int:
    """Optimizer updates in a run: `total_steps` counts micro-batches when gradients are accumulated;
    the schedule lengths in `config.optim` (warmup, freezes) count updates."""
    return config.total_steps // config.optim.grad_accum_steps


def optimizer_config(config, depth: int) -> dict:
    """The `make_optimizer` fields of a run config (lr scaled by sqrt(effective batch / 1024))."""
    o = config.optim
    batch = config.data.batch_size * o.grad_accum_steps
    return {**o.to_dict(), "base_lr": lr_scale(o.base_lr, batch), "total_steps": optimizer_updates(config),
            "depth": depth}


def optimizer_schedules(cfg) -> dict[str, np.ndarray]:
    """lr, last-layer lr and weight-decay schedules from the optimiser config (see `make_optimizer`)."""
    lr = cosine_schedule(cfg["base_lr"], cfg["min_lr"], cfg["total_steps"], cfg["warmup_steps"])
    last_layer_lr = lr.copy()
    last_layer_lr[: cfg["freeze_last_layer_steps"]] = 0.0
    wd = cosine_schedule(cfg["weight_decay"], cfg["weight_decay_end"], cfg["total_steps"])
    return {"lr": lr, "last_layer_lr": last_layer_lr, "weight_decay": wd}


def _scale_by_param_groups(schedules, cfg) -> optax.GradientTransformation:
    """Turns Adam directions u into -lr_p (u + wd_p p) per parameter, as torch AdamW's param groups.

    lr_p = lr[t] (last_layer_lr[t] for head.last_layer) x the layer-wise multiplier; wd_p = wd[t] where
    weight decay applies; backbone parameters get no update at all (no decay) while t is below
    freeze_backbone_steps. t is this transformation's own step count.
    """
    lr, last_lr, wd = (schedules[k] for k in ("lr", "last_layer_lr", "weight_decay"))

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("make_optimizer's transformation needs params for decoupled weight decay")
        t = state.count
        backbone_live = (t >= cfg["freeze_backbone_steps"]).astype(jnp.float32)

        def leaf(key_path, u, p):
            path = _names(key_path)
            rate = schedule_at(last_lr if "last_layer" in path else lr, t)
            rate *= _lr_multiplier(path, cfg["depth"], cfg["layerwise_decay"], cfg["patch_embed_lr_mult"])
            if path[0] == "backbone":
                rate *= backbone_live
            decay = schedule_at(wd, t) if _decays(path) else 0.0
            return -rate * (u + decay * p)

        new = jax.tree_util.tree_map_with_path(leaf, updates, params)
        return new, optax.ScaleByScheduleState(count=optax.safe_increment(t))

    return optax.GradientTransformation(init, update)


def make_optimizer(params_like, schedules, cfg) -> optax.GradientTransformation:
    """AdamW of MM-DINOv2 on a `{"backbone": ..., "head": ...}` tree.

    schedules: `optimizer_schedules(cfg)` (lr, last_layer_lr, weight_decay arrays by optimiser step).
    cfg fields (dict or ConfigDict):
      base_lr, min_lr        peak lr (already scaled, see `lr_scale`) and final cosine lr
      warmup_steps, total_steps          lr warmup and schedule length, in optimiser steps
      weight_decay, weight_decay_end     cosine weight-decay schedule
      layerwise_decay, patch_embed_lr_mult, depth   layer-wise lr multipliers (depth = number of blocks)
      clip_grad              max gradient norm, backbone and head clipped separately
      freeze_last_layer_steps   head.last_layer lr is 0 (its Adam moments still update)
      freeze_backbone_steps  backbone frozen: no update, no weight decay, no Adam state or count update
      grad_accum_steps       > 1 wraps everything in optax.MultiSteps (mean of the micro-batch grads)
    Adam: b1 0.9, b2 0.999, eps 1e-8. The step index comes from the optimiser state.
    """
    if set(params_like) != {"backbone", "head"}:
        raise ValueError(f"make_optimizer: param tree keys must be backbone, head; got {list(params_like)}")
    clipped_adam = lambda: optax.chain(
        optax.clip_by_global_norm(cfg["clip_grad"]), optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
    )
    backbone_unfrozen = lambda t: t >= cfg["freeze_backbone_steps"]
    backbone = optax.transforms.conditionally_mask(clipped_adam(), backbone_unfrozen)
    modules = {"backbone": backbone, "head": clipped_adam()}
    module_of = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: _names(p)[0], params)
    tx = optax.chain(optax.multi_transform(modules, module_of), _scale_by_param_groups(schedules, cfg))
    if cfg["grad_accum_steps"] > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg["grad_accum_steps"]).gradient_transformation()
    return tx
