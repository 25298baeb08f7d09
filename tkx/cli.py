"""The `tkx` command line: one subcommand per module in `tkx.commands`.

Each command module defines `add_arguments(parser)` and `main(args) -> int | None`.
Modules are imported only when their command runs, so `tkx convert` never pays
for importing JAX and `tkx train` never pays for torch.

Everything every command shares happens here, once, before the command runs:
- flags: `--log_level` for all; for commands configured by gin, `--gin_file=F`
  and `--gin_search_path=D` (repeatable) and t5x's `--gin.NAME=VALUE`
  (repeatable), collected into `args.gin_files`, `args.gin_search_paths` and
  `args.gin_bindings` (`NAME = VALUE` strings);
- logging: one format on stderr; JAX/TensorFlow/absl chatter only at debug;
- TensorFlow (tf.data, SeqIO) is kept off the accelerators, which JAX owns,
  whenever and however a command imports it (`keep_tensorflow_on_cpu`);
- flags -> gin: the flags a command lists in `GIN_FLAGS` become gin bindings
  after the user's `--gin.NAME=VALUE` (`flag_bindings`), so a flag given wins
  and each default lives in the function the flag binds (docs/configuration.md);
- gin: a command's `configure(args)` parses its gin files and bindings; then a
  command that runs a model (`joins_processes`) joins the other processes of a
  cluster (`tkx.multihost.initialize`: gin's `multihost.initialize.*`, TKX_*/JAX_*
  variables or the detected cluster), before anything touches a JAX device;
- errors the user can cause (`tkx.errors.UserError` and its subclasses: a
  malformed line, an unknown task, a bad flag or gin binding, a wrong
  checkpoint; and a missing file) end the command with one line on stderr and
  exit status 2; `--log_level debug` shows their tracebacks. Other exceptions,
  a plain ValueError or KeyError included, are bugs and keep their traceback.

Contract (the names other modules rely on; change one only together with its users):
- `cli.COMMANDS[name] = Command(module, help, uses_gin)`; `cli.run(argv)` runs a command (errors propagate);
  `cli.main(argv=None)` is the console script: user errors (`cli.USER_ERRORS`: `tkx.errors.UserError` and its
  subclasses — data, checkpoint, gin, flag, JSON errors —, missing/existing files) become one stderr line
  `tkx NAME: error: ...` and exit 2, re-raised with `--log_level debug`; any other exception (a plain
  `ValueError`/`KeyError` included) is a bug and keeps its traceback. A gin command's flags listed in its module's
  `GIN_FLAGS` become gin bindings after the user's (`cli.flag_bindings`), so a flag wins and defaults live in the
  bound function (docs/configuration.md). Before a command module is imported:
  `keep_tensorflow_on_cpu()` (an import hook hides GPUs from TensorFlow right after `import tensorflow`, its C++
  start-up lines silenced unless debug) and `setup_logging(level)` (format `cli.LOG_FORMAT`). Shared flags:
  `--log_level`; with `uses_gin`: `--gin_file`, `--gin_search_path`, `--gin.NAME=VALUE` -> `args.gin_files`,
  `args.gin_search_paths`, `args.gin_bindings` (`"NAME = VALUE"`).
"""

import argparse
import contextlib
import dataclasses
import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys

from tkx.errors import UserError
from tkx.logs import LOG_LEVELS, setup_logging  # tkx's one log format


@dataclasses.dataclass(frozen=True)
class Command:
  module: str
  help: str
  uses_gin: bool = False
  # Runs a model: joins the other processes of a cluster (`tkx.multihost`) before it starts.
  joins_processes: bool = False


