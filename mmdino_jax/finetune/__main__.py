"""Fine-tuning CLI: full fine-tuning or LoRA of a backbone with a linear head on the labeled subjects.

  python -m mmdino_jax.finetune --config configs/finetune.py[:smoke] --workdir DIR [--config.a.b=v]
      --config.finetune.init=MODEL_DIR|RUN_DIR    start from a model directory or a run's teacher ("" = random)
      --config.finetune.lora_rank=8               LoRA on attention qkv / proj (+ FFN: finetune.lora_mlp=True)

Restarting with the same --workdir resumes. Writes DIR/eval (evaluate's report) and DIR/classifier
(`python -m mmdino_jax.predict --model DIR/classifier --input PATH`).
"""

from __future__ import annotations

from mmdino_jax import cli_flags
from mmdino_jax.cli_errors import parse_absl_flags, run_cli
from mmdino_jax.eval.backbone import summary_line
from mmdino_jax.finetune.run import run_finetune
from mmdino_jax.run_log import quiet_library_logs
from mmdino_jax.training.run import checked_run


def main(argv) -> None:
    del argv
    quiet_library_logs()
    cli_flags.start_processes()
    with checked_run(cli_flags.CONFIG.value, cli_flags.WORKDIR.value) as (config, workdir):
        payload = run_finetune(config, workdir)
    if payload:
        print(summary_line(payload, workdir))
        print(f"classifier: {workdir}/classifier (python -m mmdino_jax.predict --model {workdir}/classifier "
              "--input PATH)")


def cli(argv=None) -> None:
    """The command line (also the `mmdino-finetune` console script)."""
    run_cli(lambda args: main(parse_absl_flags(args)), argv, prog="python -m mmdino_jax.finetune")


if __name__ == "__main__":
    cli()
