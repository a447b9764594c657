"""Parity with PyTorch: positional-embedding resampling against `F.interpolate`, the backbone against an
independent torch reference of MM-DINOv2 and against HF `transformers` Dinov2 models, the head against
DINOv2's weight-normed head."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from helpers import torch_dinov2_ref as ref  # noqa: E402
from mmdino_jax.convert import dinov2  # noqa: E402
from mmdino_jax.convert.checkpoints import _assign, _numpy_tree  # noqa: E402
from mmdino_jax.models import DINOHead, DinoViT  # noqa: E402
from mmdino_jax.models.pos_embed import resize_pos_grid  # noqa: E402


@nnx.jit(static_argnums=(2,))
def fwd(model, images, sequences, masks=None):
    out = model(images, sequences, masks)
    return jnp.concatenate([out["cls"][:, None], out["registers"], out["patch"]], axis=1)


def build(sd, **overrides) -> DinoViT:
    backbone, _ = dinov2.split_checkpoint(sd)
    cfg = dinov2.infer_config(backbone, **overrides)
    model = DinoViT(cfg)
    tree = _numpy_tree(model)
    dinov2.backbone_to_flax(tree, backbone, cfg)
    _assign(model, tree)
    return model


@pytest.mark.parametrize("n", [2, 4, 7, 16, 40])
def test_pos_grid_resampling_matches_torch(n):
    grid = np.random.RandomState(n).randn(37, 37, 6).astype(np.float32)
    t = torch.from_numpy(grid).permute(2, 0, 1)[None]
    cases = [
        (0.1, False, dict(scale_factor=((n + 0.1) / 37,) * 2)),  # DINOv2 / MM-DINOv2
        (0.0, True, dict(size=(n, n), antialias=True)),  # register models
        (0.0, False, dict(size=(n, n))),  # HF Dinov2
    ]
    for offset, aa, kw in cases:
        want = F.interpolate(t, mode="bicubic", **kw)[0].permute(1, 2, 0).numpy()
        got = np.asarray(resize_pos_grid(jnp.asarray(grid), (n, n), offset, aa))
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"offset={offset} antialias={aa}")
    np.testing.assert_array_equal(resize_pos_grid(jnp.asarray(grid), (37, 37)), grid)


def test_backbone_matches_mm_dinov2_reference():
    """The multi-sequence token builder (sequence order, masks, unit-norm sequence embedding); registers and
    SwiGLU are checked against transformers below."""
    sd = ref.random_backbone_sd()
    model = build(sd, num_heads=2)
    cfg = model.cfg
    rng = np.random.RandomState(0)
    # 70 px = the native 5x5 grid, 98 px (7x7) and 42 px (3x3) resample it
    for size, seqs in ((70, (2, 0, 3)), (98, (3, 1)), (42, (0, 1, 2, 3))):
        x = rng.rand(2, len(seqs), size, size).astype(np.float32)
        masks = rng.rand(2, len(seqs), (size // 14) ** 2) < 0.3
        masks[0, 0] = True  # a whole sequence absent
        want = ref.backbone_forward(sd, x, seqs, masks, num_heads=2, offset=cfg.interpolate_offset,
                                    antialias=cfg.interpolate_antialias)
        got = np.asarray(fwd(model, jnp.asarray(x), seqs, jnp.asarray(masks)))
        np.testing.assert_allclose(got, want, atol=5e-5, err_msg=f"{size}px {seqs}")


HF_SIZES = {  # ViT-S and ViT-g widths; depth reduced to 2 so CI stays fast
    "small": dict(hidden_size=384, num_attention_heads=6),
    "giant": dict(hidden_size=1536, num_attention_heads=24, use_swiglu_ffn=True),
}


def _hf_model(kind: str):
    transformers = pytest.importorskip("transformers")
    common = dict(num_hidden_layers=2, image_size=518, patch_size=14)
    if kind == "registers":
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **HF_SIZES["small"], **common)
        m = transformers.Dinov2WithRegistersModel(config)
    else:
        m = transformers.Dinov2Model(transformers.Dinov2Config(**HF_SIZES["giant" if kind == "giant" else "small"],
                                                               **common))
        m.embeddings.interpolate_pos_encoding = _original_rule(m.embeddings)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # no zeros or ones left from the init
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def _original_rule(embeddings):
    """HF Dinov2 resamples by size; the original DINOv2 (and MM-DINOv2) uses scale_factor (n + 0.1) / 37."""

    def interpolate(tokens, height, width):
        pos = embeddings.position_embeddings
        m, d = int(math.sqrt(pos.shape[1] - 1)), pos.shape[-1]
        h0, w0 = height // 14, width // 14
        if (h0, w0) == (m, m):
            return pos
        grid = pos[:, 1:].reshape(1, m, m, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic")
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, d)], dim=1)

    return interpolate


@pytest.mark.parametrize("kind, sizes", [("small", (518, 224, 98, 56)), ("registers", (518, 224, 98, 56)),
                                         ("giant", (98,))])
def test_backbone_matches_transformers_dinov2(kind, sizes):
    hf = _hf_model(kind)
    hf_sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    hub_sd, _ = dinov2.split_checkpoint(hf_sd)  # the same weights under the DINOv2 hub names
    assert "blocks.0.attn.qkv.weight" in hub_sd and "pos_embed" in hub_sd
    heads = hf.config.num_attention_heads
    models = {"hf": build(hf_sd, num_heads=heads), "hub": build(hub_sd, num_heads=heads)}
    assert not models["hub"].cfg.use_seq_embed  # plain DINOv2: no sequence embedding added
    rng = np.random.RandomState(1)
    for size in sizes:
        grey = rng.rand(1, 1, size, size).astype(np.float32)
        masks = rng.rand(1, (size // 14) ** 2) < 0.3
        with torch.no_grad():
            want = hf(torch.from_numpy(grey).repeat(1, 3, 1, 1), bool_masked_pos=torch.from_numpy(masks))
        want = want.last_hidden_state.numpy()
        for layout, model in models.items():
            got = np.asarray(fwd(model, jnp.asarray(grey), (0,), jnp.asarray(masks[:, None])))
            assert np.abs(got - want).max() <= 1e-4, f"{layout} layout, {size}px: {np.abs(got - want).max()}"


def test_head_matches_torch_reference():
    for nlayers in (1, 3):
        sd = ref.random_head_sd(nlayers=nlayers)
        head = DINOHead(**dinov2.infer_head_config(sd))
        tree = _numpy_tree(head)
        dinov2.head_to_flax(tree, sd)
        _assign(head, tree)
        x = np.random.RandomState(2).randn(6, 64).astype(np.float32)
        np.testing.assert_allclose(np.asarray(nnx.jit(lambda h, v: h(v))(head, jnp.asarray(x))),
                                   ref.head_forward(sd, x), atol=1e-5)