COMMANDS = {
    "convert": Command(
        "tkx.commands.convert",
        "NI checkout -> encoded JSONL (the text the model sees)",
    ),
    "score": Command(
        "tkx.commands.score",
        "score a Tk-Instruct predictions file with the NI metrics",
    ),
    "baseline": Command(
        "tkx.commands.baseline",
        "write copy_input / copy_demo baseline predictions",
    ),
    "train": Command(
        "tkx.commands.train",
        "fine-tune a T5 model on NI mixtures (gin-configured)",
        uses_gin=True,
        joins_processes=True,
    ),
    "eval": Command(
        "tkx.commands.evaluate",
        "decode a test mixture and score it with the NI metrics",
        uses_gin=True,
        joins_processes=True,
    ),
    "report": Command(
        "tkx.commands.report",
        "eval outputs and training runs side by side in one report.html",
    ),
    "infer": Command(
        "tkx.commands.infer",
        "decode a mixture or an input file into a predictions file",
        uses_gin=True,
        joins_processes=True,
    ),
    "generate": Command(
        "tkx.commands.generate",
        "answer one instruction",
        uses_gin=True,
        joins_processes=True,
    ),
    "serve": Command(
        "tkx.commands.serve",
        "HTTP endpoint with dynamic batching and a playground page",
        uses_gin=True,
    ),
    "import-checkpoint": Command(
        "tkx.commands.import_checkpoint",
        "Hugging Face / t5x checkpoint (+ peft adapter) -> tkx checkpoint",
        uses_gin=True,
    ),
    "export-checkpoint": Command(
        "tkx.commands.export_checkpoint",
        "tkx checkpoint -> Hugging Face / t5x checkpoint, peft adapter",
    ),
    "model-info": Command(
        "tkx.commands.model_info",
        "parameter counts, memory per device and FLOPs of a model",
        uses_gin=True,
        joins_processes=True,
    ),
    "plan-packing": Command(
        "tkx.commands.plan_packing",
        "packed row layouts for a checkout and devices: token and FLOP efficiency",
        uses_gin=True,
    ),
    "prepare-tfds": Command(
        "tkx.commands.prepare_tfds",
        "NI checkout -> TFDS records that training can read",
    ),
}

GIN_HELP = """\
gin configuration (as t5x):
  --gin_file=FILE         a gin file; repeatable, parsed in order. Paths are tried as
                          given, under each --gin_search_path, then under the tkx
                          checkout (so gin_configs/... works from any directory).
  --gin.NAME=VALUE        a binding after the files; repeatable. VALUE is a gin
                          literal, so a string needs inner quotes:
                          --gin.MODEL_DIR="'/tmp/run'"  --gin.TRAIN_STEPS=400
                          --gin.train_configs.LoggingConfig.log_every=20
"""


