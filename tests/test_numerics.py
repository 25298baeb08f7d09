"""The float comparisons of the suite hold on another CPU's vector width, not only on this one's.

XLA's CPU back end vectorises reductions to the widest instructions the machine
has, so the same float32 program sums in another order on an AVX-512, an AVX2 or
an Arm machine. The tests that compare two computations of the same numbers are
marked `float_order`; this test runs them again under a second XLA CPU target
(`--xla_cpu_max_isa=SSE4_2`: 128-bit vectors, another summation order than this
machine's) so that a tolerance tuned to one CPU kind fails here, not on a user's
machine.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import numerics

REPO = pathlib.Path(__file__).resolve().parents[1]
SECOND_TARGET = "--xla_cpu_max_isa=SSE4_2"


def test_reorder_tolerance_grows_with_epsilon_and_reduction_length():
  f32 = numerics.reorder_atol(np.float32, 64)
  assert numerics.reorder_atol(np.float32, 256) == pytest.approx(2 * f32)
  assert numerics.reorder_atol(np.float16, 64) > 1000 * f32
  assert numerics.reorder_atol(np.float64, 64) < 1e-8 * f32
  with pytest.raises(AssertionError):  # a real difference still fails
    numerics.assert_close_up_to_order(
        np.float32([1.0, 2.0]), np.float32([1.0, 2.001]), reduction_size=64
    )


@pytest.mark.slow
def test_float_order_tests_pass_under_a_second_cpu_target():
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "max_isa" not in f]
  if not any("device_count" in f for f in flags):
    flags.append("--xla_force_host_platform_device_count=8")
  env["XLA_FLAGS"] = " ".join(flags + [SECOND_TARGET])
  # Only the files that hold marked tests: collecting the whole suite costs a minute.
  files = sorted(
      str(p.relative_to(REPO))
      for p in (REPO / "tests").glob("test_*.py")
      if p.name != pathlib.Path(__file__).name
      and "pytest.mark.float_order" in p.read_text(encoding="utf-8")
  )
  assert files
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
      + ["-m", "float_order", "-p", "no:xdist", *files],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=1200,
      check=False,
  )
  tail = proc.stdout[-3000:]
  assert proc.returncode == 0, tail
  assert " passed" in tail and " failed" not in tail, tail
