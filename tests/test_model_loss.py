"""Loss, z-loss, label smoothing, normalisation, scoring and a tiny overfit run."""

import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tkx.models import config as config_lib
from tkx.models import models, network


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.sum(np.exp(x), -1, keepdims=True))


def test_z_loss_adds_log_partition_squared():
  logits = np.array([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]], np.float32)
  targets = np.array([[1, 2]])
  weights = np.array([[1.0, 1.0]])
  log_z = np.log(np.exp(logits).sum(-1))[0]  # [2]
  ce = -np.array([log_softmax(logits[0, 0])[1], log_softmax(logits[0, 1])[2]])
  for z in (0.0, 1e-4, 0.5):
    loss, z_part, wsum = models.compute_weighted_cross_entropy(
        logits, targets, weights, z_loss=z
    )
    assert float(loss) == pytest.approx(
        ce.sum() + z * (log_z**2).sum(), rel=1e-6
    )
    assert float(z_part) == pytest.approx(
        z * (log_z**2).sum(), rel=1e-6, abs=1e-12
    )
    assert float(wsum) == 2.0


def test_label_smoothing_against_hand_computed_values():
  vocab, ls = 4, 0.1
  conf, low = 1 - ls, ls / (vocab - 1)
  entropy = -(conf * math.log(conf) + (vocab - 1) * low * math.log(low))
  # Uniform logits: cross entropy to any target distribution is log(V); t5x subtracts its entropy.
  loss, _, _ = models.compute_weighted_cross_entropy(
      np.zeros((1, 1, vocab), np.float32), np.array([[2]]), label_smoothing=ls
  )
  assert float(loss) == pytest.approx(math.log(vocab) - entropy, rel=1e-6)
  # A model that predicts exactly the smoothed target reaches 0.
  perfect = np.log(np.array([[[low, low, conf, low]]], np.float32))
  loss, _, _ = models.compute_weighted_cross_entropy(
      perfect, np.array([[2]]), label_smoothing=ls
  )
  assert float(loss) == pytest.approx(0.0, abs=1e-6)
  # General logits: sum over the soft target of -log p, minus the entropy.
  logits = np.array([[[0.3, -1.2, 2.0, 0.7]]], np.float32)
  soft = np.array([low, conf, low, low])
  expected = -(soft * log_softmax(logits[0, 0])).sum() - entropy
  loss, _, _ = models.compute_weighted_cross_entropy(
      logits, np.array([[1]]), label_smoothing=ls
  )
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def tiny_model(**overrides):
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
  )
  return models.EncoderDecoderModel(network.Transformer(cfg), **overrides)


def batch_with_padding():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 64, (3, 10))
  tgt = rng.randint(2, 64, (3, 6))
  tgt[1, 4:] = 0
  tgt[2, 2:] = 0
  dec = np.concatenate([np.zeros((3, 1), int), tgt[:, :-1]], 1) * (tgt > 0)
  return dict(
      encoder_input_tokens=enc,
      decoder_input_tokens=dec,
      decoder_target_tokens=tgt,
      decoder_loss_weights=(tgt > 0).astype(np.float32),
  )


def test_loss_fn_is_normalised_by_target_tokens_and_reports_metrics():
  model = tiny_model(z_loss=1e-4)
  batch = batch_with_padding()
  params = model.get_initial_variables(
      jax.random.PRNGKey(0),
      {"encoder_input_tokens": (1, 10), "decoder_input_tokens": (1, 6)},
  )["params"]
  loss, metrics = jax.jit(model.loss_fn)(params, batch, None)
  logits = np.asarray(jax.jit(model._compute_logits)(params, batch), np.float64)
  lp = log_softmax(logits)
  w = batch["decoder_loss_weights"]
  ce = -np.take_along_axis(lp, batch["decoder_target_tokens"][..., None], -1)[
      ..., 0
  ]
  log_z = np.log(np.exp(logits).sum(-1))
  n = w.sum()
  assert n == 6 + 4 + 2 and float(metrics["num_tokens"]) == n
  assert float(loss) == pytest.approx(
      ((ce + 1e-4 * log_z**2) * w).sum() / n, rel=1e-5
  )
  assert float(metrics["z_loss"]) == pytest.approx(
      (1e-4 * log_z**2 * w).sum() / n, rel=1e-5
  )
  assert float(metrics["cross_ent_loss"]) == pytest.approx(
      (ce * w).sum() / n, rel=1e-5
  )
  correct = ((logits.argmax(-1) == batch["decoder_target_tokens"]) * w).sum()
  assert float(metrics["accuracy"]) == pytest.approx(correct / n)
  # Scores are per-example sums of target log-likelihoods (no z-loss).
  np.testing.assert_allclose(
      jax.jit(model.score_batch)(params, batch), -(ce * w).sum(-1), rtol=1e-5
  )
  # A fixed normalising factor divides the same sum.
  fixed = tiny_model(z_loss=1e-4, loss_normalizing_factor=100.0)
  loss100, _ = jax.jit(fixed.loss_fn)(params, batch, None)
  assert float(loss100) == pytest.approx(float(loss) * n / 100.0, rel=1e-5)
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    tiny_model(loss_normalizing_factor="per_example")
  with pytest.raises(KeyError, match="decoder_target_tokens"):
    model.loss_fn(
        params, {"encoder_input_tokens": batch["encoder_input_tokens"]}, None
    )


def test_loss_decreases_when_overfitting_a_tiny_batch():
  model = tiny_model(label_smoothing=0.1)
  batch = {k: jnp.asarray(v) for k, v in batch_with_padding().items()}
  params = model.get_initial_variables(
      jax.random.PRNGKey(0),
      {"encoder_input_tokens": (1, 10), "decoder_input_tokens": (1, 6)},
  )["params"]
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, rng):
    (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
        params, batch, rng
    )
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, metrics

  losses = []
  for i in range(60):
    params, state, loss, metrics = step(params, state, jax.random.PRNGKey(i))
    assert np.isfinite(float(loss))
    losses.append(float(loss))
  assert losses[-1] < 0.3 * losses[0], losses[::10]
  assert float(metrics["accuracy"]) == 1.0
