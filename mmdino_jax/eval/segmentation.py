"""Tumour segmentation from frozen patch tokens: a linear (1x1) decoder, scored per BraTS region.

The view is the evaluation's (each subject's largest axial tumour slice, resized to `data.eval_size`); its
patch tokens, standardised per channel with the train split's statistics, go through one linear map to the
four labels 0/1/2/4 and are bilinearly upsampled to the 96 x 96 crop, where the cached labels live.

- tokens "concat": the S sequences' tokens of a spatial position concatenated (one (S*D, 4) map);
  "per_sequence": one shared (D, 4) map on each sequence's tokens, logits averaged over the present ones.
- loss "ce": cross-entropy weighted by inverse label frequency on the train split; "dice_ce": plain
  cross-entropy plus the soft Dice loss of the three tumour labels.
- Regions: whole tumour (1+2+4), tumour core (1+4), enhancing tumour (4). Dice and HD95 (medpy), in crop
  pixels, per subject: a subject without the region in its true mask is left out of that region (counted);
  an empty prediction of a present region scores Dice 0 and HD95 = the crop diagonal (BraTS' convention).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from mmdino_jax.constants import BRATS_REGIONS, SEG_LABELS, sequence_indices
from mmdino_jax.data.augment import eval_view
from mmdino_jax.data.pipeline import CachedSplit
from mmdino_jax.data.prepare import CROP
from mmdino_jax.eval.metrics import mean_ci

LABELS = SEG_LABELS
REGIONS = {name: labels for name, (labels, _) in BRATS_REGIONS.items()}
TOKENS = ("concat", "per_sequence")
LOSSES = ("ce", "dice_ce")
DIAGONAL = float(np.hypot(CROP, CROP))
_INDEX = np.zeros(256, np.int32)
_INDEX[list(LABELS)] = np.arange(len(LABELS))


@dataclasses.dataclass
class SegSplit:
    """Largest axial slice of every usable subject: images (N,S,size,size), present (N,S), labels (N,96,96)."""
    images: np.ndarray
    present: np.ndarray
    labels: np.ndarray
    ids: list
    skipped: int  # subjects with none of the run's sequences

    @classmethod
    def load(cls, cache, split: str, sequences, size: int) -> "SegSplit":
        data = CachedSplit(cache, split)
        seq = np.asarray(sequence_indices(sequences))
        rows = np.flatnonzero(data.present[:, seq].any(axis=1))
        images = np.zeros((len(rows), len(seq), size, size), np.float32)
        labels = np.zeros((len(rows), CROP, CROP), np.uint8)
        for i, s in enumerate(rows):
            image, labels[i] = data.labeled_slice(data.largest_axial(s))
            images[i] = eval_view(image[seq], data.present[s, seq], size)
        return cls(images, data.present[rows][:, seq], labels, [data.ids[s] for s in rows], len(data) - len(rows))


def patch_grid(extract, images, keep, sequences: int, desc=None) -> np.ndarray:
    """Patch tokens (N, S, h, w, D) float16 from a FeatureExtractor with outputs ("patch",)."""
    tokens = extract(images, keep, desc=desc)["patch"]
    n, _, d = tokens.shape
    side = int(round(np.sqrt(tokens.shape[1] // sequences)))
    return tokens.reshape(n, sequences, side, side, d).astype(np.float16)


def decoder_logits(params, x, keep, tokens: str):
    """Logits (B, 96, 96, 4) of standardised tokens x (B, S, h, w, D) and keep (B, S)."""
    x = (x.astype(jnp.float32) - params["mean"]) / params["scale"]
    if tokens == "concat":
        z = jnp.einsum("bshwd,sdc->bhwc", x, params["w"])
    else:
        per = jnp.einsum("bshwd,dc->bshwc", x, params["w"])
        k = keep.astype(jnp.float32)[:, :, None, None, None]
        z = (per * k).sum(1) / jnp.maximum(k.sum(1), 1.0)
    z = z + params["b"]
    return jax.image.resize(z, (z.shape[0], CROP, CROP, z.shape[-1]), "bilinear")


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights of the four labels (absent labels 0), mean 1 over pixels."""
    counts = np.bincount(_INDEX[labels].ravel(), minlength=len(LABELS)).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / np.count_nonzero(counts), 0.0)
    return weights.astype(np.float32)


