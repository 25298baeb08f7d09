"""One rule for reading a mode given as an enum member or its value (gin, flags, JSON)."""

import enum
from typing import Type, TypeVar

from tkx import errors

E = TypeVar("E", bound=enum.Enum)


def parse_enum(cls: Type[E], value, what: str) -> E:
  """`value` as a member of `cls`; a ValueError naming `what` and the choices otherwise."""
  if isinstance(value, cls):
    return value
  try:
    return cls(value)
  except ValueError:
    raise errors.ConfigError(
        f"{what} must be one of {[m.value for m in cls]}, got {value!r}"
    ) from None
