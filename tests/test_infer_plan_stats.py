"""Decoding batch plans: grouping by input prefix inside a bucket, encoder padding and decode-step waste."""

import logging

import jax
import numpy as np
import pytest

from tkx import infer
from tkx.checkpoints import directory


def test_group_keys_order_examples_inside_a_bucket_only():
  lengths = [5, 6, 7, 8, 20, 21]
  keys = ["b", "a", "b", "a", "b", "a"]
  plan = infer.plan_batches(lengths, 2, (8, 32), group_keys=keys)
  # Bucket 8 first (its "a" examples, then "b"), then bucket 32.
  assert plan == [(8, [1, 3]), (8, [0, 2]), (32, [5, 4])]
  # Without keys: shortest first, as before.
  assert infer.plan_batches(lengths, 2, (8, 32)) == [
      (8, [0, 1]),
      (8, [2, 3]),
      (32, [4, 5]),
  ]


def test_plan_stats_on_a_hand_made_batch():
  stats = infer.PlanStats()
  eos = 1
  decoded = np.array(
      [
          [5, 1, 0, 0],  # 2 steps
          [5, 6, 7, 1],  # 4 steps: the batch runs 4
          [9, 9, 9, 9],  # no EOS: max_decode_length
          [1, 0, 0, 0],  # dummy row
      ]
  )
  stats.add_batch(16, [10, 16, 4], decoded, 4, eos)
  assert stats.encoder_padding == pytest.approx(1 - 30 / 64)
  assert stats.decode_waste == pytest.approx(1 - (2 + 4 + 4) / 16)
  assert "encoder padding 53.1%" in stats.summary()


def test_predictor_reports_its_plan_once(caplog):
  from tkx.data import vocab as vocab_lib
  from tkx.models import config as config_lib

  cfg = config_lib.T5Config(
      vocab_size=1024,
      emb_dim=16,
      num_heads=2,
      head_dim=8,
      mlp_dim=32,
      num_encoder_layers=1,
      num_decoder_layers=1,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )
  model = directory.build_model(cfg, vocab_lib.get_vocabulary())
  shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  from tkx import partitioning

  predictor = infer.Predictor(
      model,
      params,
      partitioner=partitioning.Partitioner(
          num_partitions=1, devices=jax.devices()[:1]
      ),
      batch_size=2,
      decode_config=infer.DecodeConfig(max_decode_length=6),
      input_buckets=(8,),
  )
  inputs = [[3, 4, 1], [5, 6, 7, 1], [8, 1]]
  with caplog.at_level(logging.INFO, logger="tkx.infer"):
    predictor.predict_ids(inputs, progress=False, desc="run")
  lines = [
      r.message for r in caplog.records if "decode-step waste" in r.message
  ]
  assert len(lines) == 1 and lines[0].startswith("run: 3 examples in 2 batches")
  stats = predictor.last_plan_stats
  assert stats.encoder_real == 9 and stats.encoder_computed == 2 * 2 * 8
  assert 0.0 <= stats.decode_waste < 1.0
