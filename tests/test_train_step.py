"""The jitted train step: gradient accumulation equals the large batch; non-finite steps are flagged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx import optimizers, trainer
from tkx.models import config as config_lib, models, network
from tkx.partitioning import Partitioner


def _tiny_model(dropout_rate=0.0, **kw):
  cfg = config_lib.T5Config(
      vocab_size=64,
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=1,
      num_decoder_layers=1,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=dropout_rate,
  )
  return models.EncoderDecoderModel(network.Transformer(cfg), **kw)


def _batch(batch_size=8, inputs=12, targets=6, seed=0):
  """Unpacked EncDecFeatureConverter-style batch whose rows have very different target lengths."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(3, 64, size=(batch_size, inputs)).astype(np.int32)
  tgt = rng.randint(3, 64, size=(batch_size, targets)).astype(np.int32)
  lengths = (
      1 + (np.arange(batch_size) * 5) % targets
  )  # 1..targets, uneven across micro-batches
  mask = np.arange(targets)[None, :] < lengths[:, None]
  tgt = np.where(mask, tgt, 0)
  dec_in = np.concatenate(
      [np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1
  )
  return {
      "encoder_input_tokens": enc,
      "decoder_input_tokens": dec_in,
      "decoder_target_tokens": tgt,
      "decoder_loss_weights": mask.astype(np.float32),
  }


def _init_state(model, optimizer, batch):
  shapes = {
      "encoder_input_tokens": batch["encoder_input_tokens"].shape,
      "decoder_input_tokens": batch["decoder_input_tokens"].shape,
  }
  init = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))
  params = init(jax.random.PRNGKey(0))["params"]  # jitted: not op by op
  return trainer.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      rng=jax.random.PRNGKey(1),
  )


@pytest.mark.float_order
def test_gradient_accumulation_equals_large_batch():
  num_microbatches = 4
  model = _tiny_model()
  batch = _batch()
  optimizer = optimizers.create_optimizer(optimizers.adamw, learning_rate=1e-2)
  state = _init_state(model, optimizer, batch)
  step1 = trainer.make_train_step(model, optimizer, 1e-2, 1)
  step_n = trainer.make_train_step(model, optimizer, 1e-2, num_microbatches)

  def both(state, batch):
    micro = trainer._split_microbatches(batch, num_microbatches)
    # Averaging per-micro-batch means (the naive way) weighs tokens unequally.
    naive = jnp.mean(
        jax.lax.map(lambda b: model.loss_fn(state.params, b, None)[0], micro)
    )
    return step1(state, batch), step_n(state, batch), naive

  (s1, m1), (sn, mn), naive = jax.jit(both)(state, batch)
  assert int(sn.step) == 1 and bool(mn["is_finite"])
  np.testing.assert_allclose(mn["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(mn["grad_norm"], m1["grad_norm"], rtol=1e-4)
  assert (
      abs(float(naive) - float(m1["loss"])) > 1e-3
  )  # so the check above is meaningful
  assert float(mn["num_target_tokens"]) == batch["decoder_loss_weights"].sum()
  # Per-token metrics of the micro-batches combine into the large batch's.
  for key in ("accuracy", "cross_ent_loss", "z_loss"):
    np.testing.assert_allclose(mn[key], m1[key], rtol=1e-5, err_msg=key)
  for a, b in zip(
      jax.tree_util.tree_leaves(sn.params), jax.tree_util.tree_leaves(s1.params)
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(
      jax.tree_util.tree_leaves(sn.opt_state),
      jax.tree_util.tree_leaves(s1.opt_state),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_partitioned_step_matches_single_device_and_respects_shardings():
  model = _tiny_model(dropout_rate=0.1)
  batch = _batch()
  optimizer = optimizers.create_optimizer(
      optimizers.adafactor, learning_rate=1e-2
  )
  state = _init_state(model, optimizer, batch)
  step = trainer.make_train_step(model, optimizer, 1e-2, 2)
  expected, _ = jax.jit(step)(state, batch)

  partitioner = Partitioner(data_axis_size=4, model_axis_size=2)
  shapes = {"encoder_input_tokens": (1, 12), "decoder_input_tokens": (1, 6)}
  params_sh = partitioner.logical_to_sharding(model.params_logical_axes(shapes))
  opt_sh = partitioner.optimizer_state_shardings(
      jax.eval_shape(optimizer.init, state.params),
      state.params,
      params_sh,
  )
  state_sh = trainer.TrainState(
      step=partitioner.replicated,
      params=params_sh,
      opt_state=opt_sh,
      rng=partitioner.replicated,
  )
  p_step = partitioner.partition(
      step,
      in_shardings=(state_sh, partitioner.data_sharding),
      out_shardings=(state_sh, partitioner.replicated),
  )
  sharded_state = jax.device_put(state, state_sh)
  got, metrics = p_step(sharded_state, partitioner.host_local_to_global(batch))
  assert bool(metrics["is_finite"])
  wi = got.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert (
      wi.sharding.spec
      == params_sh["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].spec
  )
  assert "model" in str(wi.sharding.spec)
  for a, b in zip(
      jax.tree_util.tree_leaves(got.params),
      jax.tree_util.tree_leaves(expected.params),
  ):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6
    )


def test_nonfinite_steps_are_flagged():
  model = _tiny_model()
  batch = _batch()
  optimizer = optimizers.create_optimizer(
      optimizers.adafactor, learning_rate=1e-2
  )
  state = _init_state(model, optimizer, batch)
  step = trainer.make_train_step(model, optimizer, 1e-2, 1)
  # An infinite learning rate: the loss is still finite, the update is not.
  inf_opt = optimizers.create_optimizer(
      optimizers.adafactor, learning_rate=float("inf")
  )
  inf_step = trainer.make_train_step(model, inf_opt, float("inf"), 1)

  def run(state, inf_state, batch):
    s1, m1 = step(state, batch)
    # NaN parameters (as a fault would leave them): the next step is flagged.
    poisoned = s1.replace(
        params=jax.tree_util.tree_map(lambda p: p * jnp.nan, s1.params)
    )
    _, m2 = step(poisoned, batch)
    _, m_inf = inf_step(inf_state, batch)
    return m1, m2, m_inf

  m1, m2, m_inf = jax.jit(run)(state, _init_state(model, inf_opt, batch), batch)
  assert bool(m1["is_finite"])
  assert not bool(m2["is_finite"]) and np.isnan(m2["loss"])
  assert np.isfinite(m_inf["loss"]) and not bool(m_inf["is_finite"])


def test_bfloat16_activations_keep_float32_params():
  cfg = config_lib.T5Config(
      vocab_size=64,
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=1,
      num_decoder_layers=1,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
      dtype="bfloat16",
  )
  model = models.EncoderDecoderModel(network.Transformer(cfg))
  batch = _batch()
  optimizer = optimizers.create_optimizer(
      optimizers.adafactor, learning_rate=1e-2
  )
  state = _init_state(model, optimizer, batch)
  new_state, metrics = jax.jit(
      trainer.make_train_step(model, optimizer, 1e-2, 2)
  )(state, batch)
  assert bool(metrics["is_finite"]) and metrics["loss"].dtype == jnp.float32
  assert all(
      p.dtype == jnp.float32
      for p in jax.tree_util.tree_leaves(new_state.params)
  )
  assert not np.allclose(
      new_state.params["decoder"]["logits_dense"]["kernel"],
      state.params["decoder"]["logits_dense"]["kernel"],
  )
