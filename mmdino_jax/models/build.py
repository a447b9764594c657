"""Backbone + DINO head from a run config, optionally starting from a converted model directory."""

from __future__ import annotations

import logging

import jax
import numpy as np
from flax import nnx

from mmdino_jax.models import io as model_io
from mmdino_jax.models.heads import DINOHead
from mmdino_jax.models.vit import DinoViT, ViTConfig


def compute_dtype(name: str, backend: str | None = None) -> str:
    """`model.dtype`, with `auto` resolved: bfloat16 on GPU and TPU (float32 master weights; the heads and
    losses stay float32), float32 on CPU, where XLA's bfloat16 matmuls are slower than float32 ones."""
    if name != "auto":
        return name
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


def vit_config(model_cfg) -> ViTConfig:
    """The backbone config of `config.model` (preset, size overrides, training switches)."""
    overrides = {k: model_cfg[k] for k in ("embed_dim", "depth", "num_heads") if model_cfg[k]}
    return ViTConfig.preset(
        model_cfg.arch, **overrides, num_registers=model_cfg.num_registers,
        drop_path_rate=model_cfg.drop_path_rate, layerscale_init=model_cfg.layerscale_init,
        use_seq_embed=model_cfg.use_seq_embed, dtype=compute_dtype(model_cfg.dtype))


def build_models(model_cfg, seed: int) -> tuple[DinoViT, DINOHead, list[str]]:
    """Student backbone and head; with `model_cfg.init_from`, every parameter the model directory
    has is copied in (shapes checked). Returns the names of parameters left at their random init."""
    rngs = nnx.Rngs(seed)
    cfg = vit_config(model_cfg)
    if model_cfg.init_from:
        # Take the architecture (and interpolation rule) from the converted weights, keep the run's
        # training switches.
        saved = ViTConfig.from_dict(model_io.read_meta(model_cfg.init_from)["config"])
        cfg = ViTConfig(**{**saved.to_dict(), "drop_path_rate": cfg.drop_path_rate,
                           "use_seq_embed": cfg.use_seq_embed, "dtype": cfg.dtype})
    backbone = DinoViT(cfg, rngs=rngs)
    head = DINOHead(cfg.embed_dim, model_cfg.head_n_prototypes, model_cfg.head_hidden_dim,
                    model_cfg.head_bottleneck_dim, model_cfg.head_nlayers, rngs=rngs)
    if not model_cfg.init_from:
        return backbone, head, []
    src_backbone, src_head, _ = model_io.load_model(model_cfg.init_from)
    fresh = _copy_params(src_backbone, backbone, "backbone")
    fresh += _copy_params(src_head, head, "head") if src_head is not None else ["head"]
    logging.info("initialised from %s; random init kept for: %s", model_cfg.init_from,
                 ", ".join(fresh) or "nothing")
    return backbone, head, fresh


def _copy_params(src: nnx.Module, dst: nnx.Module, name: str) -> list[str]:
    """Copy matching parameters of `src` into `dst`; returns the paths `src` lacks."""
    src_flat = dict(jax.tree_util.tree_flatten_with_path(nnx.state(src, nnx.Param).to_pure_dict())[0])
    dst_state = nnx.state(dst, nnx.Param)
    dst_pure = dst_state.to_pure_dict()
    missing = []

    def take(path, value):
        key = jax.tree_util.keystr(path)
        if path not in src_flat:
            missing.append(f"{name}{key}")
            return value
        got = src_flat[path]
        if np.shape(got) != np.shape(value):
            raise ValueError(f"model.init_from: {name}{key} has shape {np.shape(got)}, the config "
                             f"builds {np.shape(value)}; fix model.arch / head settings to match")
        return got

    dst_state.replace_by_pure_dict(jax.tree_util.tree_map_with_path(take, dst_pure))
    nnx.update(dst, dst_state)
    return missing
