"""Tolerances for float results that two algorithms (or two CPUs) sum in different orders.

XLA's CPU code generation vectorises reductions to the machine's vector width
(AVX-512, AVX2, SSE, NEON), so the same float32 program sums in a different order
on another CPU kind and its results differ in the last bits. A test that two
algorithms agree must allow for that and no more: the bound here grows with the
dtype's epsilon, the length of the reductions and how many of them are chained,
so a real difference (a wrong mask, a dropped term) still fails by orders of
magnitude. Exact equality stays for what is bitwise deterministic by design
(integer tokens, the same program on the same inputs).
"""

import math

import numpy as np


def reorder_atol(dtype, reduction_size: int, depth: int = 1, scale=1.0):
  """Absolute tolerance for values of magnitude `scale` after `depth` chained reductions of `reduction_size` terms.

  Reordering a sum of n terms moves it by about sqrt(n) units in the last place
  of its magnitude (rounding errors add like a random walk); 8 covers the tail
  over the thousands of values a test compares.
  """
  eps = float(np.finfo(dtype).eps)
  return 8.0 * eps * math.sqrt(reduction_size) * depth * float(scale)


def assert_close_up_to_order(
    actual, desired, *, reduction_size: int, depth: int = 1, err_msg=""
):
  """`actual` equals `desired` up to summation order (see `reorder_atol`); scale from `desired`."""
  actual, desired = np.asarray(actual), np.asarray(desired)
  scale = max(float(np.max(np.abs(desired), initial=0.0)), 1.0)
  atol = reorder_atol(desired.dtype, reduction_size, depth, scale)
  np.testing.assert_allclose(
      actual, desired, rtol=0, atol=atol, err_msg=err_msg
  )
