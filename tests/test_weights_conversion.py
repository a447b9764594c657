"""`python -m weights_conversion`: the checkpoint layouts it reads, the model directories it writes, export back
to DINOv2 names, and its errors."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from helpers import torch_dinov2_ref as ref  # noqa: E402
from mmdino_jax.convert import dinov2  # noqa: E402
from mmdino_jax.convert.__main__ import main  # noqa: E402
from mmdino_jax.convert.files import read_state_dict, write_state_dict  # noqa: E402
from mmdino_jax.models import DINOHead, DinoViT, ViTConfig  # noqa: E402
from mmdino_jax.models.io import load_model, save_model  # noqa: E402

SEQS = (2, 0, 1, 3)


@nnx.jit(static_argnums=(2,))
def _tokens(model, images, sequences):
    out = model(images, sequences)
    return jnp.concatenate([out["cls"][:, None], out["registers"], out["patch"]], axis=1)


def exit_status(argv) -> int:
    """The converter's exit status on an error (its one-line message goes to stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def _check_outputs(model_dir, sd, num_heads=2, head_sd=None):
    backbone, head, meta = load_model(model_dir)
    x = np.random.RandomState(0).rand(2, 4, 56, 56).astype(np.float32)
    cfg = backbone.cfg
    want = ref.backbone_forward(sd, x, SEQS, num_heads=num_heads, offset=cfg.interpolate_offset,
                                antialias=cfg.interpolate_antialias, use_seq_embed=cfg.use_seq_embed)
    np.testing.assert_allclose(np.asarray(_tokens(backbone, jnp.asarray(x), SEQS)), want, atol=5e-5)
    if head_sd is not None:
        feats = np.asarray(want[:, 0], np.float32)
        np.testing.assert_allclose(np.asarray(head(jnp.asarray(feats))), ref.head_forward(head_sd, feats), atol=1e-5)
    return backbone, head, meta


def _torch_file(path, obj):
    def to_t(o):
        if isinstance(o, dict):
            return {k: to_t(v) for k, v in o.items()}
        return torch.from_numpy(np.asarray(o)) if isinstance(o, np.ndarray) else o

    torch.save(to_t(obj), path)
    return path


def test_hub_checkpoint_to_model_dir(tmp_path, capsys):
    sd = ref.random_backbone_sd(seq_embed=False)
    src = _torch_file(tmp_path / "dinov2_vitx14_pretrain.pth", sd)
    assert main([str(src), str(tmp_path / "m"), "--set", "num_heads=2", "--sequences", "t2,t1,t1c,flair"]) == 0
    assert "wrote" in capsys.readouterr().out
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["sequences"] == ["t2", "t1", "t1c", "flair"]
    prov = doc["provenance"]
    assert prov["layout"] == "dinov2" and prov["initialised"] == ["seq_embed"] and len(prov["sha256"]) == 64
    assert doc["head"] is None and doc["config"]["interpolate_offset"] == 0.1
    assert doc["config"]["use_seq_embed"] is False  # plain DINOv2 adds no sequence embedding
    _check_outputs(tmp_path / "m", sd)


def test_mm_training_checkpoint_teacher_and_student(tmp_path):
    teacher, student = ref.random_backbone_sd(seed=1), ref.random_backbone_sd(seed=2)
    t_head, s_head = ref.random_head_sd(seed=3), ref.random_head_sd(seed=4)
    model = {}
    for branch, bb, hd in (("teacher", teacher, t_head), ("student", student, s_head)):
        # FSDP block chunks (2 chunks of 1 block) and a DDP wrapper, as in DINOv2 training checkpoints
        for k, v in bb.items():
            k = k.replace("blocks.1.", "blocks.1.1.").replace("blocks.0.", "blocks.0.0.")
            model[f"{branch}.backbone.{k}"] = v
        model.update({f"{branch}.dino_head.module.{k}": v for k, v in hd.items()})
    src = _torch_file(tmp_path / "model_0024999.rank_0.pth", {"model": model, "iteration": 24999})
    assert main([str(src), str(tmp_path / "t"), "--set", "num_heads=2"]) == 0
    _, head, meta = _check_outputs(tmp_path / "t", teacher, head_sd=t_head)
    assert meta["provenance"]["layout"] == "mm-dinov2" and meta["provenance"]["initialised"] == []
    assert head.config() == dict(in_dim=64, out_dim=3, hidden_dim=32, bottleneck_dim=16, nlayers=3)
    assert main([str(src), str(tmp_path / "s"), "--branch", "student", "--head", "none", "--set", "num_heads=2"]) == 0
    _, head, _ = _check_outputs(tmp_path / "s", student)
    assert head is None


