"""Running the command-line tools on the smoke config, and reading what a run logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = "configs/demo.py:smoke"
SUPERVISED_SMOKE = "configs/supervised_baseline.py:smoke"


def cli_cmd(module: str, config: str, workdir, cache, *overrides) -> list[str]:
    """A trainer's CLI on the smoke cache, logging every step; the workdir relative to the repository root,
    as users type it."""
    workdir = os.path.relpath(workdir, ROOT)
    return [sys.executable, "-m", module, "--config", config, "--workdir", str(workdir),
            f"--config.data.cache={cache}", "--config.log_every=1", *overrides]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, **kw)


def metrics_by_step(workdir) -> dict[int, dict]:
    """The last logged record with a loss of every step (a resumed run may log a step twice)."""
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record
    return out


def absl_main(main, argv: list[str]):
    """Call an absl CLI's `main` in this process with `argv` parsed into the global flags (as `app.run`).
    sys.argv is set too: ml_collections reads the `--config.x` overrides from it, and defines a flag for
    each, so the ones an earlier call defined are removed first."""
    from unittest import mock

    from absl import flags

    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    with mock.patch.object(sys, "argv", [sys.argv[0], *argv]):
        return main(flags.FLAGS(sys.argv))
