"""JSON-lines files: reading with errors that name the file, the line and the field; atomic writing."""

import json
from typing import Any, Iterable, Mapping

from tkx import errors, io_utils, storage


def line_error(path, line_no, field, message, error=errors.InputFileError):
  """`error("<path>, line <n>, field '<field>': <message>")`, for the caller to raise."""
  return error(f"{path}, line {line_no}, field {field!r}: {message}")


def iter_json_objects(path, error=errors.InputFileError):
  """Yields `(line_no, record)` for each non-blank line of `path` (lines numbered from 1).

  Raises `error` (field '<json>') on a line that is not valid JSON or not a JSON object.
  """
  with storage.open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise line_error(
            path, line_no, "<json>", f"malformed JSON: {e}", error
        ) from e
      if not isinstance(record, dict):
        raise line_error(
            path,
            line_no,
            "<json>",
            f"expected a JSON object, got {type(record).__name__}",
            error,
        )
      yield line_no, record


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> int:
  """Writes one JSON object per line, atomically (a failed run leaves no half file); returns the count."""
  count = 0
  with io_utils.atomic_write(path) as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
      count += 1
  return count
