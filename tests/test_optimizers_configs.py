"""tkx.optimizers: t5x's Adafactor settings, AdamW, learning-rate factors, clipping, gin."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tkx import optimizers


def _leaves_with_shapes(state):
  return [np.shape(x) for x in jax.tree_util.tree_leaves(state)]


def test_adafactor_factors_second_moments_of_large_matrices():
  params = {
      "kernel": jnp.ones((256, 512)),
      "small": jnp.ones((16, 8)),
      "scale": jnp.ones((512,)),
  }
  opt = optimizers.adafactor(learning_rate=1e-2)
  state = opt.init(params)
  shapes = _leaves_with_shapes(state)
  # Factored: a row vector and a column vector instead of a 256x512 second moment.
  assert (256,) in shapes and (512,) in shapes
  assert (256, 512) not in shapes or shapes.count((256, 512)) == 0
  # Small matrices and vectors keep a full second moment.
  assert (16, 8) in shapes
  # No momentum (t5x default beta1=None): total state is tiny compared to the params.
  assert sum(int(np.prod(s)) for s in shapes) < 256 * 512 / 10


def _second_update_rms(opt, params):
  # A small gradient then a large one: with beta2_2 = 1 - 2^-0.8 the raw update is
  # 1e3 / sqrt((1 - beta2_2) * 1e6) = 1.3196 per entry, above the clipping threshold 1.0.
  state = opt.init(params)
  _, state = opt.update({"w": jnp.full((4, 4), 1e-3)}, state, params)
  updates, _ = opt.update({"w": jnp.full((4, 4), 1e3)}, state, params)
  return float(jnp.sqrt(jnp.mean(jnp.square(updates["w"]))))


def test_adafactor_update_clipping_and_parameter_scale():
  params = {"w": jnp.full((4, 4), 3.0)}  # parameter RMS 3
  raw = 1.0 / np.sqrt(2.0**-0.8)
  assert _second_update_rms(optimizers.adafactor(1.0), params) == pytest.approx(
      3.0, rel=1e-3
  )
  assert _second_update_rms(
      optimizers.adafactor(1.0, clipping_threshold=None), params
  ) == pytest.approx(3.0 * raw, rel=1e-3)
  assert _second_update_rms(
      optimizers.adafactor(1.0, multiply_by_parameter_scale=False), params
  ) == pytest.approx(1.0, rel=1e-3)


def test_adafactor_decay_rate_is_t5x_step_dependent():
  # t5x: beta2_t = 1 - t^(-0.8); at t=1 the second moment is the squared gradient itself,
  # so the first update of a constant gradient has RMS exactly 1 (before param scaling).
  params = {"w": jnp.ones((3,))}
  grads = {"w": jnp.array([0.5, -2.0, 4.0])}
  opt = optimizers.adafactor(
      learning_rate=1.0,
      multiply_by_parameter_scale=False,
      clipping_threshold=None,
  )
  updates, _ = opt.update(grads, opt.init(params), params)
  np.testing.assert_allclose(updates["w"], -jnp.sign(grads["w"]), rtol=1e-4)


def test_adamw_defaults_and_no_decay_on_vectors():
  params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  opt = optimizers.adamw(learning_rate=0.1, weight_decay=0.5)
  updates, _ = opt.update(zero, opt.init(params), params)
  np.testing.assert_allclose(
      updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6
  )
  np.testing.assert_allclose(updates["scale"], np.zeros(2))
  # First Adam step with bias correction: update = -lr * sign(g).
  g = {
      "kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]]),
      "scale": jnp.array([0.1, -0.1]),
  }
  opt = optimizers.adamw(learning_rate=0.1)
  updates, _ = opt.update(g, opt.init(params), params)
  np.testing.assert_allclose(
      updates["kernel"], -0.1 * np.sign(g["kernel"]), rtol=1e-5
  )


def test_learning_rate_factors():
  rsqrt = optimizers.create_learning_rate_scheduler(
      "constant * rsqrt_decay", base_learning_rate=1.0, warmup_steps=10000
  )
  assert float(rsqrt(0)) == pytest.approx(0.01)  # 1/sqrt(10000) during "warmup"
  assert float(rsqrt(40000)) == pytest.approx(0.005)  # then 1/sqrt(step)
  warm = optimizers.create_learning_rate_scheduler(
      "constant * linear_warmup * rsqrt_normalized_decay",
      base_learning_rate=1e-3,
      warmup_steps=100,
  )
  assert float(warm(50)) == pytest.approx(5e-4)
  assert float(warm(400)) == pytest.approx(1e-3 * 0.5)
  const = optimizers.create_learning_rate_scheduler(
      "constant", base_learning_rate=5e-5
  )
  assert float(const(0)) == float(const(9999)) == pytest.approx(5e-5)
  lin = optimizers.create_learning_rate_scheduler(
      "constant * linear_decay",
      base_learning_rate=1.0,
      steps_per_cycle=100,
      min_learning_rate=0.0,
  )
  assert float(lin(25)) == pytest.approx(0.75) and float(lin(200)) == 0.0
  with pytest.raises(ValueError, match="unknown learning-rate factor"):
    optimizers.create_learning_rate_scheduler("constant * cubic")


def test_create_optimizer_clips_global_norm_and_binds_from_gin():
  params = {"a": jnp.zeros((2,)), "b": jnp.zeros((2,))}
  grads = {
      "a": jnp.array([3.0, 0.0]),
      "b": jnp.array([0.0, 4.0]),
  }  # global norm 5
  sgd_like = lambda learning_rate: optax.sgd(learning_rate)  # noqa: E731
  opt = optimizers.create_optimizer(
      sgd_like, learning_rate=1.0, grad_clip_norm=1.0
  )
  updates, _ = opt.update(grads, opt.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(1.0, rel=1e-5)
  gin.clear_config()
  try:
    gin.parse_config("""
            import tkx.optimizers
            optimizers.create_optimizer.optimizer_fn = @optimizers.adamw
            optimizers.create_optimizer.learning_rate = @optimizers.create_learning_rate_scheduler()
            optimizers.create_learning_rate_scheduler.factors = 'constant'
            optimizers.create_learning_rate_scheduler.base_learning_rate = 0.25
            optimizers.adamw.b2 = 0.98
        """)
    opt = optimizers.create_optimizer()
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["a"], [-0.25, 0.0], atol=1e-6)
  finally:
    gin.clear_config()
