"""Evaluating a fine-tuned classifier with `evaluate`'s report, and exporting it for `predict`.

The classifier is the plain backbone (LoRA adapters merged) and the linear head written as a
:class:`Probe` (mean 0, scale 1), so evaluation, the missing-sequence sweep (the classifier itself on
masked inputs, nothing refit) and prediction from the exported artifact run the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmdino_jax.eval import backbone as eval_backbone
from mmdino_jax.eval.extract import FeatureExtractor
from mmdino_jax.eval.probe import Probe
from mmdino_jax.finetune.model import FinetuneModel


def head_probe(head: dict) -> Probe:
    """The linear head {kernel (F, K), bias (K,)} as a Probe on unstandardised features."""
    kernel = np.asarray(head["kernel"], np.float64)
    dim, classes = kernel.shape
    return Probe(c=float("nan"), coef=kernel.T, intercept=np.asarray(head["bias"], np.float64),
                 mean=np.zeros(dim), scale=np.ones(dim), classes=np.arange(classes))


def describe(config, model: FinetuneModel, summary: dict[str, int]) -> dict:
    """What the exported classifier is, for classifier.json and metrics.json."""
    f = config.finetune
    return {"kind": "LoRA" if model.lora else "full fine-tuning", "source": "mmdino_jax.finetune",
            "init": model.provenance, "lora_rank": int(f.lora_rank), "lora_mlp": bool(f.lora_mlp and f.lora_rank),
            "sequence_dropout": float(f.sequence_dropout), **summary}


def validation_fn(config, model: FinetuneModel, cache):
    """`fn(state) -> val MCC` of the classifier of a train state (the score that picks the best checkpoint)."""
    if not (Path(cache) / "val" / "index.json").is_file():
        raise ValueError(f"eval_every={config.eval_every} needs a prepared val split in {cache}")
    val = eval_backbone.Split.load(cache, "val", config.data.sequences.split(","), config.data.eval_size, True)
    graphdef, params = model.plain_backbone(model.params, model.frozen)
    extractor = FeatureExtractor(graphdef, params, config.data.sequences.split(","), config.eval.batch_size,
                                 outputs=(model.pooling,))

    def fn(state) -> float:
        extractor.params = model.plain_backbone(state["params"], state["frozen"])[1]
        feats = extractor(val.images, val.present, desc=None)[model.pooling]
        return eval_backbone.scored(head_probe(state["params"]["head"]), feats, val.label, 0)["mcc"]

    return fn


def evaluate_classifier(config, workdir: str, model: FinetuneModel, params: dict, frozen: dict, step: int,
                        head: dict, export_dir: str = "") -> dict:
    """`evaluate`'s full report of the classifier in DIR/eval (and its artifact in `export_dir`, replacing one
    there: a rerun of a finished run re-exports)."""
    graphdef, backbone = model.plain_backbone(params, frozen)
    return eval_backbone.evaluate_backbone(config, workdir, graphdef, backbone, step, export_dir, overwrite=True,
                                           classifier=(head_probe(params["head"]), model.pooling, head))
