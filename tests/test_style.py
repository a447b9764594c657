"""The tree is ruff-clean with the configuration in pyproject.toml."""

import subprocess

import pytest

from helpers.runs import ROOT


def test_ruff_finds_nothing():
    ruff = pytest.importorskip("ruff")
    result = subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", str(ROOT)], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]
