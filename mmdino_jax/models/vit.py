"""Multi-sequence DINOv2 ViT (MM-DINOv2 `GliomaDinoViT`, image-wise positional embedding) in Flax NNX.

Each MRI sequence is a grayscale image patch-embedded on its own (1-channel kernel: the RGB kernel of a
pretrained checkpoint summed over its input channels is exactly equivalent to MM-DINOv2's grey->RGB repeat).
Every sequence gets the same interpolated positional embedding plus a unit-norm learned sequence embedding.
Tokens: `[CLS, registers, seq0 patches, seq1 patches, ...]`; outputs are taken after the final LayerNorm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mmdino_jax.models.activations import gelu
from mmdino_jax.models.attention import IMPLEMENTATIONS, attention_weights, dot_product_attention
from mmdino_jax.models.linear import LINEAR_INIT, linear, over_rows
from mmdino_jax.models.pos_embed import resize_pos_grid

_PRESETS = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16),
    "vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Backbone hyper-parameters. `dtype` is the compute dtype; parameters are always float32.

    Beyond the shared contract: `drop_path_uniform` (same rate in every block, as MM-DINOv2; else linear
    0 -> rate), `interpolate_offset` / `interpolate_antialias` (positional-embedding resampling: 0.1 / False
    for the original and MM models, 0.0 / True for the `_reg4` hub models), `remat` (recompute each block
    in the backward pass to save memory) and `attention` (`models/attention.py`; "auto" picks the
    backend's fastest implementation).
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    ffn: str = "mlp"
    num_registers: int = 0
    patch_size: int = 14
    pos_grid: int = 37
    layerscale_init: float = 1e-5
    drop_path_rate: float = 0.0
    use_seq_embed: bool = True
    num_seq_embed: int = 4
    dtype: str = "float32"
    drop_path_uniform: bool = True
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    remat: bool = False
    attention: str = "auto"

    def __post_init__(self):
        if self.ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ViTConfig.ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"ViTConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"ViTConfig.attention must be one of {IMPLEMENTATIONS}, got {self.attention!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ViTConfig":
        """`vits14`, `vitb14`, `vitl14` or `vitg14` (SwiGLU), with any field overridden."""
        if name not in _PRESETS:
            raise ValueError(f"unknown ViT preset {name!r}; choose from {', '.join(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ViTConfig field(s) {unknown}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def hidden_dim(self) -> int:
        """FFN hidden width; SwiGLU uses DINOv2's 2/3 rule rounded up to a multiple of 8."""
        hidden = int(self.embed_dim * self.mlp_ratio)
        return (int(hidden * 2 / 3) + 7) // 8 * 8 if self.ffn == "swiglu" else hidden

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _layernorm(dim: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, use_fast_variance=False, rngs=rngs)


class LayerScale(nnx.Module):
    def __init__(self, dim: int, init: float):
        self.gamma = nnx.Param(jnp.full((dim,), init, jnp.float32))

    def __call__(self, x):
        return x * self.gamma[...].astype(x.dtype)


