"""bench/ab_step.py: option parsing, the metrics check and one A/B of the smoke step."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import ab_step  # noqa: E402


def test_options_take_xla_types():
    assert ab_step.parse_option("xla_cpu_enable_fast_math=true") == ("xla_cpu_enable_fast_math", True)
    assert ab_step.parse_option("xla_cpu_use_xnnpack=False") == ("xla_cpu_use_xnnpack", False)
    assert ab_step.parse_option("xla_cpu_prefer_vector_width=512") == ("xla_cpu_prefer_vector_width", 512)
    assert ab_step.parse_option("xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE") == (
        "xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_REDUCE")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        ab_step.parse_option("xla_cpu_enable_fast_math")


def test_metrics_difference_is_the_largest_relative_one():
    assert ab_step.metrics_difference({"loss": 2.0, "lr": 0.5}, {"loss": 2.0, "lr": 0.5}) == 0.0
    assert ab_step.metrics_difference({"loss": 2.0, "lr": 0.5}, {"loss": 2.2, "lr": 0.4}) == pytest.approx(0.2)


def test_ab_of_the_smoke_step():
    result = subprocess.run([sys.executable, "bench/ab_step.py", "--config", "configs/demo.py:smoke", "--option",
                             "xla_cpu_prefer_vector_width=256", "--rounds", "1", "--pause", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    row = result.stdout.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "configs/demo.py:smoke"
    a, b, ratio = (float(row[i]) for i in (3, 4, 5))
    assert a > 0 and b > 0 and ratio == pytest.approx(b / a, rel=0.01)
    assert float(row[7]) < 1e-5  # the vector width does not change the numbers
