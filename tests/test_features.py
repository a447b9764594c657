"""`python -m mmdino_jax.features`: embeddings of a .npy of images from a model directory."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmdino_jax.features import main
from mmdino_jax.models import DinoViT, ViTConfig
from mmdino_jax.models.io import save_model


def test_features_cli_matches_the_model(tmp_path, capsys):
    model = DinoViT(ViTConfig(embed_dim=32, depth=1, num_heads=2, pos_grid=3, num_registers=2, layerscale_init=1.0),
                    nnx.Rngs(1))
    save_model(tmp_path / "m", model, meta={"sequences": ["t2", "flair"]})
    x = np.random.RandomState(0).rand(5, 2, 28, 28).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["--checkpoint", str(tmp_path / "m"), "--input", str(tmp_path / "x.npy"), "--batch-size", "2"]
    assert main(args + ["--output", str(tmp_path / "y.npz")]) == 0
    y = np.load(tmp_path / "y.npz")
    want = model(jnp.asarray(x), (2, 3))  # sequences from model.json: t2, flair
    assert set(y.files) == {"cls", "patch", "registers"}
    assert y["cls"].shape == (5, 32) and y["patch"].shape == (5, 2 * 4, 32) and y["registers"].shape == (5, 2, 32)
    for k in y.files:
        np.testing.assert_allclose(y[k], want[k], atol=1e-5)
    # another channel order changes the sequence embedding, and so the features
    assert main(args + ["--output", str(tmp_path / "z.npz"), "--sequences", "flair,t2"]) == 0
    assert not np.allclose(np.load(tmp_path / "z.npz")["cls"], y["cls"], atol=1e-4)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--output", str(tmp_path / "w.npz"), "--sequences", "t1,t2,flair"])
    assert exit_info.value.code == 2
    assert "input must be (N, S=3, H, W)" in capsys.readouterr().err
    assert not (tmp_path / "w.npz").exists()
