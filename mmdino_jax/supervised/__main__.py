"""Supervised baseline CLI.

  python -m mmdino_jax.supervised --config configs/supervised_baseline.py --workdir DIR [--config.a.b=v]
  python -m mmdino_jax.supervised --config configs/supervised_baseline.py --workdir DIR --init_only

Restarting with the same --workdir resumes; multi-process with --distributed as for training.
"""

from __future__ import annotations

from absl import flags

from mmdino_jax import cli_flags
from mmdino_jax.cli_errors import parse_absl_flags, run_cli
from mmdino_jax.eval.backbone import summary_line
from mmdino_jax.run_log import quiet_library_logs
from mmdino_jax.supervised.baseline import run_baseline
from mmdino_jax.training.run import checked_run

INIT_ONLY = flags.DEFINE_bool("init_only", False, "Save and evaluate the randomly initialised backbone, no training.")


def main(argv) -> None:
    del argv
    quiet_library_logs()
    cli_flags.start_processes()
    with checked_run(cli_flags.CONFIG.value, cli_flags.WORKDIR.value) as (config, workdir):
        payload = run_baseline(config, workdir, INIT_ONLY.value)
    if payload:
        print(summary_line(payload, workdir))


def cli(argv=None) -> None:
    """The command line (also the `mmdino-supervised` console script)."""
    run_cli(lambda args: main(parse_absl_flags(args)), argv, prog="python -m mmdino_jax.supervised")


if __name__ == "__main__":
    cli()
