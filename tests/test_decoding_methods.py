"""Decoding chosen explicitly: the registry of decoding methods, the flags and requests that
choose one, `DecodeConfig` validation, and the owner of the jitted decoding functions.

A stand-in model (next-token logits from a table) keeps these tests free of compilation
beyond the decoding loop itself.
"""

import argparse
import inspect
import json
import math

import gin
import jax.numpy as jnp
import numpy as np
import pytest

import toy_decoding
from tkx import cli, decoding, infer, partitioning
from tkx.commands import infer as infer_command
from tkx.models import base as models_base
from tkx.serve import schema

EOS = 1
# Next-token log-probabilities by the token fed (0 start, 1 EOS, 2-4 words): greedy
# repeats 2; the least likely real token goes 0 -> 3 -> 4 -> EOS.
TABLE = np.log(
    np.array(
        [
            [1e-9, 0.10, 0.60, 0.05, 0.25],
            [1e-9, 0.20, 0.20, 0.20, 0.40],
            [1e-9, 0.10, 0.60, 0.20, 0.10],
            [1e-9, 0.20, 0.35, 0.40, 0.05],
            [1e-9, 0.02, 0.50, 0.28, 0.20],
        ],
        np.float32,
    )
)


class TableModel(models_base.BaseModel):
  """A decode-only model (logits from a table by the last token); training is not its use."""

  def predict_batch_with_aux(
      self,
      params,
      batch,
      rng=None,
      *,
      decode_fn,
      max_decode_length,
      num_decodes=1,
      **kw,
  ):
    del rng
    rows = batch["encoder_input_tokens"].shape[0]

    def tokens_to_logits(state):
      return params["table"][state.cur_token[:, 0]], state.cache

    seqs, scores = decode_fn(
        inputs=jnp.zeros((rows, max_decode_length), jnp.int32),
        cache={},
        tokens_to_logits=tokens_to_logits,
        eos_id=EOS,
        num_decodes=num_decodes,
        **kw,
    )
    return seqs[:, -1], {"scores": scores[:, -1]}

  def loss_fn(self, params, batch, dropout_rng):
    raise NotImplementedError("decode only")

  def score_batch(self, params, batch):
    raise NotImplementedError("decode only")

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    raise NotImplementedError("decode only")

  def variables_logical_axes(self, input_shapes):
    raise NotImplementedError("decode only")


@pytest.fixture(scope="module")
def table_model():
  model, partitioner = TableModel(), partitioning.Partitioner()
  params = {"table": jnp.asarray(TABLE)}
  fns = infer.PredictFns(
      model, partitioner, param_shardings={"table": partitioner.replicated}
  )
  return model, params, fns


def decode(table_model, config, inputs=([5, EOS],), predict_fns=None):
  model, params, fns = table_model
  predictor = infer.Predictor(
      model,
      params,
      batch_size=8,
      decode_config=config,
      input_buckets=(4,),
      predict_fns=predict_fns or fns,
  )
  return predictor.predict_ids([list(x) for x in inputs], progress=False)


@pytest.fixture
def toy_registered():
  # The one registration line a new method needs:
  decoding.register_method("least_likely", toy_decoding.least_likely)
  yield
  decoding.METHODS.pop("least_likely")


def test_a_toy_method_is_one_file_and_one_registration_line(
    table_model, toy_registered
):
  config = infer.DecodeConfig(decode_fn="least_likely", max_decode_length=5)
  assert decode(table_model, config) == [[3, 4]]
  greedy = infer.DecodeConfig(max_decode_length=5)
  assert decode(table_model, greedy) == [[2, 2, 2, 2, 2]]
  # The function itself names it too (gin: `decode_fn = @toy_decoding.least_likely`).
  assert infer.DecodeConfig(decode_fn=toy_decoding.least_likely) == (
      infer.DecodeConfig(decode_fn="least_likely")
  )
  # Command flags, a server request and gin reach it by name.
  parser = argparse.ArgumentParser()
  infer_command.add_common_arguments(parser, checkpoint_required=False)
  args = parser.parse_args(["--decode_fn", "least_likely"])
  gin.parse_config(cli.flag_bindings(args, infer_command.DECODE_FLAGS))
  assert infer.run_decode_config().decode_fn == "least_likely"
  request = schema.parse_generate_request(
      json.dumps({"inputs": "x", "decode_fn": "least_likely"}).encode(),
      max_decode_length=5,
  )
  served = infer.DecodeConfig().with_settings(**request.decode_overrides)
  assert served.decode_fn == "least_likely"
  gin.clear_config()
  try:
    gin.parse_config("infer.DecodeConfig.decode_fn = 'least_likely'")
    assert infer.DecodeConfig().decode_fn == "least_likely"
  finally:
    gin.clear_config()
  # It reads no setting, so none may be set for it.
  with pytest.raises(
      ValueError, match="does not apply to decode_fn='least_likely'"
  ):
    config.with_settings(top_k=3)


