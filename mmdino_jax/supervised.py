"""Supervised baseline: the same ViT trained end to end with cross-entropy on the labeled subjects.

  python -m mmdino_jax.supervised --config configs/supervised_baseline.py --workdir DIR [--config.a.b=v]
  python -m mmdino_jax.supervised --config configs/supervised_baseline.py --workdir DIR --init_only

A linear classifier on the final CLS token is trained with the backbone on the pipeline's global crops
of labeled samples (absent sequences masked as in MM-DINOv2 training), with the run's AdamW (warmup +
cosine, layer-wise decay; `optim.make_optimizer`). The backbone is saved to DIR/backbone (a model
directory) and evaluated with the same linear-probe protocol as MM-DINOv2 runs (`evaluate.py`).
`--init_only` skips training: DIR/backbone is the randomly initialised backbone (the frozen
random-init baseline, the stand-in for frozen DINOv2 weights when none are at hand).
Single process.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from mmdino_jax import evaluate, model_io, optim
from mmdino_jax.cli_errors import parse_absl_flags, run_cli
from mmdino_jax.constants import CLASS_NAMES, sequence_indices
from mmdino_jax.learner import optimizer_config
from mmdino_jax.models.build import build_models
from mmdino_jax.run_log import RunLog, quiet_library_logs
from mmdino_jax.train import NonFiniteLoss, host_batch, prepared_cache, train_dataset


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so the module imports cleanly)."""
    config_flags.DEFINE_config_file("config", None, "Baseline config (configs/supervised_baseline.py).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory: metrics.jsonl, backbone/, eval/, cache.")
    flags.DEFINE_bool("init_only", False, "Save and evaluate the randomly initialised backbone, no training.")


def build_classifier(config) -> dict:
    """Backbone (graphdef + parameters), linear classifier, optimizer, lr schedule and the jitted step.

    Parameters form the `{"backbone", "head"}` tree of `optim.make_optimizer`; "head" is the linear
    classifier (kernel (D, classes), bias).
    """
    backbone, _, fresh = build_models(config.model, config.seed)
    backbone_def, backbone_params = nnx.split(backbone)
    classifier = nnx.Linear(backbone.cfg.embed_dim, len(CLASS_NAMES), rngs=nnx.Rngs(config.seed + 1),
                            kernel_init=nnx.initializers.truncated_normal(0.02))
    params = {"backbone": backbone_params.to_pure_dict(), "head": nnx.state(classifier).to_pure_dict()}
    opt_cfg = optimizer_config(config, backbone.cfg.depth)
    schedules = optim.optimizer_schedules(opt_cfg)
    tx = optim.make_optimizer(params, schedules, opt_cfg)
    sequences = sequence_indices(config.data.sequences)
    smoothing = config.supervised.label_smoothing

    def loss_fn(p, images, present, labels, key):
        """Mean cross-entropy of (M, S, H, W) crops; `present` (M, S) masks absent sequences' tokens."""
        n = (images.shape[-2] // backbone.cfg.patch_size) * (images.shape[-1] // backbone.cfg.patch_size)
        masks = jnp.broadcast_to(~present[:, :, None], (*present.shape, n))
        cls = nnx.merge(backbone_def, p["backbone"])(images, sequences, masks=masks, rng=key)["cls"]
        logits = cls @ p["head"]["kernel"] + p["head"]["bias"]
        targets = optax.smooth_labels(jax.nn.one_hot(labels, len(CLASS_NAMES)), smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    def step(state, batch, key):
        """One AdamW step on every labeled sample's global crops (batch sample-major, see host_batch)."""
        key = jax.random.fold_in(key, state["step"])
        n_crops = batch["global"].shape[1]
        images = batch["global"].reshape(-1, *batch["global"].shape[2:])
        present = jnp.repeat(batch["present"], n_crops, axis=0)
        labels = jnp.repeat(batch["label"], n_crops, axis=0)
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], images, present, labels, key)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt": opt, "step": state["step"] + 1}
        return new, {"loss": loss, "train_accuracy": acc, "grad_norm": optax.global_norm(grads)}

    state = {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    return dict(backbone_def=backbone_def, state=state, step_fn=jax.jit(step, donate_argnums=0),
                lr=schedules["lr"], fresh=fresh)


def labeled_batches(config, cache):
    """Training batches with labeled samples only (`data.labeled_fraction` must be 1)."""
    if config.data.labeled_fraction != 1.0:
        raise ValueError("the supervised baseline trains on labeled samples only: set data.labeled_fraction=1.0")
    return iter(train_dataset(config, cache))


def train(config, workdir: str, run: dict, batches) -> dict:
    """`config.total_steps` steps; logs to DIR/metrics.jsonl every `log_every`; returns the final state."""
    log = RunLog(workdir)
    key = jax.random.key(config.seed)
    state = run["state"]
    tick, tick_step = time.perf_counter(), 0
    bar = tqdm(range(config.total_steps), desc="supervised", unit="step")
    try:
        for step in bar:
            batch = host_batch(next(batches))
            state, metrics = run["step_fn"](state, {k: batch[k] for k in ("global", "present", "label")}, key)
            done = step + 1
            if done % config.log_every and done != config.total_steps:
                continue
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(values["loss"]):
                raise NonFiniteLoss(f"non-finite loss at step {done}: {values}; lower optim.base_lr")
            now = time.perf_counter()
            values["lr"] = float(run["lr"][min(step, len(run["lr"]) - 1)])
            values["samples_per_s"] = (done - tick_step) * config.data.batch_size / (now - tick)
            tick, tick_step = now, done
            log.write({"step": done, **values})
            bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['train_accuracy']:.2f}")
    finally:
        log.close()
    return state


def save_backbone(config, workdir: str, run: dict, params, provenance: str) -> Path:
    """DIR/backbone: the backbone as a model directory (replaced if it exists)."""
    path = Path(workdir) / "backbone"
    if path.exists():
        shutil.rmtree(path)
    backbone = nnx.merge(run["backbone_def"], params)
    meta = {"sequences": config.data.sequences.split(","), "provenance": provenance,
            "run_config": json.loads(config.to_json_best_effort())}
    return model_io.save_model(path, backbone, meta=meta)


def run_baseline(config, workdir: str, init_only: bool = False) -> dict:
    """Train (unless `init_only`), save DIR/backbone, evaluate it; returns the evaluation payload."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    cache = prepared_cache(config, workdir)
    run = build_classifier(config)
    if init_only:
        state, provenance = run["state"], f"random init (seed {config.seed}), untrained"
    else:
        state = train(config, workdir, run, labeled_batches(config, cache))
        provenance = f"supervised baseline, {config.total_steps} steps of cross-entropy on labeled subjects"
    params = state["params"]["backbone"]
    path = save_backbone(config, workdir, run, params, provenance)
    logging.info("saved %s", path)
    if not config.eval.at_end:
        return {}
    graphdef, loaded, _ = evaluate.load_backbone(config, workdir, str(path))
    return evaluate.evaluate_backbone(config, workdir, graphdef, loaded, 0 if init_only else config.total_steps)


def main(argv) -> None:
    del argv
    quiet_library_logs()
    f = flags.FLAGS
    if jax.process_count() > 1:
        raise app.UsageError("the supervised baseline runs in a single process")
    if not f.workdir:
        raise app.UsageError("--workdir is required")
    payload = run_baseline(f.config, f.workdir, f.init_only)
    if payload:
        print(evaluate.summary_line(payload, f.workdir))


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("config")
    run_cli(lambda argv: main(parse_absl_flags(argv)), prog="python -m mmdino_jax.supervised")
