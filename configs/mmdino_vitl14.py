"""MM-DINOv2 recipe on a ViT-L/14 backbone (dinov2_vitl14 weights); bf16 compute on GPU/TPU (model.dtype auto).

On many devices, shard parameters and optimizer state with --config.mesh.fsdp=N.
"""

from mmdino_jax.config_base import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.model.arch = "vitl14"
    return c
