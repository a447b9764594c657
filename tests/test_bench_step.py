"""bench/bench_step.py end to end on the smoke config, as the GPU suite runs it (crops made in the step,
the PyTorch reference step, the GEMM roofline): the analytic FLOP count it reports must match XLA's cost
analysis of the compiled step, and every figure of its table must be there."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "step.json"
    result = subprocess.run([sys.executable, "bench/bench_step.py", "--config", "configs/demo.py:smoke", "--steps", "1",
                             "--pause", "0", "--crops-on-device", "--torch", "--gemm", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (r,) = json.loads(out.read_text())
    return r, result.stdout


def test_analytic_flops_match_xla_with_the_crops_made_in_the_step(smoke_bench):
    r, _ = smoke_bench
    assert abs(r["xla_gflop"] / r["analytic_gflop"] - 1.0) < 0.05


def test_gemm_roofline_and_its_bound(smoke_bench):
    r, stdout = smoke_bench
    t = r["torch"]
    assert r["gemm_gflops"] > 0 and t["gemm_gflops"] > 0
    assert r["gemm_share"] == pytest.approx(r["achieved_gflops"] / r["gemm_gflops"])
    assert t["gemm_share"] == pytest.approx(t["analytic_gflop"] / t["step_s"] / t["gemm_gflops"])
    # the JAX step at its GEMM rate: analytic FLOPs over that rate, against the measured PyTorch step
    assert t["ratio_bound"] == pytest.approx(t["step_s"] * r["gemm_gflops"] / r["analytic_gflop"])
    assert t["ratio_bound"] > t["step_s"] / r["step_s"]  # no step beats its library's GEMM rate here
    header, _, row = stdout.strip().splitlines()[-3:]
    assert header.count("|") == row.count("|") and "JAX/PyTorch bound" in header
