"""MM-DINOv2 training: `python -m mmdino_jax.train --config configs/x.py[:arg] --workdir DIR [--config.a.b=v]`.

Restarting with the same --workdir resumes from its newest checkpoint. SIGTERM saves and exits.
Multi-process: --distributed auto|explicit (see launch/).
"""

from __future__ import annotations

from absl import app

from mmdino_jax import cli_flags
from mmdino_jax.run_log import quiet_library_logs
from mmdino_jax.ssl.learner import learner_for_cache
from mmdino_jax.training.run import final_evaluation, fit


def main(argv) -> None:
    del argv
    quiet_library_logs()
    cli_flags.start_processes()
    config, workdir = cli_flags.config_and_workdir()
    fitted = fit(config, workdir, learner_for_cache)
    if config.eval.at_end and fitted.finished:
        final_evaluation(config, workdir, fitted.run.learner)


def cli() -> None:
    """The console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    cli()
