"""The fine-tuned classifier: a backbone, optional LoRA adapters, and a linear head.

The backbone starts from `config.finetune.init`: a model directory (`models/io.py`, e.g. from
`python -m weights_conversion`), a training run directory (its teacher backbone: best checkpoint, else the
latest), or "" for random init. The head is a linear layer on the CLS token or on CLS + the mean patch
token (`finetune.pooling`, `models.heads.POOLINGS`).

Parameters are pure dicts. `params` is what trains, `{"backbone", "head"}` as `optim.make_optimizer` takes
it: the whole backbone (full fine-tuning) or only its adapters (LoRA, `finetune.lora_rank > 0`); `frozen`
is the rest of the backbone (LoRA) or empty. `nnx.merge(graphdef, params["backbone"], frozen)` is the
backbone either way.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from mmdino_jax import checkpoint as ckpt_lib
from mmdino_jax.constants import CLASS_NAMES
from mmdino_jax.finetune import lora
from mmdino_jax.models import io as model_io
from mmdino_jax.models.build import compute_dtype, vit_config
from mmdino_jax.models.heads import pooled_dim
from mmdino_jax.models.vit import DinoViT, ViTConfig

_HEAD_INIT = nnx.initializers.truncated_normal(0.02)


@dataclasses.dataclass
class FinetuneModel:
    """Graph definition and initial parameters of a fine-tuning run (see the module docstring)."""

    graphdef: nnx.GraphDef
    params: dict
    frozen: dict
    cfg: ViTConfig
    pooling: str
    provenance: str

    @property
    def lora(self) -> bool:
        return bool(self.frozen)

    def backbone(self, params: dict, frozen: dict) -> DinoViT:
        """The backbone module of a train state's parameters (adapters included for LoRA)."""
        return nnx.merge(self.graphdef, params["backbone"], frozen)

    def plain_backbone(self, params: dict, frozen: dict) -> tuple[nnx.GraphDef, dict]:
        """(graphdef, parameters) of a plain DinoViT: LoRA adapters merged into the kernels."""
        if not self.lora:
            return self.graphdef, params["backbone"]
        plain = nnx.split(nnx.eval_shape(lambda: DinoViT(self.cfg)))[0]
        return plain, lora.merge_adapters(frozen, params["backbone"])


def run_config(workdir: str | Path) -> tuple[ml_collections.ConfigDict, int]:
    """(config, step) of the checkpoint a training run is evaluated from: the best intact one, else the newest."""
    checkpoints = ckpt_lib.RunCheckpoints(str(workdir))
    try:
        step = checkpoints.usable_step(prefer_best=True)
        if step is None:
            raise FileNotFoundError(f"finetune.init={workdir}: no usable checkpoint in {workdir}/checkpoints; "
                                    "train the run first, or start from a model directory")
        config = checkpoints.saved_config(step)
    finally:
        checkpoints.close()
    if not config:
        raise ValueError(f"finetune.init={workdir}: checkpoint step {step} holds no run config; start from a "
                         "model directory instead")
    return ml_collections.ConfigDict(config), step


def _teacher(workdir: Path) -> tuple[ViTConfig, dict, str]:
    from mmdino_jax.eval.backbone import load_backbone  # reads the SSL checkpoint layout

    config, step = run_config(workdir)
    graphdef, params, step = load_backbone(config, str(workdir), str(step))
    return nnx.merge(graphdef, params).cfg, params, f"teacher of {workdir} at step {step}"


def source_backbone(config) -> tuple[DinoViT, str]:
    """The starting backbone of `config.finetune.init` and where it came from. The architecture is the
    source's; the run's training switches (`model.drop_path_rate`, `model.dtype`) apply."""
    init = config.finetune.init
    if not init:
        return DinoViT(vit_config(config.model), rngs=nnx.Rngs(config.seed)), f"random init (seed {config.seed})"
    path = Path(init).expanduser()
    if (path / "model.json").is_file():
        backbone, _, _ = model_io.load_model(path)
        cfg, params, provenance = backbone.cfg, nnx.state(backbone, nnx.Param).to_pure_dict(), f"model {path}"
    elif (path / "checkpoints").is_dir():
        cfg, params, provenance = _teacher(path)
    else:
        raise FileNotFoundError(f"finetune.init={init}: neither a model directory (model.json) nor a training "
                                "run directory (checkpoints/); give one of them, or '' for random init")
    cfg = dataclasses.replace(cfg, drop_path_rate=config.model.drop_path_rate,
                              dtype=compute_dtype(config.model.dtype))
    logging.info("fine-tuning from %s", provenance)
    return nnx.merge(nnx.split(nnx.eval_shape(lambda: DinoViT(cfg)))[0], params), provenance


def with_head(backbone: DinoViT, pooling: str, seed: int, lora_rank: int, lora_mlp: bool,
              provenance: str) -> FinetuneModel:
    """`backbone` with a fresh linear head on `pooling`, and rank-`lora_rank` adapters if it is > 0."""
    head = nnx.Linear(pooled_dim(backbone.cfg.embed_dim, pooling), len(CLASS_NAMES),
                      kernel_init=_HEAD_INIT, rngs=nnx.Rngs(seed + 1))
    head_params = nnx.state(head).to_pure_dict()
    if lora_rank:
        graphdef, adapters, base = lora.split_adapters(
            lora.add_lora(backbone, lora_rank, lora_mlp, nnx.Rngs(seed + 2)))
        params, frozen = {"backbone": adapters, "head": head_params}, base
    else:
        graphdef, state = nnx.split(backbone)
        params, frozen = {"backbone": state.to_pure_dict(), "head": head_params}, {}
    return FinetuneModel(graphdef, params, frozen, backbone.cfg, pooling, provenance)


def build_model(config) -> FinetuneModel:
    """Backbone from `finetune.init`, adapters if `finetune.lora_rank` > 0, and a fresh linear head."""
    f = config.finetune
    backbone, provenance = source_backbone(config)
    return with_head(backbone, f.pooling, config.seed, f.lora_rank, f.lora_mlp, provenance)


def tree_bytes(tree) -> int:
    return int(sum(np.dtype(x.dtype).itemsize * np.prod(x.shape) for x in jax.tree.leaves(tree)))


def trainable_summary(params: dict, opt_state) -> dict[str, int]:
    """Trainable parameter count, and the bytes they and their optimizer state take."""
    return {"trainable_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
            "trainable_bytes": tree_bytes(params) + tree_bytes(opt_state)}
