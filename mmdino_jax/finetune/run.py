"""A fine-tuning run: train through the loop (resumable, sharded), then evaluate and export the classifier.

The best checkpoint by the classifier's own validation MCC (every `eval_every` steps; else the last) is
evaluated with `evaluate`'s report in DIR/eval and exported to DIR/classifier for `predict`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

from mmdino_jax.finetune.evaluation import describe, evaluate_classifier, validation_fn
from mmdino_jax.finetune.learner import finetune_learner
from mmdino_jax.finetune.model import FinetuneModel, build_model, trainable_summary
from mmdino_jax.run_log import RunLog
from mmdino_jax.training.run import fit, selected_state


def summarise(workdir: str, model: FinetuneModel, learner) -> dict[str, int]:
    """Trainable parameters and their memory with the optimizer state; logged once, at the run's start."""
    state = jax.eval_shape(learner.init, learner.params)
    summary = trainable_summary(state["params"], state["opt"])
    fresh = not (Path(workdir) / "metrics.jsonl").is_file()
    print(f"{'LoRA' if model.lora else 'full fine-tuning'} from {model.provenance}: "
          f"{summary['trainable_params']:,} trainable parameters, "
          f"{summary['trainable_bytes'] / 2**20:.2f} MiB with the optimizer state", flush=True)
    if fresh and jax.process_index() == 0:
        log = RunLog(workdir)
        log.write({"step": 0, **summary})
        log.close()
    return summary


def run_finetune(config, workdir: str) -> dict:
    """Fine-tune, evaluate and export; returns the evaluation payload ({} when evaluation is off, when
    stopped early by SIGTERM, or on processes other than 0)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    model = build_model(config)
    learner = finetune_learner(config, model)
    summary = summarise(workdir, model, learner)
    fitted = fit(config, workdir, lambda *_: learner, desc="finetune",
                 validation=lambda config, cache, run: validation_fn(config, model, cache))
    if not fitted.finished or jax.process_index() != 0 or not config.eval.at_end:
        return {}
    state, step = selected_state(workdir, learner)
    export = Path(workdir) / "classifier"
    payload = evaluate_classifier(config, workdir, model, jax.device_get(state["params"]),
                                  jax.device_get(state["frozen"]), step, describe(config, model, summary),
                                  str(export))
    logging.info("classifier exported to %s", export)
    return payload