GREEDY = infer.DecodeConfig()
T5X_BEAMS = infer.DecodeConfig(decode_fn="beam_search", num_beams=4)
SAMPLING = infer.DecodeConfig(
    decode_fn="temperature_sample", temperature=0.7, top_k=40
)


@pytest.mark.parametrize(
    "base, given, method",
    [
        (GREEDY, {}, "greedy"),
        (GREEDY, {"num_beams": 4}, "hf_beam_search"),
        (GREEDY, {"num_beams": 4, "beam_procedure": "t5x"}, "beam_search"),
        (GREEDY, {"temperature": 0.7, "top_p": 0.9}, "temperature_sample"),
        (GREEDY, {"decode_fn": "beam_search", "num_beams": 2}, "beam_search"),
        (GREEDY, {"beam_procedure": "t5x"}, "greedy"),  # one beam: greedy
        (T5X_BEAMS, {"num_beams": 8}, "beam_search"),  # the procedure is kept
        (T5X_BEAMS, {"num_beams": 8, "beam_procedure": "hf"}, "hf_beam_search"),
        (T5X_BEAMS, {"num_beams": 1}, "greedy"),
        (T5X_BEAMS, {"max_decode_length": 9}, "beam_search"),
        (SAMPLING, {"temperature": 1.3, "seed": 4}, "temperature_sample"),
    ],
)
def test_flags_and_requests_choose_the_method(base, given, method):
  assert base.with_settings(**given).decode_fn == method


@pytest.mark.parametrize(
    "base, given, message",
    [
        (GREEDY, {"num_beams": 2, "temperature": 1.0}, "not both"),
        (T5X_BEAMS, {"temperature": 0.5}, "not both"),
        (GREEDY, {"num_beams": 2, "beam_procedure": "gnmt"}, "beam procedure"),
        (GREEDY, {"decode_fn": "gnmt"}, "not a registered decoding method"),
        (
            SAMPLING,
            {"temperature": 0.0},
            "top_k=40 does not apply to decode_fn='greedy'",
        ),
    ],
)
def test_flags_that_cannot_be_met_name_the_setting(base, given, message):
  with pytest.raises(ValueError, match=message):
    base.with_settings(**given)


def test_decode_config_passes_each_method_the_settings_it_reads():
  # The function comes through gin (its bindings apply): unwrapped, the registered one.
  fn, kwargs = GREEDY.decode_fn_and_kwargs()
  assert inspect.unwrap(fn) is decoding.greedy and kwargs == {}
  fn, kwargs = infer.DecodeConfig(
      decode_fn="hf_beam_search", num_beams=4
  ).decode_fn_and_kwargs()
  # alpha None: the function's own default (Hugging Face's 1.0) or its gin binding.
  assert inspect.unwrap(fn) is decoding.hf_beam_search and kwargs == {
      "num_decodes": 4
  }
  _, kwargs = T5X_BEAMS.with_settings(alpha=0.3).decode_fn_and_kwargs()
  assert kwargs == {"num_decodes": 4, "alpha": 0.3}
  fn, kwargs = infer.DecodeConfig(
      decode_fn=decoding.temperature_sample, temperature=0.7, top_p=0.9
  ).decode_fn_and_kwargs()
  assert kwargs == {"temperature": 0.7, "topk": decoding.TOPK_OFF, "topp": 0.9}
  assert infer.DecodeConfig(decode_fn="temperature_sample").uses_rng
  assert not T5X_BEAMS.uses_rng
  for bad, message in [
      (dict(alpha=0.6), "alpha=0.6 does not apply to decode_fn='greedy'"),
      (dict(top_k=5), "top_k is read by temperature_sample"),
      (dict(decode_fn="beam_search", temperature=1.0), "does not apply"),
      (dict(decode_fn="temperature_sample", top_p=1.5), "top_p must be in"),
      (dict(decode_fn="temperature_sample", top_k=5, top_p=0.9), "not both"),
      (dict(num_beams=0), "num_beams must be >= 1"),
      (dict(decode_fn=len), "not a registered decoding method"),
  ]:
    with pytest.raises(ValueError, match=message):
      infer.DecodeConfig(**bad)
  with pytest.raises(ValueError, match="already registered"):
    decoding.register_method("greedy", decoding.beam_search)
  with pytest.raises(ValueError, match="unknown settings"):
    decoding.register_method("x", decoding.greedy, settings={"beams": "k"})


