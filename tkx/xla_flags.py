"""XLA flag defaults for accelerators, merged into the user's XLA_FLAGS.

`import tkx` calls `apply_defaults()`, which must run before JAX starts a
backend (XLA reads XLA_FLAGS once, when the first backend starts). It adds the
flags below to `XLA_FLAGS` only when a GPU can be in play (a JAX CUDA plugin
is installed and JAX_PLATFORMS does not rule GPUs out), and never overrides a
flag the user already set: `XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=false`
keeps the user's value. `TKX_XLA_DEFAULTS=0` turns the defaults off. On a CPU
nothing changes; on a TPU none are needed (libtpu already schedules
collectives with its latency-hiding scheduler), so none are added.

Every flag here is one XLA's common flag registry knows (tested against the
installed jaxlib: an unknown flag in XLA_FLAGS aborts the process).

Contract (the names other modules rely on; change one only together with its users):
- `apply_defaults(environ=os.environ) -> str` (called by `import tkx`, before JAX starts a backend): when
  `gpu_possible(environ)` (a `jax_plugins.xla_cuda12|13` plugin is installed and `JAX_PLATFORMS` allows GPUs) and
  `TKX_XLA_DEFAULTS` is not "0", appends `GPU_DEFAULTS` flags the user's `XLA_FLAGS` lacks; returns what it added.
  `merge_flags(user, defaults)`, `parse_flags(s)`. Every default must be known to the installed jaxlib (tested).
"""

import importlib.util
import logging
import os
from typing import Dict, Mapping, Optional

log = logging.getLogger(__name__)

# name -> value, without the leading "--".
GPU_DEFAULTS: Dict[str, str] = {
    # Overlap collectives (data-parallel gradient all-reduce, FSDP all-gathers)
    # with compute; JAX's GPU performance guide recommends it for training.
    "xla_gpu_enable_latency_hiding_scheduler": "true",
    # Triton GEMMs stay on: XLA's autotuner compares them with cuBLAS per shape
    # and keeps the faster, so forcing either one can only lose.
}

OPT_OUT_ENV = "TKX_XLA_DEFAULTS"


def parse_flags(xla_flags: str) -> Dict[str, Optional[str]]:
  """'--a=1 --b' -> {'a': '1', 'b': None} (order kept)."""
  flags = {}
  for token in xla_flags.split():
    name, sep, value = token.lstrip("-").partition("=")
    flags[name] = value if sep else None
  return flags


def merge_flags(user_flags: str, defaults: Mapping[str, str]) -> str:
  """The user's XLA_FLAGS followed by every default flag the user did not set."""
  user = parse_flags(user_flags)
  added = [f"--{k}={v}" for k, v in defaults.items() if k not in user]
  return " ".join([user_flags.strip()] * bool(user_flags.strip()) + added)


def gpu_possible(environ: Mapping[str, str]) -> bool:
  """A JAX CUDA plugin is installed and JAX_PLATFORMS (if set) allows GPUs."""
  platforms = environ.get("JAX_PLATFORMS", "").lower()
  if platforms and not any(p in platforms for p in ("cuda", "gpu")):
    return False
  if importlib.util.find_spec("jax_plugins") is None:
    return False
  return any(
      importlib.util.find_spec(f"jax_plugins.xla_{name}") is not None
      for name in ("cuda12", "cuda13")
  )


def apply_defaults(environ=None) -> str:
  """Merges the accelerator defaults into environ["XLA_FLAGS"]; returns the flags it added ('' if none)."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT_ENV, "1") == "0" or not gpu_possible(environ):
    return ""
  user = environ.get("XLA_FLAGS", "")
  merged = merge_flags(user, GPU_DEFAULTS)
  added = merged[len(user.strip()) :].strip()
  if added:
    environ["XLA_FLAGS"] = merged
    log.info(
        "tkx added GPU defaults to XLA_FLAGS: %s (%s=0 turns them off)",
        added,
        OPT_OUT_ENV,
    )
  return added
