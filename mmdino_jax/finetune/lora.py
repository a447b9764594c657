"""LoRA adapters on a DinoViT with flax's `nnx.LoRALinear`, and merging them back into plain weights.

`add_lora` swaps each block's attention `qkv` / `proj` (and, with `mlp=True`, the FFN's linear layers)
for an `nnx.LoRALinear` (on the rows of its input, `models.linear`) that keeps the layer's kernel and bias:
`y = x @ kernel + bias + x @ A @ B`, A (in, r) He-uniform and B (r, out) zero at the start, so the adapted
model starts equal to the original.
The adapters are `nnx.LoRAParam`s; everything else stays at the plain `DinoViT` parameter paths
(docs/architecture.md), so the frozen part of a LoRA model is a plain backbone's parameter tree.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mmdino_jax.models.linear import LoRALinear
from mmdino_jax.models.vit import DinoViT


def _adapted_layers(backbone: DinoViT, mlp: bool):
    """(owner module, attribute name) of every linear layer that gets an adapter."""
    for block in backbone.blocks:
        yield block.attn, "qkv"
        yield block.attn, "proj"
        if mlp:
            for name, value in vars(block.mlp).items():
                if isinstance(value, nnx.Linear):
                    yield block.mlp, name


def add_lora(backbone: DinoViT, rank: int, mlp: bool, rngs: nnx.Rngs) -> DinoViT:
    """Give `backbone` rank-`rank` adapters in place (see the module docstring); returns it."""
    if rank < 1:
        raise ValueError(f"finetune.lora_rank must be >= 1 for LoRA, got {rank}")
    for owner, name in _adapted_layers(backbone, mlp):
        old = getattr(owner, name)
        kernel, bias = old.kernel[...], old.bias[...]
        setattr(owner, name, LoRALinear(
            old.in_features, old.out_features, lora_rank=rank, dtype=old.dtype, lora_dtype=old.dtype,
            kernel_init=lambda *_, k=kernel: k, bias_init=lambda *_, b=bias: b, rngs=rngs))
    return backbone


def split_adapters(backbone: nnx.Module) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, adapters, base) of a LoRA backbone as pure dicts; `nnx.merge(graphdef, adapters, base)`
    rebuilds it. `base` has the plain backbone's structure."""
    graphdef, adapters, base = nnx.split(backbone, nnx.LoRAParam, nnx.Param)
    return graphdef, adapters.to_pure_dict(), base.to_pure_dict()


def merge_adapters(base: dict, adapters: dict) -> dict:
    """Plain backbone parameters with every adapted kernel replaced by kernel + A @ B (float32)."""
    out = dict(base)
    for name, sub in adapters.items():
        if name == "lora":
            a, b = jnp.asarray(sub["lora_a"], jnp.float32), jnp.asarray(sub["lora_b"], jnp.float32)
            out["kernel"] = jnp.asarray(base["kernel"], jnp.float32) + a @ b
        else:
            out[name] = merge_adapters(base[name], sub)
    return out
