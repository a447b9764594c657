"""Fine-tuning and LoRA: the loss against numpy, LoRA merging, and both end to end through the CLI
(train, resume, evaluate, export, predict) on the smoke cohort."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from helpers.runs import ROOT, absl_main
from mmdino_jax.config_base import load_config
from mmdino_jax.constants import CLASS_NAMES
from mmdino_jax.eval.backbone import Split
from mmdino_jax.finetune.__main__ import main
from mmdino_jax.finetune.learner import finetune_learner, step_config
from mmdino_jax.finetune.lora import add_lora, merge_adapters, split_adapters
from mmdino_jax.finetune.model import build_model
from mmdino_jax.finetune.step import logits_fn, smoothed_cross_entropy
from mmdino_jax.models import io as model_io
from mmdino_jax.models.build import vit_config
from mmdino_jax.models.vit import DinoViT, ViTConfig
from mmdino_jax.predict import main as predict_main
from mmdino_jax.training.run import selected_state

SMOKE = str(ROOT / "configs/finetune.py") + ":smoke"
SEQUENCES = (0, 1, 2, 3)


def test_label_smoothed_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = (3 * rng.normal(size=(7, 3))).astype(np.float32)
    labels = rng.integers(0, 3, 7)
    smoothing = 0.1
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    targets = np.full((7, 3), smoothing / 3)
    targets[np.arange(7), labels] += 1 - smoothing
    expected = -(targets * log_p).sum(axis=1).mean()
    np.testing.assert_allclose(float(smoothed_cross_entropy(logits, labels, smoothing)), expected, rtol=1e-6)


def test_lora_starts_as_the_backbone_and_merges_into_plain_weights():
    cfg = ViTConfig(embed_dim=32, depth=2, num_heads=2, layerscale_init=1.0)  # branches count fully
    plain = DinoViT(cfg, rngs=nnx.Rngs(0))
    plain_def, plain_params = nnx.split(plain)
    graphdef, adapters, base = split_adapters(add_lora(DinoViT(cfg, rngs=nnx.Rngs(0)), 3, True, nnx.Rngs(1)))
    jax.tree.map(np.testing.assert_array_equal, base, plain_params.to_pure_dict())
    assert set(adapters["blocks"][0]["attn"]) == {"qkv", "proj"} and set(adapters["blocks"][0]["mlp"]) == {"fc1", "fc2"}
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 4, 28, 28)).astype(np.float32)
    present = np.array([[True, True, False, True], [True, False, True, True]])
    forward = lambda g: jax.jit(lambda *p: nnx.merge(g, *p)(images, SEQUENCES, present=present)["patch"])
    lora_forward, plain_forward = forward(graphdef), forward(plain_def)
    plain_out = plain_forward(plain_params.to_pure_dict())
    np.testing.assert_allclose(lora_forward(adapters, base), plain_out, atol=1e-6)  # B = 0
    trained = jax.tree.map(lambda a: 0.1 * rng.normal(size=a.shape).astype(np.float32), adapters)
    adapted = lora_forward(trained, base)
    assert np.abs(adapted - plain_out).max() > 1e-2
    np.testing.assert_allclose(plain_forward(merge_adapters(base, trained)), adapted, atol=1e-5)


def finetune(workdir: Path, cache: Path, *overrides: str) -> None:
    absl_main(main, ["--config", SMOKE, "--workdir", str(workdir), f"--config.data.cache={cache}",
                     "--config.log_every=1", "--config.eval.bootstrap=20", "--config.eval.batch_size=16", *overrides])


def losses(workdir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def predict_probs(model_dir: Path, cohort: Path, out: Path) -> dict[str, np.ndarray]:
    predict_main(["--model", str(model_dir), "--input", str(cohort), "--output", str(out)])
    rows = json.loads(out.read_text())["subjects"]
    return {r["subject"]: np.array([r[f"p_{c}"] for c in CLASS_NAMES]) for r in rows}


def check_report(workdir: Path, kind: str) -> dict:
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "test"} and "ci" in metrics["splits"]["test"]
    assert metrics["classifier"]["kind"] == kind and "refit" not in metrics["sweep"]
    assert len(metrics["sweep"]["dropped"]) == 16  # 15 subsets + random drop, the classifier on each
    assert "fine-tuned classifier" in (workdir / "eval" / "report.md").read_text()
    return metrics


def test_full_finetuning_from_a_model_directory_resumes_evaluates_exports_and_predicts(tmp_path, smoke_cache):
    backbone = DinoViT(vit_config(load_config(SMOKE).model), rngs=nnx.Rngs(5))
    source = model_io.save_model(tmp_path / "source", backbone)
    work = tmp_path / "run"
    args = (f"--config.finetune.init={source}", "--config.finetune.pooling=cls+mean_patch",
            "--config.finetune.sequence_dropout=0.5")
    finetune(work, smoke_cache, *args, "--config.eval.at_end=False")
    first = losses(work)
    assert [s for s, _ in first] == list(range(1, 7)) and np.isfinite([v for _, v in first]).all()
    shutil.rmtree(work / "checkpoints" / "6")  # as if killed after the checkpoint at step 3
    finetune(work, smoke_cache, *args)
    assert losses(work)[6:] == first[3:]  # steps 4-6 again, the same losses
    metrics = check_report(work, "full fine-tuning")
    d = backbone.cfg.embed_dim
    n_backbone = sum(np.size(x) for x in jax.tree.leaves(nnx.state(backbone, nnx.Param)))
    assert metrics["classifier"]["trainable_params"] == n_backbone + 2 * d * 3 + 3
    probs = predict_probs(work / "classifier", smoke_cache.parent / "cohort" / "test", tmp_path / "p.json")
    assert len(probs) == metrics["splits"]["test"]["n"]


def _teacher_run(tmp_path: Path, cache: Path) -> Path:
    """A training run directory whose one checkpoint holds a (freshly initialised) SSL state."""
    from mmdino_jax import checkpoint as ckpt_lib
    from mmdino_jax.ssl.learner import build_learner
    from mmdino_jax.training.data import train_dataset

    config = load_config("configs/demo.py:smoke")
    config.data.cache = str(cache)
    learner = build_learner(config)
    checkpoints = ckpt_lib.RunCheckpoints(str(tmp_path / "ssl"))
    checkpoints.save(2, learner.init(learner.params), iter(train_dataset(config, cache)),
                     {"config": json.loads(config.to_json_best_effort())})
    checkpoints.wait()
    checkpoints.close()
    return tmp_path / "ssl"


def test_lora_from_a_run_teacher_keeps_the_backbone_and_exports_merged(tmp_path, smoke_cache):
    run_dir = _teacher_run(tmp_path, smoke_cache)
    work = tmp_path / "lora"
    finetune(work, smoke_cache, f"--config.finetune.init={run_dir}", "--config.finetune.lora_rank=2",
             "--config.finetune.lora_mlp=True")
    config = load_config(SMOKE)
    config.finetune.init, config.finetune.lora_rank, config.finetune.lora_mlp = str(run_dir), 2, True
    model = build_model(config)
    assert model.provenance == f"teacher of {run_dir} at step 2"
    state, _ = selected_state(str(work), finetune_learner(config, model))
    jax.tree.map(np.testing.assert_array_equal, state["frozen"], model.frozen)  # the backbone did not train
    d, r = model.cfg.embed_dim, 2
    per_block = r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    metrics = check_report(work, "LoRA")
    assert metrics["classifier"]["trainable_params"] == model.cfg.depth * per_block + 3 * d + 3
    n = metrics["classifier"]["trainable_params"]
    assert 12 * n <= metrics["classifier"]["trainable_bytes"] <= 12 * n + 64  # float32 + Adam's two moments

    exported = model_io.load_model(work / "classifier" / "backbone")[0]
    merged = nnx.state(exported, nnx.Param).to_pure_dict()
    kernel = lambda p: p["blocks"][0]["attn"]["qkv"]["kernel"]
    assert np.abs(kernel(merged) - kernel(model.frozen)).max() > 0  # adapters merged into the kernels
    np.testing.assert_array_equal(merged["patch_embed"]["kernel"], model.frozen["patch_embed"]["kernel"])
    test = Split.load(smoke_cache, "test", config.data.sequences.split(","), config.data.eval_size, True)
    logits = jax.jit(lambda p, f, x, k: logits_fn(model, step_config(config), p, f, x, k))(
        state["params"], state["frozen"], test.images, test.present)
    probs = predict_probs(work / "classifier", smoke_cache.parent / "cohort" / "test", tmp_path / "p.json")
    np.testing.assert_allclose(np.stack([probs[s] for s in test.ids]), jax.nn.softmax(logits), atol=2e-5)