class PatchEmbed(nnx.Module):
    """Non-overlapping p x p patches of 1-channel images -> (M, N, D), as a matmul on the patchified images.

    Same parameters as the stride-p `nnx.Conv` it replaces (`kernel` (p, p, 1, D) HWIO, `bias` (D,)) and
    the same result; XLA:CPU runs the matmul and its weight gradient faster than the convolution.
    """

    def __init__(self, patch_size: int, dim: int, dtype, rngs: nnx.Rngs):
        self.patch_size, self.dtype = patch_size, dtype
        self.kernel = nnx.Param(LINEAR_INIT(rngs.params(), (patch_size, patch_size, 1, dim)))
        rngs.params()  # the key nnx.Conv drew for its (zero) bias: a seed builds the same model as before
        self.bias = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, images):
        m, h, w = images.shape
        p = self.patch_size
        patches = images.reshape(m, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4)
        patches = patches.reshape(m, (h // p) * (w // p), p * p).astype(self.dtype)
        kernel = self.kernel[...].reshape(p * p, -1).astype(self.dtype)
        return over_rows(lambda rows: rows @ kernel, patches) + self.bias[...].astype(self.dtype)


class Attention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, dtype, rngs: nnx.Rngs, implementation: str = "auto"):
        self.num_heads, self.implementation = num_heads, implementation
        self.qkv = linear(dim, 3 * dim, rngs, dtype)
        self.proj = linear(dim, dim, rngs, dtype)

    def _qkv(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each (B, T, heads, head_dim)

    def mix(self, x):
        """The heads' outputs, concatenated (B, T, D): the attention before its output projection."""
        q, k, v = self._qkv(x)
        return dot_product_attention(q, k, v, self.implementation).reshape(x.shape)

    def __call__(self, x):
        return self.proj(self.mix(x))

    def weights(self, x):
        """Softmax attention probabilities (B, heads, T, T), float32."""
        q, k, _ = self._qkv(x)
        return attention_weights(q, k)


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, dtype, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, rngs, dtype)
        self.fc2 = linear(hidden, dim, rngs, dtype)

    def __call__(self, x):
        return self.fc2(gelu(self.fc1(x)))


class SwiGLU(nnx.Module):
    def __init__(self, dim: int, hidden: int, dtype, rngs: nnx.Rngs):
        self.w12 = linear(dim, 2 * hidden, rngs, dtype)
        self.w3 = linear(hidden, dim, rngs, dtype)

    def __call__(self, x):
        x1, x2 = jnp.split(self.w12(x), 2, axis=-1)
        return self.w3(jax.nn.silu(x1) * x2)


def _kept_samples(key, rate: float, b: int) -> jax.Array:
    """The samples whose branch DINOv2's batch-subset stochastic depth (rate > 0.1) keeps."""
    return jax.random.permutation(key, b)[: max(int(b * (1.0 - rate)), 1)]


def _sample_scale(key, rate: float, b: int) -> jax.Array:
    """Per-sample factor (b,) on the residual branch under stochastic depth: the same draws as `_residual`."""
    if rate > 0.1:
        kept = _kept_samples(key, rate, b)
        return jnp.zeros((b,), jnp.float32).at[kept].set(b / kept.shape[0])
    return jax.random.bernoulli(key, 1.0 - rate, (b,)) / (1.0 - rate)


def _residual(x, branch, rate: float, key):
    """`x + branch(x)` with DINOv2's stochastic depth (rate > 0.1: run the branch on a random batch subset)."""
    if key is None or rate == 0.0:
        return x + branch(x)
    b = x.shape[0]
    if rate > 0.1:
        idx = _kept_samples(key, rate, b)
        return x.at[idx].add(branch(x[idx]) * jnp.asarray(b / idx.shape[0], x.dtype))
    scale = _sample_scale(key, rate, b).reshape((b,) + (1,) * (x.ndim - 1))
    return x + branch(x) * scale.astype(x.dtype)


def take_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
    """Per-group gather: x (M, T, ...) and rows (groups, R) indexing each group's M / groups * T flattened
    tokens -> (groups, R, ...). Groups follow the batch's split over devices, so the gather stays local."""
    groups = rows.shape[0]
    x = x.reshape(groups, -1, *x.shape[2:])
    index = rows.reshape(*rows.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, index, axis=1)


class Block(nnx.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float, rngs: nnx.Rngs):
        dt, d = cfg.compute_dtype, cfg.embed_dim
        self.drop_path = drop_path
        self.norm1 = _layernorm(d, dt, rngs)
        self.attn = Attention(d, cfg.num_heads, dt, rngs, cfg.attention)
        self.ls1 = LayerScale(d, cfg.layerscale_init)
        self.norm2 = _layernorm(d, dt, rngs)
        self.mlp = (Mlp if cfg.ffn == "mlp" else SwiGLU)(d, cfg.hidden_dim, dt, rngs)
        self.ls2 = LayerScale(d, cfg.layerscale_init)

    def __call__(self, x, key=None):
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        x = _residual(x, lambda y: self.ls1(self.attn(self.norm1(y))), self.drop_path, k1)
        return _residual(x, lambda y: self.ls2(self.mlp(self.norm2(y))), self.drop_path, k2)

    def at_rows(self, x, patch_rows, n_prefix: int, key=None):
        """The block's output at every CLS token and at `patch_rows` only, (groups, B / groups + R, D).

        x (B, T, D); `patch_rows` (groups, R) as `take_rows`, over the tokens after the `n_prefix` CLS and
        register tokens. Keys and values still come from every token; the output projection, the MLP and
        the residual adds run on the kept rows only. Equal to `take_rows` of `__call__`, with the same
        stochastic-depth draws.
        """
        b, _, d = x.shape
        groups = patch_rows.shape[0]
        per_group = b // groups
        n_patch = x.shape[1] - n_prefix

        def pick(y):
            return jnp.concatenate([y[:, 0].reshape(groups, per_group, d), take_rows(y[:, n_prefix:], patch_rows)], 1)

        sample = jnp.concatenate([jnp.arange(b).reshape(groups, per_group),
                                  jnp.arange(groups)[:, None] * per_group + patch_rows // n_patch], 1)

        def scaled(branch, k):
            if k is None or self.drop_path == 0.0:
                return branch
            return branch * _sample_scale(k, self.drop_path, b)[sample][..., None].astype(branch.dtype)

        k1, k2 = (None, None) if key is None else jax.random.split(key)
        y = pick(x) + scaled(self.ls1(self.attn.proj(pick(self.attn.mix(self.norm1(x))))), k1)
        return y + scaled(self.ls2(self.mlp(self.norm2(y))), k2)


def _run_block(block: Block, x, key):
    return block(x, key)


_run_block_remat = nnx.remat(_run_block)


def _run_block_at_rows(block: Block, x, patch_rows, key, n_prefix: int):
    return block.at_rows(x, patch_rows, n_prefix, key)


_run_block_at_rows_remat = nnx.remat(_run_block_at_rows, static_argnums=(4,))


class DinoViT(nnx.Module):
    """`model(images (B,S,H,W), sequences, masks=(B,S,N) bool|None, rng=key|None, present=(B,S) bool|None)`
    -> cls/registers/patch. `present` False masks every token of that sequence (absent in that sample)."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.cfg = cfg
        d, p, dt = cfg.embed_dim, cfg.patch_size, cfg.compute_dtype
        self.patch_embed = PatchEmbed(p, d, dt, rngs)
        key = rngs.params
        self.cls_token = nnx.Param(1e-6 * jax.random.normal(key(), (1, 1, d)))
        self.pos_embed = nnx.Param(LINEAR_INIT(key(), (1, 1 + cfg.pos_grid**2, d)))
        self.mask_token = nnx.Param(jnp.zeros((1, d)))
        if cfg.num_registers:
            self.register_tokens = nnx.Param(1e-6 * jax.random.normal(key(), (1, cfg.num_registers, d)))
        # nn.Embedding default init N(0, 1); only the direction matters (rows are L2-normalised).
        self.seq_embed = nnx.Param(jax.random.normal(key(), (cfg.num_seq_embed, d)))
        if cfg.drop_path_uniform or cfg.depth == 1:
            rates = [cfg.drop_path_rate] * cfg.depth
        else:
            rates = [cfg.drop_path_rate * i / (cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nnx.List([Block(cfg, r, rngs) for r in rates])
        self.norm = _layernorm(d, jnp.float32, rngs)

    # --- token construction -------------------------------------------------------------------------
    def _embed(self, images, sequences, masks, present=None):
        cfg = self.cfg
        b, s, h, w = images.shape
        p, d = cfg.patch_size, cfg.embed_dim
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        sequences = tuple(int(i) for i in sequences)
        if len(sequences) != s:
            raise ValueError(f"{s} input channels but {len(sequences)} sequence indices {sequences}")
        if any(not 0 <= i < cfg.num_seq_embed for i in sequences):
            raise ValueError(f"sequence indices {sequences} out of range [0, {cfg.num_seq_embed})")
        if present is not None:
            absent = jnp.broadcast_to(~present[:, :, None], (b, s, (h // p) * (w // p)))
            masks = absent if masks is None else masks | absent
        h0, w0 = h // p, w // p
        n = h0 * w0
        x = self.patch_embed(images.reshape(b * s, h, w)).reshape(b, s, n, d).astype(jnp.float32)
        if masks is not None:
            if masks.shape != (b, s, n):
                raise ValueError(f"masks must have shape {(b, s, n)}, got {masks.shape}")
            x = jnp.where(masks[..., None], self.mask_token[...][None, None], x)
        pos = self.pos_embed[...][0]
        g = cfg.pos_grid
        grid = resize_pos_grid(
            pos[1:].reshape(g, g, d), (h0, w0), cfg.interpolate_offset, cfg.interpolate_antialias
        )
        x = x + grid.reshape(1, 1, n, d)
        if cfg.use_seq_embed:
            e = self.seq_embed[...][jnp.asarray(sequences)]
            e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
            x = x + e[None, :, None, :]
        cls = jnp.broadcast_to(self.cls_token[...][0, 0] + pos[0], (b, 1, d))
        parts = [cls]
        if cfg.num_registers:
            parts.append(jnp.broadcast_to(self.register_tokens[...], (b, cfg.num_registers, d)))
        parts.append(x.reshape(b, s * n, d))
        return jnp.concatenate(parts, axis=1).astype(cfg.compute_dtype)

    def _block_keys(self, rng) -> list:
        return [None] * self.cfg.depth if rng is None else list(jax.random.split(rng, self.cfg.depth))

    def _blocks(self, x, keys, blocks):
        run = _run_block_remat if self.cfg.remat else _run_block
        for blk, k in zip(blocks, keys):
            x = run(blk, x, k)
        return x

    def __call__(
        self,
        images: jax.Array,
        sequences: Sequence[int],
        masks: jax.Array | None = None,
        rng: jax.Array | None = None,
        present: jax.Array | None = None,
        patch_rows: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """With `patch_rows` (groups, R) (see `take_rows`), the output holds `cls` and only those patch tokens,
        `patch` (groups, R, D), and the last block runs its projection and MLP on these rows alone: the
        training step's losses read nothing else."""
        x = self._embed(images, sequences, masks, present)
        keys = self._block_keys(rng)
        r = self.cfg.num_registers
        if patch_rows is None:
            x = self.norm(self._blocks(x, keys, self.blocks))
            return {"cls": x[:, 0], "registers": x[:, 1 : 1 + r], "patch": x[:, 1 + r :]}
        x = self._blocks(x, keys[:-1], self.blocks[:-1])
        last = _run_block_at_rows_remat if self.cfg.remat else _run_block_at_rows
        y = self.norm(last(self.blocks[-1], x, patch_rows, keys[-1], 1 + r))
        per_group = x.shape[0] // patch_rows.shape[0]
        return {"cls": y[:, :per_group].reshape(x.shape[0], -1), "patch": y[:, per_group:]}

    def cls_attention(
        self, images: jax.Array, sequences: Sequence[int], masks: jax.Array | None = None,
        present: jax.Array | None = None,
    ) -> jax.Array:
        """Last block's attention from CLS to every patch token, (B, heads, S*N) (deterministic)."""
        x = self._blocks(self._embed(images, sequences, masks, present), self._block_keys(None),
                         self.blocks[:-1])
        last = self.blocks[-1]
        attn = last.attn.weights(last.norm1(x))
        return attn[:, :, 0, 1 + self.cfg.num_registers :]
