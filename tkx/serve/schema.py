"""The `/v1/generate` request body: JSON -> a validated `GenerateRequest`, or a `RequestError` naming the field.

Two forms:
- `{"inputs": "..."}`: a ready prompt, encoded as `tkx infer` encodes an input file line;
- `{"definition": "...", "positive_examples": [{"input", "output"[, "explanation"]}, ...],
  "negative_examples": [...], "input": "...", "encoding": "def_pos2"}`: the prompt is built by
  `tkx.data.encodings.encode_source` (the Tk-Instruct collator's format and token budget).

Either form may name its LoRA `adapter` (one the server serves, `tkx serve --adapter`; absent
or null: the base model) and set `decode_fn` (a registered decoding method), `max_decode_length`, `num_beams`,
`temperature` and `seed`; they choose the method as the command flags do
(`infer.DecodeConfig.with_settings`); the other decoding settings are the server's. Unknown fields
are refused rather than ignored.
"""

import dataclasses
import json
import math
from typing import Any, Dict, List, Optional

from tkx import errors
from tkx.data import encodings

DEFAULT_ENCODING = "def_pos2"
PROMPT_FIELDS = ("inputs",)
STRUCTURED_FIELDS = (
    "definition",
    "positive_examples",
    "negative_examples",
    "input",
    "encoding",
)
# Per-request decoding settings and their JSON types.
DECODE_FIELDS = {
    "decode_fn": str,  # a registered decoding method (tkx.decoding.METHODS)
    "max_decode_length": int,
    "num_beams": int,
    "temperature": float,
    "seed": int,
}
# The served LoRA adapter a request decodes with (absent or null: the base model).
ADAPTER_FIELD = "adapter"
EXAMPLE_FIELDS = ("input", "output", "explanation")
# Each beam count is its own set of compiled programs; keep clients from asking for unbounded ones.
MAX_NUM_BEAMS = 16
MAX_SEED = 2**31 - 1


class RequestError(errors.UserError):
  """A client error: `field` names what is wrong; `status` is the HTTP status to answer."""

  def __init__(self, field: str, message: str, status: int = 400):
    super().__init__(f"{field}: {message}")
    self.field = field
    self.status = status


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
  """A validated request: exactly one of `prompt` (ready) or `task`+`instance`+`encoding` (structured)."""

  prompt: Optional[str] = None
  task: Optional[Dict[str, Any]] = None
  instance: Optional[Dict[str, Any]] = None
  encoding: Any = None  # encodings.EncodingConfig or encodings.TK_INSTRUCT
  decode_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
  adapter: Optional[str] = None  # a served adapter's name; None: the base model


def _type_name(value) -> str:
  return "null" if value is None else type(value).__name__


def _string(body, field, *, required, non_empty, prefix="") -> Optional[str]:
  """`body[field]` checked to be a (non-empty) string; errors name `prefix + field`."""
  name = prefix + field
  if field not in body:
    if required:
      raise RequestError(name, "missing")
    return None
  value = body[field]
  if not isinstance(value, str):
    raise RequestError(name, f"must be a string, got {_type_name(value)}")
  if non_empty and not value.strip():
    raise RequestError(name, "must not be empty")
  return value


def _examples(body, field) -> List[Dict[str, str]]:
  value = body.get(field, [])
  if not isinstance(value, list):
    raise RequestError(
        field, f"must be a list of objects, got {_type_name(value)}"
    )
  examples = []
  for index, example in enumerate(value):
    where = f"{field}[{index}]"
    if not isinstance(example, dict):
      raise RequestError(
          where,
          f"must be an object with input and output, got {_type_name(example)}",
      )
    for key in example:
      if key not in EXAMPLE_FIELDS:
        raise RequestError(
            f"{where}.{key}",
            f"unknown field (an example has {', '.join(EXAMPLE_FIELDS)})",
        )
    for key in EXAMPLE_FIELDS:
      _string(
          example,
          key,
          required=key != "explanation",
          non_empty=False,
          prefix=where + ".",
      )
    examples.append(dict(example))
  return examples


