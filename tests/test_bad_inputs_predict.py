"""Bad input to predict, features and the converter: a tampered artifact or model refused in one line,
arguments checked before computing, the blank rule applied per subject (session fixtures, tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.bad_inputs import fails, flip_bytes, largest_file
from mmdino_jax import features, predict
from mmdino_jax.convert.__main__ import main as convert_main
from mmdino_jax.eval.probe import Probe
from mmdino_jax.models.io import load_model, save_model

# ---------------------------------------------------------------- predict


def tampered(smoke, tmp_path, doc_edit=None, probe_edit=None, action=None) -> Path:
    """A copy of the exported classifier with classifier.json, probe.npz or files changed."""
    clf = shutil.copytree(smoke.clf, tmp_path / "clf")
    if doc_edit:
        doc = json.loads((clf / "classifier.json").read_text())
        doc_edit(doc)
        (clf / "classifier.json").write_text(json.dumps(doc))
    if probe_edit:
        probe = Probe.load_npz(clf / "probe.npz")
        probe_edit(probe)
        probe.save_npz(clf / "probe.npz")
    if action:
        action(clf)
    return clf


def _set(obj, key, value):
    obj[key] = value


def _flip_bytes(clf: Path):
    flip_bytes(largest_file(clf / "backbone" / "state"))


def _widen(probe: Probe, dim: int = 65) -> None:
    probe.coef, probe.mean, probe.scale = np.zeros((len(probe.classes), dim)), np.zeros(dim), np.ones(dim)


ARTIFACT_CASES = {
    "few bytes overwritten": (dict(action=_flip_bytes), ["is corrupt", "does not match its checksum"]),
    "class list too short": (dict(doc_edit=lambda d: _set(d, "class_names", d["class_names"][:2])),
                             ["class_names lists 2 classes, the model predicts 3"]),
    "sequences disagree with backbone": (dict(doc_edit=lambda d: _set(d, "sequences", ["t1", "t2", "t1c", "flair"])),
                                         ["differ from the backbone's"]),
    "sequences as a string": (dict(doc_edit=lambda d: _set(d, "sequences", "t2,t1,t1c,flair")),
                              ["sequences must be a list of names"]),
    "non-numeric preprocessing": (dict(doc_edit=lambda d: _set(d["preprocessing"], "mean", "0.45")),
                                  ["preprocessing.mean = '0.45' must be a number"]),
    "zero batch size": (dict(doc_edit=lambda d: _set(d, "batch_size", 0)), ["batch_size = 0 must be a positive"]),
    "classifier.json not JSON": (dict(action=lambda c: (c / "classifier.json").write_text("{oops")),
                                 ["is not valid JSON"]),
    "broken model.json": (dict(action=lambda c: (c / "backbone" / "model.json").write_text("[1, 2")),
                          ["backbone/model.json is broken"]),
    "missing backbone state": (dict(action=lambda c: shutil.rmtree(c / "backbone" / "state")),
                               ["backbone/state not found", "lacks the backbone weights"]),
    "probe wider than the backbone": (dict(probe_edit=_widen),
                                      ["takes 65-dimensional features, but the backbone's embed_dim is 64"]),
    "probe inconsistent": (dict(probe_edit=lambda p: setattr(p, "mean", np.zeros(10))),
                           ["is inconsistent", "mean (10,)"]),
    "probe NaN coefficients": (dict(probe_edit=lambda p: p.coef.__setitem__((0, 0), np.nan)), ["coef holds NaN"]),
    "probe zero scale": (dict(probe_edit=lambda p: p.scale.__setitem__(3, 0.0)), ["scale has 1 value(s) <= 0"]),
}


@pytest.mark.parametrize("case", sorted(ARTIFACT_CASES))
def test_predict_refuses_a_bad_artifact(smoke, tmp_path, capsys, case):
    edits, words = ARTIFACT_CASES[case]
    clf = tampered(smoke, tmp_path, **edits)
    fails(predict.main, ["--model", str(clf), "--input", str(smoke.cohort / "test")], capsys,
          "python -m mmdino_jax.predict: error:", *words)


def test_corrupt_artifact_is_refused(smoke, tmp_path, capsys):
    """A few bytes overwritten inside the Orbax data of the backbone: refused, never a confident answer."""
    clf = tampered(smoke, tmp_path, action=_flip_bytes)
    fails(predict.main, ["--model", str(clf), "--input", str(smoke.cohort / "test")], capsys,
          "is corrupt", "backbone/state/", "does not match its checksum", "re-export")


OUTPUT_CASES = {
    "--output folder missing": (["--output", "{tmp}/no/such/dir/r.csv"], "does not exist"),
    "--output is a directory": (["--output", "{tmp}/d.csv"], "is a directory"),
    "--attention-maps is a file": (["--attention-maps", "{tmp}/f"], "is a file"),
    "--center negative": (["--center", "-1,2,3"], "three voxel indices"),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_predict_checks_its_arguments_before_computing(smoke, tmp_path, capsys, case):
    (tmp_path / "d.csv").mkdir()
    (tmp_path / "f").write_text("x")
    extra, words = OUTPUT_CASES[case]
    err = fails(predict.main, ["--model", str(smoke.clf), "--input", str(smoke.cohort / "test"),
                               *[a.format(tmp=tmp_path) for a in extra]], capsys, words)
    assert "subject/s" not in err  # no progress bar: nothing was computed


@pytest.fixture(scope="module")
def predicted(smoke, blank_cohort, tmp_path_factory):
    """predict's rows of the blank-input cohort (one run)."""
    out = tmp_path_factory.mktemp("predicted") / "rows.json"
    predict.main(["--model", str(smoke.clf), "--input", str(blank_cohort.root), "--output", str(out)])
    rows = json.loads(out.read_text())["subjects"]
    return {r["subject"]: r for r in rows}, blank_cohort.subjects


