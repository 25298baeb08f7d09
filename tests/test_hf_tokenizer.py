"""SeqIO's SentencePieceVocabulary and Hugging Face's T5Tokenizer agree on the same SentencePiece model.

Texts: every definition, the first 10 instance inputs and 3 outputs of every task of
the shared NI sample (English and Finnish), tokenized with the embedded vocabulary.
"""

import json

import pytest

transformers = pytest.importorskip("transformers")

from tkx.checkpoints import hf  # noqa: E402
from tkx.data import vocab as vocab_lib  # noqa: E402


def _ni_texts(ni_dir):
  texts = []
  for path in sorted((ni_dir / "tasks").glob("*.json")):
    with open(path, encoding="utf-8") as f:
      task = json.load(f)
    definition = task.get("Definition", [])
    texts += [definition] if isinstance(definition, str) else list(definition)
    instances = task.get("Instances", [])
    texts += [inst["input"] for inst in instances[:10]]
    for inst in instances[:3]:
      outputs = inst["output"]
      texts += [outputs] if isinstance(outputs, str) else list(outputs)
  return texts


@pytest.fixture(scope="module")
def tokenizers():
  vocabulary = (
      vocab_lib.get_vocabulary()
  )  # the embedded tasks/spm/tkx_sample.model, no sentinels
  return vocabulary, hf.hf_tokenizer(vocab_lib.EMBEDDED_SPM_PATH, extra_ids=0)


def test_ni_sample_tokenizes_identically(shared_ni_dir, tokenizers):
  vocabulary, tokenizer = tokenizers
  texts = _ni_texts(shared_ni_dir)
  assert len(texts) > 1000
  assert any(
      "ä" in t or "ö" in t for t in texts
  )  # the Finnish translations are in
  texts += [
      "  leading and   inner  spaces ",
      "tabs\tand\r\nnewlines\n\n",
      "NFKC: ﬁ ① ½ ＡＢＣ",
      "",
      "x",
  ]
  ours = [list(vocabulary.encode(t)) for t in texts]
  theirs = tokenizer(texts, add_special_tokens=False)["input_ids"]
  mismatches = [t for t, a, b in zip(texts, ours, theirs) if a != b]
  assert (
      not mismatches
  ), f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]}"
  # HF appends EOS (id 1) by default; seqio adds it in the feature converter.
  with_eos = tokenizer(texts[:20])["input_ids"]
  assert with_eos == [ids + [1] for ids in ours[:20]]
  # Decoding agrees too (on text the vocabulary covers).
  assert tokenizer.decode(ours[0]) == vocabulary.decode(ours[0])


def test_special_ids_and_documented_difference(tokenizers):
  vocabulary, tokenizer = tokenizers
  assert (
      tokenizer.pad_token_id,
      tokenizer.eos_token_id,
      tokenizer.unk_token_id,
  ) == (0, 1, 2)
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
  assert len(tokenizer) == vocabulary.vocab_size
  # The documented difference: HF reads literal special-token strings as special ids.
  text = "a</s>b"
  assert 1 in tokenizer(text, add_special_tokens=False)["input_ids"]
  assert 1 not in vocabulary.encode(text)


def test_sentinel_ids_agree_with_seqio():
  vocabulary = vocab_lib.get_vocabulary(
      vocab_lib.EMBEDDED_SPM_PATH, extra_ids=100
  )
  tokenizer = hf.hf_tokenizer(vocab_lib.EMBEDDED_SPM_PATH, extra_ids=100)
  assert len(tokenizer) == vocabulary.vocab_size == 1100
  # Both number sentinels from the top: <extra_id_0> is the last id.
  assert (
      tokenizer.convert_tokens_to_ids("<extra_id_0>")
      == vocabulary.vocab_size - 1
  )
  assert (
      tokenizer.convert_tokens_to_ids("<extra_id_99>")
      == vocabulary.vocab_size - 100
  )
