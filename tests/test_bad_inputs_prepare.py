"""Bad input to prepare: one-line refusals, and blank or broken sequences masked and noted, unusable subjects
counted as skipped (the session's `blank_cohort`, tests/conftest.py).
"""

from __future__ import annotations

import re
import shutil

import pytest

from helpers.bad_inputs import copy_subjects, fails, full_subjects, prepare_argv
from mmdino_jax.data import prepare

# ---------------------------------------------------------------- prepare


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


