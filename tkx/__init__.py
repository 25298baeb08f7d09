"""tkx: Tk-Instruct on JAX/Flax with t5x conventions.

Contract (the names other modules rely on; change one only together with its users):
- No import cycles inside `tkx` (lazy imports included; `tests/test_plumbing.py` checks it).
"""

__version__ = "0.1.0"

# Accelerator XLA flag defaults must be in XLA_FLAGS before JAX starts a backend.
from tkx import xla_flags as _xla_flags  # noqa: E402

_xla_flags.apply_defaults()

# Storage clients (etils.epath/orbax, tensorstore, gcsfs) read their settings at first use.
from tkx import storage as _storage  # noqa: E402

_storage.configure_environment()
