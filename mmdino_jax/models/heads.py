"""DINOv2 projection head: MLP -> L2-normalise -> weight-normalised linear layer without bias."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mmdino_jax.models.activations import gelu
from mmdino_jax.models.linear import linear, over_rows

# Inputs of a linear classifier on the backbone: the CLS token, or CLS and the mean patch token.
POOLINGS = ("cls", "cls+mean_patch")


def mean_patch_token(patch: jax.Array, keep: jax.Array) -> jax.Array:
    """Mean of the patch tokens (B, S*N, D) over the sequences kept in `keep` (B, S) -> (B, D), float32."""
    b, s = keep.shape
    tokens = patch.reshape(b, s, -1, patch.shape[-1]).astype(jnp.float32)
    weight = keep.astype(jnp.float32)
    total = jnp.einsum("bsnd,bs->bd", tokens, weight)
    return total / (jnp.maximum(weight.sum(axis=1), 1.0) * tokens.shape[2])[:, None]


def classifier_features(out: dict[str, jax.Array], keep: jax.Array, pooling: str) -> jax.Array:
    """The classifier input of `pooling` (POOLINGS) from a DinoViT output; (B, D) or (B, 2D), float32."""
    if pooling == "cls":
        return out["cls"].astype(jnp.float32)
    if pooling == "cls+mean_patch":
        return jnp.concatenate([out["cls"].astype(jnp.float32), mean_patch_token(out["patch"], keep)], axis=-1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def pooled_dim(embed_dim: int, pooling: str) -> int:
    """Width of `classifier_features` for a backbone of `embed_dim`."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return embed_dim * (2 if pooling == "cls+mean_patch" else 1)


class WeightNormLinear(nnx.Module):
    """`y = x @ (g * v / ||v||)^T` with PyTorch `weight_norm(dim=0)` parameters: `weight_g` (K,1), `weight_v` (K,in)."""

    def __init__(self, in_dim: int, out_dim: int, rngs: nnx.Rngs):
        bound = in_dim**-0.5  # nn.Linear's default (kaiming-uniform a=sqrt(5)) init of the direction
        self.weight_v = nnx.Param(jax.random.uniform(rngs.params(), (out_dim, in_dim), minval=-bound, maxval=bound))
        self.weight_g = nnx.Param(jnp.ones((out_dim, 1)))  # DINOv2 fills g with 1

    def __call__(self, x):
        v = self.weight_v[...]
        w = self.weight_g[...] * v / jnp.linalg.norm(v, axis=1, keepdims=True)
        return over_rows(lambda rows: rows @ w.T, x.astype(jnp.float32))


class DINOHead(nnx.Module):
    """Linear(in,hidden)-GELU-...-Linear(hidden,bottleneck), L2-normalise (eps 1e-12), then `last_layer`.

    Parameters: `mlp.<i>.{kernel,bias}` for the i-th linear layer (i = 0..nlayers-1; PyTorch numbers them
    0, 2, 4 because the GELUs sit in between) and `last_layer.{weight_g, weight_v}`. Runs in float32.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        rngs: nnx.Rngs | None = None,
    ):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        nlayers = max(nlayers, 1)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden_dim, self.bottleneck_dim, self.nlayers = hidden_dim, bottleneck_dim, nlayers
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        self.mlp = nnx.List(
            [linear(a, b, rngs) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, rngs)

    def config(self) -> dict[str, Any]:
        return dict(
            in_dim=self.in_dim,
            out_dim=self.out_dim,
            hidden_dim=self.hidden_dim,
            bottleneck_dim=self.bottleneck_dim,
            nlayers=self.nlayers,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                x = gelu(x)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return self.last_layer(x)
