"""The supervised-baseline learner: backbone + linear classifier on CLS, cross-entropy, the run's AdamW.

A linear classifier on the final CLS token is trained with the backbone on the pipeline's global crops of
labeled samples (absent sequences masked as in MM-DINOv2 training), with the run's AdamW (warmup + cosine,
layer-wise decay; `optim.make_optimizer`). State: `{"params": {"backbone", "head"}, "opt", "step"}`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmdino_jax import optim
from mmdino_jax.constants import CLASS_NAMES, sequence_indices
from mmdino_jax.data.pipeline import host_batch
from mmdino_jax.models.build import build_models
from mmdino_jax.training.learner import Learner

BATCH_KEYS = ("global", "present", "label")


def labeled_crops(batch: dict) -> dict:
    """The step's batch: the sample-major global crops, presence and labels (local crops are not used)."""
    out = host_batch(batch)
    return {k: out[k] for k in BATCH_KEYS}


def progress(values: dict) -> dict[str, str]:
    return {"loss": f"{values['loss']:.4f}", "acc": f"{values['train_accuracy']:.2f}",
            "sps": f"{values['samples_per_s']:.1f}"}


def backbone_params(state) -> dict:
    return state["params"]["backbone"]


def build_classifier(config, cache=None) -> Learner:
    """The baseline's learner (`cache` is unused: the loop's builder signature).

    Parameters form the `{"backbone", "head"}` tree of `optim.make_optimizer`; "head" is the linear
    classifier (kernel (D, classes), bias). Batches must hold labeled samples only (`data.labeled_fraction=1`).
    """
    del cache
    if config.data.labeled_fraction != 1.0:
        raise ValueError("the supervised baseline trains on labeled samples only: set data.labeled_fraction=1.0")
    backbone, _, fresh = build_models(config.model, config.seed)
    backbone_def, params_backbone = nnx.split(backbone)
    classifier = nnx.Linear(backbone.cfg.embed_dim, len(CLASS_NAMES), rngs=nnx.Rngs(config.seed + 1),
                            kernel_init=nnx.initializers.truncated_normal(0.02))
    params = {"backbone": params_backbone.to_pure_dict(), "head": nnx.state(classifier).to_pure_dict()}
    opt_cfg = optim.optimizer_config(config, backbone.cfg.depth)
    schedules = optim.optimizer_schedules(opt_cfg)
    tx = optim.make_optimizer(params, schedules, opt_cfg)
    sequences = sequence_indices(config.data.sequences)
    smoothing = config.supervised.label_smoothing

    def loss_fn(p, images, present, labels, key):
        """Mean cross-entropy of (M, S, H, W) crops; `present` (M, S) masks absent sequences' tokens."""
        cls = nnx.merge(backbone_def, p["backbone"])(images, sequences, rng=key, present=present)["cls"]
        logits = cls @ p["head"]["kernel"] + p["head"]["bias"]
        targets = optax.smooth_labels(jax.nn.one_hot(labels, len(CLASS_NAMES)), smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    def step(state, batch, key):
        """One AdamW step on every labeled sample's global crops (batch sample-major, see `labeled_crops`)."""
        key = jax.random.fold_in(key, state["step"])
        n_crops = batch["global"].shape[1]
        images = batch["global"].reshape(-1, *batch["global"].shape[2:])
        present = jnp.repeat(batch["present"], n_crops, axis=0)
        labels = jnp.repeat(batch["label"], n_crops, axis=0)
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], images, present, labels, key)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt": opt, "step": state["step"] + 1}
        return new, {"loss": loss, "train_accuracy": acc, "grad_norm": optax.global_norm(grads)}

    def init(p):
        return {"params": p, "opt": tx.init(p), "step": jnp.zeros((), jnp.int32)}

    return Learner(params=params, init=init, make_step=lambda mesh: step, lr=schedules["lr"],
                   backbone_def=backbone_def, backbone_of=backbone_params, host_batch=labeled_crops,
                   grad_accum_steps=config.optim.grad_accum_steps, fresh=tuple(fresh), progress=progress)
