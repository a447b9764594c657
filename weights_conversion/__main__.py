"""`python -m weights_conversion SRC DST` runs `python -m mmdino_jax.convert SRC DST` (see mmdino_jax/convert/)."""

import runpy

runpy.run_module("mmdino_jax.convert", run_name="__main__", alter_sys=True)
