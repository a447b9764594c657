"""`python -m weights_conversion`: the design card's name of `python -m mmdino_jax.convert` (a thin alias)."""
