"""The bad-input corpus: every kind of misuse and fault a user can reach in train, prepare, evaluate, predict,
features and the converter ends in one line and a non-zero exit, a masked-and-noted input, or a counted skip.

Everything runs in-process (``main(argv)`` / ``cli(argv)``) on fixtures built once per module: the smoke
config's cohort and cache, one exported classifier, one run directory with two checkpoints, one model directory.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from flax import nnx

from mmdino_jax import checkpoint as ckpt_lib
from mmdino_jax import evaluate, features, predict, train
from mmdino_jax.checksums import MANIFEST
from mmdino_jax.cli_errors import ConfigError, WorkdirError, run_cli
from mmdino_jax.config_base import load_config
from mmdino_jax.convert.__main__ import main as convert_main
from mmdino_jax.data import prepare
from mmdino_jax.data.blank import constant_views
from mmdino_jax.eval import backbone as eval_backbone
from mmdino_jax.eval.probe import Probe
from mmdino_jax.export import export_classifier
from mmdino_jax.models.build import build_models
from mmdino_jax.models.io import load_model, save_model
from mmdino_jax.run_checks import check_train_config
from mmdino_jax.ssl.learner import build_learner
from mmdino_jax.training.data import train_dataset
from mmdino_jax.workdir_lock import WorkdirLock

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "configs/demo.py:smoke"


# ---------------------------------------------------------------- fixtures (built once)


@pytest.fixture(scope="module")
def smoke(smoke_cache, tmp_path_factory):
    """The session's smoke cohort and cache, an exported classifier (random backbone, random probe: these tests
    need a valid artifact, not a good one) and a run directory with checkpoints at steps 2 and 3."""
    work = tmp_path_factory.mktemp("bad_inputs")
    config = load_config(SMOKE)
    cache = smoke_cache
    config.data.cache = str(cache)
    graphdef, params = nnx.split(build_models(config.model, 0)[0])
    dim, rng = config.model.embed_dim, np.random.default_rng(0)
    probe = Probe(c=1.0, coef=rng.normal(size=(3, dim)), intercept=np.zeros(3), mean=np.zeros(dim),
                  scale=np.ones(dim), classes=np.arange(3))
    export_classifier(work / "clf", graphdef, params, probe, config, 3, config.data.sequences.split(","))
    learner = build_learner(config)
    state = learner.init(learner.params)
    checkpoints = ckpt_lib.RunCheckpoints(str(work / "run"))
    meta = {"config": json.loads(config.to_json_best_effort())}
    for step in (2, 3):
        checkpoints.save(step, state, iter(train_dataset(config, cache)), meta, force=True)
    checkpoints.close()
    return SimpleNamespace(work=work, config=config, cache=cache, cohort=cache.parent / "cohort", clf=work / "clf",
                           run=work / "run", state=state)


def fails(main, argv, capsys, *words, code=2) -> str:
    """Run a CLI that must fail: exit ``code``, a last stderr line holding ``words``, no traceback; returns stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    for word in words:
        assert word in line, line
    return err


def seq_file(root: Path, subject: str, name: str) -> Path:
    """The mmdino-layout file of one sequence (or "seg") of a subject folder under ``root``."""
    return root / subject / "preop" / f"sub-{subject}_ses-preop_space-sri_{name}.nii.gz"


def full_subjects(smoke, n: int) -> list[tuple[str, str]]:
    """(split, id) of the first ``n`` subjects of the smoke cohort that have every sequence."""
    out = []
    for split in ("train", "val", "test"):
        index = json.loads((smoke.cache / split / "index.json").read_text())
        out += [(split, s) for s, p in zip(index["ids"], index["present"]) if all(p)]
    assert len(out) >= n, "the smoke cohort has too few complete subjects for this test"
    return out[:n]


def copy_subjects(smoke, dest: Path, subjects) -> Path:
    """Copy (split, id) subject folders of the smoke cohort to ``dest`` (a cohort root without splits)."""
    for split, s in subjects:
        shutil.copytree(smoke.cohort / split / s, dest / s)
    return dest


