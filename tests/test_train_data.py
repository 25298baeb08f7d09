"""The SeqIO training input (non-NI names, PACK without tkx.data.packing): deterministic, exact skip, packing."""

import numpy as np
import pytest

from tkx.data import pipeline
from tkx.data import vocab

LENGTHS = {"inputs": 128, "targets": 16}
# One task of the embedded training split (building the whole mixture re-encodes 19 tasks).
NAME = "ni_default_train_def_pos2_task9001_tkx_review_sentiment_polarity"


@pytest.fixture(scope="module", autouse=True)
def _registered():
  pipeline.register_ni_for(
      NAME, None, vocab.get_vocabulary(), LENGTHS["inputs"]
  )


def _batches(n, lengths=LENGTHS, **kw):
  it = pipeline.get_dataset(NAME, lengths, 4, **kw).as_numpy_iterator()
  return [next(it) for _ in range(n)]


def test_same_seed_same_batches_and_skip_is_exact():
  first = _batches(4, seed=7)
  again = _batches(4, seed=7)
  for a, b in zip(first, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  resumed = _batches(1, seed=7, skip_batches=3)[0]
  for k in resumed:
    np.testing.assert_array_equal(resumed[k], first[3][k])
  other = _batches(1, seed=8)[0]
  assert not np.array_equal(
      other["encoder_input_tokens"], first[0]["encoder_input_tokens"]
  )
  assert set(first[0]) == {
      "encoder_input_tokens",
      "decoder_input_tokens",
      "decoder_target_tokens",
      "decoder_loss_weights",
  }
  assert first[0]["encoder_input_tokens"].shape == (4, 128)


def test_packing_puts_several_examples_in_a_row():
  # Sources were cut to 128 tokens at registration: rows of 512 hold several.
  batch = _batches(1, {"inputs": 512, "targets": 64}, seed=0, pack=True)[0]
  assert {
      "encoder_segment_ids",
      "decoder_segment_ids",
      "encoder_positions",
      "decoder_positions",
  } <= set(batch)
  assert batch["encoder_segment_ids"].max() >= 2
  unpacked = _batches(1, seed=0)[0]
  # Packing fills the rows: more real target tokens per batch than one example per row.
  assert (
      batch["decoder_loss_weights"].sum()
      > unpacked["decoder_loss_weights"].sum()
  )


def test_unknown_mixture_is_a_clear_error():
  with pytest.raises(
      ValueError,
      match="MIXTURE_OR_TASK_NAME='no_such_mixture' is not a registered",
  ):
    pipeline.register_ni_for("no_such_mixture")
