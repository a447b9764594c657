"""The fine-tuning update: label-smoothed cross-entropy of a linear head on the backbone, one AdamW step.

Batch on device (sample axis first): global (B, n_g, S, H, W), present (B, S) bool, label (B,) int32, all
labeled. Every global crop is one training example. Absent sequences are masked as in MM-DINOv2 training;
with `sequence_dropout` > 0 each crop also loses one of its present sequences with that probability (never
its last one): the supervised analogue of full-modality masking.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from mmdino_jax.finetune.model import FinetuneModel
from mmdino_jax.models.heads import classifier_features
from mmdino_jax.ssl.masking import modality_masks


@dataclasses.dataclass(frozen=True)
class StepConfig:
    sequences: tuple[int, ...]
    label_smoothing: float
    sequence_dropout: float


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Mean cross-entropy against one-hot targets smoothed to (1 - s) one_hot + s / K."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def drop_sequences(key: jax.Array, present: jax.Array, rate: float) -> jax.Array:
    """Keep flags (M, S): with probability `rate` a crop loses one present sequence (not its last)."""
    k_which, k_apply = jax.random.split(key)
    dropped = ~modality_masks(k_which, present, 1)
    apply = jax.random.bernoulli(k_apply, rate, present.shape[:1])
    return jnp.where(apply[:, None], dropped, present)


def logits_fn(model: FinetuneModel, cfg: StepConfig, params: dict, frozen: dict, images: jax.Array,
              keep: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Class logits (M, K) of images (M, S, H, W) whose sequences `keep` (M, S) marks."""
    out = model.backbone(params, frozen)(images, cfg.sequences, rng=rng, present=keep)
    head = params["head"]
    return classifier_features(out, keep, model.pooling) @ head["kernel"] + head["bias"]


def init_state(params: dict, frozen: dict, tx: optax.GradientTransformation) -> dict:
    """Train state: trainable parameters, frozen parameters (LoRA), optimizer state, step."""
    return {"params": params, "frozen": frozen, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_train_step(model: FinetuneModel, cfg: StepConfig, tx: optax.GradientTransformation) -> Callable:
    """`train_step(state, batch, key) -> (state, metrics)`; the step number is folded into `key`."""

    def loss_fn(params, frozen, images, keep, labels, key):
        logits = logits_fn(model, cfg, params, frozen, images, keep, key)
        return smoothed_cross_entropy(logits, labels, cfg.label_smoothing), jnp.mean(jnp.argmax(logits, -1) == labels)

    def train_step(state, batch, key):
        key = jax.random.fold_in(key, state["step"])
        k_drop, k_model = jax.random.split(key)
        n_crops = batch["global"].shape[1]
        images = batch["global"].reshape(-1, *batch["global"].shape[2:])
        present = jnp.repeat(batch["present"], n_crops, axis=0)
        keep = drop_sequences(k_drop, present, cfg.sequence_dropout) if cfg.sequence_dropout else present
        labels = jnp.repeat(batch["label"], n_crops, axis=0)
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["frozen"], images, keep, labels, k_model)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
               "step": state["step"] + 1}
        return new, {"loss": loss, "train_accuracy": acc, "grad_norm": optax.global_norm(grads)}

    return train_step