def rewrite(path: Path, values) -> None:
    """Replace a NIfTI's voxels (same grid); ``values`` is a scalar or a function of the array."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, np.float32)
    data = values(data) if callable(values) else np.full(data.shape, values, np.float32)
    nib.save(nib.Nifti1Image(data, image.affine), path)


# ---------------------------------------------------------------- train


def train_argv(smoke, workdir, *overrides):
    return ["--config", SMOKE, "--workdir", str(workdir), f"--config.data.cache={smoke.cache}", *overrides]


TRAIN_CASES = {
    "unknown field": (["--config.foo=1"], ["unknown config field 'foo'", "--config.foo"]),
    "unknown nested field": (["--config.optim.no_such_field=1"], ["unknown config field 'no_such_field'"]),
    "non-numeric value": (["--config.data.batch_size=abc"], ["batch_size"]),
    "batch size 0": (["--config.data.batch_size=0"], ["config.data.batch_size = 0 must be >= 1"]),
    "negative batch size": (["--config.data.batch_size=-8"], ["config.data.batch_size = -8 must be >= 1"]),
    "total_steps 0": (["--config.total_steps=0"], ["config.total_steps = 0 must be >= 1"]),
    "missing data root": (["--config.data.root=/no/such/cohort"], ["config.data.root", "no such directory"]),
    "missing labels csv": (["--config.data.labels_csv=/no/such.csv"], ["config.data.labels_csv", "no such file"]),
    "unknown sequence": (["--config.data.sequences=t1,dwi"], ["unknown MRI sequence", "dwi"]),
    "unknown architecture": (["--config.model.arch=vitx14"], ["config.model.arch = 'vitx14' is unknown", "vitb14"]),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_refuses_a_bad_config_in_one_line(smoke, tmp_path, capsys, case):
    overrides, words = TRAIN_CASES[case]
    fails(train.cli, train_argv(smoke, tmp_path / "w", *overrides), capsys, "python -m mmdino_jax.train: error:",
          *words)
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_train_refuses_a_workdir_that_is_a_file_or_absent(smoke, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    fails(train.cli, train_argv(smoke, tmp_path / "file"), capsys, "is a file, not a directory")
    fails(train.cli, ["--config", SMOKE], capsys, "--workdir is required")
    fails(train.cli, ["--workdir", str(tmp_path)], capsys, "--config is required")


def test_batch_size_must_split_over_the_devices(smoke):
    with pytest.raises(ConfigError, match="batch_size = 8 is not divisible by the 3 devices"):
        check_train_config(smoke.config, device_count=3)


def test_debug_flag_shows_the_traceback(smoke, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkdirError, match="is a file"):
        train.cli(train_argv(smoke, tmp_path / "file", "--debug"))


def test_an_unexpected_exception_is_one_internal_error_line(capsys):
    def broken(argv):
        raise ZeroDivisionError("division by zero")

    fails(lambda argv: run_cli(broken, argv, prog="tool"), [], capsys, "tool: internal error: ZeroDivisionError",
          "--debug", code=1)


def test_resume_with_another_architecture_names_both(smoke, tmp_path, capsys):
    workdir = shutil.copytree(smoke.run, tmp_path / "run")
    fails(train.cli, train_argv(smoke, workdir, "--config.model.embed_dim=128"), capsys,
          "made with model.embed_dim 64, this config has 128: use a new --workdir or the same config")


def test_two_trainings_in_one_workdir(smoke, tmp_path, capsys):
    """A second run refuses with the holder's pid and host; once the holder is killed, the lock is taken over."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mmdino_jax.workdir_lock import WorkdirLock; "
         "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        fails(train.cli, train_argv(smoke, tmp_path), capsys, "is in use by training",
              f"pid {holder.pid} on host {socket.gethostname()}", "another --workdir")
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with WorkdirLock(tmp_path) as lock:  # the dead holder's lock is stale: taken over
        assert lock.holder()["pid"] == os.getpid()
        with pytest.raises(WorkdirError, match=f"pid {os.getpid()}"):
            WorkdirLock(tmp_path).acquire()
    WorkdirLock(tmp_path).acquire()  # released on exit


# ---------------------------------------------------------------- checkpoints


def largest_file(root: Path) -> Path:
    return max((p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST), key=lambda p: p.stat().st_size)