def loss_fn(params, x, keep, target, weights, cfg):
    logits = decoder_logits(params, x, keep, cfg.tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
    if cfg.loss == "ce":
        w = weights[target]
        return (ce * w).sum() / jnp.maximum(w.sum(), 1e-8)
    probs = jax.nn.softmax(logits)[..., 1:]
    onehot = jax.nn.one_hot(target, len(LABELS))[..., 1:]
    dice = (2 * (probs * onehot).sum((1, 2)) + 1) / (probs.sum((1, 2)) + onehot.sum((1, 2)) + 1)
    return ce.mean() + 1 - dice.mean()


def train_decoder(tokens: np.ndarray, keep: np.ndarray, labels: np.ndarray, cfg, seed: int) -> tuple[dict, list]:
    """Fit the decoder with optax AdamW on (tokens (N,S,h,w,D), keep (N,S), labels (N,96,96)); (params, losses)."""
    if cfg.tokens not in TOKENS or cfg.loss not in LOSSES:
        raise ValueError(f"eval.segmentation.tokens must be one of {TOKENS} and .loss one of {LOSSES}; "
                         f"got {cfg.tokens!r}, {cfg.loss!r}")
    n, s, _, _, d = tokens.shape
    axes, sample = ((0, 2, 3), tokens) if cfg.tokens == "concat" else ((0, 1, 2), tokens[keep])
    mean = sample.mean(axes, dtype=np.float32, keepdims=True)[0]
    std = sample.std(axes, dtype=np.float32, keepdims=True)[0]
    shape = (s, d, len(LABELS)) if cfg.tokens == "concat" else (d, len(LABELS))
    trainable = {"w": 0.01 * jax.random.normal(jax.random.key(seed), shape), "b": jnp.zeros(len(LABELS))}
    frozen = {"mean": jnp.asarray(mean), "scale": jnp.asarray(np.maximum(std, 1e-6))}
    opt = optax.adamw(cfg.lr, weight_decay=1e-4)
    state = opt.init(trainable)
    weights = jnp.asarray(class_weights(labels))
    data = (jnp.asarray(tokens), jnp.asarray(keep), jnp.asarray(_INDEX[labels]))

    @jax.jit
    def step(trainable, state, data, idx):
        x, k, y = (a[idx] for a in data)
        loss, grads = jax.value_and_grad(lambda t: loss_fn({**t, **frozen}, x, k, y, weights, cfg))(trainable)
        updates, state = opt.update(grads, state, trainable)
        return optax.apply_updates(trainable, updates), state, loss

    rng = np.random.default_rng(seed)
    losses = []
    batch = min(cfg.batch_size, n)
    for _ in tqdm(range(cfg.steps), desc="segmentation decoder", unit="step", leave=False):
        trainable, state, loss = step(trainable, state, data, jnp.asarray(rng.choice(n, batch, replace=False)))
        losses.append(loss)
    return {**trainable, **frozen}, [float(v) for v in jax.device_get(losses)]


@partial(jax.jit, static_argnames="tokens")
def _argmax_labels(params, x, keep, tokens: str):
    return decoder_logits(params, x, keep, tokens).argmax(-1)


def predict_labels(params, tokens: np.ndarray, keep: np.ndarray, cfg) -> np.ndarray:
    """Label maps (N, 96, 96) uint8 0/1/2/4, in batches of cfg.batch_size (the last padded: one compile)."""
    out, b = [], cfg.batch_size
    for i in range(0, len(tokens), b):
        x, k = tokens[i:i + b], keep[i:i + b]
        pad = b - len(x)
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        k = np.concatenate([k, np.ones((pad, *k.shape[1:]), bool)])
        out.append(np.asarray(_argmax_labels(params, jnp.asarray(x), jnp.asarray(k), cfg.tokens))[:b - pad])
    return np.asarray(LABELS, np.uint8)[np.concatenate(out)]


def region_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """{region: {"dice": (N,), "hd95": (N,)}} per subject (NaN where the true region is empty)."""
    from medpy.metric import binary  # imports scipy.stats: seconds, so only when segmentation runs

    out = {}
    for region, labels in REGIONS.items():
        dice, hd95 = np.full(len(pred), np.nan), np.full(len(pred), np.nan)
        for i, (p, t) in enumerate(zip(np.isin(pred, labels), np.isin(truth, labels))):
            if not t.any():
                continue
            dice[i] = binary.dc(p, t)
            hd95[i] = binary.hd95(p, t) if p.any() else DIAGONAL
        out[region] = {"dice": dice, "hd95": hd95}
    return out


def summarise(scores: dict, pred: np.ndarray, n_boot: int, seed: int, keys=("dice", "hd95")) -> dict:
    """Mean, bootstrap CI and n per region and metric, plus the subjects with an empty true region."""
    out = {}
    for region, per in scores.items():
        out[region] = {k: mean_ci(per[k], n_boot, seed) for k in keys}
        out[region]["empty_truth"] = int(np.isnan(per["dice"]).sum())
        out[region]["empty_prediction"] = int(np.sum(~np.isin(pred, REGIONS[region]).any((1, 2))
                                                     & ~np.isnan(per["dice"])))
    return out


def segmentation_protocol(cfg, cache, sequences, size: int, extract, splits=("val", "test"),
                          n_boot: int = 0, seed: int = 0) -> tuple[dict, dict]:
    """Train on `train`, score `splits` (those the cache has), and on the last split the Dice with each
    sequence masked (over the subjects that have it and another sequence).

    `extract` is a FeatureExtractor with outputs ("patch",). Returns (results, examples) where examples
    holds images / truth / prediction of the first `cfg.examples` subjects of the last split for the plot.
    """
    train = SegSplit.load(cache, "train", sequences, size)
    s = len(sequences)
    params, losses = train_decoder(patch_grid(extract, train.images, train.present, s, "train patches"),
                                   train.present, train.labels, cfg, seed)
    results = {"tokens": cfg.tokens, "loss": cfg.loss, "steps": cfg.steps, "n_train": len(train.ids),
               "train_loss": {"first": losses[0], "last": losses[-1]}, "hd95_unit": "crop pixels", "splits": {},
               "no_sequence_skipped": {"train": train.skipped}}
    names = [n for n in splits if (Path(cache) / n / "index.json").is_file()]
    examples = {}
    for name in names:
        data = SegSplit.load(cache, name, sequences, size)
        results["no_sequence_skipped"][name] = data.skipped
        pred = predict_labels(params, patch_grid(extract, data.images, data.present, s, f"{name} patches"),
                              data.present, cfg)
        results["splits"][name] = {"n": len(data.ids), **summarise(region_scores(pred, data.labels), pred,
                                                                    n_boot, seed)}
        examples = {"split": name, "images": data.images[:cfg.examples], "truth": data.labels[:cfg.examples],
                    "prediction": pred[:cfg.examples], "ids": data.ids[:cfg.examples]}
    if names:
        results["missing"] = {"split": names[-1], "dice": {}}
        for j, dropped in enumerate(sequences):
            keep = data.present & (np.arange(s) != j)
            rows = data.present[:, j] & keep.any(1)  # the subjects that have the sequence and another one
            pred = predict_labels(params, patch_grid(extract, data.images[rows], keep[rows], s), keep[rows], cfg)
            summary = summarise(region_scores(pred, data.labels[rows]), pred, n_boot, seed, keys=("dice",))
            results["missing"]["dice"][dropped] = {r: v["dice"] for r, v in summary.items()}
    return results, examples
