"""Backbone and head behaviour (no PyTorch needed): shapes, token order, masking, sequence embedding,
stochastic depth, dtype, parameter paths and counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmdino_jax.models import DINOHead, DinoViT, ViTConfig
from mmdino_jax.models.vit import take_rows

TINY = dict(embed_dim=32, depth=2, num_heads=2, pos_grid=5, layerscale_init=1.0)


@nnx.jit(static_argnums=(2,))
def fwd(model, images, sequences, masks=None, rng=None):
    """Jitted forward: one compilation instead of op-by-op dispatch keeps the tests fast."""
    return model(images, sequences, masks, rng)


def _images(b=2, s=3, size=28, seed=0):
    return jnp.asarray(np.random.RandomState(seed).rand(b, s, size, size).astype(np.float32))


def _paths(module):
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(module, nnx.Param).to_pure_dict())[0]
    return {".".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat}


def test_output_shapes_and_token_order():
    model = DinoViT(ViTConfig(**TINY, num_registers=4))
    out = fwd(model, _images(b=2, s=3, size=28), (2, 0, 3))
    assert out["cls"].shape == (2, 32)
    assert out["registers"].shape == (2, 4, 32)
    assert out["patch"].shape == (2, 3 * 4, 32)
    assert all(v.dtype == jnp.float32 for v in out.values())
    no_reg = fwd(DinoViT(ViTConfig(**TINY)), _images(), (0, 1, 2))
    assert no_reg["registers"].shape == (2, 0, 32)


def test_parameter_paths_follow_the_contract():
    paths = _paths(DinoViT(ViTConfig(**TINY, num_registers=2)))
    for p in ("cls_token", "pos_embed", "mask_token", "register_tokens", "seq_embed", "patch_embed.kernel",
              "patch_embed.bias", "blocks.1.norm1.scale", "blocks.1.norm2.bias", "blocks.0.attn.qkv.kernel",
              "blocks.0.attn.proj.bias", "blocks.0.ls1.gamma", "blocks.0.ls2.gamma", "blocks.0.mlp.fc1.kernel",
              "blocks.0.mlp.fc2.bias", "norm.scale", "norm.bias"):
        assert p in paths, p
    swiglu = _paths(DinoViT(ViTConfig(**TINY, ffn="swiglu")))
    assert {"blocks.0.mlp.w12.kernel", "blocks.0.mlp.w3.kernel"} <= swiglu
    assert "register_tokens" not in swiglu
    head = _paths(DINOHead(32, 3, hidden_dim=16, bottleneck_dim=8, nlayers=3))
    assert head == {"mlp.0.kernel", "mlp.0.bias", "mlp.1.kernel", "mlp.1.bias", "mlp.2.kernel", "mlp.2.bias",
                    "last_layer.weight_g", "last_layer.weight_v"}


@pytest.mark.parametrize(
    "name, expected",
    # DINOv2 hub parameter counts (3-channel patch kernel, no sequence embedding): S 22,056,576,
    # B 86,580,480, L 304,368,640, g 1,136,480,768. Ours: 1-channel patch kernel + a (4, D) sequence embedding.
    [("vits14", 22_056_576), ("vitb14", 86_580_480),
     pytest.param("vitl14", 304_368_640, marks=pytest.mark.slow),
     pytest.param("vitg14", 1_136_480_768, marks=pytest.mark.slow)],
)
def test_preset_sizes_match_dinov2(name, expected):
    cfg = ViTConfig.preset(name)
    abstract = nnx.eval_shape(lambda: DinoViT(cfg))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    d, p = cfg.embed_dim, cfg.patch_size
    assert n == expected - 2 * p * p * d + 4 * d


def test_config_validation_and_round_trip():
    cfg = ViTConfig.preset("vits14", num_registers=4, dtype="bfloat16")
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert ViTConfig.preset("vitg14").hidden_dim == 4096
    with pytest.raises(ValueError, match="preset"):
        ViTConfig.preset("vit_huge")
    with pytest.raises(ValueError, match="ffn"):
        ViTConfig(ffn="geglu")
    with pytest.raises(ValueError, match="unknown ViTConfig"):
        ViTConfig.from_dict({"embed_dims": 3})


def test_masked_sequence_ignores_its_image():
    model = DinoViT(ViTConfig(**TINY))
    x = _images(b=2, s=3)
    masks = jnp.zeros((2, 3, 4), bool).at[:, 1].set(True)
    other = x.at[:, 1].set(jnp.asarray(np.random.RandomState(5).rand(2, 28, 28), jnp.float32))
    a, b = fwd(model, x, (0, 1, 2), masks), fwd(model, other, (0, 1, 2), masks)
    np.testing.assert_allclose(a["cls"], b["cls"], atol=1e-6)
    assert not np.allclose(fwd(model, x, (0, 1, 2))["cls"], fwd(model, other, (0, 1, 2))["cls"], atol=1e-4)
    with pytest.raises(ValueError, match="masks"):
        fwd(model, x, (0, 1, 2), jnp.zeros((2, 12), bool))
    # present=False masks the whole sequence, alone or on top of token masks
    present = jnp.ones((2, 3), bool).at[:, 1].set(False)
    by_presence = nnx.jit(lambda m, im, p, t: m(im, (0, 1, 2), t, present=p))
    np.testing.assert_array_equal(by_presence(model, x, present, None)["cls"], a["cls"])
    tokens = jnp.zeros((2, 3, 4), bool).at[:, 0, :2].set(True)
    np.testing.assert_array_equal(by_presence(model, x, present, tokens)["cls"],
                                  fwd(model, x, (0, 1, 2), masks | tokens)["cls"])


def test_channel_order_is_free_when_indices_follow():
    model = DinoViT(ViTConfig(**TINY))
    x = _images(b=2, s=3)
    a = fwd(model, x, (3, 0, 2))
    b = fwd(model, x[:, ::-1], (2, 0, 3))
    np.testing.assert_allclose(a["cls"], b["cls"], atol=1e-5)
    pa = np.asarray(a["patch"]).reshape(2, 3, 4, -1)
    pb = np.asarray(b["patch"]).reshape(2, 3, 4, -1)[:, ::-1]
    np.testing.assert_allclose(pa, pb, atol=1e-5)
    # the sequence embedding tells sequences apart
    assert not np.allclose(fwd(model, x, (0, 1, 2))["cls"], fwd(model, x, (1, 0, 2))["cls"], atol=1e-4)
    with pytest.raises(ValueError, match="sequence indices"):
        fwd(model, x, (0, 1))


def test_sequence_embedding_has_fixed_unit_norm():
    model = DinoViT(ViTConfig(**TINY))
    x = _images()
    before = fwd(model, x, (0, 1, 2))["cls"]
    model.seq_embed[...] = model.seq_embed[...] * 7.0
    np.testing.assert_allclose(fwd(model, x, (0, 1, 2))["cls"], before, atol=1e-5)
    off = DinoViT(ViTConfig(**TINY, use_seq_embed=False))
    y1 = fwd(off, x, (0, 1, 2))["cls"]
    off.seq_embed[...] = off.seq_embed[...] + 1.0
    np.testing.assert_allclose(fwd(off, x, (0, 1, 2))["cls"], y1)


@pytest.mark.parametrize("rate", [0.05, 0.4])
def test_stochastic_depth_only_with_a_key(rate):
    model = DinoViT(ViTConfig(**TINY, drop_path_rate=rate))
    x = _images(b=8, s=2)
    det1, det2 = fwd(model, x, (0, 1)), fwd(model, x, (0, 1))
    np.testing.assert_array_equal(det1["cls"], det2["cls"])
    r1, r1b = fwd(model, x, (0, 1), None, jax.random.key(1)), fwd(model, x, (0, 1), None, jax.random.key(1))
    np.testing.assert_array_equal(r1["cls"], r1b["cls"])
    assert not np.allclose(r1["cls"], det1["cls"], atol=1e-5)
    no_drop = DinoViT(ViTConfig(**TINY))
    np.testing.assert_array_equal(fwd(no_drop, x, (0, 1), None, jax.random.key(1))["cls"],
                                  fwd(no_drop, x, (0, 1))["cls"])


def test_drop_path_subset_keeps_the_other_samples_untouched():
    # rate 0.5 over a batch of 4: each residual branch runs on exactly 2 samples, scaled by 2
    model = DinoViT(ViTConfig(**{**TINY, "depth": 1}, drop_path_rate=0.5))
    blk = model.blocks[0]
    x = jnp.asarray(np.random.RandomState(0).randn(4, 5, 32), jnp.float32)
    y = blk(x, jax.random.key(3))
    full_attn = x + blk.ls1(blk.attn(blk.norm1(x)))
    changed_by_attn_or_mlp = np.any(np.abs(np.asarray(y - x)) > 1e-7, axis=(1, 2))
    assert changed_by_attn_or_mlp.sum() >= 2
    assert y.shape == x.shape and not np.allclose(y, full_attn + blk.ls2(blk.mlp(blk.norm2(full_attn))))


@pytest.mark.parametrize("rate, registers, n_rows", [(0.0, 0, 5), (0.05, 2, 7), (0.4, 0, 6), (0.4, 1, 0)])
def test_patch_rows_give_the_full_outputs_at_those_rows(rate, registers, n_rows):
    # the last block on the CLS tokens and the gathered patch tokens only, per group of 4 images; same
    # stochastic-depth draws (mask mode at 0.05, batch-subset mode at 0.4); n_rows 0: CLS only
    model = DinoViT(ViTConfig(**TINY, num_registers=registers, drop_path_rate=rate))
    x, key = _images(b=8, s=2), jax.random.key(5)
    rows = jnp.asarray(np.random.RandomState(1).choice(4 * 2 * 4, (2, n_rows), replace=False), jnp.int32)
    full = nnx.jit(lambda m, x: m(x, (0, 1), rng=key))(model, x)
    kept = nnx.jit(lambda m, x, r: m(x, (0, 1), rng=key, patch_rows=r))(model, x, rows)
    np.testing.assert_allclose(kept["cls"], full["cls"], rtol=1e-5, atol=1e-5)
    assert kept["patch"].shape == (2, n_rows, 32)
    np.testing.assert_allclose(kept["patch"], take_rows(full["patch"], rows), rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters():
    cfg = ViTConfig(**TINY, dtype="bfloat16")
    model = DinoViT(cfg)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    out = fwd(model, _images(), (0, 1, 2))
    assert out["cls"].dtype == jnp.float32
    ref = DinoViT(ViTConfig(**TINY))
    np.testing.assert_allclose(out["cls"], fwd(ref, _images(), (0, 1, 2))["cls"], atol=0.1)


@pytest.mark.parametrize("with_rows", [False, True])
def test_remat_gives_the_same_gradients(with_rows):
    x = _images(b=2, s=2)
    rows = jnp.asarray([[0, 3, 5]], jnp.int32) if with_rows else None

    def grads(remat):
        model = DinoViT(ViTConfig(**{**TINY, "depth": 1}, remat=remat))

        def loss(m):
            out = m(x, (0, 1), patch_rows=rows)
            return jnp.sum(out["cls"] ** 2) + jnp.sum(out["patch"] ** 2)

        return nnx.jit(nnx.grad(loss))(model)

    g1, g2 = grads(False), grads(True)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_eager_matches_jit_and_cls_attention():
    model = DinoViT(ViTConfig(**{**TINY, "depth": 1}, num_registers=1))
    x = _images(b=2, s=3)
    np.testing.assert_allclose(model(x, (0, 1, 2))["cls"], fwd(model, x, (0, 1, 2))["cls"], atol=1e-5)
    attn = nnx.jit(lambda m, im: m.cls_attention(im, (0, 1, 2)))(model, x)
    assert attn.shape == (2, 2, 12)
    total = np.asarray(attn.sum(-1))
    assert np.all(total > 0) and np.all(total < 1)  # CLS and the register take the rest


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of the patch"):
        DinoViT(ViTConfig(**TINY))(jnp.zeros((1, 1, 30, 30)), (0,))


def test_head_output_and_weight_norm():
    head = DINOHead(32, 3, hidden_dim=16, bottleneck_dim=8, nlayers=3, rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.RandomState(0).randn(5, 32), jnp.float32)
    y = head(x)
    assert y.shape == (5, 3) and y.dtype == jnp.float32
    # weight_g = 1 and a unit-norm bottleneck: every logit lies in [-1, 1]
    assert np.all(np.abs(np.asarray(y)) <= 1 + 1e-5)
    head.last_layer.weight_v[...] = head.last_layer.weight_v[...] * 3.0
    np.testing.assert_allclose(head(x), y, atol=1e-6)
    assert DINOHead(32, 3, nlayers=1).mlp[0].kernel[...].shape == (32, 256)


@pytest.mark.parametrize("dtype,atol,rtol", [(jnp.float32, 1e-6, 0), (jnp.bfloat16, 1e-2, 1.6e-2)])  # bf16: 2 ulp
def test_erf_gelu_matches_the_exact_gelu_and_its_gradient(dtype, atol, rtol):
    from mmdino_jax.models.activations import gelu

    x = jnp.asarray(np.linspace(-8, 8, 4001), dtype)
    exact = lambda v: jax.nn.gelu(v, approximate=False)
    np.testing.assert_allclose(np.asarray(gelu(x), np.float32), np.asarray(exact(x), np.float32), atol=atol,
                               rtol=rtol)
    grad = lambda f: np.asarray(jax.vmap(jax.grad(lambda v: f(v).astype(jnp.float32)))(x), np.float32)
    np.testing.assert_allclose(grad(gelu), grad(exact), atol=atol * 4, rtol=rtol)
    assert gelu(x).dtype == dtype


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("din,dout", [(48, 12), (12, 48)])  # a tall (fc2-like) and a wide kernel
def test_linear_gradients_match_nnx_linear(din, dout, dtype, tol):
    from mmdino_jax.models.linear import linear

    ours = linear(din, dout, nnx.Rngs(0), dtype)
    plain = nnx.Linear(din, dout, dtype=dtype, rngs=nnx.Rngs(1))
    nnx.update(plain, nnx.state(ours))
    x = jnp.asarray(np.random.RandomState(0).randn(3, 5, din), jnp.float32)

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x).astype(jnp.float32)))

    grads = {}
    for name, model in (("ours", ours), ("plain", plain)):
        grad_fn = jax.jit(nnx.grad(loss, argnums=(0, 1)))
        g_model, g_x = grad_fn(model, x)
        grads[name] = {**nnx.to_pure_dict(nnx.state(g_model)), "x": g_x}
        lowered = jax.jit(lambda m, x: nnx.grad(loss)(nnx.merge(*m), x)).lower(nnx.split(model), x).as_text()
        # only the tall kernel's gradient is taken as the wide product, transposed apart from it
        assert ("optimization_barrier" in lowered) == (name == "ours" and din > dout)
    for key in ("kernel", "bias", "x"):
        np.testing.assert_allclose(np.asarray(grads["ours"][key], np.float32),
                                   np.asarray(grads["plain"][key], np.float32), rtol=tol, atol=tol)
    np.testing.assert_array_equal(ours(x), plain(x))
