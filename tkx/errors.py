"""The errors a user can cause, as opposed to bugs (docs/configuration.md).

`tkx.cli` prints a `UserError` (and the file-system errors in `cli.USER_ERRORS`)
as one line naming the file, flag, gin binding or name at fault, and exits with
status 2. Anything else -- a plain `ValueError`, `KeyError`, `TypeError` -- is
a bug in tkx or in code calling it, and keeps its traceback.

Raise the most specific class that fits; modules keep their own subclasses
(`ni.NIDataError`, `directory.CheckpointError`, `gin_utils.GinConfigError`,
...) so callers can tell the causes apart. `UserError` is a `ValueError`, so
library callers that catch `ValueError` keep working.

This module imports nothing, so every module can raise these
(`tkx.models.config` included).
"""


class UserError(ValueError):
  """What the user asked for cannot be done; the message names what to change, on one line."""


class ConfigError(UserError):
  """A command flag, gin binding or name has a value tkx cannot use; the message names it."""


class InputFileError(UserError):
  """A file the user named is malformed; the message names the file (and line or field)."""