def flip_bytes(path: Path) -> None:
    """Overwrite 4 bytes in the middle of a file."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xde\xad\xbe\xef")


def resume(smoke, workdir):
    checkpoints = ckpt_lib.RunCheckpoints(str(workdir))
    try:
        return checkpoints.restore_latest(ckpt_lib.abstract(smoke.state),
                                          iter(train_dataset(smoke.config, smoke.cache)), smoke.config)
    finally:
        checkpoints.close()


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_good_one(smoke, tmp_path, caplog):
    workdir = shutil.copytree(smoke.run, tmp_path / "run")
    flip_bytes(largest_file(workdir / "checkpoints" / "3" / "state"))  # a few bytes inside the Orbax data
    step, state = resume(smoke, workdir)
    assert step == 2 and state is not None
    assert "checkpoint step 3" in caplog.text and "does not match its checksum" in caplog.text
    assert (workdir / "checkpoints.corrupt" / "3").is_dir() and not (workdir / "checkpoints" / "3").exists()


@pytest.mark.parametrize("manifest", ["kept", "lost"])
def test_truncated_latest_checkpoint_falls_back(smoke, tmp_path, caplog, manifest):
    """Truncated data: caught by its checksum, or without a manifest by the failed read (no TensorStore dump)."""
    workdir = shutil.copytree(smoke.run, tmp_path / "run")
    data = largest_file(workdir / "checkpoints" / "3" / "state")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    if manifest == "lost":
        (workdir / "checkpoints" / "3" / MANIFEST).unlink()
    assert resume(smoke, workdir)[0] == 2
    assert "checkpoint step 3" in caplog.text and "resuming from step 2" in caplog.text


def test_evaluate_refuses_a_corrupt_or_unknown_checkpoint(smoke, tmp_path, capsys):
    workdir = shutil.copytree(smoke.run, tmp_path / "run")
    flip_bytes(largest_file(workdir / "checkpoints" / "2" / "state"))
    argv = train_argv(smoke, workdir)
    fails(evaluate.cli, [*argv, "--checkpoint", "2"], capsys, "checkpoint step 2", "does not match its checksum")
    fails(evaluate.cli, [*argv, "--checkpoint", "9"], capsys, "no checkpoint step 9", "[2, 3]")
    fails(evaluate.cli, [*argv, "--checkpoint", "no/such/dir"], capsys, "neither a step", "nor a model directory")


def test_evaluate_export_into_an_existing_artifact_needs_overwrite(smoke, tmp_path, capsys):
    fails(evaluate.cli, [*train_argv(smoke, smoke.run), "--export", str(smoke.clf)], capsys,
          "already holds a classifier", "--overwrite")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    fails(evaluate.cli, [*train_argv(smoke, smoke.run), "--export", str(tmp_path / "other")], capsys,
          "is not an empty directory or a classifier")


def test_evaluate_masks_blank_views_of_an_old_cache(smoke, tmp_path, caplog):
    """A cache prepared before the blank rule holds a blank sequence as zeros marked present: masked, noted."""
    shutil.copytree(smoke.cache / "test", tmp_path / "test")
    images = np.load(tmp_path / "test" / "images.npy", mmap_mode="r+")
    slices = np.load(tmp_path / "test" / "slices.npy")
    index = json.loads((tmp_path / "test" / "index.json").read_text())
    subject = next(i for i, p in enumerate(index["present"]) if p[0] and p[2])  # has t1 and t2
    images[slices[:, 0] == subject, 2] = 0  # t2 (canonical index 2) blank
    images.flush()
    split = eval_backbone.Split.load(tmp_path, "test", ["t1", "t2"], 28, labeled_only=False)
    assert not split.present[subject, 1] and split.present[subject, 0]
    assert "blank (constant): treated as missing" in caplog.text
    assert not constant_views(split.images, split.present).any()


# ---------------------------------------------------------------- prepare


def prepare_argv(root, out):
    return ["--root", str(root), "--layout", "mmdino", "--output", str(out), "--workers", "1"]


def test_prepare_refuses_an_empty_or_missing_root(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fails(prepare.main, prepare_argv(tmp_path / "empty", tmp_path / "c"), capsys, "no usable mmdino subject",
          "--layout")
    fails(prepare.main, prepare_argv(tmp_path / "nowhere", tmp_path / "c"), capsys, "is not a directory")
    assert not (tmp_path / "c" / "report.json").exists()


@pytest.mark.parametrize("clash", ["two splits", "leading zeros"])
def test_prepare_refuses_one_subject_twice(smoke, tmp_path, capsys, clash):
    subject = full_subjects(smoke, 1)[0]
    root = tmp_path / "cohort"
    first = copy_subjects(smoke, root / "train", [subject]) / subject[1]
    shorter = re.sub(r"0(\d+)$", r"\1", subject[1])  # phantom-...-0001 -> phantom-...-001
    twin = root / "test" / subject[1] if clash == "two splits" else root / "train" / shorter
    shutil.copytree(first, twin)
    err = fails(prepare.main, prepare_argv(root, tmp_path / "c"), capsys, "found twice", "leaks train into test")
    assert f"{first} and {twin}" in err or f"{twin} and {first}" in err


def test_prepare_reads_labels_csv_errors(smoke, tmp_path, capsys):
    subjects = full_subjects(smoke, 2)
    root = copy_subjects(smoke, tmp_path / "cohort", subjects)
    first = subjects[0][1]
    (root / "phenoData.csv").write_bytes(b"Patient,WHO2021_Int\n" + first.encode() + b",\xff\xfe\n")
    fails(prepare.main, prepare_argv(root, tmp_path / "c"), capsys, "is not UTF-8", "save it as UTF-8")
    (root / "phenoData.csv").write_text(f"Patient,Grade\n{first},1\n")
    fails(prepare.main, prepare_argv(root, tmp_path / "c"), capsys, "has no column 'WHO2021_Int'")
    fails(prepare.main, [*prepare_argv(root, tmp_path / "c"), "--min-tumour-voxels", "0"], capsys,
          "--min-tumour-voxels must be >= 1")


@pytest.fixture(scope="module")
def blank_cohort(smoke, tmp_path_factory):
    """A cohort of one good subject and one per blank-input fault, prepared once."""
    names = ["good", "nan_t2", "constant_t1c", "all_zero", "all_nan", "dangling_t1", "looping_flair", "label_inf"]
    picked = full_subjects(smoke, len(names))
    subjects = {case: s for case, (_, s) in zip(names, picked)}
    root = copy_subjects(smoke, tmp_path_factory.mktemp("blank") / "cohort", picked)

    def path(case, seq):
        return seq_file(root, subjects[case], seq)

    rewrite(path("nan_t2", "t2"), np.nan)
    rewrite(path("constant_t1c", "t1c"), 5.0)
    for seq in ("t1", "t1c", "t2", "flair"):
        rewrite(path("all_zero", seq), 0.0)
        rewrite(path("all_nan", seq), lambda a: np.where(np.indices(a.shape)[0] % 2, np.nan, np.inf))
    for case, seq, target in (("dangling_t1", "t1", "/no/such/file.nii.gz"), ("looping_flair", "flair", None)):
        link = path(case, seq)
        link.unlink()
        link.symlink_to(target or link)  # a link to itself loops
    (root / "phenoData.csv").write_text("Patient,WHO2021_Int\n" + "".join(
        f"{s},{'inf' if case == 'label_inf' else 1}\n" for case, s in subjects.items()))
    out = root.parent / "cache"
    prepare.main(prepare_argv(root, out))
    report = json.loads((out / "report.json").read_text())
    index = json.loads((out / "train" / "index.json").read_text())
    return SimpleNamespace(root=root, subjects=subjects, report=report,
                           present=dict(zip(index["ids"], index["present"])),
                           skipped={r["subject"]: r["reason"] for r in report["skipped"]})


BLANK_CASES = {  # case -> (sequence index masked in the cache, words of the note)
    "nan_t2": (2, "t2 blank"),
    "constant_t1c": (1, "t1c blank"),
    "dangling_t1": (0, "broken symbolic link"),
    "looping_flair": (3, "broken symbolic link"),
}


@pytest.mark.parametrize("case", sorted(BLANK_CASES))
def test_prepare_masks_and_notes_a_blank_or_broken_sequence(blank_cohort, case):
    seq, note = BLANK_CASES[case]
    subject = blank_cohort.subjects[case]
    assert blank_cohort.present[subject] == [i != seq for i in range(4)]
    assert any(note in n for n in blank_cohort.report["notes"][subject])
    assert blank_cohort.present[blank_cohort.subjects["good"]] == [True] * 4


@pytest.mark.parametrize("case,words", [("all_zero", "no usable sequence"), ("all_nan", "no usable sequence"),
                                        ("label_inf", "label 'inf'")])
def test_prepare_counts_an_unusable_subject_as_skipped(blank_cohort, case, words):
    subject = blank_cohort.subjects[case]
    assert words in blank_cohort.skipped[subject] and subject not in blank_cohort.present


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
