"""Packing: SeqIO's packed format, every example once and whole, exact resume, efficiency, same loss."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx import optimizers, trainer
from tkx.data import packing
from tkx.models import config as config_lib, models, network

LENGTHS = {"inputs": 32, "targets": 8}
LAYOUT = packing.RowLayout(32, 8)
# Rows of 3 encoder blocks sharing a decoder row of 16.
BLOCKS = packing.RowLayout(32, 16, encoder_blocks=3)


def _examples(n, seed=0, lengths=LENGTHS):
  """Examples whose first input token names them (index + 2); lengths vary up to the row length."""
  rng = np.random.RandomState(seed)
  out = []
  for index in range(n):
    n_in = rng.randint(2, lengths["inputs"] + 1)
    n_tgt = rng.randint(1, lengths["targets"] + 1)
    inputs = rng.randint(2, 500, n_in).astype(np.int32)
    inputs[0] = index + 2
    inputs[-1] = 1
    targets = rng.randint(2, 500, n_tgt).astype(np.int32)
    targets[-1] = 1
    out.append({"inputs": inputs, "targets": targets})
  return out


def _opener(examples):
  def open_stream(start):
    return iter(examples[start:])

  return open_stream


def _segments(batch):
  """(inputs, targets) of every segment of a packed batch, row by row (blocks flattened)."""
  out = []
  for r in range(batch["encoder_input_tokens"].shape[0]):
    tokens = batch["encoder_input_tokens"][r].reshape(-1)
    segments = batch["encoder_segment_ids"][r].reshape(-1)
    for segment in range(1, batch["decoder_segment_ids"][r].max() + 1):
      dec = batch["decoder_segment_ids"][r] == segment
      out.append(
          (tokens[segments == segment], batch["decoder_target_tokens"][r][dec])
      )
  return out


@pytest.mark.parametrize(
    "layout", [LAYOUT, BLOCKS], ids=["one_block", "blocks"]
)
def test_every_example_once_and_whole(layout):
  examples = _examples(203)
  batches = list(
      packing.packed_batches(
          _opener(examples), batch_size=4, layout=layout, window=50
      )
  )
  seen = {}
  for batch, _ in batches:
    assert all(v.shape[0] == 4 and v.dtype == np.int32 for v in batch.values())
    assert batch["encoder_input_tokens"].shape[1:] == layout.encoder_shape
    assert batch["decoder_target_tokens"].shape[1:] == (layout.targets,)
    # No example crosses a block: a segment's encoder tokens lie in one block.
    blocks = batch["encoder_segment_ids"].reshape(
        4, layout.encoder_blocks, layout.inputs
    )
    for r in range(4):
      for segment in set(blocks[r].reshape(-1).tolist()) - {0}:
        assert ((blocks[r] == segment).any(axis=-1)).sum() == 1
    for inputs, targets in _segments(batch):
      index = int(inputs[0]) - 2
      assert index not in seen
      seen[index] = (inputs, targets)
  assert sorted(seen) == list(range(len(examples)))
  for index, (inputs, targets) in seen.items():
    np.testing.assert_array_equal(inputs, examples[index]["inputs"])
    np.testing.assert_array_equal(targets, examples[index]["targets"])
  # Rows are full in the scarcer of encoder and decoder (the last batch aside).
  full = [batch for batch, _ in batches[:-1]]
  encoder = np.mean([(b["encoder_input_tokens"] > 0).mean() for b in full])
  decoder = np.mean([(b["decoder_loss_weights"] > 0).mean() for b in full])
  assert max(encoder, decoder) > 0.75  # ~0.55 unpacked


def test_rows_match_seqio_pack_format():
  import seqio
  import tensorflow as tf

  examples = _examples(12, seed=1)
  batch, _ = next(
      packing.packed_batches(
          _opener(examples), batch_size=3, layout=LAYOUT, window=12
      )
  )
  by_index = {int(e["inputs"][0]) - 2: e for e in examples}
  converter = seqio.EncDecFeatureConverter(pack=True)
  for r in range(batch["encoder_input_tokens"].shape[0]):
    row = [
        by_index[int(inputs[0]) - 2]
        for inputs, _ in _segments({k: v[r : r + 1] for k, v in batch.items()})
    ]
    ds = tf.data.Dataset.from_generator(
        lambda row=row: iter(row),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
        },
    )
    (expected,) = list(converter(ds, LENGTHS).as_numpy_iterator())
    assert set(expected) == set(packing.FEATURES)
    for name, value in expected.items():
      assert value.dtype == np.int32
      np.testing.assert_array_equal(batch[name][r], value, err_msg=name)


def test_deterministic_and_resumes_exactly_from_every_state():
  examples = _examples(157, seed=2)
  kwargs = dict(batch_size=3, layout=LAYOUT, window=20)
  first = list(packing.packed_batches(_opener(examples), **kwargs))
  again = list(packing.packed_batches(_opener(examples), **kwargs))
  assert len(first) == len(again) > 5
  for (a, sa), (b, sb) in zip(first, again):
    assert sa == sb
    for name in packing.FEATURES:
      np.testing.assert_array_equal(a[name], b[name])
  # Batches straddle windows, so states point inside windows too.
  assert any(state["rows_emitted"] for _, state in first)
  for k, (_, state) in enumerate(first):
    state = json.loads(json.dumps(state))
    resumed = list(
        packing.packed_batches(_opener(examples), state=state, **kwargs)
    )
    assert len(resumed) == len(first) - k - 1
    for (a, sa), (b, sb) in zip(first[k + 1 :], resumed):
      assert sa == sb
      for name in packing.FEATURES:
        np.testing.assert_array_equal(a[name], b[name])


def test_last_batch_is_filled_with_empty_rows_and_rejects_too_long():
  examples = _examples(5, seed=3)
  batches = list(
      packing.packed_batches(
          _opener(examples), batch_size=8, layout=LAYOUT, window=4
      )
  )
  assert len(batches) == 1
  batch, state = batches[0]
  assert state == {"window_start": 5, "rows_emitted": 0}
  empty = batch["decoder_segment_ids"].max(axis=1) == 0
  assert empty.sum() >= 8 - 5
  assert not batch["encoder_input_tokens"][empty].any()
  assert int(packing.num_examples(batch)) == 5

  long = {
      "inputs": np.ones(LENGTHS["inputs"] + 1, np.int32),
      "targets": np.ones(2, np.int32),
  }
  with pytest.raises(ValueError, match="example 5 of the stream has 33 inputs"):
    list(
        packing.packed_batches(
            _opener(examples + [long]),
            batch_size=2,
            layout=LAYOUT,
            window=100,
        )
    )


def test_pack_window_fills_rows_largest_first():
  # 60 opens the first row and 40 fills it; 30 + 30 share the second.
  rows = packing.pack_window(
      [30, 60, 30, 40], [1, 1, 1, 1], packing.RowLayout(100, 4)
  )
  assert rows == [[[1, 3]], [[0, 2]]]
  # The decoder limit counts too: 3 targets of 3 cannot share a row of 4.
  rows = packing.pack_window([1, 1, 1], [3, 3, 1], packing.RowLayout(100, 4))
  assert rows == [[[0, 2]], [[1]]]
  # Blocks: an example goes whole into the block it leaves least room in.
  rows = packing.pack_window(
      [70, 50, 30, 40], [1, 1, 1, 1], packing.RowLayout(100, 8, 2)
  )
  assert rows == [[[0, 2], [1, 3]]]
  # With a short decoder row the decoder decides: long targets go to rows of their own.
  rows = packing.pack_window(
      [10, 10, 10, 10], [6, 6, 1, 1], packing.RowLayout(100, 7, 2)
  )
  assert sorted(sum(row, []) for row in rows) == [[0, 2], [1, 3]]


def test_row_layout_checks():
  layout = packing.RowLayout.for_lengths(
      {"inputs": 1024, "targets": 128}, 4, 184
  )
  assert layout == packing.RowLayout(1024, 184, 4)
  assert layout.encoder_shape == (4, 1024)
  assert packing.RowLayout(1024, 128).encoder_shape == (1024,)
  with pytest.raises(ValueError, match="decoder row .100 tokens. is shorter"):
    packing.RowLayout.for_lengths({"inputs": 1024, "targets": 128}, 4, 100)
  with pytest.raises(ValueError, match="encoder_blocks must be >= 1"):
    packing.RowLayout(1024, 128, 0)


def test_token_efficiency_on_a_hand_made_batch():
  batch = {
      # 2 rows x 5: 3 + 5 real encoder tokens; 2 x 3 decoder: 2 + 1 weighted targets.
      "encoder_input_tokens": np.array([[4, 5, 1, 0, 0], [7, 1, 8, 9, 1]]),
      "decoder_target_tokens": np.array([[6, 1, 0], [1, 0, 0]]),
      "decoder_loss_weights": np.array([[1, 1, 0], [1, 0, 0]]),
  }
  assert packing.token_efficiency(batch) == pytest.approx((8 + 3) / (10 + 6))
  real, computed = packing.token_counts(batch)
  assert (int(real), int(computed)) == (11, 16)
  assert int(packing.num_examples(batch)) == 2


def _tiny_model():
  cfg = config_lib.T5Config(
      vocab_size=512,
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
  return models.EncoderDecoderModel(network.Transformer(cfg))


@functools.lru_cache(maxsize=None)
def _model_state_and_step():
  """One model, initial state and jitted step for both layouts (one init, one compile per shape)."""
  model = _tiny_model()
  optimizer = optimizers.create_optimizer(optimizers.adamw, learning_rate=1e-3)
  params = model.get_initial_variables(
      jax.random.PRNGKey(0),
      {"encoder_input_tokens": (1, 32), "decoder_input_tokens": (1, 8)},
  )["params"]
  state = trainer.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      rng=jax.random.PRNGKey(1),
  )
  return model, state, jax.jit(trainer.make_train_step(model, optimizer, 1e-3))


def _unpacked(examples):
  rows = [[[e]] for e in examples]
  batch = packing.build_rows(rows, LAYOUT)
  return {
      k: batch[k]
      for k in (
          "encoder_input_tokens",
          "decoder_input_tokens",
          "decoder_target_tokens",
          "decoder_loss_weights",
      )
  }


@pytest.mark.parametrize(
    "layout", [LAYOUT, BLOCKS], ids=["one_block", "blocks"]
)
def test_packed_and_unpacked_training_give_the_same_loss(layout):
  examples = _examples(12, seed=4)
  rows = packing.pack_window(
      [len(e["inputs"]) for e in examples],
      [len(e["targets"]) for e in examples],
      layout,
  )
  assert len(rows) < 12
  packed, _ = next(
      packing.packed_batches(
          _opener(examples),
          batch_size=len(rows),
          layout=layout,
          window=12,
      )
  )
  assert int(packing.num_examples(packed)) == 12
  unpacked = _unpacked(examples)
  model, state, step = _model_state_and_step()
  _, m_packed = step(state, packed)
  _, m_unpacked = step(state, unpacked)
  assert float(m_packed["loss"]) == pytest.approx(
      float(m_unpacked["loss"]), rel=1e-5
  )
  assert float(m_packed["grad_norm"]) == pytest.approx(
      float(m_unpacked["grad_norm"]), rel=1e-4
  )
  for metrics, batch in ((m_packed, packed), (m_unpacked, unpacked)):
    assert float(metrics["num_target_tokens"]) == sum(
        len(e["targets"]) for e in examples
    )
    assert float(metrics["num_real_tokens"]) == sum(
        len(e["inputs"]) + len(e["targets"]) for e in examples
    )
    assert float(metrics["num_computed_tokens"]) == (
        batch["encoder_input_tokens"].size + batch["decoder_target_tokens"].size
    )
    assert float(metrics["num_examples"]) == 12
  assert float(m_packed["num_computed_tokens"]) < float(
      m_unpacked["num_computed_tokens"]
  )
  # Useful FLOPs are the examples' own, whatever the batch's shape; computed ones its shape's.
  assert float(m_packed["num_useful_flops"]) == pytest.approx(
      float(m_unpacked["num_useful_flops"]), rel=1e-6
  )
  for metrics, batch in ((m_packed, packed), (m_unpacked, unpacked)):
    assert float(metrics["num_computed_flops"]) == pytest.approx(
        packing.flop_counts(batch, model.config)[1], rel=1e-6
    )
    assert float(metrics["num_useful_flops"]) < float(
        metrics["num_computed_flops"]
    )


def test_shared_ni_sample_is_packed_densely(shared_ni_dir):
  """def_pos2 training examples of the shared sample (embedded vocabulary, 1024/128), finetune.gin's rows."""
  from tkx.data import encodings, ni, vocab as vocab_lib

  vocabulary = vocab_lib.get_vocabulary()
  token_count, truncate = encodings.vocabulary_token_fns(vocabulary)
  input_lengths, target_lengths = [], []
  for task, instance in ni.iter_split_instances(
      shared_ni_dir, "default", "train", max_num_instances_per_task=100
  ):
    example = encodings.make_example(
        task,
        instance,
        "def_pos2",
        split="train",
        token_count=token_count,
        truncate=truncate,
    )
    input_lengths.append(min(token_count(example["inputs"]), 1024))
    target_lengths.append(min(token_count(example["targets"]), 128))
  order = np.random.RandomState(0).permutation(len(input_lengths))
  input_lengths = np.asarray(input_lengths)[order]  # a shuffled stream
  target_lengths = np.asarray(target_lengths)[order]

  def real_fractions(layout):
    rows = packing.count_packed_rows(
        input_lengths, target_lengths, layout, window=1000
    )
    blocks = rows * layout.encoder_blocks
    return (
        input_lengths.sum() / (blocks * layout.inputs),
        target_lengths.sum() / (rows * layout.targets),
        len(input_lengths) / blocks,  # examples per encoder block
    )

  # finetune.gin: 4 blocks of 1024 share a decoder row of 184.
  encoder, decoder, per_block = real_fractions(
      packing.RowLayout(1024, 184, encoder_blocks=4)
  )
  assert encoder >= 0.9 and decoder >= 0.9, (encoder, decoder)
  assert per_block > 1.9
  # One block per decoder row of 128: the encoder full, the decoder not.
  encoder, decoder, per_block = real_fractions(packing.RowLayout(1024, 128))
  assert encoder > 0.95 and decoder < 0.4
