"""Tk-Instruct instruction encodings: the source text the model sees.

This reproduces the source format of Tk-Instruct's data collator character for
character. Its quirks are kept on purpose, because published checkpoints were
trained on exactly this text:

- a field gets a "." appended unless its last character is in
  `string.punctuation` (so a trailing "?" or ")" stays, a trailing "”" does not);
- a list `Definition` contributes only its first element;
- an example is added only while `definition + " ".join(kept) + candidate + input`
  still fits the token budget (joined with " ", the task name not counted),
  while the final source joins the same parts with "";
- an over-long final source is cut by decoding its first `max_source_length` tokens.

Encoding names compose `name`, `def`, `pos<k>`, `neg<k>`, `expl` with `_`
(`def_pos2`, `name_def_pos2_neg2_expl`, ...); `none` is the bare input and
`tk_instruct` the collator's random mixture of five encodings, drawn per
instance from a seed and the instance id.

Contract (the names other modules rely on; change one only together with its users):
- `EncodingConfig(add_task_name, add_task_definition, num_pos_examples, num_neg_examples, add_explanation)`,
  `.name` the canonical encoding name.
- `parse_encoding(name) -> EncodingConfig | "tk_instruct"`; `TK_INSTRUCT_ENCODINGS` (the five). Names join
  `name`, `def`, `pos<k>`, `neg<k>`, `expl` with `_`; `none` is the bare input.
- `encode_source(task: dict, instance: dict, config, *, max_source_length=1024, token_count=None, truncate=None, seed=42) -> str`
  `token_count(text) -> int` counts tokens *including EOS* (as the HF tokenizer does); `truncate(text, n) -> str`
  decodes the first n tokens. Without them no budget is applied. `config` may be a name or `"tk_instruct"`
  (drawn from `seed` and the instance id).
- `vocabulary_token_fns(vocabulary) -> (token_count, truncate)` for any `seqio.Vocabulary`.
- `make_example(task, instance, encoding, *, split, seed, ...) -> {"id","task","category","inputs","targets","references"}`
  text fields shared by SeqIO and `tkx convert`; `targets` = seeded reference for training splits,
  first reference for test splits; `references` = all outputs.
"""

import dataclasses
import random
import re
import string
from typing import Callable, Optional, Union

from tkx import errors
from tkx.data import ni

PUNCTUATION = frozenset(string.punctuation)
TK_INSTRUCT = "tk_instruct"
NO_INSTRUCTION = "none"

_VALID_FORMS = (
    "Valid encodings: parts `name`, `def`, `pos<k>`, `neg<k>`, `expl` joined by `_` "
    "(e.g. `def`, `pos2`, `def_pos2`, `def_pos2_neg2_expl`, `name_def_pos2`), "
    f"`{NO_INSTRUCTION}` (input only) or `{TK_INSTRUCT}`."
)


@dataclasses.dataclass(frozen=True)
class EncodingConfig:
  add_task_name: bool = False
  add_task_definition: bool = True
  num_pos_examples: int = 0
  num_neg_examples: int = 0
  add_explanation: bool = False

  @property
  def name(self) -> str:
    """Canonical encoding name (`parse_encoding(config.name) == config`)."""
    parts = []
    if self.add_task_name:
      parts.append("name")
    if self.add_task_definition:
      parts.append("def")
    if self.num_pos_examples:
      parts.append(f"pos{self.num_pos_examples}")
    if self.num_neg_examples:
      parts.append(f"neg{self.num_neg_examples}")
    if self.add_explanation:
      parts.append("expl")
    return "_".join(parts) or NO_INSTRUCTION


# The five encodings the collator's `tk_instruct` branch draws from, in its order.
TK_INSTRUCT_ENCODINGS = (
    EncodingConfig(add_task_definition=True),  # instruction only
    EncodingConfig(
        add_task_definition=False, num_pos_examples=2
    ),  # examples only
    EncodingConfig(
        add_task_definition=True, num_pos_examples=2
    ),  # + positive examples
    EncodingConfig(
        add_task_definition=True, num_pos_examples=2, num_neg_examples=2
    ),  # + negative
    EncodingConfig(
        add_task_definition=True, num_pos_examples=2, add_explanation=True
    ),  # + expl.
)

