"""The `tkx` command line: one subcommand per module in `tkx.commands`.

Each command module defines `add_arguments(parser)` and `main(args) -> int | None`.
Modules are imported only when their command runs, so `tkx convert` never pays
for importing JAX and `tkx train` never pays for torch.

Gin bindings follow t5x: `--gin_file=F` (repeatable) and `--gin.NAME=VALUE`
(repeatable); they are collected into `args.gin_files` and `args.gin_bindings`.
"""

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS = {
    "convert": (
        "tkx.commands.convert",
        "NI checkout -> encoded JSONL (the text the model sees)",
    ),
    "score": (
        "tkx.commands.score",
        "score a Tk-Instruct predictions file with the NI metrics",
    ),
    "baseline": (
        "tkx.commands.baseline",
        "write copy_input / copy_demo baseline predictions",
    ),
    "train": (
        "tkx.commands.train",
        "fine-tune a T5 model on NI mixtures (gin-configured)",
    ),
    "eval": (
        "tkx.commands.evaluate",
        "decode a test mixture and score it with the NI metrics",
    ),
    "infer": (
        "tkx.commands.infer",
        "decode a mixture or an input file into a predictions file",
    ),
    "generate": ("tkx.commands.generate", "answer one instruction"),
    "import-checkpoint": (
        "tkx.commands.import_checkpoint",
        "Hugging Face / t5x checkpoint -> tkx checkpoint",
    ),
    "export-checkpoint": (
        "tkx.commands.export_checkpoint",
        "tkx checkpoint -> Hugging Face checkpoint",
    ),
    "model-info": (
        "tkx.commands.model_info",
        "parameter counts, memory per device and FLOPs of a model",
    ),
    "prepare-tfds": (
        "tkx.commands.prepare_tfds",
        "NI checkout -> TFDS records that training can read",
    ),
}


def _split_gin_args(argv):
  """Pulls t5x-style `--gin.X=Y` bindings out of argv (argparse cannot declare them)."""
  rest, bindings = [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--gin."):
      body = arg[len("--gin.") :]
      if "=" not in body:
        body = body + "=" + next(it)
      name, value = body.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return rest, bindings


def build_parser():
  parser = argparse.ArgumentParser(
      prog="tkx", description=__doc__.splitlines()[0]
  )
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, (_, help_text) in COMMANDS.items():
    sub.add_parser(name, help=help_text, add_help=False)
  return parser


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    parser = build_parser()
    if argv and argv[0] not in ("-h", "--help"):
      parser.error(
          f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}"
      )
    parser.print_help()
    return 0
  name, rest = argv[0], argv[1:]
  module = importlib.import_module(COMMANDS[name][0])
  parser = argparse.ArgumentParser(
      prog=f"tkx {name}", description=COMMANDS[name][1]
  )
  module.add_arguments(parser)
  rest, gin_bindings = _split_gin_args(rest)
  args = parser.parse_args(rest)
  args.gin_bindings = (
      list(getattr(args, "gin_bindings", None) or []) + gin_bindings
  )
  return module.main(args) or 0


if __name__ == "__main__":
  sys.exit(main())
