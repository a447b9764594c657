"""The fine-tuning learner for the training loop (`training.learner.Learner`); the supervised baseline is the
same learner on a randomly initialised backbone (`supervised/learner.py`).

The learner's `params` are `{"trainable", "frozen"}` (see `finetune.model`); the state is
`{"params", "frozen", "opt", "step"}`. `backbone_of(state)` is the plain backbone (adapters merged), so
the loop's probe validation, evaluation and export see an ordinary DinoViT.
"""

from __future__ import annotations

from flax import nnx

from mmdino_jax import optim
from mmdino_jax.constants import sequence_indices
from mmdino_jax.data.pipeline import host_batch
from mmdino_jax.finetune.model import FinetuneModel
from mmdino_jax.finetune.step import StepConfig, init_state, make_train_step
from mmdino_jax.models.vit import DinoViT
from mmdino_jax.training import device_crops
from mmdino_jax.training.learner import Learner

BATCH_KEYS = ("global", "present", "label")


def labeled_crops(batch: dict) -> dict:
    """The step's batch: the sample-major global crops (or the slices and their operators), presence and
    labels; local crops are not used."""
    out = host_batch(batch)
    return {k: out[k] for k in (*BATCH_KEYS, "image", *device_crops.operator_keys("global")) if k in out}


def progress(values: dict) -> dict[str, str]:
    return {"loss": f"{values['loss']:.4f}", "acc": f"{values['train_accuracy']:.2f}",
            "sps": f"{values['samples_per_s']:.1f}"}


def step_config(config) -> StepConfig:
    f = config.finetune
    return StepConfig(sequences=sequence_indices(config.data.sequences), label_smoothing=f.label_smoothing,
                      sequence_dropout=f.sequence_dropout)


def finetune_learner(config, model: FinetuneModel, step_cfg: StepConfig | None = None, fresh=(),
                     trainer: str = "fine-tuning") -> Learner:
    """AdamW (warmup + cosine, layer-wise decay: `optim.make_optimizer`) on the trainable parameters.
    `step_cfg` defaults to `config.finetune`'s; `fresh` names parameters left at random init (checkpoints)."""
    if config.data.labeled_fraction != 1.0:
        raise ValueError(f"{trainer} trains on labeled samples only: set data.labeled_fraction=1.0")
    opt_cfg = optim.optimizer_config(config, model.cfg.depth)
    schedules = optim.optimizer_schedules(opt_cfg)
    tx = optim.make_optimizer(model.params, schedules, opt_cfg)
    plain_def = nnx.split(nnx.eval_shape(lambda: DinoViT(model.cfg)))[0]
    step_cfg = step_cfg or step_config(config)
    return Learner(
        params={"trainable": model.params, "frozen": model.frozen},
        init=lambda p: init_state(p["trainable"], p["frozen"], tx),
        make_step=lambda mesh: make_train_step(model, step_cfg, tx),
        lr=schedules["lr"], backbone_def=plain_def,
        backbone_of=lambda state: model.plain_backbone(state["params"], state["frozen"])[1],
        host_batch=labeled_crops, grad_accum_steps=config.optim.grad_accum_steps, fresh=tuple(fresh),
        progress=progress)