_PART = re.compile(r"^(name|def|expl|pos(\d+)|neg(\d+))$")


def parse_encoding(name: str) -> Union[EncodingConfig, str]:
  """`"def_pos2"` -> `EncodingConfig(...)`; `"tk_instruct"` -> `"tk_instruct"`."""
  if not isinstance(name, str) or not name:
    raise errors.ConfigError(
        f"Encoding name must be a non-empty string, got {name!r}. {_VALID_FORMS}"
    )
  if name == TK_INSTRUCT:
    return TK_INSTRUCT
  if name == NO_INSTRUCTION:
    return EncodingConfig(add_task_definition=False)
  fields = dict(
      add_task_name=False,
      add_task_definition=False,
      num_pos_examples=0,
      num_neg_examples=0,
      add_explanation=False,
  )
  seen = set()
  for part in name.split("_"):
    match = _PART.match(part)
    if not match:
      raise errors.ConfigError(
          f"Unknown part {part!r} in encoding {name!r}. {_VALID_FORMS}"
      )
    kind = part[:3] if part[:3] in ("pos", "neg") else part
    if kind in seen:
      raise errors.ConfigError(
          f"Part {kind!r} appears twice in encoding {name!r}. {_VALID_FORMS}"
      )
    seen.add(kind)
    if part == "name":
      fields["add_task_name"] = True
    elif part == "def":
      fields["add_task_definition"] = True
    elif part == "expl":
      fields["add_explanation"] = True
    elif kind == "pos":
      fields["num_pos_examples"] = int(match.group(2))
    else:
      fields["num_neg_examples"] = int(match.group(3))
  return EncodingConfig(**fields)


def encoding_name(encoding: Union[EncodingConfig, str]) -> str:
  return encoding if isinstance(encoding, str) else encoding.name


def _rng(seed: int, instance_id: str, purpose: str) -> random.Random:
  # String seeds are hashed with SHA-512, so draws are stable across runs and hosts.
  return random.Random(f"{seed}:{instance_id}:{purpose}")


def choose_tk_instruct_encoding(seed: int, instance_id: str) -> EncodingConfig:
  """The `tk_instruct` mixture's encoding for one instance (reproducible)."""
  return _rng(seed, instance_id, TK_INSTRUCT).choice(TK_INSTRUCT_ENCODINGS)


def resolve_encoding(encoding, instance_id: str, seed: int) -> EncodingConfig:
  """An `EncodingConfig` for one instance from a name, a config or `tk_instruct`."""
  if isinstance(encoding, str):
    encoding = parse_encoding(encoding)
  if encoding == TK_INSTRUCT:
    return choose_tk_instruct_encoding(seed, instance_id)
  return encoding


def select_target(instance: dict, seed: int) -> str:
  """The one training reference for an instance, drawn from its outputs (seeded)."""
  return _rng(seed, instance["id"], "target").choice(instance["output"])


def _close(text: str) -> str:
  """Appends "." unless the text already ends in ASCII punctuation (the collator's rule)."""
  return text if text[-1] in PUNCTUATION else text + "."


def _format_example(
    kind: str, index: int, example: dict, add_explanation: bool
) -> str:
  text = (
      _close(f" {kind} Example {index} -\nInput: {example['input'].strip()}")
      + "\n"
  )
  text = _close(text + f" Output: {example['output'].strip()}") + "\n"
  if add_explanation and "explanation" in example:
    text = (
        _close(text + f" Explanation: {example['explanation'].strip()}") + "\n"
    )
  return text + "\n"


def format_task_input(instance: dict) -> str:
  return (
      _close(
          f"Now complete the following example -\nInput: {instance['input'].strip()}"
      )
      + "\nOutput: "
  )


def format_definition(task: dict) -> str:
  return _close("Definition: " + ni.task_definition(task).strip()) + "\n\n"


