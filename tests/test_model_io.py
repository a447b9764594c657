"""Model directories: save_model / load_model round trip."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmdino_jax.models import DINOHead, DinoViT, ViTConfig
from mmdino_jax.models.io import load_model, read_meta, save_model

CFG = ViTConfig(embed_dim=32, depth=1, num_heads=2, pos_grid=3, num_registers=1, layerscale_init=1.0)


def _params(module):
    return jax.tree.leaves(nnx.state(module, nnx.Param))


def test_round_trip_with_head(tmp_path):
    backbone, head = DinoViT(CFG, nnx.Rngs(3)), DINOHead(32, 3, 16, 8, 2, rngs=nnx.Rngs(4))
    meta = {"sequences": ["t2", "flair"], "provenance": {"source": "unit test"}}
    save_model(tmp_path / "m", backbone, head, meta)
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["config"]["num_registers"] == 1 and doc["head"]["nlayers"] == 2 and doc["sequences"] == ["t2", "flair"]
    b2, h2, meta2 = load_model(tmp_path / "m")
    assert meta2 == meta and b2.cfg == CFG and h2.config() == head.config()
    for a, b in zip(_params(backbone) + _params(head), _params(b2) + _params(h2)):
        np.testing.assert_array_equal(a, b)
    x = jnp.ones((1, 2, 42, 42))
    np.testing.assert_array_equal(backbone(x, (2, 3))["cls"], b2(x, (2, 3))["cls"])


def test_backbone_only_and_errors(tmp_path):
    save_model(tmp_path / "b", DinoViT(CFG))
    _, head, meta = load_model(tmp_path / "b")
    assert head is None and meta == {}
    with pytest.raises(FileExistsError):
        save_model(tmp_path / "b", DinoViT(CFG))
    with pytest.raises(ValueError, match="reserved"):
        save_model(tmp_path / "c", DinoViT(CFG), meta={"config": 1})
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        read_meta(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="unsupported model format"):
        load_model(tmp_path / "d")