def _decode_overrides(body, max_decode_length: int) -> Dict[str, Any]:
  overrides = {}
  for field, kind in DECODE_FIELDS.items():
    if field not in body:
      continue
    value = body[field]
    if kind is str:
      overrides[field] = _string(body, field, required=True, non_empty=True)
      continue
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (kind is int and not isinstance(value, int)):
      raise RequestError(
          field,
          f"must be {'an integer' if kind is int else 'a number'}, got {_type_name(value)}",
      )
    if kind is float and not math.isfinite(value):
      raise RequestError(field, f"must be finite, got {value}")
    overrides[field] = kind(value)
  if "max_decode_length" in overrides and not (
      1 <= overrides["max_decode_length"] <= max_decode_length
  ):
    raise RequestError(
        "max_decode_length",
        f"must be in [1, {max_decode_length}] (the server's --max_decode_length), "
        f"got {overrides['max_decode_length']}",
    )
  if "num_beams" in overrides and not (
      1 <= overrides["num_beams"] <= MAX_NUM_BEAMS
  ):
    raise RequestError(
        "num_beams",
        f"must be in [1, {MAX_NUM_BEAMS}], got {overrides['num_beams']}",
    )
  if "seed" in overrides and not 0 <= overrides["seed"] <= MAX_SEED:
    raise RequestError(
        "seed", f"must be in [0, {MAX_SEED}], got {overrides['seed']}"
    )
  if overrides.get("temperature", 0.0) < 0:
    raise RequestError(
        "temperature",
        f"must be >= 0 (0: greedy), got {overrides['temperature']}",
    )
  return overrides


def parse_generate_request(
    body: bytes, *, max_decode_length: int
) -> GenerateRequest:
  """Parses and validates a request body; raises `RequestError` (400) naming the first bad field."""
  try:
    data = json.loads(body)
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
    raise RequestError("body", f"not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise RequestError("body", f"must be a JSON object, got {_type_name(data)}")
  known = set(PROMPT_FIELDS) | set(STRUCTURED_FIELDS) | set(DECODE_FIELDS)
  known.add(ADAPTER_FIELD)
  for field in data:
    if field not in known:
      raise RequestError(
          field,
          "unknown field (give inputs, or definition/positive_examples/negative_examples/"
          "input/encoding; optionally "
          + "/".join((ADAPTER_FIELD,) + tuple(DECODE_FIELDS))
          + ")",
      )
  overrides = _decode_overrides(data, max_decode_length)
  adapter = None
  if data.get(ADAPTER_FIELD) is not None:
    adapter = _string(data, ADAPTER_FIELD, required=True, non_empty=True)
  structured = [f for f in STRUCTURED_FIELDS if f in data]
  if "inputs" in data or not structured:
    if structured:
      raise RequestError(
          "inputs",
          f"give either a ready prompt (inputs) or its parts ({', '.join(structured)}), not both",
      )
    prompt = _string(data, "inputs", required=True, non_empty=True)
    return GenerateRequest(
        prompt=prompt, decode_overrides=overrides, adapter=adapter
    )

  encoding_name = data.get("encoding", DEFAULT_ENCODING)
  if not isinstance(encoding_name, str):
    raise RequestError(
        "encoding", f"must be a string, got {_type_name(encoding_name)}"
    )
  try:
    encoding = encodings.parse_encoding(encoding_name)
  except ValueError as e:
    raise RequestError("encoding", str(e)) from None
  uses_definition = encoding == encodings.TK_INSTRUCT or (
      encoding.add_task_definition
  )
  definition = _string(
      data, "definition", required=uses_definition, non_empty=uses_definition
  )
  text = _string(data, "input", required=True, non_empty=True)
  task = {
      "Task": "request",
      "Definition": [definition or ""],
      "Positive Examples": _examples(data, "positive_examples"),
      "Negative Examples": _examples(data, "negative_examples"),
  }
  instance = {"id": "request", "input": text, "output": [""]}
  return GenerateRequest(
      task=task,
      instance=instance,
      encoding=encoding,
      decode_overrides=overrides,
      adapter=adapter,
  )
