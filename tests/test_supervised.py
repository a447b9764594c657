"""Supervised baseline: loss decreases on a fixed batch, the saved backbone loads and evaluates, CLI init-only."""

import json

import jax
import numpy as np

from helpers.runs import SUPERVISED_SMOKE
from mmdino_jax import sharding
from mmdino_jax.config_base import load_config
from mmdino_jax.eval import backbone as eval_backbone
from mmdino_jax.models.io import read_meta
from mmdino_jax.supervised.baseline import save_backbone
from mmdino_jax.supervised.learner import build_classifier
from mmdino_jax.training.data import train_dataset
from mmdino_jax.training.sharded import shard_learner


def test_fixed_batch_loss_decreases_and_backbone_evaluates(tmp_path, smoke_cache):
    config = load_config(SUPERVISED_SMOKE)
    config.data.cache = str(smoke_cache)
    config.total_steps, config.optim.warmup_steps, config.optim.base_lr = 8, 1, 2e-2
    config.model.drop_path_rate = 0.0
    config.eval.batch_size = 16
    config.eval.compare_init = False  # the initial-backbone rows are tested with the demo report
    learner = build_classifier(config)
    run = shard_learner(learner, sharding.make_mesh(1, jax.devices()[:1]))
    batch = learner.host_batch(next(iter(train_dataset(config, smoke_cache))))
    assert (batch["label"] >= 0).all() and "local" not in batch
    state, losses, key = run.state, [], run.key(0)
    for _ in range(config.total_steps):
        state, metrics = run.step(state, run.global_batch(batch), key)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses

    path = save_backbone(config, str(tmp_path), learner, learner.backbone_of(state), "test")
    assert read_meta(path)["provenance"] == "test"
    graphdef, params, _ = eval_backbone.load_backbone(config, str(tmp_path), str(path))
    payload = eval_backbone.evaluate_backbone(config, str(tmp_path), graphdef, params, config.total_steps)
    assert set(payload["splits"]) == {"val", "test"}
    assert len(payload["sweep"]["dropped"]) == 16
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_cli_init_only_saves_random_backbone(tmp_path, smoke_cache):
    from mmdino_jax.supervised.__main__ import cli

    cli(["--config", SUPERVISED_SMOKE, "--workdir", str(tmp_path), f"--config.data.cache={smoke_cache}",
         "--config.eval.at_end=False", "--init_only"])
    meta = json.loads((tmp_path / "backbone" / "model.json").read_text())
    assert meta["provenance"].startswith("random init") and meta["config"]["embed_dim"] == 64
    assert not (tmp_path / "metrics.jsonl").exists()

