"""Accelerator XLA flag defaults: merged into the user's XLA_FLAGS, never overriding them."""

import os
import subprocess
import sys

from tkx import xla_flags


def test_merge_keeps_user_flags_and_adds_missing_defaults():
  defaults = {"xla_a": "true", "xla_b": "1"}
  assert xla_flags.merge_flags("", defaults) == "--xla_a=true --xla_b=1"
  merged = xla_flags.merge_flags("--xla_a=false --xla_c", defaults)
  assert merged == "--xla_a=false --xla_c --xla_b=1"
  assert xla_flags.parse_flags(merged) == {
      "xla_a": "false",
      "xla_c": None,
      "xla_b": "1",
  }
  # Nothing to add: the user's string comes back unchanged.
  assert (
      xla_flags.merge_flags(" --xla_b=2 --xla_a=x ", defaults)
      == "--xla_b=2 --xla_a=x"
  )


def test_apply_defaults_only_where_a_gpu_can_run(monkeypatch):
  monkeypatch.setattr(xla_flags, "gpu_possible", lambda environ: True)
  env = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
  assert xla_flags.apply_defaults(env) == ""  # the user's choice stands
  assert env["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=false"
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  added = xla_flags.apply_defaults(env)
  assert added == "--xla_gpu_enable_latency_hiding_scheduler=true"
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x " + added
  env = {"TKX_XLA_DEFAULTS": "0"}
  assert xla_flags.apply_defaults(env) == "" and "XLA_FLAGS" not in env
  monkeypatch.undo()
  # No JAX CUDA plugin here, and JAX_PLATFORMS=cpu rules GPUs out anyway.
  assert not xla_flags.gpu_possible({"JAX_PLATFORMS": "cpu"})
  env = {}
  assert xla_flags.apply_defaults(env) == "" and env == {}


def test_installed_jaxlib_accepts_every_default_flag():
  # XLA aborts on a flag it does not know; GPU flags live in the registry every backend parses.
  flags = xla_flags.merge_flags("", xla_flags.GPU_DEFAULTS)
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-c", "import jax; print(jax.numpy.ones(2).sum())"],
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "2.0" in proc.stdout
