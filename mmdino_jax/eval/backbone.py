"""Linear-probe evaluation of a backbone, with the missing-modality sweep and a report (the library of
`python -m mmdino_jax.evaluate`).

Writes DIR/eval/{metrics.json, report.md, *.png}. The probe (logistic regression, C chosen by MCC
on a 10 % hold-out of the labeled train subjects) is fit on the full CLS vector of the backbone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from mmdino_jax import checkpoint as ckpt_lib
from mmdino_jax.constants import CLASS_NAMES
from mmdino_jax.data import pipeline
from mmdino_jax.data.blank import constant_views
from mmdino_jax.data.setup import ensure_cache
from mmdino_jax.eval import metrics as metrics_lib
from mmdino_jax.eval import report, subsets
from mmdino_jax.eval.extract import FeatureExtractor, attention_maps
from mmdino_jax.eval.probe import fit_probe
from mmdino_jax.eval.protocols import run_protocols, sweep_scorers
from mmdino_jax.export import export_classifier
from mmdino_jax.models import io as model_io
from mmdino_jax.models.build import build_models
from mmdino_jax.ssl.learner import build_learner


@dataclasses.dataclass
class Split:
    """Evaluation view of one split: images (N,S,H,W), present (N,S), label (N,), ids."""
    images: np.ndarray
    present: np.ndarray
    label: np.ndarray
    ids: list

    @classmethod
    def load(cls, cache, name: str, sequences, size: int, labeled_only: bool) -> "Split":
        a = pipeline.eval_arrays(cache, name, sequences, size)
        blank = constant_views(a["images"], a["present"])
        if blank.any():  # a cache prepared before the blank-input rule: mask them as prepare now does
            logging.warning("%s/%s: %d present sequence view(s) of %d subject(s) are blank (constant): treated as "
                            "missing; re-prepare the cache", cache, name, int(blank.sum()), int(blank.any(1).sum()))
            a["present"] = a["present"] & ~blank
        rows = np.flatnonzero(a["label"] >= 0) if labeled_only else np.arange(len(a["label"]))
        if not len(rows):
            raise ValueError(f"split {name!r} of {cache} has no labeled subject to evaluate on")
        return cls(a["images"][rows], a["present"][rows], a["label"][rows], [a["ids"][i] for i in rows])


def c_grid(config) -> np.ndarray:
    return 10.0 ** np.linspace(-6, 5, config.eval.c_grid_size)


def load_splits(config, cache) -> dict[str, Split]:
    """Labeled train / val / test views (a split the cache lacks is left out; train is required)."""
    names = [s for s in ("train", "val", "test") if (Path(cache) / s / "index.json").is_file()]
    if "train" not in names:
        raise ValueError(f"{cache} has no prepared train split: the probe needs labeled train subjects")
    seq = config.data.sequences.split(",")
    return {s: Split.load(cache, s, seq, config.data.eval_size, labeled_only=True) for s in names}


def scored(probe, feats: np.ndarray, labels: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    """Metrics of the probe on features, with a bootstrap CI of the MCC."""
    probs = probe.predict_proba(feats, num_classes=len(CLASS_NAMES))
    out = metrics_lib.classification_metrics(labels, probs)
    if n_boot:
        out["ci"] = {"mcc": list(metrics_lib.bootstrap_ci(labels, probs, "mcc", n_boot, seed))}
    return out


def validation_mcc(config, splits: dict[str, Split], extractor: FeatureExtractor) -> float:
    """Probe on train, MCC on val: the score that picks the best checkpoint during training."""
    train, val = splits["train"], splits["val"]
    probe = fit_probe(extractor(train.images, train.present)["cls"], train.label, c_grid(config))
    probs = probe.predict_proba(extractor(val.images, val.present)["cls"], num_classes=len(CLASS_NAMES))
    return metrics_lib.classification_metrics(val.label, probs)["mcc"]


def sweep(config, splits: dict[str, Split], extractor: FeatureExtractor, full_probe, split: str,
          extra: dict | None = None, refit: bool = True, pooling: str = "cls") -> dict:
    """Every sequence subset (+ random drop): probe refit per subset, and the full probe on masked features.

    `extra` maps more result kinds to scorers (train feats, train labels, test feats, test labels) -> metrics,
    run on the same masked features (the protocols' kNN). `refit=False` (a trained classifier as `full_probe`
    on `pooling` features): nothing is refit; the classifier itself on masked features, as "classifier".
    """
    seq = tuple(config.data.sequences.split(","))
    train, test = splits["train"], splits[split]
    extra = extra or {}
    kind = "full_probe" if refit else "classifier"
    results = {"split": split, **({"refit": {}} if refit else {}), kind: {}, "dropped": {},
               **{name: {} for name in extra}}
    for name, keep_of in tqdm(subsets.sweep_cases(seq, config.seed), desc=f"sequence subsets ({split})", unit="subset"):
        keep_tr, keep_te = keep_of(train.present), keep_of(test.present)
        # A sample with none of the subset's sequences has nothing to show the model: left out, counted.
        tr, te = keep_tr.any(1), keep_te.any(1)
        results["dropped"][name] = {"train": int((~tr).sum()), split: int((~te).sum())}
        if (refit and len(np.unique(train.label[tr])) < 2) or len(np.unique(test.label[te])) < 2:
            continue
        f_te = extractor(test.images[te], keep_te[te], desc=None)[pooling]
        if refit:
            f_tr = extractor(train.images[tr], keep_tr[tr], desc=None)[pooling]
            probe = fit_probe(f_tr, train.label[tr], c_grid(config))
            results["refit"][name] = scored(probe, f_te, test.label[te], 0)
            for extra_kind, score in extra.items():
                results[extra_kind][name] = score(f_tr, train.label[tr], f_te, test.label[te])
        results[kind][name] = scored(full_probe, f_te, test.label[te], 0)
    return results


def initial_backbone(config):
    """(graphdef, params, name) of the backbone a run starts from: the config's model at the run's seed."""
    backbone = build_models(config.model, config.seed)[0]
    graphdef, params = nnx.split(backbone)
    return graphdef, params, "initial weights" if config.model.init_from else "random init"


def initial_comparison(config, splits: dict[str, Split], trained_probs: dict[str, np.ndarray], cache,
                       out_dir: Path) -> dict:
    """The same probe protocol on the backbone the run started from, on each split of `trained_probs` (the
    evaluated backbone's probabilities), with the paired-bootstrap CI of the MCC difference (evaluated minus
    initial) on the same subjects; and the selected protocols (eval/protocols.py, plots in `out_dir`)."""
    graphdef, params, name = initial_backbone(config)
    initial = FeatureExtractor(graphdef, params, config.data.sequences.split(","), config.eval.batch_size)
    train = splits["train"]
    feats = {"train": initial(train.images, train.present, f"train ({name})")["cls"]}
    initial_probe = fit_probe(feats["train"], train.label, c_grid(config))
    out = {"name": name, "probe": {"c": initial_probe.c}, "splits": {}, "difference": {}}
    for split, probs in trained_probs.items():
        data = splits[split]
        feats[split] = initial(data.images, data.present, f"{split} ({name})")["cls"]
        out["splits"][split] = scored(initial_probe, feats[split], data.label, config.eval.bootstrap, config.seed)
        diff, low, high = metrics_lib.paired_bootstrap_difference(
            data.label, probs, initial_probe.predict_proba(feats[split], num_classes=len(CLASS_NAMES)), "mcc",
            max(config.eval.bootstrap, 1), config.seed)
        out["difference"][split] = {"mcc": diff, "ci": [low, high]}
    out["protocols"] = run_protocols(config, cache, splits, feats, initial, graphdef, params, initial_probe, out_dir)
    return out


def attention_examples(backbone, splits: dict[str, Split], split: str, sequences):
    """One example per class from `split`: images (C,S,H,W) and mean-over-heads CLS attention (C,S,h,w)."""
    data = splits[split]
    rows = [int(np.flatnonzero(data.label == c)[0]) for c in range(len(CLASS_NAMES)) if (data.label == c).any()]
    images = data.images[rows]
    names = [CLASS_NAMES[int(data.label[r])] for r in rows]
    return images, attention_maps(backbone, sequences)(images, data.present[rows]), names


def evaluate_backbone(config, workdir: str, backbone_def, params, step: int, export_dir: str = "",
                      overwrite: bool = False, classifier: tuple | None = None) -> dict:
    """Full evaluation of one backbone; writes DIR/eval (and the classifier to `export_dir`, replacing one there
    with `overwrite`), returns the metrics.

    Default: a linear probe fit on the train split's CLS features. `classifier` = (probe, pooling, head)
    evaluates a trained classifier instead (a fine-tuned head as a Probe on `pooling` features; `head`
    describes it, in metrics.json as "classifier" and in the export); its sweep refits nothing, and the
    protocols and the initial-backbone comparison (probes of frozen features) do not apply.
    """
    if classifier and (config.eval.protocols or config.eval.compare_init):
        raise ValueError("a trained classifier is evaluated without eval.protocols and eval.compare_init (probes "
                         "of frozen backbone features): set --config.eval.protocols= --config.eval.compare_init=False")
    out = Path(workdir) / "eval"
    cache = ensure_cache(config.data, workdir, config.seed)
    splits = load_splits(config, cache)
    seq = config.data.sequences.split(",")
    full_probe, pooling, head = classifier or (None, "cls", None)
    extractor = FeatureExtractor(backbone_def, params, seq, config.eval.batch_size, outputs=(pooling,))
    train = splits["train"]
    feats = {name: extractor(data.images, data.present, name)[pooling] for name, data in splits.items()
             if full_probe is None or name != "train"}
    if full_probe is None:
        full_probe = fit_probe(feats["train"], train.label, c_grid(config))
    if export_dir:
        export_classifier(export_dir, backbone_def, params, full_probe, config, step, seq, overwrite, pooling, head)
    payload = {"config": json.loads(config.to_json_best_effort()), "step": int(step), "sequences": seq,
               **({"classifier": head} if head else
                  {"probe": {"c": full_probe.c, "selection": full_probe.selection}}),
               "splits": {}, "n_train_labeled": len(train.label)}
    plots, trained_probs = {}, {}
    for name in ("val", "test"):
        if name not in splits:
            continue
        data = splits[name]
        payload["splits"][name] = scored(full_probe, feats[name], data.label, config.eval.bootstrap, config.seed)
        probs = trained_probs[name] = full_probe.predict_proba(feats[name], num_classes=len(CLASS_NAMES))
        plots[f"roc_{name}.png"] = report.plot_roc(out / f"roc_{name}.png", data.label, probs)
        plots[f"confusion_{name}.png"] = report.plot_confusion(
            out / f"confusion_{name}.png", payload["splits"][name]["confusion"])
    if config.eval.compare_init:
        payload["initial"] = initial_comparison(config, splits, trained_probs, cache, out / "initial")
    sweep_split = "test" if "test" in splits else "val"
    payload["sweep"] = sweep(config, splits, extractor, full_probe, sweep_split, sweep_scorers(config),
                             refit=head is None, pooling=pooling)
    for kind in report.SWEEP_KINDS:
        if kind in payload["sweep"]:
            report.plot_subset_heatmap(out / f"subsets_{kind}.png", payload["sweep"][kind])
    if head is None:
        payload.update(run_protocols(config, cache, splits, feats, extractor, backbone_def, params, full_probe, out,
                                     payload["sweep"]))
    jsonl = Path(workdir) / "metrics.jsonl"
    if jsonl.is_file():
        report.plot_training_curves(out / "training_curves.png", jsonl)
    images, attn, names = attention_examples(nnx.merge(backbone_def, params), splits, sweep_split, seq)
    report.plot_attention_maps(out / "attention.png", images, attn, names, seq)
    report.write_metrics_json(out / "metrics.json", payload)
    report.write_report_md(out / "report.md", payload, {"workdir": str(workdir), "step": int(step)})
    return payload


def load_backbone(config, workdir: str, checkpoint: str = ""):
    """(graphdef, teacher params, step) from a model directory or a step of DIR/checkpoints."""
    if checkpoint and (Path(checkpoint) / "model.json").is_file():
        backbone, _, _ = model_io.load_model(checkpoint)
        graphdef, params = nnx.split(backbone)
        return graphdef, params, 0
    if checkpoint and not checkpoint.isdigit():
        raise FileNotFoundError(f"--checkpoint {checkpoint} is neither a step of {workdir}/checkpoints nor a model "
                                "directory (with model.json)")
    learner = build_learner(config)
    checkpoints = ckpt_lib.RunCheckpoints(workdir)
    step = checkpoints.checked(int(checkpoint)) if checkpoint else checkpoints.usable_step(prefer_best=True)
    if step is None:
        checkpoints.close()
        raise FileNotFoundError(f"no usable checkpoint in {workdir}/checkpoints: train first, or pass "
                                "--checkpoint MODEL_DIR")
    abstract = jax.eval_shape(learner.init, learner.params)
    try:
        checkpoints.check_same_model(step, config)
        state, _ = checkpoints.restore_state(step, abstract)
    except (ValueError, KeyError) as err:
        raise ValueError(f"checkpoint step {step} in {workdir} does not fit the config's model "
                         f"(model.arch / embed_dim / depth?): {err}") from err
    finally:
        checkpoints.close()
    return learner.backbone_def, learner.backbone_of(state), step


def _mcc_with_ci(scores: dict) -> str:
    low, high = scores.get("ci", {}).get("mcc", (float("nan"),) * 2)
    return f"{scores['mcc']:.3f} (95% CI {low:.3f} to {high:.3f})"


def summary_line(payload: dict, workdir: str) -> str:
    """The headline: test (else val) MCC and AUC; with an initial-weights comparison, one line per split
    with both rows and the paired CI of their difference."""
    report_path = Path(workdir) / "eval" / "report.md"
    initial = payload.get("initial")
    if initial:
        lines = [f"{split:>4} MCC trained {_mcc_with_ci(scores)} | {initial['name']} "
                 f"{_mcc_with_ci(initial['splits'][split])} | difference {initial['difference'][split]['mcc']:+.3f} "
                 f"(paired 95% CI {initial['difference'][split]['ci'][0]:+.3f} to "
                 f"{initial['difference'][split]['ci'][1]:+.3f})"
                 for split, scores in payload["splits"].items()]
        return "\n".join([*lines, f"report: {report_path}"])
    test = payload["splits"].get("test") or payload["splits"].get("val")
    split = "test" if "test" in payload["splits"] else "val"
    low, high = test.get("ci", {}).get("mcc", (float("nan"),) * 2)
    return (f"{split} MCC {test['mcc']:.3f} (95% CI {low:.3f}-{high:.3f}), macro AUC "
            f"{test['auc_macro']:.3f}; report: {report_path}")