@pytest.mark.parametrize("hf_names", ["v4", "v5"])
def test_hf_safetensors_directory(tmp_path, hf_names):
    sd = ref.random_backbone_sd(registers=2, seq_embed=False, ffn="swiglu", hidden=176)
    hf = {
        "embeddings.cls_token": sd["cls_token"], "embeddings.mask_token": sd["mask_token"],
        "embeddings.position_embeddings": sd["pos_embed"], "embeddings.register_tokens": sd["register_tokens"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"],
    }
    for i in range(2):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            q, k, v = np.split(sd[b + "attn.qkv." + p], 3)
            w12a, w12b = np.split(sd[b + "mlp.w12." + p], 2)
            hf[h + f"norm1.{p}"], hf[h + f"norm2.{p}"] = sd[b + f"norm1.{p}"], sd[b + f"norm2.{p}"]
            if hf_names == "v4":
                hf |= {h + f"attention.attention.query.{p}": q, h + f"attention.attention.key.{p}": k,
                       h + f"attention.attention.value.{p}": v,
                       h + f"attention.output.dense.{p}": sd[b + "attn.proj." + p],
                       h + f"mlp.weights_in.{p}": sd[b + "mlp.w12." + p],
                       h + f"mlp.weights_out.{p}": sd[b + "mlp.w3." + p]}
            else:
                hf |= {h + f"attention.q_proj.{p}": q, h + f"attention.k_proj.{p}": k, h + f"attention.v_proj.{p}": v,
                       h + f"attention.o_proj.{p}": sd[b + "attn.proj." + p], h + f"mlp.gate_proj.{p}": w12a,
                       h + f"mlp.up_proj.{p}": w12b, h + f"mlp.down_proj.{p}": sd[b + "mlp.w3." + p]}
        hf[h + "layer_scale1.lambda1"], hf[h + "layer_scale2.lambda1"] = sd[b + "ls1.gamma"], sd[b + "ls2.gamma"]
    src = tmp_path / "hf"
    write_state_dict(src / "model.safetensors", {"dinov2." + k: v for k, v in hf.items()})
    (src / "config.json").write_text(json.dumps({"num_attention_heads": 2, "model_type": "dinov2_with_registers"}))
    assert main([str(src), str(tmp_path / "m")]) == 0
    backbone, _, meta = load_model(tmp_path / "m")
    assert meta["provenance"]["layout"] == "hf-dinov2" and meta["provenance"]["sha256"] is None
    assert backbone.cfg.num_registers == 2 and backbone.cfg.interpolate_antialias
    _check_outputs(tmp_path / "m", sd)


def _flat_params(model_dir):
    backbone, head, _ = load_model(model_dir)
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(backbone, nnx.Param).to_pure_dict())[0]
    if head is not None:
        flat += jax.tree_util.tree_flatten_with_path(nnx.state(head, nnx.Param).to_pure_dict())[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _assert_bit_exact(dir_a, dir_b):
    a, b = _flat_params(dir_a), _flat_params(dir_b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_flax_torch_flax_is_bit_exact(tmp_path, suffix):
    cfg = ViTConfig(embed_dim=64, depth=2, num_heads=2, pos_grid=5, num_registers=2, layerscale_init=0.5)
    save_model(tmp_path / "m", DinoViT(cfg, nnx.Rngs(7)), DINOHead(64, 3, 32, 16, rngs=nnx.Rngs(8)),
               {"sequences": ["t1", "t1c", "t2", "flair"]})
    out = tmp_path / f"out{suffix}"
    assert main(["--to-torch", str(tmp_path / "m"), str(out)]) == 0
    exported, _ = read_state_dict(out)
    assert {k for k in exported if k.startswith("backbone.")} == {"backbone." + k for k in ref.random_backbone_sd(
        registers=2)}
    assert main([str(out), str(tmp_path / "m2"), "--set", "num_heads=2"]) == 0
    _assert_bit_exact(tmp_path / "m", tmp_path / "m2")
    # the 3-channel patch kernel run on a grey image repeated to RGB equals the 1-channel kernel
    w3 = exported["backbone.patch_embed.proj.weight"].astype(np.float64)
    w1 = np.asarray(load_model(tmp_path / "m")[0].patch_embed.kernel[...], np.float64).transpose(3, 2, 0, 1)
    np.testing.assert_allclose(w3.sum(1, keepdims=True), w1, atol=1e-7)
    assert main([str(tmp_path / "m"), str(tmp_path / "bb.npz"), "--no-head"]) == 0
    assert all(not k.startswith(("backbone.", "dino_head.")) for k in read_state_dict(tmp_path / "bb.npz")[0])


def test_torch_flax_torch_round_trip(tmp_path):
    sd, hd = ref.random_backbone_sd(), ref.random_head_sd()
    src = write_state_dict(tmp_path / "in.npz", {**{"backbone." + k: v for k, v in sd.items()},
                                                 **{"dino_head." + k: v for k, v in hd.items()}})
    assert main([str(src), str(tmp_path / "m"), "--set", "num_heads=2"]) == 0
    _check_outputs(tmp_path / "m", sd, head_sd=hd)
    assert main([str(tmp_path / "m"), str(tmp_path / "out.pth")]) == 0
    back, _ = read_state_dict(tmp_path / "out.pth")
    assert back.keys() == {"backbone." + k for k in sd} | {"dino_head." + k for k in hd}
    for k, v in sd.items():  # the patch kernel comes back as its grey equivalent, the rest unchanged
        if k != "patch_embed.proj.weight":
            np.testing.assert_array_equal(back["backbone." + k], v, err_msg=k)


def test_hf_export_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    sd = ref.random_backbone_sd(seq_embed=False, registers=2)
    src = write_state_dict(tmp_path / "in.safetensors", sd)
    assert main([str(src), str(tmp_path / "m"), "--set", "num_heads=2"]) == 0
    assert main(["--to-torch", "--layout", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Dinov2WithRegistersModel"
    grey = np.random.RandomState(0).rand(2, 1, 98, 98).astype(np.float32)
    with torch.no_grad():
        want = hf(torch.from_numpy(grey).repeat(1, 3, 1, 1)).last_hidden_state.numpy()
    backbone, _, _ = load_model(tmp_path / "m")
    np.testing.assert_allclose(np.asarray(_tokens(backbone, jnp.asarray(grey), (0,))), want, atol=1e-4)
    assert main([str(tmp_path / "hf"), str(tmp_path / "m2"), "--set", "use_seq_embed=false"]) == 0
    _assert_bit_exact(tmp_path / "m", tmp_path / "m2")


def test_errors_name_every_problem(tmp_path, capsys):
    sd = ref.random_backbone_sd()
    sd["blocks.1.attn.proj.weight"] = sd["blocks.1.attn.proj.weight"][:, :10]
    del sd["blocks.0.ls2.gamma"]
    sd["blocks.0.extra.weight"] = np.zeros(3, np.float32)
    src = write_state_dict(tmp_path / "bad.npz", sd)
    assert exit_status([str(src), str(tmp_path / "m"), "--set", "num_heads=2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "blocks.1.attn.proj.weight: shape (64, 10)" in err
    assert "missing blocks.0.ls2.gamma" in err and "unexpected blocks.0.extra.weight" in err
    assert not (tmp_path / "m").exists()
    assert exit_status([str(tmp_path / "nope.pth"), str(tmp_path / "m")]) == 2
    assert "not found" in capsys.readouterr().err
    good = write_state_dict(tmp_path / "good.npz", ref.random_backbone_sd())
    assert exit_status([str(good), str(tmp_path / "m"), "--head", "dino", "--set", "num_heads=2"]) == 2
    assert "no dino_head" in capsys.readouterr().err
    assert exit_status([str(good), str(tmp_path / "m"), "--sequences", "t1,dwi"]) == 2
    assert "unknown MRI sequence" in capsys.readouterr().err
    assert exit_status([str(good), str(tmp_path / "m"), "--arch", "vitb14"]) == 2
    assert "--arch vitb14 expects {'embed_dim': 768, 'depth': 12" in capsys.readouterr().err
    assert exit_status([str(good), str(tmp_path / "m"), "--set", "heads=2"]) == 2
    assert "unknown ViTConfig field(s) ['heads']" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create a file


def test_unsafe_and_truncated_files_are_refused(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 64), "payload": _RunsCode(marker)}, evil)
    assert exit_status([str(evil), str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "refused" in err and "arbitrary unpickling" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "m").exists()
    for suffix in (".pth", ".safetensors", ".npz"):
        whole = write_state_dict(tmp_path / f"ok{suffix}", ref.random_backbone_sd())
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        assert exit_status([str(cut), str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip()
        assert "unreadable checkpoint (truncated or corrupt?)" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "m").exists()


def test_infer_config_reads_dinov2_shapes():
    sd = ref.random_backbone_sd(d=128, depth=3, grid=4, registers=4)
    cfg = dinov2.infer_config(sd)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.pos_grid, cfg.num_registers) == (128, 3, 2, 4, 4)
    assert (cfg.interpolate_offset, cfg.interpolate_antialias) == (0.0, True)
    giant = {"cls_token": np.zeros((1, 1, 1536)), "pos_embed": np.zeros((1, 1370, 1536)),
             "patch_embed.proj.weight": np.zeros((1536, 3, 14, 14)), "blocks.39.norm1.weight": 0,
             "blocks.0.mlp.w12.weight": np.zeros((8192, 1536)), "blocks.0.mlp.w3.weight": np.zeros((1536, 4096))}
    assert dinov2.infer_config(giant) == ViTConfig.preset("vitg14", use_seq_embed=False)
    assert dinov2.infer_config(giant, arch="vitg14").num_heads == 24
