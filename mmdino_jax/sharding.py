"""Device mesh, sharding rules and multi-process start-up.

One mesh with axes ("data", "fsdp"). The batch is split over both axes; parameters and
optimizer state are replicated over "data" and, when the "fsdp" axis is larger than one,
split over "fsdp" along their largest divisible dimension.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated under FSDP: splitting them saves nothing.
FSDP_MIN_SIZE = 2**16


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh over `devices` (default: all); `fsdp` devices share each parameter."""
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must divide the {n} devices")
    return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (sample) axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Split the largest dimension divisible by `fsdp`; replicate small or indivisible arrays."""
    if fsdp == 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_tree, mesh: Mesh):
    """NamedShardings for a pytree of arrays/ShapeDtypeStructs following the FSDP rule."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp)), abstract_tree)


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble each process's slice of the batch into global arrays split over the mesh."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def initialize_distributed(mode: str, coordinator_address: str = "", num_processes: int = 1,
                           process_id: int = 0) -> None:
    """Start JAX's multi-controller runtime.

    mode "none": single process. "auto": let JAX detect the cluster (TPU VM, SLURM, ...).
    "explicit": use the coordinator address / process count / process id given.
    """
    if mode == "none":
        return
    if mode == "auto":
        jax.distributed.initialize()
    elif mode == "explicit":
        if not coordinator_address or num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError("--distributed explicit needs --coordinator_address HOST:PORT, "
                             "--num_processes N and --process_id in [0, N)")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        raise ValueError(f"--distributed must be none, auto or explicit, not {mode!r}")


def start_processes(mode: str = "none", coordinator_address: str = "", num_processes: int = 1,
                    process_id: int = 0, local_device_count: int = 0) -> None:
    """A CLI's multi-process start-up (`initialize_distributed`; a coordinator address alone implies
    "explicit"), optionally with `local_device_count` simulated CPU devices; prints the device count."""
    if local_device_count:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={local_device_count}")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if mode == "none" and coordinator_address:
        mode = "explicit"  # launch/local_multiprocess.sh passes only the explicit flags
    initialize_distributed(mode, coordinator_address, num_processes, process_id)
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local devices, "
          f"{jax.device_count()} in all", flush=True)