@pytest.mark.parametrize("case,status,missing,words", [
    ("nan_t2", "ok", "t2", "t2 blank"), ("constant_t1c", "ok", "t1c", "t1c blank"),
    ("dangling_t1", "ok", "t1", "broken symbolic link"), ("looping_flair", "ok", "flair", "broken symbolic link"),
    ("all_zero", "error", None, "no usable sequence"), ("all_nan", "error", None, "no usable sequence"),
])
def test_predict_applies_the_blank_rule(predicted, case, status, missing, words):
    rows, subjects = predicted
    row = rows[subjects[case]]
    assert row["status"] == status and words in row["reason"]
    if status == "ok":
        assert missing not in row["sequences"] and len(row["sequences"]) == 3
        assert all(np.isfinite(row[f"p_{c}"]) for c in ("astrocytoma", "glioblastoma", "oligodendroglioma"))
    else:
        assert row["prediction"] is None
    assert rows[subjects["good"]]["status"] == "ok" and rows[subjects["good"]]["reason"] == ""


# ---------------------------------------------------------------- features


@pytest.fixture(scope="module")
def model_dirs(smoke, tmp_path_factory):
    """The artifact's backbone as a model directory (m), and the same weights with a NaN (nan)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(smoke.clf / "backbone", root / "m")
    model, _, meta = load_model(root / "m")
    model.cls_token.value = model.cls_token.value.at[0, 0, 0].set(np.nan)
    save_model(root / "nan", model, meta={"sequences": meta["sequences"]})
    return root


def images(n=3):
    return np.random.RandomState(0).rand(n, 4, 28, 28).astype(np.float32)


def one_nan_pixel():
    x = images()
    x[2, 0, 5, 5] = np.nan
    return x


FEATURE_CASES = {  # case -> (array to np.save or raw bytes, extra flags, words of the message)
    "one NaN pixel": (one_nan_pixel, [], ["NaN or inf pixels in 1 sample(s) (index 2)"]),
    "no images": (lambda: np.zeros((0, 4, 28, 28), np.float32), [], ["no images (N = 0)"]),
    "batch size 0": (images, ["--batch-size", "0"], ["--batch-size must be >= 1"]),
    "random bytes": (lambda: os.urandom(256), [], ["is not a .npy file", "numpy.save"]),
    "pickled objects": (lambda: np.array([{"a": 1}], dtype=object), [], ["holds Python objects"]),
    "strings": (lambda: np.array(["a", "b"]), [], ["holds <U1 values"]),
    "wrong sequences": (images, ["--sequences", "t1,t2,flair"], ["input must be (N, S=3"]),
}


def write_npy(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content, allow_pickle=True)
    return path


@pytest.mark.parametrize("case", sorted(FEATURE_CASES))
def test_features_refuses_bad_input(model_dirs, tmp_path, capsys, case):
    make, extra, words = FEATURE_CASES[case]
    x = write_npy(tmp_path / "x.npy", make())
    fails(features.main, ["--checkpoint", str(model_dirs / "m"), "--input", str(x), "--output",
                          str(tmp_path / "y.npz"), *extra], capsys, "python -m mmdino_jax.features: error:", *words)
    assert not (tmp_path / "y.npz").exists()


def test_features_refuses_nan_output_and_a_corrupt_model(model_dirs, tmp_path, capsys):
    x = write_npy(tmp_path / "x.npy", images())
    argv = ["--input", str(x), "--output", str(tmp_path / "y.npz")]
    fails(features.main, ["--checkpoint", str(model_dirs / "nan"), *argv], capsys,
          "produced NaN or inf features for 3 sample(s)")
    bad = shutil.copytree(model_dirs / "m", tmp_path / "m")
    flip_bytes(largest_file(bad / "state"))
    fails(features.main, ["--checkpoint", str(bad), *argv], capsys, "is corrupt", "does not match its checksum")
    fails(features.main, ["--checkpoint", str(tmp_path / "none"), *argv], capsys, "not a model directory")
    fails(features.main, ["--checkpoint", str(model_dirs / "m"), "--input", str(x), "--output",
                          str(tmp_path / "no" / "y.npz")], capsys, "does not exist")
    assert not (tmp_path / "y.npz").exists()


# ---------------------------------------------------------------- converter


def test_converter_refuses_nan_weights_and_a_bad_hf_config(model_dirs, tmp_path, capsys):
    fails(convert_main, [str(model_dirs / "nan"), str(tmp_path / "out.npz")], capsys,
          "python -m weights_conversion: error:", "1 tensor(s) hold NaN or inf", "cls_token")
    assert convert_main([str(model_dirs / "m"), str(tmp_path / "ok.npz")]) == 0
    sd = dict(np.load(tmp_path / "ok.npz"))
    sd["cls_token"][0, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", **sd)
    fails(convert_main, [str(tmp_path / "inf.npz"), str(tmp_path / "m2")], capsys, "hold NaN or inf", "cls_token")
    hf = tmp_path / "hf"
    assert convert_main(["--to-torch", "--layout", "hf", str(model_dirs / "m"), str(hf)]) == 0
    (hf / "config.json").write_text("{not json")
    fails(convert_main, [str(hf), str(tmp_path / "m3")], capsys, "config.json is not valid JSON")
    fails(convert_main, [str(tmp_path / "none.pth"), str(tmp_path / "m4")], capsys, "not found")
