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
    # Cache every executable, not only those over 1 s to compile: a CLI subprocess otherwise recompiles the
    # dozens of small ones (parameter initialisers, evaluation) that the session's earlier runs compiled.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # The tests' models are tiny, so compiling dominates running: LLVM's optimisation passes cost more than
    # they save (the smoke SSL step compiles in ~9 s instead of ~12 s). A test that sets XLA_FLAGS itself for
    # its subprocesses (simulated devices) passes this flag on or drops it.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


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


@pytest.fixture(scope="session")
def smoke(smoke_cache, tmp_path_factory):
    """The bad-input tests' smoke artifacts (helpers/bad_inputs.py `build_smoke`): cohort, cache, an exported
    classifier and a run directory with two checkpoints."""
    from helpers.bad_inputs import build_smoke

    return build_smoke(smoke_cache, tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="session")
def blank_cohort(smoke, tmp_path_factory):
    """A cohort of one good subject and one per blank-input fault, prepared once."""
    from helpers.bad_inputs import build_blank_cohort

    return build_blank_cohort(smoke, tmp_path_factory.mktemp("blank"))
