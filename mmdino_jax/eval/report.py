"""Evaluation outputs: metrics.json, report.md (paper-ready Markdown tables) and PNG plots.

metrics.json schema (written by `write_metrics_json`, read by `write_report_md` and `compare_runs`):

    {
      "config": {...},                  # the run's configuration, free-form
      "step": 12345,                    # training step of the evaluated checkpoint
      "sequences": ["t1", "t1c", "t2", "flair"],
      "splits": {                       # "val" and/or "test"
        "<split>": {...classification_metrics(...)...,
                    "ci": {"mcc": [low, high], ...},   # optional, from bootstrap_ci
                    "ci_alpha": 0.05, "n_boot": 1000}, # optional
      },
      "sweep": {                        # optional missing-modality sweep on one split
        "split": "test",
        "refit": {"t1+t1c": {...metrics...}, ..., "random": {...}},      # probe refit per subset
        "full_probe": {"t1+t1c": {...metrics...}, ...},                   # full-sequence probe, masked features
        "classifier": {"t1+t1c": {...metrics...}, ...},                   # or: a fine-tuned classifier, masked
      },
      "probe": {"c": 0.01, "selection": [[C, holdout_mcc], ...]},        # optional: the linear probe
      "classifier": {"kind": "fine-tuned", ...}                          # optional: instead of a probe
    }

Plots use matplotlib's object API (no pyplot state), rendered by the Agg canvas.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from mmdino_jax.constants import BRATS_REGIONS
from mmdino_jax.eval.metrics import check_predictions, class_names_for

SPLITS = ("val", "test")
MAIN_METRICS = {"mcc": "MCC", "acc_top1": "Acc (macro)", "acc_top2": "Acc top-2",
                "auc_macro": "AUC (macro)", "f1_mean": "F1 (mean)"}
SWEEP_METRICS = {"mcc": "MCC", "auc_macro": "AUC", "f1_mean": "F1"}
SWEEP_KINDS = {"refit": "refit", "full_probe": "full probe", "classifier": "classifier"}
LOSS_TERMS = ("loss", "dino_local", "dino_global", "ibot", "koleo", "semi")
CURVE_PANELS = (("losses", LOSS_TERMS), ("learning rate", ("lr",)), ("teacher temperature", ("teacher_temp",)),
                ("teacher momentum", ("teacher_momentum",)), ("throughput (samples/s)", ("samples_per_s",)))


def _jsonable(obj):
    """Plain-JSON copy: numpy scalars/arrays to Python, tuples to lists, paths to str, NaN/inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _prepare(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_metrics_json(path, payload: Mapping) -> Path:
    """Write `payload` (schema in the module docstring) as strict, indented JSON."""
    path = _prepare(path)
    path.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return path


def load_metrics_json(path) -> dict:
    return json.loads(Path(path).read_text())


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _cell(metrics: Mapping | None, key: str) -> str:
    """"0.612 [0.551, 0.670]" when a CI is recorded, else "0.612"; "–" when missing."""
    if not metrics or metrics.get(key) is None:
        return "–"
    ci = metrics.get("ci", {}).get(key)
    return _fmt(metrics[key]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)


def _split_tables(splits: Mapping[str, Mapping]) -> list[str]:
    names = [s for s in SPLITS if s in splits] + [s for s in splits if s not in SPLITS]
    main = _table(["Split", "N", *MAIN_METRICS.values()],
                  [[s, splits[s]["n"], *(_cell(splits[s], k) for k in MAIN_METRICS)] for s in names])
    out = [main]
    cis = [(splits[s]["ci_alpha"], splits[s].get("n_boot", "?")) for s in names if "ci_alpha" in splits[s]]
    if cis:
        out.append(f"Brackets: {100 * (1 - cis[0][0]):g} % stratified bootstrap CI ({cis[0][1]} resamples).")
    for s in names:
        m = splits[s]
        classes = list(m["n_per_class"])
        out.append(f"### {s}: per class")
        out.append(_table(["Class", "n", "AUC", "F1"],
                          [[c, m["n_per_class"][c], _fmt(m["auc"][c]), _fmt(m["f1"][c])] for c in classes]))
        out.append(f"### {s}: confusion (rows true, columns predicted)")
        out.append(_table(["true \\ pred", *classes], [[c, *row] for c, row in zip(classes, m["confusion"])]))
        out.extend(f"Note: {n}" for n in m.get("notes", []))
    return out


def _initial_table(results: Mapping) -> str:
    """One row per split: trained MCC and the initial backbone's, each with its CI, and their paired difference."""
    initial = results["initial"]
    rows = []
    for split in [s for s in SPLITS if s in initial["difference"]]:
        diff = initial["difference"][split]
        rows.append([split, results["splits"][split]["n"], _cell(results["splits"][split], "mcc"),
                     _cell(initial["splits"][split], "mcc"),
                     f"{diff['mcc']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]"])
    table = _table(["Split", "N", "trained MCC", f"{initial['name']} MCC", "difference (paired bootstrap CI)"], rows)
    return table + ("\n\nBrackets: 95 % CIs; the difference's CI resamples the same subjects for both rows. "
                    f"{initial['name']}: the backbone at step 0, probed exactly like the trained teacher.")


def _sweep_table(sweep: Mapping) -> str:
    kinds = [k for k in SWEEP_KINDS if k in sweep]
    subsets = list(dict.fromkeys(s for k in kinds for s in sweep[k]))
    header = ["Subset", *(f"{label} ({SWEEP_KINDS[k]})" for k in kinds for label in SWEEP_METRICS.values())]
    rows = [[s, *(_cell(sweep[k].get(s), m) for k in kinds for m in SWEEP_METRICS)] for s in subsets]
    return _table(header, rows)


def comparison_table(runs: Mapping[str, Mapping]) -> str:
    """Markdown table with one column per run (name -> payload): main metrics per split, then sweep MCC."""
    rows = []
    for split in dict.fromkeys(s for p in runs.values() for s in p.get("splits", {})):
        for key, label in MAIN_METRICS.items():
            rows.append([f"{split} {label}", *(_cell(p.get("splits", {}).get(split), key) for p in runs.values())])
    for kind, kind_label in SWEEP_KINDS.items():
        for subset in dict.fromkeys(s for p in runs.values() for s in p.get("sweep", {}).get(kind, {})):
            rows.append([f"sweep MCC {subset} ({kind_label})",
                         *(_cell(p.get("sweep", {}).get(kind, {}).get(subset), "mcc") for p in runs.values())])
    for label, get in _protocol_rows(runs.values()):
        rows.append([label, *(get(p) for p in runs.values())])
    return _table(["Metric", *runs], rows)


def _mean_sd(entry: Mapping | None) -> str:
    return "–" if not entry or "mean" not in entry else f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def _mean_ci(entry: Mapping | None) -> str:
    """"0.812 [0.770, 0.850] (n=40)" of a {"mean", "ci", "n"} summary."""
    if not entry or entry.get("mean") is None:
        return "–"
    ci = entry.get("ci")
    return _fmt(entry["mean"]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "") + f" (n={entry['n']})"


def _knn_section(result: Mapping, sweep: Mapping) -> list[str]:
    ks = [k for k in result if k.startswith("k") and k[1:].isdigit()]
    names = list(dict.fromkeys(s for k in ks for s in result[k]))
    rows = [[f"k={k[1:]}", s, result[k][s]["n"], *(_cell(result[k][s], m) for m in ("mcc", "acc_top1", "auc_macro"))]
            for k in ks for s in names if s in result[k]]
    out = [f"## kNN on CLS features (cosine, votes weighted exp(sim / {result['temperature']:g}))",
           _table(["k", "Split", "N", "MCC", "Acc (macro)", "AUC (macro)"], rows)]
    kinds = [f"knn_{k}" for k in ks if sweep.get(f"knn_{k}")]
    if kinds:
        subset_names = list(dict.fromkeys(s for kind in kinds for s in sweep[kind]))
        out += [f"### kNN over sequence subsets ({sweep['split']}, bank and queries restricted to the subset)",
                _table(["Subset", *(f"k={kind[5:]} {label}" for kind in kinds for label in SWEEP_METRICS.values())],
                       [[s, *(_cell(sweep[kind].get(s), m) for kind in kinds for m in SWEEP_METRICS)]
                        for s in subset_names]), "![kNN subsets](knn_subsets.png)"]
    return out


def _fewshot_section(result: Mapping) -> list[str]:
    names = list(dict.fromkeys(s for r in result["shots"].values() for s in r if s != "skipped"))
    rows = [[n, *(r.get("skipped", "skipped") if "skipped" in r else _mean_sd(r.get(s)) for s in names)]
            for n, r in result["shots"].items()]
    return [f"## Few-shot probe (MCC mean ± sd over {result['draws']} stratified draws, C = {result['c']:g})",
            _table(["Subjects per class", *names], rows), "![few-shot](fewshot.png)"]


def _subject_section(result: Mapping, single: Mapping) -> list[str]:
    rows = []
    for name, r in result["splits"].items():
        for label, m in (("single slice (largest axial)", single.get(name)), ("mean of probabilities", r["probs"]),
                         ("mean of features", r["features"])):
            rows.append([name, label, *(_cell(m, k) for k in ("mcc", "acc_top1", "auc_macro"))])
    return [f"## Subject level: the {result['slices_per_axis']} largest tumour slices of each axis",
            _table(["Split", "Prediction", "MCC", "Acc (macro)", "AUC (macro)"], rows),
            "![subject level](subject_level.png)"]


def _segmentation_section(result: Mapping) -> list[str]:
    rows = [[name, BRATS_REGIONS[r][1], _mean_ci(m[r]["dice"]), _mean_ci(m[r]["hd95"]), m[r]["empty_prediction"]]
            for name, m in result["splits"].items() for r in BRATS_REGIONS]
    out = [f"## Segmentation from frozen patch tokens (linear decoder, tokens {result['tokens']}, loss "
           f"{result['loss']}, {result['steps']} steps on {result['n_train']} train slices)",
           _table(["Split", "Region", "Dice [95 % CI]", f"HD95 ({result['hd95_unit']})", "empty predictions"], rows),
           "Dice and HD95 per subject on its largest axial tumour slice (96 x 96 crop), mean and bootstrap CI over "
           "subjects; a subject without the region in its true mask is left out of it; an empty prediction scores "
           "Dice 0 and HD95 = the crop diagonal."]
    missing = result.get("missing")
    if missing:
        out += [f"### Dice with one sequence missing ({missing['split']}; the subjects that have it and another)",
                _table(["Missing", *(title for _, title in BRATS_REGIONS.values())],
                       [[seq, *(_mean_ci(d[r]) for r in BRATS_REGIONS)] for seq, d in missing["dice"].items()])]
    return out + ["![segmentation](segmentation.png)"]


def _protocol_sections(results: Mapping) -> list[str]:
    out = []
    if results.get("knn"):
        out += _knn_section(results["knn"], results.get("sweep", {}))
    if results.get("fewshot"):
        out += _fewshot_section(results["fewshot"])
    if results.get("subject_level"):
        out += _subject_section(results["subject_level"], results.get("splits", {}))
    if results.get("segmentation"):
        out += _segmentation_section(results["segmentation"])
    return out


def _protocol_rows(payloads) -> list[tuple[str, object]]:
    """(label, payload -> cell) of the protocols' headline numbers, for the rows any payload has."""
    payloads = list(payloads)
    splits = [s for s in SPLITS if any(s in p.get("splits", {}) for p in payloads)]
    rows = []
    for k in dict.fromkeys(k for p in payloads for k in p.get("knn", {}) if k[:1] == "k" and k[1:].isdigit()):
        rows += [(f"{s} kNN k={k[1:]} MCC", lambda p, k=k, s=s: _cell(p.get("knn", {}).get(k, {}).get(s), "mcc"))
                 for s in splits]
    for n in dict.fromkeys(n for p in payloads for n in p.get("fewshot", {}).get("shots", {})):
        rows += [(f"{s} few-shot {n}/class MCC",
                  lambda p, n=n, s=s: _mean_sd(p.get("fewshot", {}).get("shots", {}).get(n, {}).get(s)))
                 for s in splits]
    for how in ("probs", "features"):
        rows += [(f"{s} subject-level MCC (mean of {how})",
                  lambda p, how=how, s=s: _cell(p.get("subject_level", {}).get("splits", {}).get(s, {}).get(how),
                                                "mcc"))
                 for s in splits if any("subject_level" in p for p in payloads)]
    for region in BRATS_REGIONS:
        rows += [(f"{s} segmentation Dice {region.upper()}",
                  lambda p, r=region, s=s: _mean_ci(p.get("segmentation", {}).get("splits", {}).get(s, {}).get(r, {})
                                                    .get("dice")))
                 for s in splits if any("segmentation" in p for p in payloads)]
    return rows


def write_report_md(path, results: Mapping, meta: Mapping, others: Mapping[str, Mapping] | None = None) -> Path:
    """Markdown report of one run's `results` (metrics.json payload); `meta` items are listed at the top.

    With `others` (name -> payload of other runs, e.g. baselines), a side-by-side comparison is appended;
    this run's column is named meta["name"] (default "this run").
    """
    facts = [f"- {k}: {v}" for k, v in meta.items()]
    if "step" in results:
        facts.append(f"- checkpoint step: {results['step']}")
    if results.get("sequences"):
        facts.append(f"- sequences: {', '.join(results['sequences'])}")
    if results.get("probe"):
        facts.append(f"- probe C: {results['probe']['c']:.3g}")
    facts += [f"- classifier {k}: {v}" for k, v in results.get("classifier", {}).items()]
    parts = ["# Evaluation report", "\n".join(facts)] if facts else ["# Evaluation report"]
    if results.get("splits"):
        what = "fine-tuned classifier" if results.get("classifier") else "linear probe on teacher CLS features"
        parts += [f"## Classification ({what})", *_split_tables(results["splits"])]
    if results.get("initial"):
        parts += [f"## Trained vs {results['initial']['name']} (same probe protocol)", _initial_table(results)]
        if results["initial"].get("protocols"):
            initial = {**results["initial"]["protocols"], "splits": results["initial"]["splits"]}
            rows = [[label, get(results), get(initial)] for label, get in _protocol_rows([results, initial])]
            parts += [f"### The protocols: trained vs {results['initial']['name']} (plots of the latter in initial/)",
                      _table(["Metric", "trained", results["initial"]["name"]], rows)]
    if results.get("sweep"):
        parts += [f"## Missing-modality sweep ({results['sweep'].get('split', '?')})", _sweep_table(results["sweep"]),
                  "refit: probe refit per subset on masked features; full probe: the all-sequence probe "
                  "applied to masked features; classifier: the trained classifier on masked features."]
    parts += _protocol_sections(results)
    if others:
        parts += ["## Comparison", comparison_table({meta.get("name", "this run"): results, **others})]
    path = _prepare(path)
    path.write_text("\n\n".join(parts) + "\n")
    return path


def compare_runs(run_dirs: Sequence) -> str:
    """Side-by-side Markdown table of DIR/eval/metrics.json for each run directory (named by its folder)."""
    runs = {}
    for d in map(Path, run_dirs):
        file = d / "eval" / "metrics.json"
        if not file.is_file():
            raise FileNotFoundError(f"no evaluation results at {file}")
        runs[d.name if d.name not in runs else str(d)] = load_metrics_json(file)
    if not runs:
        raise ValueError("no run directories given")
    return comparison_table(runs)


def _save(fig: Figure, path) -> Path:
    path = _prepare(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_roc(path, labels, probs, class_names: Sequence[str] | None = None) -> Path:
    """One-vs-rest ROC curve per class present, AUC in the legend."""
    labels, probs = check_predictions(labels, probs)
    names = class_names_for(probs.shape[1], class_names)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for c, name in enumerate(names):
        if np.any(labels == c):
            fpr, tpr, _ = roc_curve(labels == c, probs[:, c])
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels == c, probs[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_confusion(path, confusion, class_names: Sequence[str] | None = None) -> Path:
    """Confusion matrix (rows true, columns predicted): counts annotated, colour = row fraction."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {cm.shape}")
    names = class_names_for(cm.shape[0], class_names)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.6 * len(names) + 1.5, 1.4 * len(names) + 1))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, f"{n}\n{100 * frac[i, j]:.0f}%", ha="center", va="center",
                color="white" if frac[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_yticklabels(names)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    return _save(fig, path)


def plot_subset_heatmap(path, table: Mapping[str, Mapping], metrics: Mapping[str, str] = SWEEP_METRICS) -> Path:
    """Heatmap of subset (rows) x metric (columns) with values annotated; `table` is subset -> metrics dict."""
    if not table:
        raise ValueError("empty subset table")
    values = np.array([[np.nan if table[s].get(m) is None else table[s][m] for m in metrics] for s in table], float)
    fig = Figure(figsize=(1.4 * len(metrics) + 2.5, 0.4 * len(table) + 1.2))
    ax = fig.subplots()
    im = ax.imshow(values, cmap="viridis", vmin=np.nanmin(values, initial=0.0), vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                color="black" if v > 0.6 else "white")
    ax.set(xticks=range(len(metrics)), yticks=range(len(table)))
    ax.set_xticklabels(list(metrics.values()))
    ax.set_yticklabels(list(table))
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def read_training_log(metrics_jsonl_path) -> list[dict]:
    """The records of a metrics.jsonl file that carry a `step` (training logs, not evaluation lines)."""
    records = [json.loads(line) for line in Path(metrics_jsonl_path).read_text().splitlines() if line.strip()]
    return [r for r in records if "step" in r]


def plot_training_curves(path, runs) -> Path:
    """Losses, lr, teacher temperature/momentum and throughput over steps from a metrics.jsonl file, or from
    several runs' files overlaid (`runs` = {label: path}: one line style per run, one colour per metric)."""
    runs = runs if isinstance(runs, Mapping) else {"": runs}
    logs = {label: read_training_log(p) for label, p in runs.items()}
    records = [r for log in logs.values() for r in log]
    panels = [(title, [k for k in keys if any(k in r for r in records)]) for title, keys in CURVE_PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        raise ValueError(f"no training metrics with a 'step' in {', '.join(map(str, runs.values()))}")
    fig = Figure(figsize=(6, 2.2 * len(panels)))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    for ax, (title, keys) in zip(axes, panels):
        for (label, log), style in zip(logs.items(), ("-", "--", ":", "-.")):
            for colour, key in enumerate(keys):
                pts = np.array([(r["step"], r[key]) for r in log if r.get(key) is not None], float).reshape(-1, 2)
                ax.plot(pts[:, 0], pts[:, 1], style, color=f"C{colour}", label=f"{label} {key}".strip())
        ax.set_title(title)
        if len(logs) > 1:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      ncol=len(logs) if len(keys) > 3 else 1)  # a column per run
        elif len(keys) > 1:
            ax.legend(fontsize="small")
    axes[-1].set_xlabel("step")
    return _save(fig, path)


def plot_attention_maps(path, images, attention, class_names: Sequence[str], sequence_names: Sequence[str]) -> Path:
    """Grid (rows = examples, e.g. one per class; columns = sequences): the slice in grey with the
    attention overlaid, attention normalised per example so sequences compare on one scale."""
    images, attention = np.asarray(images, float), np.asarray(attention, float)
    if images.ndim != 4 or attention.ndim != 4 or images.shape[:2] != attention.shape[:2]:
        raise ValueError(f"expected images (C,S,H,W) and attention (C,S,h,w), got {images.shape}, {attention.shape}")
    rows, cols = images.shape[:2]
    if len(class_names) != rows or len(sequence_names) != cols:
        raise ValueError(
            f"need {rows} row names and {cols} sequence names, got {len(class_names)}, {len(sequence_names)}"
        )
    height, width = images.shape[2:]
    attention = attention / np.maximum(attention.max(axis=(1, 2, 3), keepdims=True), 1e-12)
    fig = Figure(figsize=(2 * cols, 2 * rows))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for (i, j), ax in np.ndenumerate(axes):
        ax.imshow(images[i, j], cmap="gray")
        ax.imshow(attention[i, j], cmap="inferno", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear",
                  extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title(sequence_names[j])
        if j == 0:
            ax.set_ylabel(class_names[i])
    return _save(fig, path)


def plot_knn_sweep(path, sweep: Mapping) -> Path:
    """Heatmap of the kNN MCC per sequence subset (rows) and k (columns) from the sweep's knn_k* kinds."""
    kinds = [k for k in sweep if k.startswith("knn_k")]
    subsets = list(dict.fromkeys(s for k in kinds for s in sweep[k]))
    table = {s: {k: sweep[k].get(s, {}).get("mcc") for k in kinds} for s in subsets}
    return plot_subset_heatmap(path, table, {k: f"k={k[5:]} MCC" for k in kinds})


def plot_fewshot(path, result: Mapping) -> Path:
    """MCC (mean ± sd over draws) against labeled subjects per class, one line per split."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    done = {int(n): r for n, r in result["shots"].items() if "skipped" not in r}
    shots = sorted(done)
    for split in dict.fromkeys(s for r in done.values() for s in r):
        ax.errorbar(shots, [done[n][split]["mean"] for n in shots], yerr=[done[n][split]["sd"] for n in shots],
                    marker="o", capsize=3, label=split)
    ax.set(xscale="log", xlabel="labeled subjects per class", ylabel="MCC",
           title=f"few-shot probe ({result['draws']} draws per point)")
    ax.set_xticks(shots or [1])
    ax.set_xticklabels([str(n) for n in shots or [1]])
    ax.axhline(0, color="k", lw=0.5)
    if shots:
        ax.legend()
    return _save(fig, path)


def plot_subject_level(path, result: Mapping, single: Mapping) -> Path:
    """MCC per split: single slice vs the subject-level aggregates."""
    names = list(result["splits"])
    bars = {"single slice": [single[n]["mcc"] for n in names],
            **{f"mean of {how}": [result["splits"][n][how]["mcc"] for n in names] for how in ("probs", "features")}}
    fig = Figure(figsize=(1.8 * len(names) + 2.5, 3.5))
    ax = fig.subplots()
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars.items()):
        ax.bar(np.arange(len(names)) + i * width, values, width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names)
    ax.set(ylabel="MCC", title=f"subject level ({result['slices_per_axis']} slices per axis)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_segmentation_examples(path, examples: Mapping, sequence_names: Sequence[str]) -> Path:
    """Rows = subjects: the last sequence's slice, the true labels and the predicted labels over it."""
    from matplotlib.colors import ListedColormap

    images, truth, pred = (np.asarray(examples[k]) for k in ("images", "truth", "prediction"))
    colours = ListedColormap([(0, 0, 0, 0), (1, 0.2, 0.2, 0.6), (0.2, 0.9, 0.2, 0.6), (0, 0, 0, 0),
                              (1, 0.9, 0.1, 0.8)])
    fig = Figure(figsize=(6, 2 * len(images)))
    axes = np.asarray(fig.subplots(len(images), 3, squeeze=False))
    crop = truth.shape[-1]
    for i, row in enumerate(axes):
        for j, (ax, title) in enumerate(zip(row, (sequence_names[-1], "true", "predicted"))):
            ax.imshow(images[i, -1], cmap="gray", extent=(0, crop, crop, 0))
            if j:
                ax.imshow((truth, pred)[j - 1][i], cmap=colours, vmin=0, vmax=4, interpolation="nearest",
                          extent=(0, crop, crop, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title)
        row[0].set_ylabel(examples["ids"][i], fontsize="small")
    fig.suptitle(f"{examples['split']}: labels 1 red, 2 green, 4 yellow")
    return _save(fig, path)
