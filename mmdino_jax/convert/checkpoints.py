"""PyTorch DINOv2 / MM-DINOv2 / HF Dinov2 checkpoints <-> `mmdino_jax` model directories."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmdino_jax.checksums import file_sha256
from mmdino_jax.constants import SEQUENCES, sequence_indices
from mmdino_jax.convert import dinov2
from mmdino_jax.convert.files import check_finite, read_state_dict, write_state_dict
from mmdino_jax.models.heads import DINOHead
from mmdino_jax.models.io import load_model, save_model
from mmdino_jax.models.vit import DinoViT

HEAD_CHOICES = ("auto", "dino", "ibot", "none")


def _numpy_tree(module) -> dict:
    return jax.tree.map(np.array, nnx.state(module, nnx.Param).to_pure_dict())


def _assign(module, tree: dict) -> None:
    state = nnx.state(module, nnx.Param)
    state.replace_by_pure_dict(jax.tree.map(jax.numpy.asarray, tree))
    nnx.update(module, state)


def _layout(keys) -> str:
    if any(k.endswith("embeddings.cls_token") for k in keys):
        return "hf-dinov2"
    if any(k.endswith(dinov2.SEQ_EMBED_KEY) for k in keys):
        return "mm-dinov2"
    return "dinov2"


def import_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    branch: str = "teacher",
    head: str = "auto",
    sequences: str | tuple[str, ...] | None = None,
    seed: int = 0,
    arch: str | None = None,
    **config_overrides: Any,
) -> Path:
    """Convert a PyTorch checkpoint (hub `.pth`, MM-DINOv2 training checkpoint, HF dir/safetensors) into a
    model directory. `head`: `auto` keeps `dino_head` when the file has one; `none` drops heads. Parameters
    the file lacks (the MRI-sequence embedding of hub weights: then `use_seq_embed` is off, as plain DINOv2)
    are initialised from `seed` and listed in `provenance.initialised`. `arch` (a ViTConfig preset) forces
    the architecture, checked against the shapes. Returns the model directory."""
    if head not in HEAD_CHOICES:
        raise ValueError(f"head must be one of {HEAD_CHOICES}, got {head!r}")
    if sequences is None:
        seq_names = SEQUENCES
    else:
        seq_names = tuple(sequences.split(",") if isinstance(sequences, str) else sequences)
    sequence_indices(seq_names)  # validates
    raw, hf_config = read_state_dict(src, branch)
    layout = _layout(raw)
    backbone_sd, heads = dinov2.split_checkpoint(raw, branch)
    cfg = dinov2.infer_config(backbone_sd, hf_config, arch, **config_overrides)
    rngs = nnx.Rngs(seed)
    model = DinoViT(cfg, rngs)
    tree = _numpy_tree(model)
    absent = dinov2.backbone_to_flax(tree, backbone_sd, cfg)
    _assign(model, tree)

    head_name = {"auto": "dino_head" if "dino_head" in heads else None, "none": None}.get(head, f"{head}_head")
    head_module = None
    if head_name is not None:
        if head_name not in heads:
            raise ValueError(f"{src}: no {head_name} weights (found heads: {sorted(heads) or 'none'})")
        head_module = DINOHead(**dinov2.infer_head_config(heads[head_name]), rngs=rngs)
        head_tree = _numpy_tree(head_module)
        dinov2.head_to_flax(head_tree, heads[head_name])
        _assign(head_module, head_tree)

    src_path = Path(src)
    provenance = {
        "source": str(src_path.resolve()),
        "sha256": file_sha256(src_path) if src_path.is_file() else None,
        "layout": layout,
        "branch": branch,
        "head": head_name,
        "initialised": ["seq_embed" if k == dinov2.SEQ_EMBED_KEY else k for k in absent],
        "seed": seed,
        "converter": "weights_conversion",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return save_model(dst, model, head_module, {"sequences": list(seq_names), "provenance": provenance})


def export_checkpoint(
    model_dir: str | Path, dst: str | Path, *, include_head: bool = True, layout: str = "hub"
) -> Path:
    """Write a model directory in PyTorch names.

    `layout="hub"`: a DINOv2-named state dict file (.pth/.pt, .safetensors or .npz) with the MM sequence
    embedding as `mri_seq_embed.weight`; plain backbone keys, or `backbone.` + `dino_head.` with a head.
    `layout="hf"`: a `transformers` Dinov2 directory (model.safetensors + config.json), backbone only; note
    that HF Dinov2 resamples the positional embedding by size, not with DINOv2's +0.1 offset."""
    backbone, head, _ = load_model(model_dir)
    sd = dinov2.backbone_to_torch(_numpy_tree(backbone), backbone.cfg)
    check_finite(sd, model_dir)
    if layout == "hf":
        hf_sd, config = dinov2.hub_to_hf(sd, backbone.cfg)
        dst = Path(dst)
        write_state_dict(dst / "model.safetensors", hf_sd)
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return dst
    if layout != "hub":
        raise ValueError(f"layout must be 'hub' or 'hf', got {layout!r}")
    if head is not None and include_head:
        sd = {"backbone." + k: v for k, v in sd.items()}
        sd.update({"dino_head." + k: v for k, v in dinov2.head_to_torch(_numpy_tree(head), head.config()).items()})
    return write_state_dict(dst, sd)
