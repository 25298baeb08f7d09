"""T5Config.attention_impl ('xla' | 'cudnn') and bfloat16 activations on the tiny model."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx.models import config as config_lib
from tkx.models import models, network

SHAPES = {"encoder_input_tokens": (2, 10), "decoder_input_tokens": (2, 6)}


def _config(**overrides):
  kw = dict(
      vocab_size=64,
      emb_dim=32,
      num_heads=4,
      head_dim=8,
      mlp_dim=48,
      num_encoder_layers=2,
      num_decoder_layers=2,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )
  kw.update(overrides)
  return config_lib.T5Config(**kw)


def _model(**overrides):
  return models.EncoderDecoderModel(network.Transformer(_config(**overrides)))


@functools.lru_cache(maxsize=None)
def _params():
  return _model().get_initial_variables(jax.random.PRNGKey(0), SHAPES)["params"]


def _batch():
  rng = np.random.RandomState(1)
  enc = rng.randint(2, 64, (2, 10)).astype(np.int32)
  tgt = rng.randint(2, 64, (2, 6)).astype(np.int32)
  enc[1, 6:] = 0
  tgt[1, 3:] = 0
  return {
      "encoder_input_tokens": enc,
      "decoder_target_tokens": tgt,
      "decoder_input_tokens": np.concatenate(
          [np.zeros((2, 1), np.int32), tgt[:, :-1]], 1
      ),
      # two packed examples in row 0 exercise the segment masks
      "encoder_segment_ids": np.array(
          [[1] * 4 + [2] * 6, [1] * 6 + [0] * 4], np.int32
      ),
      "decoder_segment_ids": np.array(
          [[1] * 2 + [2] * 4, [1] * 3 + [0] * 3], np.int32
      ),
  }


def test_attention_impl_is_validated():
  assert _config().attention_impl == config_lib.AttentionImpl.XLA
  assert _config(attention_impl="cudnn").attention_impl == "cudnn"
  with pytest.raises(ValueError, match="attention_impl: unknown 'flash'"):
    _config(attention_impl="flash")


@pytest.mark.slow
def test_cudnn_impl_falls_back_on_cpu_with_equal_loss_and_gradients(caplog):
  assert jax.default_backend() == "cpu"
  network._CUDNN_FALLBACK_LOGGED.clear()
  params, batch = _params(), _batch()
  results = []
  with caplog.at_level(logging.INFO, logger="tkx.models.network"):
    for impl in ("xla", "cudnn"):
      model = _model(attention_impl=impl)
      results.append(
          jax.jit(
              jax.value_and_grad(lambda p: model.loss_fn(p, batch, None)[0])
          )(params)
      )
  fallback = [
      r for r in caplog.records if "attention_impl='cudnn'" in r.message
  ]
  assert len(fallback) == 1 and "on cpu" in fallback[0].message
  (loss0, grads0), (loss1, grads1) = results
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  diffs = jax.tree_util.tree_map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))), grads0, grads1
  )
  assert max(jax.tree_util.tree_leaves(diffs)) < 1e-5


@pytest.mark.float_order
def test_fused_attention_matches_xla_attention_with_bias_and_mask():
  rng = np.random.RandomState(0)
  q, k, v = (rng.randn(3, 5, 2, 4).astype(np.float32) for _ in range(3))
  bias = rng.randn(1, 2, 5, 5).astype(np.float32)
  mask = np.tril(np.ones((5, 5), bool))[None, None] & (
      rng.rand(3, 1, 1, 5) > 0.3
  )
  mask[..., 0] = True
  want = network.dot_product_attention(q, k, v, mask, bias)
  got = network.dot_product_attention(
      q, k, v, mask, bias, impl=config_lib.AttentionImpl.CUDNN
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # T5 scaling: none (scale 1), unlike jax.nn's default 1/sqrt(head_dim).
  scaled = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
  assert not np.allclose(scaled, want, atol=1e-3)


@pytest.mark.slow
def test_cudnn_impl_decodes_like_xla():
  params, batch = _params(), _batch()
  batch = {k: v for k, v in batch.items() if "segment" not in k}
  outs = [  # jitted: one program per impl instead of op by op, the same decodes
      jax.jit(
          functools.partial(
              _model(attention_impl=impl).predict_batch, max_decode_length=5
          )
      )(params, batch)
      for impl in ("xla", "cudnn")
  ]
  np.testing.assert_array_equal(outs[1], outs[0])


def test_bfloat16_activations_stay_close_to_float32():
  params, batch = _params(), _batch()
  losses = {}
  for dtype in ("float32", "bfloat16"):
    model = _model(dtype=dtype)
    losses[dtype] = float(
        jax.jit(lambda p: model.loss_fn(p, batch, None)[0])(params)
    )
  assert np.isfinite(losses["bfloat16"])
  # bfloat16 keeps 8 bits of mantissa: ~0.4% per rounding, a few of them compound.
  assert abs(losses["bfloat16"] - losses["float32"]) < 0.02 * losses["float32"]
  assert losses["bfloat16"] != losses["float32"]  # bfloat16 really ran
