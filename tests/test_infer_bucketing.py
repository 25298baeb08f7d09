"""Length buckets: planning, padding, and outputs identical to unbucketed decoding."""

import dataclasses
import jax
import numpy as np
import pytest

from tkx import infer
from tkx.checkpoints import directory


def test_bucket_length_picks_smallest_fitting_bucket():
  assert infer.bucket_length(1, (128, 256)) == 128
  assert infer.bucket_length(128, (256, 128)) == 128
  assert infer.bucket_length(129, (128, 256)) == 256
  with pytest.raises(
      ValueError, match="longer than the largest length bucket 256"
  ):
    infer.bucket_length(257, (128, 256))


def test_plan_batches_fills_batches_shortest_first_in_the_bucket_of_their_longest():
  lengths = [3, 40, 5, 7, 33, 2, 64, 9, 12]
  plan = infer.plan_batches(lengths, batch_size=2, buckets=(8, 16, 64))
  assert plan == [
      (8, [5, 0]),
      (8, [2, 3]),
      (16, [7, 8]),
      (64, [4, 1]),
      (64, [6]),
  ]
  # every example appears exactly once
  assert sorted(i for _, idx in plan for i in idx) == list(range(len(lengths)))


def test_cut_to_budget_counts_eos_and_keeps_first_tokens():
  assert infer.cut_to_budget([5, 6, 7], 4) == ([5, 6, 7, 1], False)
  assert infer.cut_to_budget([5, 6, 7, 8], 4) == ([5, 6, 7, 1], True)


def test_full_budget_inputs_are_counted_in_one_warning(caplog):
  import logging

  with caplog.at_level(logging.WARNING):
    assert infer.warn_full_budget([[5] * 8, [5] * 3, [5] * 8], 8, "mix") == 2
  assert "mix: 2 of 3 inputs reach the 8-token budget" in caplog.text


def test_trim_output_stops_at_eos_and_drops_padding():
  assert infer.trim_output([7, 8, 1, 9, 0]) == [7, 8]
  assert infer.trim_output([7, 0, 8]) == [7, 8]
  assert infer.trim_output([1, 5]) == []


def test_decode_config_validates_and_maps_to_decoding_fns():
  import inspect

  from tkx import decoding

  def fn_and_kwargs(config):
    fn, kwargs = config.decode_fn_and_kwargs()
    return inspect.unwrap(fn), kwargs  # through gin: its bindings apply

  assert fn_and_kwargs(infer.DecodeConfig()) == (decoding.greedy, {})
  # --num_beams asks for Hugging Face's procedure, with HF's default alpha (the function's).
  fn, kwargs = fn_and_kwargs(infer.DecodeConfig().with_settings(num_beams=4))
  assert fn is decoding.hf_beam_search and kwargs == {"num_decodes": 4}
  fn, kwargs = fn_and_kwargs(
      infer.DecodeConfig().with_settings(num_beams=4, beam_procedure="t5x")
  )
  assert fn is decoding.beam_search and kwargs == {"num_decodes": 4}
  fn, kwargs = fn_and_kwargs(
      infer.DecodeConfig().with_settings(
          num_beams=2, alpha=0.3, beam_procedure=decoding.BeamProcedure.T5X
      )
  )
  assert fn is decoding.beam_search and kwargs["alpha"] == 0.3
  fn, kwargs = fn_and_kwargs(
      infer.DecodeConfig().with_settings(temperature=0.7, top_p=0.9)
  )
  assert fn is decoding.temperature_sample and kwargs == {
      "temperature": 0.7,
      "topk": decoding.TOPK_OFF,
      "topp": 0.9,
  }
  sampling = infer.DecodeConfig(decode_fn="temperature_sample", temperature=1.0)
  with pytest.raises(ValueError, match="not both"):
    infer.DecodeConfig().with_settings(num_beams=2, temperature=1.0)
  with pytest.raises(ValueError, match="top_k is read by temperature_sample"):
    infer.DecodeConfig(top_k=5)
  with pytest.raises(ValueError, match="top_p"):
    sampling.with_settings(top_p=1.5)
  with pytest.raises(ValueError, match="top_k or top_p, not both"):
    sampling.with_settings(top_k=5, top_p=0.9)
  with pytest.raises(ValueError, match="beam procedure"):
    infer.DecodeConfig().with_settings(num_beams=2, beam_procedure="gnmt")
  with pytest.raises(ValueError, match="alpha is read by beam_search"):
    infer.DecodeConfig(alpha=0.6)


@pytest.fixture(scope="module")
def tiny_model():
  from tkx.data import vocab as vocab_lib
  from tkx.models import config as config_lib

  cfg = config_lib.T5Config(
      vocab_size=1024,
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=2,
      num_decoder_layers=2,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )
  vocabulary = vocab_lib.get_vocabulary()
  model = directory.build_model(cfg, vocabulary)
  shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
  params = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
      jax.random.PRNGKey(3)
  )["params"]
  return model, params


