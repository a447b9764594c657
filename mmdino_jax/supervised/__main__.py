"""Supervised baseline CLI.

  python -m mmdino_jax.supervised --config configs/supervised_baseline.py --workdir DIR [--config.a.b=v]
  python -m mmdino_jax.supervised --config configs/supervised_baseline.py --workdir DIR --init_only

Restarting with the same --workdir resumes; multi-process with --distributed as for training.
"""

from __future__ import annotations

from absl import app, flags

from mmdino_jax import cli_flags
from mmdino_jax.eval.backbone import summary_line
from mmdino_jax.run_log import quiet_library_logs
from mmdino_jax.supervised.baseline import run_baseline

INIT_ONLY = flags.DEFINE_bool("init_only", False, "Save and evaluate the randomly initialised backbone, no training.")


def main(argv) -> None:
    del argv
    quiet_library_logs()
    cli_flags.start_processes()
    config, workdir = cli_flags.config_and_workdir()
    payload = run_baseline(config, workdir, INIT_ONLY.value)
    if payload:
        print(summary_line(payload, workdir))


def cli() -> None:
    """The console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    cli()
