"""Session-wide test setup: one smoke cohort + prepared cache for every test that trains, and one JAX
compilation cache, so the same smoke step compiled by several tests and their subprocesses compiles once."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


def pytest_configure(config):
    # Inherited by the CLI subprocesses the tests start; a user's own cache directory is left alone.
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmdino-test-xla-")
        config._mmdino_xla_cache = os.environ["JAX_COMPILATION_CACHE_DIR"]


def pytest_unconfigure(config):
    path = getattr(config, "_mmdino_xla_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        del os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """The smoke config's synthetic cohort (configs/demo.py:smoke), generated and prepared once per session.
    The supervised smoke config reads the same cohort."""
    from mmdino_jax.config_base import load_config
    from mmdino_jax.data.setup import ensure_cache

    return ensure_cache(load_config("configs/demo.py:smoke").data, str(tmp_path_factory.mktemp("smoke")), 0)