def _random_inputs(num, lengths, seed=0):
  rng = np.random.RandomState(seed)
  return [list(rng.randint(3, 1000, size=n - 1)) + [1] for n in lengths[:num]]


def test_bucketed_greedy_equals_each_example_decoded_alone(tiny_model):
  """Bucketed, padded, batched greedy decoding == each example alone at its exact length."""
  from tkx import partitioning

  model, params = tiny_model
  lengths = [5, 14, 3, 30, 9, 64, 12, 6, 4, 2, 40]
  inputs = _random_inputs(len(lengths), lengths)
  cfg = infer.DecodeConfig(max_decode_length=12)
  predictor = infer.Predictor(
      model,
      params,
      partitioner=partitioning.Partitioner(num_partitions=2),
      batch_size=4,
      decode_config=cfg,
      input_buckets=(8, 16, 64),
  )
  bucketed = predictor.predict_ids(inputs, progress=False)
  # Batches of the shortest 4, the next 4 and the last 3 (one dummy row): a program per bucket.
  assert predictor.compiled_shapes == {(4, 8), (4, 16), (4, 64)}

  decode_fn, kwargs = cfg.decode_fn_and_kwargs()
  alone_fn = jax.jit(
      lambda p, x: model.predict_batch(
          p,
          {"encoder_input_tokens": x},
          decode_fn=decode_fn,
          max_decode_length=12,
          **kwargs
      )
  )
  for ids, got in zip(
      inputs[:4], bucketed[:4]
  ):  # four exact lengths: four more compilations
    alone = np.asarray(alone_fn(params, np.asarray([ids], np.int32)))[0]
    assert got == infer.trim_output(alone)
  assert any(len(out) > 0 for out in bucketed)


def test_bucketed_beam_search_equals_one_unbucketed_batch(tiny_model):
  """Beam search: buckets + dummy rows give what one batch at the longest length gives."""
  model, params = tiny_model
  lengths = [5, 20, 3, 9, 30, 7]
  inputs = _random_inputs(len(lengths), lengths, seed=2)
  cfg = infer.DecodeConfig(
      decode_fn="hf_beam_search", num_beams=3, max_decode_length=8
  )
  bucketed = infer.Predictor(
      model, params, batch_size=8, decode_config=cfg, input_buckets=(8, 32)
  ).predict_ids(inputs, progress=False)
  decode_fn, kwargs = cfg.decode_fn_and_kwargs()
  rows = np.zeros((len(inputs), 32), np.int32)
  for row, ids in enumerate(inputs):
    rows[row, : len(ids)] = ids
  unbucketed = model.predict_batch(
      params,
      {"encoder_input_tokens": rows},
      decode_fn=decode_fn,
      max_decode_length=8,
      **kwargs
  )
  assert bucketed == [infer.trim_output(row) for row in np.asarray(unbucketed)]


def test_empty_inputs_get_empty_outputs_without_decoding(tiny_model):
  model, params = tiny_model
  predictor = infer.Predictor(
      model,
      params,
      batch_size=8,
      decode_config=infer.DecodeConfig(max_decode_length=4),
      input_buckets=(8,),
  )
  out = predictor.predict_ids([[], [1], [5, 6, 1]], progress=False)
  assert out[0] == [] and out[1] == []
  assert predictor.compiled_shapes == {(8, 8)}


def test_batch_size_must_divide_over_data_axis(tiny_model):
  from tkx import partitioning

  model, params = tiny_model
  with pytest.raises(ValueError, match="multiple of the data axis size 8"):
    infer.Predictor(
        model,
        params,
        partitioner=partitioning.Partitioner(num_partitions=1),
        batch_size=4,
    )


def test_sampling_is_reproducible_with_a_seed(tiny_model):
  model, params = tiny_model
  inputs = _random_inputs(3, [6, 9, 4], seed=1)
  cfg = infer.DecodeConfig(
      decode_fn="temperature_sample",
      temperature=1.0,
      top_k=20,
      max_decode_length=8,
      seed=5,
  )
  a = infer.Predictor(
      model, params, batch_size=8, decode_config=cfg, input_buckets=(16,)
  ).predict_ids(inputs, progress=False)
  b = infer.Predictor(
      model, params, batch_size=8, decode_config=cfg, input_buckets=(16,)
  ).predict_ids(inputs, progress=False)
  assert a == b
  other_seed = dataclasses.replace(cfg, seed=6)
  c = infer.Predictor(
      model, params, batch_size=8, decode_config=other_seed, input_buckets=(16,)
  ).predict_ids(inputs, progress=False)
  assert (
      c != a
  )  # 3 x 8 tokens sampled from 20 candidates: a collision is all but impossible
