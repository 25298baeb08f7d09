"""tkx.data.vocab: the embedded SentencePiece model and the vocabulary factory."""

import json

import pytest

from tkx.data import vocab


def test_embedded_vocabulary_has_t5_special_ids():
  v = vocab.get_vocabulary()
  sp = v.tokenizer
  assert v.pad_id == 0 and v.eos_id == 1 and v.unk_id == 2
  assert (
      sp.pad_id() == 0
      and sp.eos_id() == 1
      and sp.unk_id() == 2
      and sp.bos_id() == -1
  )
  assert sp.get_piece_size() == vocab.SAMPLE_VOCAB_SIZE
  assert v.extra_ids == 0 and v.vocab_size == vocab.SAMPLE_VOCAB_SIZE


def test_round_trip_on_sample_text(embedded_ni_dir):
  v = vocab.get_vocabulary()
  task = json.loads(
      (
          embedded_ni_dir
          / "tasks"
          / "task9201_tkx_review_sentiment_polarity_fi.json"
      ).read_text()
  )
  texts = [task["Definition"][0]] + [i["input"] for i in task["Instances"][:5]]
  texts += [
      "Premise: Anna is taller than Ben. Hypothesis: Ben is shorter than Anna.",
      "City Council Approves New Park",
  ]
  for text in texts:
    ids = v.encode(text)
    assert 2 not in ids, f"unknown piece in {text!r}"
    assert v.decode(ids) == text
  # Sample text compresses: far fewer pieces than characters.
  assert len(v.encode(texts[-2])) < len(texts[-2]) / 2.5


def test_extra_ids_defaults_and_override():
  assert (
      vocab.get_vocabulary(extra_ids=3).vocab_size
      == vocab.SAMPLE_VOCAB_SIZE + 3
  )
  # Real T5/mT5 paths default to 100 sentinels; constructing the object reads nothing yet.
  assert vocab.get_vocabulary(vocab.T5_SPM_PATH).extra_ids == 100
  assert vocab.get_vocabulary(vocab.MT5_SPM_PATH, extra_ids=0).extra_ids == 0
  with pytest.raises(FileNotFoundError, match="nope.model"):
    vocab.get_vocabulary("/nonexistent/nope.model")


def test_training_is_reproducible(tmp_path, embedded_ni_dir):
  path = vocab.train_sample_vocabulary(
      embedded_ni_dir, model_prefix=tmp_path / "again"
  )
  assert open(path, "rb").read() == open(vocab.EMBEDDED_SPM_PATH, "rb").read()
