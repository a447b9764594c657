"""Patient-level prediction: the exported classifier reproduces evaluation; bad subjects get reasons."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from mmdino_jax.config_base import load_config
from mmdino_jax.constants import CLASS_NAMES, SEQUENCES
from mmdino_jax.eval import backbone as eval_backbone
from mmdino_jax.eval import multislice
from mmdino_jax.eval.extract import FeatureExtractor
from mmdino_jax.eval.probe import Probe, fit_probe
from mmdino_jax.export import VERSION, ArtifactError, export_classifier, load_classifier
from mmdino_jax.models.build import build_models
from mmdino_jax.predict import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "configs/demo.py:smoke"
ATOL = 1e-6  # probabilities are rounded to 6 decimals


@pytest.fixture(scope="module")
def run(tmp_path_factory, smoke_cache):
    """The smoke cohort + cache, a backbone, the evaluation probe (as evaluate_backbone fits it) and its export."""
    work = tmp_path_factory.mktemp("predict")
    config = load_config(SMOKE)
    cache = smoke_cache
    graphdef, params = nnx.split(build_models(config.model, 0)[0])
    seq = config.data.sequences.split(",")
    splits = eval_backbone.load_splits(config, cache)
    extractor = FeatureExtractor(graphdef, params, seq, config.eval.batch_size)
    train = splits["train"]
    probe = fit_probe(extractor(train.images, train.present)["cls"], train.label, eval_backbone.c_grid(config))
    export_classifier(work / "clf", graphdef, params, probe, config, 7, seq)
    return SimpleNamespace(cache=cache, cohort=cache.parent / "cohort", model=work / "clf", probe=probe, seq=seq,
                           extractor=extractor, test=splits["test"])


def expected(run, subject: str, drop: tuple[str, ...] = ()) -> np.ndarray:
    """The evaluation path's probabilities (cache -> eval view -> features -> probe), `drop` sequences masked."""
    i = run.test.ids.index(subject)
    keep = run.test.present[i:i + 1] & np.array([s not in drop for s in run.seq])
    images = run.test.images[i:i + 1] * keep[:, :, None, None]
    return run.probe.predict_proba(run.extractor(images, keep)["cls"], num_classes=len(CLASS_NAMES))[0]


def probs(row: dict) -> np.ndarray:
    return np.array([float(row[f"p_{name}"]) for name in CLASS_NAMES])


def full_subjects(run, n: int) -> list[str]:
    """Ids of test subjects with every sequence."""
    return [s for s, p in zip(run.test.ids, run.test.present) if p.all()][:n]


def subject_dir(root: Path, subject: str) -> Path:
    return root / subject / "preop"


def nifti(folder: Path, subject: str, name: str) -> Path:
    return folder / f"sub-{subject}_ses-preop_space-sri_{name}.nii.gz"


def test_round_trip_matches_evaluation(run, tmp_path):
    out = tmp_path / "results.json"
    main(["--model", str(run.model), "--input", str(run.cohort / "test"), "--output", str(out)])
    doc = json.loads(out.read_text())
    assert doc["class_names"] == list(CLASS_NAMES) and doc["sequences"] == run.seq
    rows = {r["subject"]: r for r in doc["subjects"]}
    assert sorted(rows) == sorted(run.test.ids)
    for i, subject in enumerate(run.test.ids):
        row = rows[subject]
        assert row["status"] == "ok" and row["reason"] == ""
        np.testing.assert_allclose(probs(row), expected(run, subject), atol=ATOL)
        assert row["prediction"] == CLASS_NAMES[int(np.argmax(probs(row)))]
        assert row["sequences"] == [s for s, p in zip(run.seq, run.test.present[i]) if p]
    meta = json.loads((run.model / "classifier.json").read_text())
    size = load_config(SMOKE).data.eval_size
    assert meta["step"] == 7 and meta["preprocessing"]["size"] == size == meta["config"]["data"]["eval_size"]
    assert meta["preprocessing"]["spacing_mm"] == meta["config"]["data"]["spacing"] == 1.0


