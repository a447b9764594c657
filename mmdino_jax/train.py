"""MM-DINOv2 training: `python -m mmdino_jax.train --config configs/x.py[:arg] --workdir DIR [--config.a.b=v]`.

Restarting with the same --workdir resumes from its newest intact checkpoint. SIGTERM saves and exits.
Multi-process: --distributed auto|explicit (see launch/). Bad input ends in one line (`cli_errors`).
"""

from __future__ import annotations

from mmdino_jax import cli_flags
from mmdino_jax.cli_errors import parse_absl_flags, run_cli
from mmdino_jax.run_log import quiet_library_logs
from mmdino_jax.ssl.learner import learner_for_cache
from mmdino_jax.training.run import checked_run, final_evaluation, fit


def main(argv) -> None:
    del argv
    quiet_library_logs()
    cli_flags.start_processes()
    with checked_run(cli_flags.CONFIG.value, cli_flags.WORKDIR.value) as (config, workdir):
        fitted = fit(config, workdir, learner_for_cache)
        if config.eval.at_end and fitted.finished:
            final_evaluation(config, workdir, fitted.run.learner)


def cli(argv=None) -> None:
    """The command line (also the `mmdino-train` console script)."""
    run_cli(lambda args: main(parse_absl_flags(args)), argv, prog="python -m mmdino_jax.train")


if __name__ == "__main__":
    cli()
