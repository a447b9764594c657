"""The absl flags the command-line tools share, defined once on import (each tool defines its own others).

train, supervised (and every trainer on the loop) take all of them; evaluate takes --config and --workdir.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file (configs/*.py[:arg]).",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "The run directory: checkpoints, metrics.jsonl, TensorBoard, "
                              "cache, eval/.")
DISTRIBUTED = flags.DEFINE_enum("distributed", "none", ["none", "auto", "explicit"],
                                "Multi-process start-up: auto = detect TPU VM / SLURM; explicit = the flags "
                                "below (implied by --coordinator_address).")
COORDINATOR_ADDRESS = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 (--distributed explicit).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of processes (--distributed explicit).")
PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index (--distributed explicit).")
LOCAL_DEVICE_COUNT = flags.DEFINE_integer("local_device_count", 0, "Simulate this many CPU devices per process "
                                          "(testing).")


def start_processes() -> None:
    """Host-memory reuse (`host_memory`), then multi-process start-up from the flags above
    (`sharding.start_processes`)."""
    from mmdino_jax import host_memory, sharding

    host_memory.keep_freed_memory()
    sharding.start_processes(DISTRIBUTED.value, COORDINATOR_ADDRESS.value, NUM_PROCESSES.value, PROCESS_ID.value,
                             LOCAL_DEVICE_COUNT.value)


def config_and_workdir() -> tuple:
    """(config, workdir) from --config and --workdir, both required."""
    from absl import app

    if CONFIG.value is None or not WORKDIR.value:
        raise app.UsageError("--config and --workdir are required (evaluate: or --compare DIR ...)")
    return CONFIG.value, WORKDIR.value
