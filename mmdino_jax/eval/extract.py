"""Frozen-backbone features and CLS attention maps of (N, S, H, W) images, jitted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from mmdino_jax.constants import sequence_indices
from mmdino_jax.models.heads import classifier_features


class FeatureExtractor:
    """Runs a backbone in fixed-size batches (the last one padded, so it compiles once per shape).

    `keep` (N, S) bool marks the sequences each image has; the tokens of the others are masked,
    exactly as absent sequences are during training. `outputs` names DinoViT outputs or a classifier
    pooling of `models.heads.POOLINGS` (e.g. "cls+mean_patch").
    """

    def __init__(self, backbone_def: nnx.GraphDef, params, sequences, batch_size: int = 64,
                 outputs: tuple[str, ...] = ("cls",)):
        self.params, self.batch_size, self.outputs = params, batch_size, outputs
        indices = sequence_indices(sequences)

        def forward(p, images, keep):
            out = nnx.merge(backbone_def, p)(images, indices, present=keep)
            return {k: out[k] if k in out else classifier_features(out, keep, k) for k in outputs}

        self._forward = jax.jit(forward)

    def __call__(self, images: np.ndarray, keep: np.ndarray | None = None, desc: str | None = "features") -> dict:
        """Features of `images` (N,S,H,W); `desc` labels the progress bar (None: no bar)."""
        n = len(images)
        keep = np.ones(images.shape[:2], bool) if keep is None else np.asarray(keep, bool)
        chunks = []
        for start in tqdm(range(0, n, self.batch_size), desc=desc, unit="batch", leave=False, disable=desc is None):
            x, k = images[start:start + self.batch_size], keep[start:start + self.batch_size]
            pad = self.batch_size - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
                k = np.concatenate([k, np.ones((pad, *k.shape[1:]), bool)])
            out = jax.device_get(self._forward(self.params, jnp.asarray(x, jnp.float32), jnp.asarray(k)))
            chunks.append({name: v[:len(v) - pad] for name, v in out.items()})
        return {name: np.concatenate([c[name] for c in chunks]) for name in self.outputs}


def attention_maps(backbone, sequences):
    """Jitted (images (N, S, H, W), keep (N, S)) -> last block's CLS attention, mean over heads, (N, S, h, w)."""
    graphdef, params = nnx.split(backbone)
    indices, patch = sequence_indices(sequences), backbone.cfg.patch_size
    forward = jax.jit(lambda p, x, k: nnx.merge(graphdef, p).cls_attention(x, indices, present=k).mean(axis=1))

    def maps(images: np.ndarray, keep: np.ndarray) -> np.ndarray:
        grid = (images.shape[-2] // patch, images.shape[-1] // patch)
        return np.asarray(forward(params, images, keep)).reshape(len(images), len(sequences), *grid)

    return maps
