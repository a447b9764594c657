"""PyTorch DINOv2 / MM-DINOv2 / HF Dinov2 checkpoints <-> mmdino_jax model directories
(`python -m mmdino_jax.convert SRC DST`, also `python -m weights_conversion SRC DST`).

`checkpoints.py` converts, `dinov2.py` maps the parameter names, `files.py` reads and writes state dicts.
"""
