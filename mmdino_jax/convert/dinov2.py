"""Key and layout mapping between PyTorch DINOv2 / MM-DINOv2 / HF Dinov2 state dicts and `mmdino_jax`.

PyTorch names follow facebookresearch/dinov2 (`blocks.<i>.attn.qkv.weight`, ...), plus MM-DINOv2's
`mri_seq_embed.weight`. HF `transformers` names (`encoder.layer.<i>...`) and chunked FSDP names
(`blocks.<chunk>.<i>...`) are renamed to those first. Linear kernels are transposed; the RGB patch kernel
(D,3,p,p) is summed over its input channels (exact for the grey->RGB repeat) and permuted to (p,p,1,D).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from mmdino_jax.models.vit import ViTConfig

SEQ_EMBED_KEY = "mri_seq_embed.weight"
_HEAD_PREFIXES = ("dino_head.", "ibot_head.")
# HF transformers names: v4 (the hub files) and v5 (`q_proj` ..., SwiGLU split into gate/up/down).
_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.(q|k|v)_proj\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.(output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(weights_out|down_proj)\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^layernorm\.", "norm."),
]
# pieces concatenated along the output axis: (parts, fused name)
_HF_FUSE = [(("query", "key", "value"), "attn.qkv"), (("q", "k", "v"), "attn.qkv"),
            (("gate_proj", "up_proj"), "mlp.w12")]


# --- normalising key sets --------------------------------------------------------------------------------
def _strip(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _unwrap_key(key: str) -> str:
    """Drop wrapper segments (DDP `module.`, FSDP `_fsdp_wrapped_module.`, torch.compile `_orig_mod.`)."""
    parts = key.split(".")
    return ".".join(p for p in parts if p not in ("module", "_fsdp_wrapped_module", "_orig_mod"))


def split_checkpoint(sd: dict[str, np.ndarray], branch: str = "teacher") -> tuple[dict, dict[str, dict]]:
    """(backbone state dict in DINOv2 names, {"dino_head": sd, "ibot_head": sd} where present)."""
    sd = {_unwrap_key(k): v for k, v in sd.items()}
    if any(k.startswith(("teacher.", "student.")) for k in sd):
        if not any(k.startswith(branch + ".") for k in sd):
            raise ValueError(f"checkpoint has teacher./student. weights but none for branch {branch!r}")
        sd = {k[len(branch) + 1 :]: v for k, v in sd.items() if k.startswith(branch + ".")}
    sd = _strip(sd, "dinov2.")  # HF task models
    heads = {}
    for prefix in _HEAD_PREFIXES:
        part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if part:
            heads[prefix[:-1]] = part
    backbone = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}
    if any(k.startswith("backbone.") for k in backbone):
        backbone = {k[len("backbone.") :]: v for k, v in backbone.items() if k.startswith("backbone.")}
    return _canonical_backbone(backbone), heads


def _canonical_backbone(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if "embeddings.cls_token" in sd:  # HF transformers layout
        out = {}
        for k, v in sd.items():
            for pat, rep in _HF_RENAMES:
                if re.match(pat, k):
                    k = re.sub(pat, rep, k)
                    break
            out[k] = v
        sd = out
        depth = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
        for i in sorted(depth):
            for parts, fused in _HF_FUSE:
                sub = "attn." if fused.startswith("attn") else "mlp."
                names = [f"blocks.{i}.{sub}{n}." for n in parts]
                if names[0] + "weight" in sd:
                    for p in ("weight", "bias"):
                        sd[f"blocks.{i}.{fused}.{p}"] = np.concatenate([sd.pop(n + p) for n in names])
    # FSDP block chunks: blocks.<chunk>.<i>.x -> blocks.<i>.x (the index inside a chunk is already global)
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


# --- configs ---------------------------------------------------------------------------------------------
def infer_config(
    sd: dict[str, np.ndarray], hf_config: dict | None = None, arch: str | None = None, **overrides: Any
) -> ViTConfig:
    """ViTConfig from the shapes of a canonical backbone state dict. Heads are 64 wide (every DINOv2 size)
    unless the HF config or `arch` (a ViTConfig preset, checked against the shapes) says otherwise. The
    sequence embedding is switched on only when the checkpoint has one (MM-DINOv2)."""
    hf_config = hf_config or {}
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in sd:
            raise ValueError(f"not a DINOv2 backbone state dict: {key!r} missing (keys: {sorted(sd)[:8]} ...)")
    d = sd["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    n_pos = sd["pos_embed"].shape[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ValueError(f"pos_embed has {n_pos} patch positions, not a square grid")
    if "blocks.0.mlp.w12.weight" in sd:
        ffn, hidden = "swiglu", sd["blocks.0.mlp.w3.weight"].shape[1]
        mlp_ratio = hidden * 1.5 / d
    else:
        ffn, hidden = "mlp", sd["blocks.0.mlp.fc1.weight"].shape[0]
        mlp_ratio = hidden / d
    regs = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    cfg = dict(
        embed_dim=d,
        depth=depth,
        num_heads=hf_config.get("num_attention_heads", max(d // 64, 1)),
        mlp_ratio=mlp_ratio,
        ffn=ffn,
        num_registers=regs,
        patch_size=sd["patch_embed.proj.weight"].shape[-1],
        pos_grid=grid,
        # DINOv2 resampling: register models use size + antialias, the others scale_factor with +0.1
        interpolate_offset=0.0 if regs else 0.1,
        interpolate_antialias=bool(regs),
        use_seq_embed=SEQ_EMBED_KEY in sd,
    )
    if arch is not None:
        preset = ViTConfig.preset(arch)
        want = {k: getattr(preset, k) for k in ("embed_dim", "depth", "ffn")}
        have = {k: cfg[k] for k in want}
        if want != have:
            raise ValueError(f"--arch {arch} expects {want}, but the checkpoint has {have}")
        cfg["num_heads"] = preset.num_heads
    cfg.update(overrides)
    out = ViTConfig.from_dict(cfg)
    if out.hidden_dim != hidden:
        raise ValueError(f"cannot express FFN width {hidden} for embed_dim {d} with ffn={ffn!r}")
    return out


def infer_head_config(sd: dict[str, np.ndarray]) -> dict[str, int]:
    """DINOHead arguments from a head state dict (keys `mlp.<j>.weight`, `last_layer.*`)."""
    linears = _head_linears(sd)
    v = _weight_v(sd)
    first, last = sd[linears[0] + ".weight"], sd[linears[-1] + ".weight"]
    return dict(
        in_dim=first.shape[1],
        out_dim=v.shape[0],
        hidden_dim=first.shape[0] if len(linears) > 1 else 2048,
        bottleneck_dim=last.shape[0],
        nlayers=len(linears),
    )


def _head_linears(sd) -> list[str]:
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"mlp\.(\d+)\.weight$", k))})
    if idx:
        return [f"mlp.{j}" for j in idx]
    if "mlp.weight" in sd:
        return ["mlp"]
    raise ValueError(f"not a DINOHead state dict (keys: {sorted(sd)[:8]})")


def _weight_v(sd):
    if "last_layer.weight_v" in sd:
        return sd["last_layer.weight_v"]
    return sd["last_layer.parametrizations.weight.original1"]


# --- tensor mapping --------------------------------------------------------------------------------------
def _backbone_table(cfg: ViTConfig) -> list[tuple[str, tuple, str]]:
    """(torch key, flax path, transform) for every backbone tensor."""
    t = [
        ("cls_token", ("cls_token",), "id"),
        ("pos_embed", ("pos_embed",), "id"),
        ("mask_token", ("mask_token",), "id"),
        (SEQ_EMBED_KEY, ("seq_embed",), "id"),
        ("patch_embed.proj.weight", ("patch_embed", "kernel"), "patch"),
        ("patch_embed.proj.bias", ("patch_embed", "bias"), "id"),
        ("norm.weight", ("norm", "scale"), "id"),
        ("norm.bias", ("norm", "bias"), "id"),
    ]
    if cfg.num_registers:
        t.append(("register_tokens", ("register_tokens",), "id"))
    lin = ("attn.qkv", "attn.proj") + (("mlp.fc1", "mlp.fc2") if cfg.ffn == "mlp" else ("mlp.w12", "mlp.w3"))
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            t += [(b + n + ".weight", ("blocks", i, n, "scale"), "id"),
                  (b + n + ".bias", ("blocks", i, n, "bias"), "id")]
        for n in lin:
            path = ("blocks", i, *n.split("."))
            t += [(b + n + ".weight", path + ("kernel",), "linear"), (b + n + ".bias", path + ("bias",), "id")]
        for n in ("ls1", "ls2"):
            t.append((b + n + ".gamma", ("blocks", i, n, "gamma"), "id"))
    return t


def _head_table(sd_or_cfg: dict) -> list[tuple[str, tuple, str]]:
    n = sd_or_cfg["nlayers"]
    names = ["mlp"] if n == 1 else [f"mlp.{2 * i}" for i in range(n)]
    t = []
    for i, name in enumerate(names):
        t += [(name + ".weight", ("mlp", i, "kernel"), "linear"), (name + ".bias", ("mlp", i, "bias"), "id")]
    return t + [(f"last_layer.{n}", ("last_layer", n), "id") for n in ("weight_g", "weight_v")]


def _to_flax(x: np.ndarray, how: str) -> np.ndarray:
    if how == "linear":
        return x.T
    if how == "patch":  # (D, C, p, p) -> (p, p, 1, D), channels summed in order (see _to_torch)
        total = x[:, 0]
        for c in range(1, x.shape[1]):
            total = total + x[:, c]
        return total[:, None].transpose(2, 3, 1, 0)
    return x


def _to_torch(x: np.ndarray, how: str) -> np.ndarray:
    if how == "linear":
        return x.T
    if how == "patch":  # (p, p, 1, D) -> (D, 3, p, p): [w/3, w/3, w - 2(w/3)] sums back to w bit-exactly
        w = x.transpose(3, 2, 0, 1)
        third = (w / np.float32(3)).astype(np.float32)
        return np.concatenate([third, third, w - 2 * third], axis=1)
    return x


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def fill_tree(target: dict, sd: dict[str, np.ndarray], table, optional: tuple[str, ...] = ()) -> list[str]:
    """Write every tensor of `sd` into the pure-dict `target` (shapes checked). Raises with all problems at
    once; returns the torch keys from `optional` that were absent (left at their initial values)."""
    errors, absent = [], []
    used = set()
    for key, path, how in table:
        if key not in sd:
            if key in optional:
                absent.append(key)
            else:
                errors.append(f"missing {key}")
            continue
        used.add(key)
        value = _to_flax(np.asarray(sd[key], np.float32), how)
        want = tuple(_get(target, path).shape)
        if value.shape != want:
            errors.append(f"{key}: shape {tuple(sd[key].shape)} -> {value.shape}, model expects {want}")
            continue
        _set(target, path, value)
    errors += [f"unexpected {k}" for k in sorted(set(sd) - used)]
    if errors:
        raise ValueError("checkpoint does not match the model: " + "; ".join(errors))
    return absent


def backbone_to_flax(target: dict, sd: dict[str, np.ndarray], cfg: ViTConfig) -> list[str]:
    """Fill a backbone pure dict; the sequence embedding (absent from DINOv2 hub files) may stay initialised.
    A checkpoint without LayerScale (init_values=None) gets gamma = 1."""
    sd = dict(sd)
    if not any(k.endswith(".ls1.gamma") for k in sd):
        for i in range(cfg.depth):
            for n in ("ls1", "ls2"):
                sd[f"blocks.{i}.{n}.gamma"] = np.ones(cfg.embed_dim, np.float32)
    if sd.get("mask_token") is not None and sd["mask_token"].ndim == 3:  # some exports keep (1, 1, D)
        sd["mask_token"] = sd["mask_token"].reshape(1, -1)
    return fill_tree(target, sd, _backbone_table(cfg), optional=(SEQ_EMBED_KEY,))


def head_to_flax(target: dict, sd: dict[str, np.ndarray]) -> None:
    sd = dict(sd)
    if "last_layer.weight_v" not in sd:
        sd["last_layer.weight_g"] = sd.pop("last_layer.parametrizations.weight.original0")
        sd["last_layer.weight_v"] = sd.pop("last_layer.parametrizations.weight.original1")
    fill_tree(target, sd, _head_table(infer_head_config(sd)))


def backbone_to_torch(tree: dict, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """DINOv2 / MM-DINOv2 names (3-channel patch kernel, `mri_seq_embed.weight`) from a backbone pure dict."""
    return {k: _to_torch(np.asarray(_get(tree, p), np.float32), how) for k, p, how in _backbone_table(cfg)}


def hub_to_hf(sd: dict[str, np.ndarray], cfg: ViTConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """HF `transformers` Dinov2 state dict (the hub files' v4 names) and config.json from DINOv2 names.
    HF has no MRI-sequence embedding, so `mri_seq_embed.weight` is left out."""
    out = {}
    for k, v in sd.items():
        if k == SEQ_EMBED_KEY:
            continue
        m = re.match(r"blocks\.(\d+)\.(.+)$", k)
        if m is None:
            out[_HF_TOP[k]] = v
            continue
        i, rest = m.groups()
        pre = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            for name, part in zip(("query", "key", "value"), np.split(v, 3)):
                out[pre + f"attention.attention.{name}.{rest.rsplit('.', 1)[1]}"] = part
        else:
            for a, b in _HF_BLOCK:
                rest = rest.replace(a, b)
            out[pre + rest] = v
    config = {
        "model_type": "dinov2_with_registers" if cfg.num_registers else "dinov2",
        "architectures": ["Dinov2WithRegistersModel" if cfg.num_registers else "Dinov2Model"],
        "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "mlp_ratio": int(cfg.mlp_ratio) if float(cfg.mlp_ratio).is_integer() else cfg.mlp_ratio,
        "use_swiglu_ffn": cfg.ffn == "swiglu", "hidden_act": "gelu",
        "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "qkv_bias": True, "num_channels": 3,
        "patch_size": cfg.patch_size, "image_size": cfg.pos_grid * cfg.patch_size,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
    }
    if cfg.num_registers:
        config["num_register_tokens"] = cfg.num_registers
    return out, config


_HF_TOP = {
    "cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings", "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias",
}
_HF_BLOCK = [("attn.proj.", "attention.output.dense."), ("ls1.gamma", "layer_scale1.lambda1"),
             ("ls2.gamma", "layer_scale2.lambda1"), ("mlp.w12.", "mlp.weights_in."), ("mlp.w3.", "mlp.weights_out.")]


def head_to_torch(tree: dict, head_cfg: dict) -> dict[str, np.ndarray]:
    return {k: _to_torch(np.asarray(_get(tree, p), np.float32), how) for k, p, how in _head_table(head_cfg)}