def test_slices_match_the_evaluation_subject_level(run, tmp_path):
    """--slices K --aggregate features as evaluation's subject level computes it (mean probs: the default path)."""
    aggregate, out = "features", tmp_path / "results.json"
    main(["--model", str(run.model), "--input", str(run.cohort / "test"), "--output", str(out), "--slices", "2",
          "--aggregate", aggregate])
    rows = {r["subject"]: r for r in json.loads(out.read_text())["subjects"]}
    size = load_config(SMOKE).data.eval_size
    images, present, owner, _ = multislice.split_views(run.cache, "test", run.seq, size, 2, labeled_only=False)
    want = multislice.subject_probs(run.probe, run.extractor(images, present)["cls"], owner, owner.max() + 1,
                                    aggregate, len(CLASS_NAMES))
    ids = json.loads((run.cache / "test" / "index.json").read_text())["ids"]
    for i, subject in enumerate(ids):
        assert rows[subject]["slices"] == np.sum(owner == i) > 1
        np.testing.assert_allclose(probs(rows[subject]), want[i], atol=1e-5)


def test_bad_subjects_get_reasons_and_the_rest_is_predicted(run, tmp_path):
    cohort = tmp_path / "cohort"
    good, missing, corrupt, empty, noseg = full_subjects(run, 5)
    for subject in (good, missing, corrupt, empty, noseg):
        shutil.copytree(run.cohort / "test" / subject, cohort / subject)
    nifti(subject_dir(cohort, missing), missing, "t1c").unlink()
    nifti(subject_dir(cohort, corrupt), corrupt, "t2").write_bytes(b"not a nifti file")
    seg_path = nifti(subject_dir(cohort, empty), empty, "seg")
    seg = nib.load(seg_path)
    nib.save(nib.Nifti1Image(np.zeros(seg.shape, np.uint8), seg.affine), seg_path)
    nifti(subject_dir(cohort, noseg), noseg, "seg").unlink()
    (cohort / "no-images" / "preop").mkdir(parents=True)
    out = tmp_path / "results.csv"

    main(["--model", str(run.model), "--input", str(cohort), "--output", str(out)])
    main(["--model", str(run.model), "--input", str(cohort), "--output", str(tmp_path / "small.csv"),
          "--batch-size", "2"])

    table = list(csv.DictReader(out.open()))
    small = list(csv.DictReader((tmp_path / "small.csv").open()))
    columns = ("subject", "status", "sequences", "reason")  # batches of 2 mix good and bad subjects alike
    assert [[r[c] for c in columns] for r in small] == [[r[c] for c in columns] for r in table]
    rows = {r["subject"]: r for r in table}
    assert len(rows) == 6
    np.testing.assert_allclose(probs(rows[good]), expected(run, good), atol=ATOL)
    assert rows[missing]["status"] == "ok" and rows[missing]["sequences"] == "t2+t1+flair"
    np.testing.assert_allclose(probs(rows[missing]), expected(run, missing, drop=("t1c",)), atol=ATOL)
    reasons = {s: rows[s]["reason"] for s in (corrupt, empty, noseg, "no-images")}
    assert all(rows[s]["status"] == "error" and rows[s]["prediction"] == "" for s in reasons)
    assert "cannot read" in reasons[corrupt] and "_t2.nii.gz" in reasons[corrupt]
    assert "no tumour voxel" in reasons[empty]
    assert "no segmentation" in reasons[noseg] and "--center" in reasons[noseg]
    assert "no image found" in reasons["no-images"]


def flip_x(path: Path) -> None:
    """Store the volume with the first voxel axis reversed (same anatomy, left-right flipped voxel order)."""
    image = nib.load(path)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = image.shape[0] - 1
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1], image.affine @ flip), path)


