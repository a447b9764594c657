"""The supervised-baseline learner: fine-tuning (`finetune/learner.py`) of the run's randomly initialised (or
`model.init_from`) backbone with a linear classifier on CLS, cross-entropy on the labeled samples' global crops
(absent sequences masked as in MM-DINOv2 training, no sequence dropout) and the run's AdamW."""

from __future__ import annotations

from mmdino_jax.constants import sequence_indices
from mmdino_jax.finetune.learner import finetune_learner
from mmdino_jax.finetune.model import with_head
from mmdino_jax.finetune.step import StepConfig
from mmdino_jax.models.build import build_models
from mmdino_jax.training.learner import Learner


def build_classifier(config, cache=None) -> Learner:
    """The baseline's learner (`cache` is unused: the loop's builder signature). Batches must hold labeled
    samples only (`data.labeled_fraction=1`)."""
    del cache
    backbone, _, fresh = build_models(config.model, config.seed)
    model = with_head(backbone, "cls", config.seed, 0, False, f"random init (seed {config.seed})")
    step_cfg = StepConfig(sequences=sequence_indices(config.data.sequences),
                          label_smoothing=config.supervised.label_smoothing, sequence_dropout=0.0)
    return finetune_learner(config, model, step_cfg, fresh, trainer="the supervised baseline")