def test_gin_injected_decode_fn_keeps_its_own_bindings():
  """t5x's way: `decode_fn = @decoding.beam_search` and `decoding.beam_search.alpha`."""
  gin.clear_config()
  try:
    gin.parse_config(
        "from __gin__ import dynamic_registration\n"
        "from tkx import decoding\n"
        "from tkx import infer\n"
        "decoding.beam_search.alpha = 0.0\n"
        "infer.DecodeConfig.decode_fn = @decoding.beam_search\n"
        "infer.DecodeConfig.num_beams = 2\n"
    )
    config = infer.DecodeConfig()
    fn, kwargs = config.decode_fn_and_kwargs()
    logits = jnp.log(jnp.array([1e-9, 0.1, 0.6, 0.3]))
    _, scores = fn(  # the bindings apply when it is called (traced)
        np.array([[0, 3, 0]], np.int32),
        {},
        lambda s: (
            jnp.broadcast_to(logits, (s.cur_token.shape[0], 4)),
            s.cache,
        ),
        EOS,
        **kwargs,
    )
  finally:
    gin.clear_config()
  assert config.decode_fn == "beam_search"
  # alpha 0: B-EOS scores log .1 unpenalised (the default 0.6 would divide it).
  np.testing.assert_allclose(float(scores[0, -1]), math.log(0.1), rtol=1e-5)


def test_jitted_functions_belong_to_their_owner(table_model):
  model, params, fns = table_model
  before = len(fns)
  first = infer.Predictor(
      model, params, batch_size=8, predict_fns=fns,
      decode_config=infer.DecodeConfig(max_decode_length=3, seed=1),
  )  # fmt: skip
  second = infer.Predictor(
      model, params, batch_size=8, predict_fns=fns,
      decode_config=infer.DecodeConfig(max_decode_length=3, seed=2),
  )  # fmt: skip
  # The seed is an argument: one function (and its compiled programs) for both.
  assert first._predict is second._predict and len(fns) == before + 1
  own = infer.Predictor(
      model, params, batch_size=8,
      decode_config=infer.DecodeConfig(max_decode_length=3),
      param_shardings=fns.param_shardings,
  )  # fmt: skip
  assert own._predict is not first._predict  # no module-wide cache
  assert not hasattr(infer, "_PREDICT_FN_CACHE")
  with pytest.raises(ValueError, match="another model"):
    infer.Predictor(TableModel(), params, batch_size=8, predict_fns=fns)


@pytest.mark.parametrize(
    "flags, method",
    [
        ([], "greedy"),
        (["--num_beams", "4"], "hf_beam_search"),
        (["--num_beams", "4", "--beam_procedure", "t5x"], "beam_search"),
        (["--temperature", "0.7", "--top_k", "5"], "temperature_sample"),
    ],
)
def test_command_flags_choose_the_method_through_gin(flags, method):
  """The flags become `infer.decode_flags` bindings (as `tkx.cli` binds them) and choose the method."""
  parser = argparse.ArgumentParser()
  infer_command.add_common_arguments(parser, checkpoint_required=False)
  args = parser.parse_args(flags)
  gin.parse_config(cli.flag_bindings(args, infer_command.DECODE_FLAGS))
  assert infer.run_decode_config().decode_fn == method


def test_an_unknown_method_or_dense_layer_is_a_user_error():
  """A mistyped name is the user's (one line from `tkx`), not a bug's traceback."""
  from tkx import errors
  from tkx.models import network

  with pytest.raises(errors.ConfigError, match="tyop"):
    decoding.get_method("tyop")
  with pytest.raises(errors.ConfigError, match="T5Config.dense_layer"):
    network.dense_layer("tyop")
