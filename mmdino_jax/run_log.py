"""A run's metric log: one JSON object per line in `metrics.jsonl`, mirrored to TensorBoard."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary_writer(logdir: str):
    """tensorboardX's SummaryWriter, imported without torch where torch is not loaded yet: tensorboardX uses
    torch only to accept torch tensors, and importing it costs every training process seconds. (A `None`
    entry in sys.modules makes `import torch` raise ImportError, which tensorboardX handles.)"""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir)


class RunLog:
    """Appends `{"step": ..., name: value, ...}` records; a no-op on processes other than 0."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self.file = open(Path(workdir) / "metrics.jsonl", "a")
            self.tb = summary_writer(str(Path(workdir) / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for name, value in record.items():
            if name != "step":
                self.tb.add_scalar(name, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def quiet_library_logs() -> None:
    """Show warnings and errors only (Orbax and JAX log every save at INFO), unless --verbosity was given."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
