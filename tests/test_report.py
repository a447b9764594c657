"""eval/report.py: metrics.json, report.md, run comparison and PNG plots."""

import json

import numpy as np
import pytest

from mmdino_jax.constants import CLASS_NAMES, SEQUENCES
from mmdino_jax.eval.metrics import bootstrap_ci, classification_metrics
from mmdino_jax.eval.report import (
    compare_runs,
    load_metrics_json,
    plot_attention_maps,
    plot_confusion,
    plot_roc,
    plot_subset_heatmap,
    plot_training_curves,
    write_metrics_json,
    write_report_md,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _predictions(seed, n=60, signal=2.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + signal * np.eye(3)[labels]
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _split(seed):
    labels, probs = _predictions(seed)
    m = classification_metrics(labels, probs)
    m["ci"] = {"mcc": list(bootstrap_ci(labels, probs, "mcc", n_boot=20, seed=seed))}
    return {**m, "ci_alpha": 0.05, "n_boot": 20}


def _payload(seed):
    sweep = {kind: {name: classification_metrics(*_predictions(seed + i, signal=0.5 + i))
                    for i, name in enumerate(["t1+t1c", "t1+t1c+t2+flair", "random"])}
             for kind in ("refit", "full_probe")}
    return {"config": {"arch": "vits14", "lr": np.float32(5e-4)}, "step": np.int64(2500), "sequences": SEQUENCES,
            "splits": {"val": _split(seed), "test": _split(seed + 1)}, "sweep": {"split": "test", **sweep},
            "probe": {"c": 0.01, "selection": [[0.01, 0.5]]}}


def test_metrics_json_round_trip(tmp_path):
    payload = _payload(0)
    payload["config"]["missing"] = float("nan")
    path = write_metrics_json(tmp_path / "eval" / "metrics.json", payload)
    loaded = load_metrics_json(path)
    assert loaded["step"] == 2500 and loaded["config"]["missing"] is None
    assert loaded["splits"]["val"]["mcc"] == payload["splits"]["val"]["mcc"]
    assert loaded["sequences"] == list(SEQUENCES)


def test_report_md_tables(tmp_path):
    payload = json.loads(json.dumps(_payload(0), default=lambda o: o.item()))
    text = write_report_md(tmp_path / "report.md", payload, {"name": "mmdino", "checkpoint": "ckpt/2500"},
                           others={"supervised": _payload(5)}).read_text()
    val = payload["splits"]["val"]
    low, high = val["ci"]["mcc"]
    assert f"| val | 60 | {val['mcc']:.3f} [{low:.3f}, {high:.3f}] | {val['acc_top1']:.3f} |" in text
    assert "| test | 60 |" in text
    for name in CLASS_NAMES:
        assert f"| {name} | {val['n_per_class'][name]} | {val['auc'][name]:.3f} |" in text
    refit, full = payload["sweep"]["refit"]["random"], payload["sweep"]["full_probe"]["random"]
    assert (f"| random | {refit['mcc']:.3f} | {refit['auc_macro']:.3f} | {refit['f1_mean']:.3f} | "
            f"{full['mcc']:.3f} |") in text
    assert "| t1+t1c+t2+flair |" in text and "- checkpoint: ckpt/2500" in text
    assert "| Metric | mmdino | supervised |" in text and "| sweep MCC random (refit) |" in text


def test_compare_runs(tmp_path):
    for i, name in enumerate(["run_a", "run_b"]):
        write_metrics_json(tmp_path / name / "eval" / "metrics.json", _payload(i))
    table = compare_runs([tmp_path / "run_a", tmp_path / "run_b"])
    lines = table.splitlines()
    assert lines[0] == "| Metric | run_a | run_b |"
    test_mcc = [line for line in lines if line.startswith("| test MCC |")]
    assert len(test_mcc) == 1 and test_mcc[0].count("[") == 2
    with pytest.raises(FileNotFoundError, match="no evaluation results"):
        compare_runs([tmp_path / "missing"])


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_plots_write_png(tmp_path):
    labels, probs = _predictions(0)
    m = classification_metrics(labels, probs)
    _assert_png(plot_roc(tmp_path / "roc.png", labels, probs))
    _assert_png(plot_confusion(tmp_path / "confusion.png", m["confusion"]))
    table = _payload(0)["sweep"]["refit"]
    table["t1"] = {"mcc": None, "auc_macro": 0.7, "f1_mean": 0.4}
    _assert_png(plot_subset_heatmap(tmp_path / "subsets.png", table))
    rng = np.random.default_rng(0)
    images, attention = rng.random((3, 4, 32, 32)), rng.random((3, 4, 4, 4))
    _assert_png(plot_attention_maps(tmp_path / "attn.png", images, attention, CLASS_NAMES, SEQUENCES))


def test_plot_training_curves(tmp_path):
    lines = [json.dumps({"step": s, "loss": 10 - s / 10, "dino_local": 5.0, "dino_global": 4.0, "ibot": 3.0,
                         "koleo": -0.1, "semi": 1.0, "lr": s * 1e-5, "teacher_temp": 0.04,
                         "teacher_momentum": 0.996, "samples_per_s": 100.0}) for s in range(0, 50, 10)]
    lines.insert(2, json.dumps({"event": "eval", "val_mcc": 0.4}))  # records without a step are skipped
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    _assert_png(plot_training_curves(tmp_path / "curves.png", tmp_path / "metrics.jsonl"))
    other = [json.dumps({**json.loads(line), "loss": 9 - json.loads(line)["step"] / 10}) for line in lines
             if "step" in line]
    (tmp_path / "other.jsonl").write_text("\n".join(other) + "\n")
    both = plot_training_curves(tmp_path / "both.png", {"float32": tmp_path / "metrics.jsonl",
                                                        "bfloat16": tmp_path / "other.jsonl"})
    _assert_png(both)
    assert both.read_bytes() != (tmp_path / "curves.png").read_bytes()  # the second run is drawn too
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no training metrics"):
        plot_training_curves(tmp_path / "x.png", tmp_path / "empty.jsonl")


def test_plot_input_errors(tmp_path):
    with pytest.raises(ValueError, match="square"):
        plot_confusion(tmp_path / "c.png", [[1, 2, 3]])
    with pytest.raises(ValueError, match="sequence names"):
        plot_attention_maps(tmp_path / "a.png", np.zeros((3, 4, 8, 8)), np.zeros((3, 4, 2, 2)), CLASS_NAMES, ["t1"])


def test_report_md_puts_trained_and_random_init_side_by_side(tmp_path):
    from mmdino_jax.eval.backbone import summary_line

    payload = json.loads(json.dumps(_payload(0), default=lambda o: o.item()))
    payload["initial"] = {"name": "random init", "splits": {"val": _split(7), "test": _split(8)},
                          "difference": {"val": {"mcc": 0.21, "ci": [0.05, 0.37]},
                                         "test": {"mcc": -0.02, "ci": [-0.2, 0.15]}}}
    text = write_report_md(tmp_path / "report.md", payload, {}).read_text()
    assert "## Trained vs random init" in text
    section = text.split("## Trained vs random init")[1]
    row = next(line for line in section.splitlines() if line.startswith("| val |"))
    assert "+0.210 [+0.050, +0.370]" in row and f"{payload['initial']['splits']['val']['mcc']:.3f}" in row
    lines = summary_line(payload, str(tmp_path)).splitlines()
    assert lines[0].startswith(" val MCC trained") and "random init" in lines[0] and "+0.050 to +0.370" in lines[0]
    assert lines[1].startswith("test MCC trained") and lines[2].startswith("report:")
