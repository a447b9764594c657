"""The evaluation protocols beside the linear probe, run on one backbone (config `eval.protocols`).

- knn: weighted kNN on the CLS features (eval/knn.py), val and test; over the sequence subsets it runs
  inside the missing-sequence sweep (`sweep_scorers`), on the sweep's features;
- fewshot: the probe fit on n labeled subjects per class (eval/fewshot.py);
- subject: subject-level prediction over the K largest tumour slices of each axis (eval/multislice.py);
- segmentation: a linear decoder on the frozen patch tokens (eval/segmentation.py).

`run_protocols` returns the metrics.json entries and writes the protocols' plots to `out`.
"""

from __future__ import annotations

from pathlib import Path

from mmdino_jax.constants import CLASS_NAMES
from mmdino_jax.eval import fewshot, knn, multislice, report, segmentation
from mmdino_jax.eval.extract import FeatureExtractor
from mmdino_jax.eval.metrics import metrics_with_ci

PROTOCOLS = ("knn", "fewshot", "subject", "segmentation")
QUERY_SPLITS = ("val", "test")


def selected(config) -> list[str]:
    """The protocols named in `config.eval.protocols` (comma-separated; "" = none)."""
    names = [p for p in config.eval.protocols.split(",") if p]
    unknown = sorted(set(names) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown eval.protocols {unknown}; choose from {','.join(PROTOCOLS)}")
    return names


def sweep_scorers(config) -> dict:
    """The missing-sequence sweep's extra kinds: {"knn_k<k>": scorer} when knn is selected, else {}."""
    if "knn" not in selected(config):
        return {}

    def scorer(k):
        return lambda x_tr, y_tr, x_te, y_te: metrics_with_ci(
            y_te, knn.knn_probs(x_tr, y_tr, x_te, k, config.eval.knn_temperature, len(CLASS_NAMES)), 0)

    return {f"knn_k{k}": scorer(k) for k in config.eval.knn_k}


def subject_level(config, cache, extractor, probe, names) -> dict:
    """Subject-level metrics of each split in `names` for both aggregates."""
    k = config.eval.subject_slices
    out = {"slices_per_axis": k, "splits": {}}
    for name in names:
        images, present, owner, labels = multislice.split_views(cache, name, config.data.sequences.split(","),
                                                                config.data.eval_size, k)
        feats = extractor(images, present, f"{name} slices")["cls"]
        result = {"n_slices": len(owner)}
        for how in multislice.AGGREGATES:
            probs = multislice.subject_probs(probe, feats, owner, len(labels), how, len(CLASS_NAMES))
            result[how] = metrics_with_ci(labels, probs, config.eval.bootstrap, config.seed)
        out["splits"][name] = result
    return out


def run_protocols(config, cache, splits, feats: dict, extractor, backbone_def, params, probe, out: Path,
                  sweep: dict | None = None) -> dict:
    """metrics.json entries of the selected protocols. `splits` are the labeled evaluation views (with
    .images, .present, .label), `feats` their CLS features, `probe` the single-slice probe, `sweep` the
    missing-sequence sweep (its knn_k* kinds come from `sweep_scorers`)."""
    chosen, out = selected(config), Path(out)
    names = [n for n in QUERY_SPLITS if n in splits]
    bank = (feats["train"], splits["train"].label)
    queries = {n: (feats[n], splits[n].label) for n in names}
    results = {}
    if "knn" in chosen:
        results["knn"] = {"temperature": config.eval.knn_temperature,
                          **knn.knn_protocol(bank, queries, config.eval.knn_k, config.eval.knn_temperature,
                                             len(CLASS_NAMES), config.eval.bootstrap, config.seed)}
        if sweep and any(sweep.get(kind) for kind in sweep_scorers(config)):
            report.plot_knn_sweep(out / "knn_subsets.png", sweep)
    if "fewshot" in chosen:
        results["fewshot"] = fewshot.fewshot_protocol(bank, queries, config.eval.fewshot_shots,
                                                      config.eval.fewshot_draws, config.eval.fewshot_c,
                                                      len(CLASS_NAMES), config.seed)
        report.plot_fewshot(out / "fewshot.png", results["fewshot"])
    if "subject" in chosen:
        results["subject_level"] = subject_level(config, cache, extractor, probe, names)
        report.plot_subject_level(out / "subject_level.png", results["subject_level"], {
            n: metrics_with_ci(splits[n].label, probe.predict_proba(feats[n], len(CLASS_NAMES)), 0) for n in names})
    if "segmentation" in chosen:
        seg_cfg = config.eval.segmentation
        patches = FeatureExtractor(backbone_def, params, config.data.sequences.split(","), config.eval.batch_size,
                                   outputs=("patch",))
        results["segmentation"], examples = segmentation.segmentation_protocol(
            seg_cfg, cache, config.data.sequences.split(","), config.data.eval_size, patches, QUERY_SPLITS,
            config.eval.bootstrap, config.seed)
        if examples:
            report.plot_segmentation_examples(out / "segmentation.png", examples, config.data.sequences.split(","))
    return results
