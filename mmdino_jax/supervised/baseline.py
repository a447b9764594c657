"""The supervised baseline run: train through the loop (resumable, sharded), save DIR/backbone, evaluate it.

DIR/backbone is a model directory evaluated with the same linear-probe protocol as MM-DINOv2 runs
(`eval/backbone.py`). `init_only` skips training: DIR/backbone is the randomly initialised backbone (the frozen
random-init baseline, the stand-in for frozen DINOv2 weights when none are at hand).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
from flax import nnx

from mmdino_jax.eval import backbone as eval_backbone
from mmdino_jax.models import io as model_io
from mmdino_jax.supervised.learner import build_classifier
from mmdino_jax.training.data import prepared_cache
from mmdino_jax.training.learner import Learner
from mmdino_jax.training.run import fit, selected_state


def save_backbone(config, workdir: str, learner: Learner, params, provenance: str) -> Path:
    """DIR/backbone: the backbone as a model directory (replaced if it exists)."""
    path = Path(workdir) / "backbone"
    if path.exists():
        shutil.rmtree(path)
    backbone = nnx.merge(learner.backbone_def, params)
    meta = {"sequences": config.data.sequences.split(","), "provenance": provenance,
            "run_config": json.loads(config.to_json_best_effort())}
    return model_io.save_model(path, backbone, meta=meta)


def run_baseline(config, workdir: str, init_only: bool = False) -> dict:
    """Train (unless `init_only`), save DIR/backbone, evaluate it; returns the evaluation payload
    ({} when evaluation is off, when stopped early by SIGTERM, or on processes other than 0)."""
    if init_only:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        prepared_cache(config, workdir)
        learner = build_classifier(config)
        params, step = learner.params["trainable"]["backbone"], 0
        provenance = f"random init (seed {config.seed}), untrained"
    else:
        fitted = fit(config, workdir, build_classifier, desc="supervised")
        if not fitted.finished:
            return {}
        learner = fitted.run.learner
        if config.eval_every:
            state, step = selected_state(workdir, learner)
        else:
            state, step = fitted.result.state, config.total_steps
        params = jax.device_get(learner.backbone_of(state))
        provenance = f"supervised baseline, step {step} of {config.total_steps} of cross-entropy on labeled subjects"
    if jax.process_index() != 0:
        return {}
    path = save_backbone(config, workdir, learner, params, provenance)
    logging.info("saved %s", path)
    if not config.eval.at_end:
        return {}
    graphdef, loaded, _ = eval_backbone.load_backbone(config, workdir, str(path))
    return eval_backbone.evaluate_backbone(config, workdir, graphdef, loaded, step)