def encode_source(
    task: dict,
    instance: dict,
    config,
    *,
    max_source_length: int = 1024,
    token_count: Optional[Callable[[str], int]] = None,
    truncate: Optional[Callable[[str, int], str]] = None,
    seed: int = 42,
) -> str:
  """The Tk-Instruct source text for one instance.

  Args:
    task: a task dict from `ni.load_task` (uses `Task`, `Definition`, examples).
    instance: one of its instances (`input`, `id`).
    config: an `EncodingConfig`, an encoding name, or `"tk_instruct"` (then the
      encoding is drawn from `seed` and the instance id).
    max_source_length: the token budget, EOS included.
    token_count: `text -> number of tokens including EOS`; with `truncate`
      enables the budget. Without them, every requested example is kept.
    truncate: `(text, n) -> text of the first n tokens`.
    seed: only for `tk_instruct`.
  """
  if (token_count is None) != (truncate is None):
    raise ValueError(
        "encode_source needs both token_count and truncate, or neither"
    )
  config = resolve_encoding(config, instance["id"], seed)

  def fits(text: str) -> bool:
    return token_count is None or token_count(text) <= max_source_length

  task_input = format_task_input(instance)
  task_name = task["Task"] + ". " if config.add_task_name else ""
  definition = format_definition(task) if config.add_task_definition else ""

  pos_examples = []
  for index, example in enumerate(
      task["Positive Examples"][: config.num_pos_examples], 1
  ):
    candidate = _format_example(
        "Positive", index, example, config.add_explanation
    )
    if not fits(definition + " ".join(pos_examples) + candidate + task_input):
      break
    pos_examples.append(candidate)

  neg_examples = []
  for index, example in enumerate(
      task["Negative Examples"][: config.num_neg_examples], 1
  ):
    candidate = _format_example(
        "Negative", index, example, config.add_explanation
    )
    if not fits(
        definition
        + " ".join(pos_examples)
        + " ".join(neg_examples)
        + candidate
        + task_input
    ):
      break
    neg_examples.append(candidate)

  source = (
      task_name
      + definition
      + "".join(pos_examples)
      + "".join(neg_examples)
      + task_input
  )
  if not fits(source):
    source = truncate(source, max_source_length)
  return source


# The Hugging Face tokenizer's `decode` (clean_up_tokenization_spaces=True, its
# default when Tk-Instruct was trained) removes these spaces from decoded text.
_HF_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
  for before, after in _HF_CLEANUPS:
    text = text.replace(before, after)
  return text


def vocabulary_token_fns(vocabulary, clean_up_tokenization_spaces: bool = True):
  """`(token_count, truncate)` for a `seqio.Vocabulary`, as the collator's HF tokenizer.

  `token_count` includes EOS. `truncate` decodes the first n tokens skipping
  special tokens (<unk> included) and, by default, applies the HF decoder's
  clean-up of spaces before punctuation.
  """

  def token_count(text: str) -> int:
    return len(vocabulary.encode(text)) + 1

  unk_id = getattr(vocabulary, "unk_id", None)

  def truncate(text: str, n: int) -> str:
    ids = [i for i in vocabulary.encode(text)[:n] if i != unk_id]
    decoded = vocabulary.decode(ids)
    return (
        clean_up_tokenization(decoded)
        if clean_up_tokenization_spaces
        else decoded
    )

  return token_count, truncate


def make_example(
    task: dict,
    instance: dict,
    encoding,
    *,
    split: str,
    seed: int = 42,
    max_source_length: int = 1024,
    token_count=None,
    truncate=None,
) -> dict:
  """One model example as text: the fields every consumer (SeqIO, `tkx convert`) shares.

  `targets` is the training reference: drawn from the outputs (seeded by `seed` and
  the instance id) for training splits, the first output for evaluation splits.
  `references` keeps every output for scoring.
  """

  if split in ni.EVAL_SPLITS:
    target = instance["output"][0]
  else:
    target = select_target(instance, seed)
  return {
      "id": instance["id"],
      "task": task["Task"],
      "category": ni.task_category(task),
      "inputs": encode_source(
          task,
          instance,
          encoding,
          max_source_length=max_source_length,
          token_count=token_count,
          truncate=truncate,
          seed=seed,
      ),
      "targets": target,
      "references": list(instance["output"]),
  }
