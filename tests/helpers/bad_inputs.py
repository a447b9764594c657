"""The bad-input tests' shared pieces (tests/test_bad_inputs_*.py): the smoke run's artifacts, the blank-input
cohort, and helpers that run a CLI that must fail or doctor a cohort's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from flax import nnx

from helpers.runs import SMOKE
from mmdino_jax import checkpoint as ckpt_lib
from mmdino_jax.checksums import MANIFEST
from mmdino_jax.config_base import load_config
from mmdino_jax.data import prepare
from mmdino_jax.eval.probe import Probe
from mmdino_jax.export import export_classifier
from mmdino_jax.models.build import build_models
from mmdino_jax.ssl.learner import build_learner
from mmdino_jax.training.data import train_dataset


def build_smoke(smoke_cache, work: Path) -> SimpleNamespace:
    """The session's smoke cohort and cache, an exported classifier (random backbone, random probe: these tests
    need a valid artifact, not a good one) and a run directory with checkpoints at steps 2 and 3."""
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


def prepare_argv(root, out):
    return ["--root", str(root), "--layout", "mmdino", "--output", str(out), "--workers", "1"]


def build_blank_cohort(smoke, folder: Path) -> SimpleNamespace:
    """A cohort of one good subject and one per blank-input fault, prepared once."""
    names = ["good", "nan_t2", "constant_t1c", "all_zero", "all_nan", "dangling_t1", "looping_flair", "label_inf"]
    picked = full_subjects(smoke, len(names))
    subjects = {case: s for case, (_, s) in zip(names, picked)}
    root = copy_subjects(smoke, folder / "cohort", picked)

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


def largest_file(root: Path) -> Path:
    return max((p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST), key=lambda p: p.stat().st_size)


def flip_bytes(path: Path) -> None:
    """Overwrite 4 bytes in the middle of a file."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xde\xad\xbe\xef")
