"""bench/profile_step.py: op kinds read from compiled HLO, nested trace events counted once, and the smoke
step's profile adding up."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import profile_step  # noqa: E402


def test_nested_events_count_once_in_their_outermost_op():
    op = lambda name, ts, dur, tid=1: {"ph": "X", "ts": ts, "dur": dur, "tid": tid, "args": {"hlo_op": name}}
    events = [op("while.1", 0, 10), op("fusion.2", 1, 3), op("fusion.2", 5, 3), op("dot.3", 12, 4),
              op("fusion.2", 2, 5, tid=2), {"ph": "X", "ts": 0, "dur": 99, "tid": 1, "name": "python"}]
    assert profile_step.op_times(events) == {"while.1": 10, "dot.3": 4, "fusion.2": 5}


def test_hlo_kinds_of_a_compiled_function():
    def f(x, w, q):
        rows = jnp.tanh(x @ w)                                  # 2-D matmul
        scores = jnp.einsum("bqd,bkd->bqk", q, q)               # batched matmul
        loop = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]
        return rows.sum(), scores, loop.T

    args = (jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((4, 16, 8)))
    kinds = {kind for kind, _ in profile_step.hlo_ops(jax.jit(f).lower(*args).compile().as_text()).values()}
    assert {"2-D matmuls", "batched matmuls", "loops"} <= kinds
    assert kinds <= set(profile_step.KINDS)


def test_profile_of_the_smoke_step_adds_up(tmp_path):
    out = tmp_path / "profile.json"
    result = subprocess.run([sys.executable, "bench/profile_step.py", "--config", "configs/demo.py:smoke",
                             "--steps", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    r = json.loads(out.read_text())
    assert list(r["by_kind"]) == list(profile_step.KINDS)
    assert r["total_ms"] == pytest.approx(sum(r["by_kind"].values()))
    assert r["total_ms"] == pytest.approx(sum(ms for _, ms, _, _ in r["ops"]))
    assert r["by_kind"]["2-D matmuls"] > 0 and r["by_kind"]["batched matmuls"] > 0  # linear layers, attention
    assert "| 2-D matmuls |" in result.stdout
