"""One cell of the reproduction grid (arm x seed x label fraction): train or build its features, probe them, score
the probe on val and on the external test split with every sequence and with each single sequence removed.

  python -m mmdino_jax.experiments.cell --size SIZE --arm ARM --seed N --fraction F --out DIR
      [--config configs/reproduce.py]

Reads DIR/cache (and DIR/radiomics.npz for the radiomics arm), trains in DIR/work/NAME (resumable; removed when
the cell is done) and writes DIR/cells/NAME.json atomically: the cell is done when that file exists.

What a seed varies: the model's initialisation, the training batches and crops, the kept labeled subset of the
train subjects (stratified), and the probe's hold-out for choosing C. The cohort is the same for every seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from mmdino_jax.config_base import load_config
from mmdino_jax.constants import CLASS_NAMES
from mmdino_jax.data.pipeline import CachedSplit, subsample_labels
from mmdino_jax.eval.backbone import c_grid, initial_backbone, load_splits, scored
from mmdino_jax.eval.extract import FeatureExtractor
from mmdino_jax.eval.probe import fit_probe
from mmdino_jax.experiments import radiomics

GRID = "configs/reproduce.py"
TRAINED = ("mmdino", "no_modality_masking", "supervised")
SCALARS = ("mcc", "auc_macro", "f1_mean")


def cell_name(arm: str, seed: int, fraction: float) -> str:
    return f"{arm}_seed{seed}_frac{fraction:g}"


def cell_config(grid: str, size: str, arm: str, seed: int, fraction: float, cache):
    """The run config of a cell (the radiomics and random-init arms read the mmdino one's data and model)."""
    config = load_config(f"{grid}:{arm if arm in TRAINED else 'mmdino'},{size}")
    config.seed, config.data.label_keep_fraction, config.data.cache = int(seed), float(fraction), str(cache)
    return config


def trained_backbone(config, workdir: str, arm: str):
    """(graphdef, params) of the backbone an arm trains (the SSL teacher, or the supervised backbone)."""
    from mmdino_jax.ssl.learner import learner_for_cache
    from mmdino_jax.supervised.learner import build_classifier
    from mmdino_jax.training.run import checked_run, fit

    build = build_classifier if arm == "supervised" else learner_for_cache
    with checked_run(config, workdir) as (config, workdir):
        fitted = fit(config, workdir, build, desc=arm)
    if not fitted.finished:
        raise SystemExit(f"{workdir}: training stopped before step {config.total_steps}; rerun to resume")
    learner = fitted.run.learner
    return learner.backbone_def, learner.backbone_of(fitted.result.state)


def feature_function(config, arm: str, splits, out: Path, workdir: str):
    """fn(split name, present (N, S)) -> probe input (N, D) of the arm, absent sequences handled as the arm does
    at inference (masked tokens for backbones, train-mean imputation for radiomics)."""
    if arm == "radiomics":
        with np.load(out / "radiomics.npz", allow_pickle=False) as z:
            feats = {name: z[name] for name in splits}
        mean = radiomics.train_means(feats["train"], splits["train"].present)
        return lambda name, present: radiomics.imputed(feats[name], present, mean)
    if arm == "random_init":
        graphdef, params, _ = initial_backbone(config)
    else:
        graphdef, params = trained_backbone(config, workdir, arm)
    extractor = FeatureExtractor(graphdef, params, config.data.sequences.split(","), config.eval.batch_size)
    return lambda name, present: extractor(splits[name].images, present, desc=None)["cls"]


def evaluate(config, splits, features) -> dict:
    """Probe on the kept labeled train subjects; val and test scores; test predictions per missing-sequence case
    (case "all": every sequence the subject has; "no_X": X removed; rows: test subjects left with a sequence)."""
    train, test = splits["train"], splits["test"]
    keep = subsample_labels(train.label, config.data.label_keep_fraction, config.seed) >= 0
    probe = fit_probe(features("train", train.present)[keep], train.label[keep], c_grid(config))
    k = len(CLASS_NAMES)
    out = {"n_labeled": int(keep.sum()), "probe_c": float(probe.c)}
    val = scored(probe, features("val", splits["val"].present), splits["val"].label, 0)
    out["val"] = {m: val[m] for m in SCALARS}
    test_scores = scored(probe, features("test", test.present), test.label, config.eval.bootstrap, config.seed)
    out["test"] = {**{m: test_scores[m] for m in SCALARS}, "mcc_ci": test_scores["ci"]["mcc"]}
    out["test_labels"] = test.label.tolist()
    cases = {"all": test.present}
    for s, name in enumerate(config.data.sequences.split(",")):
        cases[f"no_{name}"] = test.present & (np.arange(test.present.shape[1]) != s)
    out["cases"] = {}
    for case, present in cases.items():
        rows = np.flatnonzero(present.any(1))
        pred = probe.predict_proba(features("test", present)[rows], num_classes=k).argmax(1)
        out["cases"][case] = {"rows": rows.tolist(), "pred": pred.tolist()}
    return out


def run_cell(grid: str, size: str, arm: str, seed: int, fraction: float, out) -> Path:
    """Run one cell into `out`/cells (nothing when its result exists); returns the result's path."""
    out = Path(out).absolute()  # Orbax rejects relative checkpoint paths
    result = out / "cells" / f"{cell_name(arm, seed, fraction)}.json"
    if result.is_file():
        return result
    start = time.time()
    cache = out / "cache"
    config = cell_config(grid, size, arm, seed, fraction, cache)
    splits = load_splits(config, cache)
    if len(splits["train"].label) != len(CachedSplit(cache, "train")):
        raise ValueError(f"{cache}: the reproduction cohort must have every train subject labeled")
    workdir = out / "work" / result.stem
    features = feature_function(config, arm, splits, out, str(workdir))
    payload = {"arm": arm, "seed": int(seed), "fraction": float(fraction), "size": size,
               "steps": int(config.total_steps) if arm in TRAINED else 0,
               **evaluate(config, splits, features), "seconds": round(time.time() - start, 1)}
    result.parent.mkdir(parents=True, exist_ok=True)
    tmp = result.with_name(result.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, result)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmdino_jax.experiments.cell", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=GRID, help="the grid's config file (default %(default)s)")
    p.add_argument("--size", required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--fraction", required=True, type=float)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from mmdino_jax.run_log import quiet_library_logs

    quiet_library_logs()
    print(run_cell(a.config, a.size, a.arm, a.seed, a.fraction, a.out))


if __name__ == "__main__":
    main()