# Exceptions that mean "the input is wrong", not "tkx is wrong": `UserError` (the
# data, checkpoint, gin, flag and JSON errors subclass it; each names its file,
# flag or field) and a path that is missing or of the wrong kind. Anything else,
# a plain ValueError or KeyError included, is a bug and keeps its traceback.
USER_ERRORS = (
    UserError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


# ------------------------------------------------------------------------------
# Process start-up: logging, quiet TensorFlow on the CPU
# ------------------------------------------------------------------------------
@contextlib.contextmanager
def _stderr_silenced(enabled: bool):
  """Sends file descriptor 2 to /dev/null: TensorFlow's C++ start-up lines bypass Python logging."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


_tensorflow_state = {"hidden": False, "quiet": True}


def _hide_accelerators(tf) -> None:
  """tf.data and SeqIO need only the CPU; without this TensorFlow takes GPU memory next to JAX."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TensorFlow already initialised its devices
    if tf.config.get_visible_devices("GPU"):
      logging.getLogger(__name__).warning(
          "TensorFlow was initialised before tkx could hide the GPUs from it: %s",
          e,
      )
      return
  _tensorflow_state["hidden"] = True


class _TensorFlowImportHook(importlib.abc.MetaPathFinder):
  """Runs `_hide_accelerators` right after `import tensorflow`, before TensorFlow can use a device."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname != "tensorflow":
      return None
    sys.meta_path.remove(self)  # once; find the real spec without us
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_then_hide(module):
      with _stderr_silenced(_tensorflow_state["quiet"]):
        exec_module(module)
        _hide_accelerators(module)

    spec.loader.exec_module = exec_then_hide
    return spec


def keep_tensorflow_on_cpu(quiet: bool = True) -> None:
  """Keeps TensorFlow off the GPUs/TPUs for the whole process, whenever it gets imported.

  `quiet` silences TensorFlow's C++ start-up lines (oneDNN, CUDA probing) while
  it imports.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if quiet else "0")
  _tensorflow_state["quiet"] = quiet
  if "tensorflow" in sys.modules:
    _hide_accelerators(sys.modules["tensorflow"])
  elif not any(isinstance(f, _TensorFlowImportHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _TensorFlowImportHook())


def tensorflow_kept_on_cpu() -> bool:
  """Whether TensorFlow has been imported and its accelerators hidden."""
  return _tensorflow_state["hidden"]


# ------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------
def _split_gin_args(argv):
  """Pulls t5x-style `--gin.X=Y` bindings out of argv (argparse cannot declare them)."""
  rest, bindings = [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--gin."):
      body = arg[len("--gin.") :]
      if "=" not in body:
        value = next(it, None)
        if value is None:
          raise UserError(f"{arg}: give a value, e.g. {arg}=VALUE")
        body = body + "=" + value
      name, value = body.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return rest, bindings


def flag_bindings(args, gin_flags) -> list:
  """The gin bindings (`SELECTOR = VALUE`) of the flags given, for a command's `GIN_FLAGS`.

  `GIN_FLAGS` maps a flag's dest to the gin parameter it sets, or to
  (parameter, converter from the flag's value). Flags left out (None) bind
  nothing, so gin files and the function's default apply; the bindings follow
  the user's `--gin.NAME=VALUE`, so a flag given wins.
  """
  bindings = []
  for flag, target in gin_flags.items():
    value = getattr(args, flag, None)
    if value is None:
      continue
    selector, convert = target if isinstance(target, tuple) else (target, None)
    bindings.append(f"{selector} = {convert(value) if convert else value!r}")
  return bindings


def add_shared_arguments(parser, command: Command) -> None:
  """Flags every command has, and the gin flags of gin-configured commands."""
  parser.add_argument(
      "--log_level",
      default="info",
      type=str.lower,
      choices=LOG_LEVELS,
      help="logging level (default info); debug also shows library logs and "
      "the traceback of an error",
  )
  if command.uses_gin:
    group = parser.add_argument_group(
        "gin", "see the gin configuration section below"
    )
    group.add_argument(
        "--gin_file",
        dest="gin_files",
        action="append",
        default=[],
        metavar="FILE",
        help="gin file (repeatable)",
    )
    group.add_argument(
        "--gin_search_path",
        dest="gin_search_paths",
        action="append",
        default=[],
        metavar="DIR",
        help="extra directory for gin `include` and --gin_file lookups (repeatable)",
    )


def build_parser():
  parser = argparse.ArgumentParser(
      prog="tkx", description=__doc__.splitlines()[0]
  )
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, command in COMMANDS.items():
    sub.add_parser(name, help=command.help, add_help=False)
  return parser


def command_parser(name: str, module) -> argparse.ArgumentParser:
  command = COMMANDS[name]
  doc = (module.__doc__ or "").strip()
  epilog = "\n".join(doc.splitlines()[1:]).strip("\n").rstrip()
  if command.uses_gin:
    epilog = (epilog + "\n\n" if epilog else "") + GIN_HELP
  parser = argparse.ArgumentParser(
      prog=f"tkx {name}",
      description=command.help,
      epilog=epilog or None,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  module.add_arguments(parser)
  add_shared_arguments(parser, command)
  return parser


# ------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------
def run(argv) -> int:
  """Runs one command; errors propagate (for programs and tests; `main` reports them)."""
  argv = list(argv)
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    parser = build_parser()
    if argv and argv[0] not in ("-h", "--help"):
      parser.error(
          f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}"
      )
    parser.print_help()
    return 0
  name, rest = argv[0], argv[1:]
  command = COMMANDS[name]
  rest, gin_bindings = _split_gin_args(rest)
  if gin_bindings and not command.uses_gin:
    raise UserError(
        f"tkx {name} takes no gin bindings ({gin_bindings[0]!r}); "
        f"see `tkx {name} --help`"
    )
  # Before the command module is imported: it may import TensorFlow.
  debug = _asks_for_debug(rest)
  keep_tensorflow_on_cpu(quiet=not debug)
  setup_logging("debug" if debug else "info")
  module = importlib.import_module(command.module)
  args = command_parser(name, module).parse_args(rest)
  setup_logging(args.log_level)
  if command.uses_gin:
    args.gin_bindings = gin_bindings + flag_bindings(
        args, getattr(module, "GIN_FLAGS", {})
    )
    if hasattr(module, "configure"):
      module.configure(args)
  if command.joins_processes:
    from tkx import multihost  # pylint: disable=g-import-not-at-top

    multihost.initialize()
  return module.main(args) or 0


def _asks_for_debug(argv) -> bool:
  """Whether argv sets --log_level debug (read before argparse runs)."""
  for i, arg in enumerate(argv):
    if arg.lower() == "--log_level=debug":
      return True
    if arg == "--log_level" and i + 1 < len(argv):
      if argv[i + 1].lower() == "debug":
        return True
  return False


def _one_line(error: BaseException) -> str:
  # gin appends "In call to configurable 'train' (<function ...>)": not the user's words.
  text = " ".join(
      line.strip()
      for line in str(error).strip().splitlines()
      if line.strip() and not line.strip().startswith("In call to configurable")
  )
  return text or type(error).__name__


def main(argv=None) -> int:
  """The `tkx` console script: runs a command and reports user errors as one line (exit 2)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  name = argv[0] if argv and argv[0] in COMMANDS else None
  try:
    return run(argv)
  except USER_ERRORS as e:
    if _asks_for_debug(argv):
      raise
    prefix = f"tkx {name}" if name else "tkx"
    print(f"{prefix}: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("tkx: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
