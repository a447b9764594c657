"""Linear-probe evaluation of a run's teacher backbone, with the missing-modality sweep and a report.

  python -m mmdino_jax.evaluate --config configs/x.py --workdir DIR [--checkpoint STEP|MODEL_DIR] [--export DIR]
  python -m mmdino_jax.evaluate --compare DIR1 DIR2 ...

Writes DIR/eval/{metrics.json, report.md, *.png} (`eval/backbone.py`).
"""

from __future__ import annotations

from absl import app, flags

from mmdino_jax import cli_flags
from mmdino_jax.cli_errors import parse_absl_flags, run_cli
from mmdino_jax.eval import report
from mmdino_jax.eval.backbone import evaluate_backbone, load_backbone, summary_line
from mmdino_jax.export import check_export_dir
from mmdino_jax.run_log import quiet_library_logs

CHECKPOINT = flags.DEFINE_string("checkpoint", "", "A step of DIR/checkpoints, or a model directory; default: best, "
                                 "else latest.")
COMPARE = flags.DEFINE_list("compare", [], "Run directories to put side by side (reads DIR/eval/metrics.json).")
EXPORT = flags.DEFINE_string("export", "", "Also write the full-sequence probe + teacher backbone to this new "
                             "directory as a classifier for `python -m mmdino_jax.predict --model DIR`.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the classifier that --export DIR already holds.")


def main(argv) -> None:
    quiet_library_logs()
    if COMPARE.value:
        print(report.compare_runs(COMPARE.value + argv[1:]))  # --compare A B C and --compare A,B,C
        return
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config, workdir = cli_flags.config_and_workdir()
    if EXPORT.value:
        check_export_dir(EXPORT.value, OVERWRITE.value)
    graphdef, params, step = load_backbone(config, workdir, CHECKPOINT.value)
    payload = evaluate_backbone(config, workdir, graphdef, params, step, export_dir=EXPORT.value,
                                overwrite=OVERWRITE.value)
    print(summary_line(payload, workdir))
    if EXPORT.value:
        print(f"classifier: {EXPORT.value} (python -m mmdino_jax.predict --model {EXPORT.value} --input PATH)")


def cli(argv=None) -> None:
    """The command line (also the `mmdino-evaluate` console script)."""
    run_cli(lambda args: main(parse_absl_flags(args)), argv, prog="python -m mmdino_jax.evaluate")


if __name__ == "__main__":
    cli()
