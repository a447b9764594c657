"""The fine-tuning learner for the training loop (`training.learner.Learner`).

The learner's `params` are `{"trainable", "frozen"}` (see `finetune.model`); the state is
`{"params", "frozen", "opt", "step"}`. `backbone_of(state)` is the plain backbone (adapters merged), so
the loop's probe validation, evaluation and export see an ordinary DinoViT.
"""

from __future__ import annotations

from flax import nnx

from mmdino_jax import optim
from mmdino_jax.constants import sequence_indices
from mmdino_jax.finetune.model import FinetuneModel
from mmdino_jax.finetune.step import StepConfig, init_state, make_train_step
from mmdino_jax.models.vit import DinoViT
from mmdino_jax.supervised.learner import labeled_crops, progress
from mmdino_jax.training.learner import Learner


def step_config(config) -> StepConfig:
    f = config.finetune
    return StepConfig(sequences=sequence_indices(config.data.sequences), label_smoothing=f.label_smoothing,
                      sequence_dropout=f.sequence_dropout)


def finetune_learner(config, model: FinetuneModel) -> Learner:
    """AdamW (warmup + cosine, layer-wise decay: `optim.make_optimizer`) on the trainable parameters."""
    if config.data.labeled_fraction != 1.0:
        raise ValueError("fine-tuning trains on labeled samples only: set data.labeled_fraction=1.0")
    opt_cfg = optim.optimizer_config(config, model.cfg.depth)
    schedules = optim.optimizer_schedules(opt_cfg)
    tx = optim.make_optimizer(model.params, schedules, opt_cfg)
    plain_def = nnx.split(nnx.eval_shape(lambda: DinoViT(model.cfg)))[0]
    return Learner(
        params={"trainable": model.params, "frozen": model.frozen},
        init=lambda p: init_state(p["trainable"], p["frozen"], tx),
        make_step=lambda mesh: make_train_step(model, step_config(config), tx),
        lr=schedules["lr"], backbone_def=plain_def,
        backbone_of=lambda state: model.plain_backbone(state["params"], state["frozen"])[1],
        host_batch=labeled_crops, grad_accum_steps=config.optim.grad_accum_steps, progress=progress)
