"""Bad input to train, to its checkpoints and to evaluate: one line and a non-zero exit, or a warned fallback.

In-process (`main(argv)`) on the session's `smoke` fixture (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.bad_inputs import fails, flip_bytes, largest_file
from helpers.runs import SMOKE
from mmdino_jax import checkpoint as ckpt_lib
from mmdino_jax import evaluate, train
from mmdino_jax.checksums import MANIFEST
from mmdino_jax.cli_errors import ConfigError, WorkdirError, run_cli
from mmdino_jax.data.blank import constant_views
from mmdino_jax.eval import backbone as eval_backbone
from mmdino_jax.run_checks import check_train_config
from mmdino_jax.training.data import train_dataset
from mmdino_jax.workdir_lock import WorkdirLock

ROOT = Path(__file__).resolve().parents[1]


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
    "unknown augmentation place": (["--config.data.augment_on=gpu"],
                                   ["config.data.augment_on = 'gpu' is unknown", "auto, device, host"]),
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


