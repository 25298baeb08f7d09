"""float16 activations: the residual stream and its writers stay in float32, so T5 1.1 weights that overflow float16 decode."""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_models

from tkx.models import config as config_lib
from tkx.models import models, network

# Powers of two: scaling is exact, and T5's pre-norm layers and final norm make the
# float32 model invariant to it (the residual stream is scaled as a whole).
OVERFLOW_SCALE = 2.0**16
SHAPES = {"encoder_input_tokens": (2, 24), "decoder_input_tokens": (2, 8)}


def _config(dtype):
  return tiny_models.t5_config(
      vocab_size=128, emb_dim=32, head_dim=16, mlp_dim=64, dtype=dtype
  )


@functools.lru_cache(maxsize=None)
def _params():
  model = models.EncoderDecoderModel(network.Transformer(_config("float32")))
  return jax.device_get(
      model.get_initial_variables(jax.random.PRNGKey(0), SHAPES)["params"]
  )


def _scaled(params, scale):
  """Embeddings and every projection writing into the residual stream times `scale`."""

  def scale_leaf(path, x):
    name = "/".join(k.key for k in path)
    writes_stream = name.endswith(
        ("token_embedder/embedding", "out/kernel", "wo/kernel")
    )
    return x * np.float32(scale) if writes_stream else x

  return jax.tree_util.tree_map_with_path(scale_leaf, params)


@functools.lru_cache(maxsize=None)
def _model(dtype, guarded=True):
  del guarded  # a cache key: the unguarded model is another program
  return models.EncoderDecoderModel(network.Transformer(_config(dtype)))


def _greedy(dtype, params, guarded=True):
  rng = np.random.RandomState(3)
  tokens = rng.randint(2, 128, (8, 24)).astype(np.int32)
  tokens[:, 20:] = 0
  tokens[:, 19] = 1
  model = _model(dtype, guarded)
  batch = {
      "encoder_input_tokens": tokens,
      "decoder_input_tokens": np.zeros((8, 8), np.int32),
  }
  return np.asarray(model.predict_batch(params, batch, max_decode_length=8))


def test_residual_dtype_is_float32_only_under_float16():
  assert _config("float16").residual_dtype == jnp.float32
  assert _config("bfloat16").residual_dtype == jnp.bfloat16
  assert _config("float32").residual_dtype == jnp.float32


@pytest.mark.slow
def test_float16_decodes_weights_that_overflow_it_like_their_unscaled_form(
    monkeypatch,
):
  params = _params()
  scaled = _scaled(params, OVERFLOW_SCALE)
  expected = _greedy("float32", params)
  np.testing.assert_array_equal(_greedy("float32", scaled), expected)
  guarded = _greedy("float16", scaled)
  # Scaling by 2**16 is exact in the float32 stream, so float16 decodes the scaled
  # weights as it decodes the unscaled ones.
  np.testing.assert_array_equal(guarded, _greedy("float16", params))
  # A random model has near-ties that float16 rounding can flip (a trained one has
  # not: docs/models.md); most rows still agree with float32.
  assert (guarded == expected).all(axis=1).mean() >= 0.75
  # Without the guard the stream is float16 and overflows: inf, then NaN logits.
  monkeypatch.setattr(
      config_lib.T5Config,
      "residual_dtype",
      property(lambda self: jnp.dtype(self.dtype)),
  )
  unguarded = _greedy("float16", scaled, guarded=False)
  assert (unguarded == expected).all(axis=1).mean() < 0.5


def test_dtype_flag_overrides_the_checkpoints_activation_dtype(tiny_checkpoint):
  import gin

  from tkx import cli, infer
  from tkx.checkpoints import directory
  from tkx.commands import infer as infer_command

  parser = (
      argparse.ArgumentParser()
  )  # the flag table of infer, eval, generate, serve
  infer_command.add_common_arguments(parser, checkpoint_required=False)
  args = parser.parse_args(["--dtype", "float16"])
  bindings = cli.flag_bindings(args, infer_command.DECODE_FLAGS)
  assert "infer.model_overrides.dtype = 'float16'" in bindings
  gin.parse_config(bindings)
  loaded = directory.load(tiny_checkpoint, gin_bindings=infer.model_overrides())
  assert loaded.config.dtype == "float16"
  assert loaded.model.module.config.dtype == "float16"
  assert loaded.config.param_dtype == "float32"  # parameters keep theirs
