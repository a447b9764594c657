"""Independent PyTorch reference of the MM-DINOv2 backbone and DINOv2 head, written from the upstream
sources (MM-DINOv2 `dinov2/models/vision_transformer.py`, DINOv2 `dinov2/layers/*.py` and
`dinov2/layers/dino_head.py`), working directly on DINOv2-named state dicts.

Used only by the parity tests; it follows the PyTorch originals step by step: grey image repeated to RGB,
3-channel patch conv, mask token, CLS + `F.interpolate`d positional embedding, registers after CLS, one CLS,
unit-norm sequence embedding on patch tokens, pre-norm blocks, final LayerNorm.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_backbone_sd(
    d=64, depth=2, grid=5, patch=14, registers=0, ffn="mlp", hidden=None, seq_embed=True, seed=0
) -> dict[str, np.ndarray]:
    """A DINOv2-named backbone state dict with every tensor random (no zeros, no ones)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).numpy()

    hidden = hidden or 4 * d
    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, 1 + grid * grid, d, scale=1.0),
        "mask_token": r(1, d),
        "patch_embed.proj.weight": r(d, 3, patch, patch, scale=0.05),
        "patch_embed.proj.bias": r(d),
        "norm.weight": 1 + r(d),
        "norm.bias": r(d),
    }
    if registers:
        sd["register_tokens"] = r(1, registers, d)
    if seq_embed:
        sd["mri_seq_embed.weight"] = r(4, d, scale=1.0)
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d)}
        sd |= {b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d)}
        sd |= {b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d)}
        sd |= {b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d)}
        sd |= {b + "ls1.gamma": 1 + r(d), b + "ls2.gamma": 1 + r(d)}
        if ffn == "mlp":
            sd |= {b + "mlp.fc1.weight": r(hidden, d), b + "mlp.fc1.bias": r(hidden)}
            sd |= {b + "mlp.fc2.weight": r(d, hidden), b + "mlp.fc2.bias": r(d)}
        else:
            sd |= {b + "mlp.w12.weight": r(2 * hidden, d), b + "mlp.w12.bias": r(2 * hidden)}
            sd |= {b + "mlp.w3.weight": r(d, hidden), b + "mlp.w3.bias": r(d)}
    return sd


def random_head_sd(in_dim=64, out_dim=3, hidden=32, bottleneck=16, nlayers=3, seed=1) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    dims = [in_dim] + [hidden] * (nlayers - 1) + [bottleneck]
    sd = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        name = "mlp" if nlayers == 1 else f"mlp.{2 * i}"
        sd[name + ".weight"] = (torch.randn(b, a, generator=g) * 0.2).numpy()
        sd[name + ".bias"] = (torch.randn(b, generator=g) * 0.2).numpy()
    sd["last_layer.weight_g"] = (1 + torch.rand(out_dim, 1, generator=g)).numpy()
    sd["last_layer.weight_v"] = torch.randn(out_dim, bottleneck, generator=g).numpy()
    return sd


def _pos(pos_embed, h0, w0, offset, antialias):
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    if (h0, w0) == (m, m):
        return pos_embed
    grid = pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if offset:
        kw = dict(scale_factor=((h0 + offset) / m, (w0 + offset) / m))
    else:
        kw = dict(size=(h0, w0))
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kw)
    assert grid.shape[-2:] == (h0, w0)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)


def backbone_forward(
    sd, images, sequences, masks=None, *, num_heads, offset=0.1, antialias=False, use_seq_embed=True
) -> np.ndarray:
    """Final-LayerNorm tokens (B, 1+R+S*N, D) as float64 numpy. images (B,S,H,W), masks (B,S,N) bool."""
    t = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in sd.items()}
    x = torch.as_tensor(np.asarray(images), dtype=torch.float64)
    b, s, h, w = x.shape
    wp = t["patch_embed.proj.weight"]
    p = wp.shape[-1]
    h0, w0 = h // p, w // p
    x = x.reshape(b * s, 1, h, w).repeat(1, 3, 1, 1)
    x = F.conv2d(x, wp, t["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)  # (B*S, N, D)
    d = x.shape[-1]
    if masks is not None:
        m = torch.as_tensor(np.asarray(masks)).reshape(b * s, -1, 1)
        x = torch.where(m, t["mask_token"].unsqueeze(0), x)
    x = torch.cat([t["cls_token"].expand(b * s, -1, -1), x], dim=1)
    x = x + _pos(t["pos_embed"], h0, w0, offset, antialias)
    x = x.reshape(b, s, 1 + h0 * w0, d)
    cls, patches = x[:, 0, :1], x[:, :, 1:]
    if use_seq_embed:
        e = F.normalize(t["mri_seq_embed.weight"][list(sequences)], p=2, dim=-1, eps=1e-12)
        patches = patches + e[None, :, None, :]
    parts = [cls]
    if "register_tokens" in t:
        parts.append(t["register_tokens"].expand(b, -1, -1))
    x = torch.cat(parts + [patches.reshape(b, -1, d)], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("blocks."))
    for i in range(depth):
        x = _block(t, f"blocks.{i}.", x, num_heads)
    return F.layer_norm(x, (d,), t["norm.weight"], t["norm.bias"], eps=1e-6).numpy()


def _block(t, pre, x, num_heads):
    d = x.shape[-1]
    y = F.layer_norm(x, (d,), t[pre + "norm1.weight"], t[pre + "norm1.bias"], eps=1e-6)
    b, n, _ = y.shape
    qkv = F.linear(y, t[pre + "attn.qkv.weight"], t[pre + "attn.qkv.bias"]).reshape(b, n, 3, num_heads, d // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * (d // num_heads) ** -0.5, dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(b, n, d)
    x = x + t[pre + "ls1.gamma"] * F.linear(y, t[pre + "attn.proj.weight"], t[pre + "attn.proj.bias"])
    y = F.layer_norm(x, (d,), t[pre + "norm2.weight"], t[pre + "norm2.bias"], eps=1e-6)
    if pre + "mlp.fc1.weight" in t:
        y = F.gelu(F.linear(y, t[pre + "mlp.fc1.weight"], t[pre + "mlp.fc1.bias"]))
        y = F.linear(y, t[pre + "mlp.fc2.weight"], t[pre + "mlp.fc2.bias"])
    else:
        y1, y2 = F.linear(y, t[pre + "mlp.w12.weight"], t[pre + "mlp.w12.bias"]).chunk(2, dim=-1)
        y = F.linear(F.silu(y1) * y2, t[pre + "mlp.w3.weight"], t[pre + "mlp.w3.bias"])
    return x + t[pre + "ls2.gamma"] * y


def head_forward(sd, x) -> np.ndarray:
    t = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in sd.items()}
    y = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    names = sorted({k.rsplit(".", 1)[0] for k in t if k.startswith("mlp")},
                   key=lambda n: int(n.split(".")[1]) if "." in n else 0)
    for j, name in enumerate(names):
        y = F.linear(y, t[name + ".weight"], t[name + ".bias"])
        if j < len(names) - 1:
            y = F.gelu(y)
    y = F.normalize(y, dim=-1, p=2, eps=1e-12)
    v, g = t["last_layer.weight_v"], t["last_layer.weight_g"]
    return F.linear(y, g * v / v.norm(dim=1, keepdim=True)).numpy()