def test_center_replaces_a_missing_segmentation(run, tmp_path):
    subject = full_subjects(run, 1)[0]
    folder = tmp_path / subject
    shutil.copytree(run.cohort / "test" / subject, folder)
    seg_path = nifti(folder / "preop", subject, "seg")
    mask = np.asarray(nib.load(seg_path).dataobj) > 0.5  # the phantom is stored RAS: canonical voxel grid
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    x, y = np.rint(ndimage.center_of_mass(mask[:, :, z])).astype(int)
    seg_path.unlink()
    for name in SEQUENCES:
        flip_x(nifti(folder / "preop", subject, name))
    centre = f"{mask.shape[0] - 1 - x},{y},{z}"  # voxel coordinates of the flipped files
    out, maps = tmp_path / "one.json", tmp_path / "maps"

    main(["--model", str(run.model), "--input", str(folder), "--center", centre, "--output", str(out),
          "--attention-maps", str(maps)])

    (row,) = json.loads(out.read_text())["subjects"]
    assert row["subject"] == subject and row["status"] == "ok" and row["axial_slice"] == z
    np.testing.assert_allclose(probs(row), expected(run, subject), atol=ATOL)
    assert (maps / f"{subject}.png").stat().st_size > 0


def test_center_needs_a_single_subject(run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(run.model), "--input", str(run.cohort / "test"), "--center", "1,2,3"])
    assert exit_info.value.code == 2
    assert "single subject folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(run.model), "--input", str(run.cohort), "--center", "1,2"])
    assert "three voxel indices" in capsys.readouterr().err


def test_artifact_that_does_not_fit_is_refused(run, tmp_path, capsys):
    with pytest.raises(FileExistsError, match="already holds a classifier"):
        export_classifier(run.model, None, None, run.probe, None, 0, run.seq)
    bad = tmp_path / "clf"
    shutil.copytree(run.model, bad)
    meta = json.loads((bad / "classifier.json").read_text())
    (bad / "classifier.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ArtifactError, match=f"version 99, this mmdino_jax reads version {VERSION}"):
        load_classifier(bad)
    with pytest.raises(SystemExit):
        main(["--model", str(bad), "--input", str(run.cohort)])
    assert "version 99" in capsys.readouterr().err
    unspaced = {k: v for k, v in meta["preprocessing"].items() if k != "spacing_mm"}
    (bad / "classifier.json").write_text(json.dumps({**meta, "preprocessing": unspaced}))
    with pytest.raises(ArtifactError, match=r"lacks \['preprocessing.spacing_mm'\]"):
        load_classifier(bad)

    (bad / "classifier.json").write_text(json.dumps(meta))
    dim = run.probe.mean.shape[0]
    wide = Probe(**{**vars(run.probe), "coef": np.zeros((3, dim + 1)), "mean": np.zeros(dim + 1),
                    "scale": np.ones(dim + 1)})
    wide.save_npz(bad / "probe.npz")
    message = f"takes {dim + 1}-dimensional features, but the backbone's embed_dim is {dim}"
    with pytest.raises(ArtifactError, match=message):
        load_classifier(bad)
    (bad / "probe.npz").unlink()
    with pytest.raises(ArtifactError, match="probe.npz not found"):
        load_classifier(bad)
    with pytest.raises(ArtifactError, match="not a classifier artifact"):
        load_classifier(tmp_path)


@pytest.mark.slow
def test_evaluate_export_then_predict_cli(run, tmp_path):
    """The real commands: evaluate --export on a model directory, then python -m mmdino_jax.predict."""
    from mmdino_jax.models import io as model_io

    graphdef, params = nnx.split(load_classifier(run.model).backbone)
    model_io.save_model(tmp_path / "model", nnx.merge(graphdef, params))
    base = [sys.executable, "-m"]
    subprocess.run([*base, "mmdino_jax.evaluate", "--config", SMOKE, "--workdir", str(tmp_path),
                    f"--config.data.cache={run.cache}", "--checkpoint", str(tmp_path / "model"),
                    "--export", str(tmp_path / "clf")], cwd=ROOT, check=True, capture_output=True)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert load_classifier(tmp_path / "clf").probe.c == metrics["probe"]["c"]
    result = subprocess.run([*base, "mmdino_jax.predict", "--model", str(tmp_path / "clf"), "--input",
                             str(run.cohort / "test")], cwd=ROOT, check=True, capture_output=True, text=True)
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert len(rows) == len(run.test.ids) and all(r["status"] == "ok" for r in rows)
    np.testing.assert_allclose(probs(rows[0]), expected(run, rows[0]["subject"]), atol=ATOL)
