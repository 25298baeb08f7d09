"""Test-wide settings.

Eight host CPU devices let the partitioning and multi-device tests build real
meshes; XLA reads the flag once, so it must be set before anything imports jax.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EMBEDDED_NI_DIR = REPO_ROOT / "tasks"
SHARED_NI_DIR = REPO_ROOT.parent / "shared" / "natural-instructions"


@pytest.fixture(scope="session")
def embedded_ni_dir():
    return EMBEDDED_NI_DIR


@pytest.fixture(scope="session")
def shared_ni_dir():
    """The real NI sample beside the checkout; tests using it skip, saying why, when it is absent."""
    if not (SHARED_NI_DIR / "tasks").is_dir():
        pytest.skip(f"shared Natural Instructions sample not found at {SHARED_NI_DIR} "
                    "(it lives beside the checkout in CI and on developer machines)")
    return SHARED_NI_DIR


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Each test starts from an empty gin config.

    Model configs are gin-configurable (as t5x's `network.T5Config`), so bindings a previous
    test parsed (say `T5Config.dtype = 'bfloat16'` from a real-size model file) would otherwise
    fill in fields of configs built later in the same process.
    """
    import gin
    gin.clear_config()
    yield
    gin.clear_config()
