"""`tkx generate`: answer one instruction with a tkx checkpoint.

    tkx generate --checkpoint CKPT "Definition: return the currency of the given country. Now complete the following example - Input: India. Output:"
    tkx generate --checkpoint CKPT --ni_task task1_currency [--ni_dir DIR] [--encoding def_pos2] --input "India"

With `--ni_task` (a task name in the checkout, or a path to a task JSON file)
the prompt is built from the task's definition and examples with the encoding,
exactly as for training and evaluation, and `--input` is the instance input.
Prints the prediction on stdout (`--show_prompt` prints the prompt first, on
stderr). An empty instruction or input is an error. Decoding flags as `tkx infer`.
"""

import difflib
import posixpath
import sys

from tkx import errors
from tkx.commands import infer as infer_command


def add_arguments(parser):
  parser.add_argument(
      "text",
      nargs="?",
      default=None,
      help="the whole prompt (instead of --ni_task/--input)",
  )
  parser.add_argument(
      "--ni_task",
      default=None,
      help="NI task name (in --ni_dir) or path to a task .json file",
  )
  parser.add_argument(
      "--input", default=None, help="the instance input for --ni_task"
  )
  parser.add_argument(
      "--ni_dir",
      default=None,
      help="NI checkout holding --ni_task (default: the embedded tasks/)",
  )
  parser.add_argument(
      "--encoding",
      default="def_pos2",
      help="instruction encoding for --ni_task (default def_pos2)",
  )
  parser.add_argument(
      "--show_prompt", action="store_true", help="print the prompt on stderr"
  )
  infer_command.add_common_arguments(parser)


def load_ni_task(name_or_path, ni_dir=None):
  """A validated task dict from a task name in `ni_dir` or from a .json path; close names on a miss."""
  from tkx import storage
  from tkx.data import ni
  from tkx.data import tasks as tasks_lib

  if name_or_path.endswith(".json") or "/" in name_or_path:
    path = storage.abspath(name_or_path)
    if not storage.isfile(path):
      raise FileNotFoundError(f"task file not found: {path}")
    name = posixpath.basename(path)
    name = name[: -len(".json")] if name.endswith(".json") else name
    return ni.load_task_file(path, name)
  ni_dir = ni_dir or tasks_lib.EMBEDDED_NI_DIR
  task_dir = storage.join(ni_dir, "tasks")
  known = sorted(ni.existing_task_names(ni_dir))
  if name_or_path not in known:
    close = difflib.get_close_matches(name_or_path, known, n=5, cutoff=0.4)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else f" ({len(known)} tasks there)"
    )
    raise errors.ConfigError(
        f"unknown NI task {name_or_path!r} in {task_dir}{hint}"
    )
  return ni.load_task(ni_dir, name_or_path)


def build_prompt(task, text, encoding, vocabulary, max_input_length):
  """The encoded source for one instance of `task` with input `text`."""
  from tkx.data import encodings

  token_count, truncate = encodings.vocabulary_token_fns(vocabulary)
  instance = {"id": f"{task['Task']}-generate", "input": text, "output": [""]}
  return encodings.encode_source(
      task,
      instance,
      encodings.parse_encoding(encoding),
      max_source_length=max_input_length,
      token_count=token_count,
      truncate=truncate,
  )


GIN_FLAGS = infer_command.GIN_FLAGS


def configure(args):
  """Checks the arguments and parses gin, before `tkx.cli` joins the processes."""
  if args.ni_task and args.text is not None:
    raise errors.ConfigError(
        "give either the prompt text or --ni_task with --input, not both"
    )
  if args.ni_task is None and args.input is not None:
    raise errors.ConfigError(
        "--input needs --ni_task (or pass the whole prompt as the positional text)"
    )
  if args.ni_task is not None and (
      args.input is None or not args.input.strip()
  ):
    raise errors.ConfigError("--ni_task needs a non-empty --input")
  if args.ni_task is None and (args.text is None or not args.text.strip()):
    raise errors.ConfigError(
        "empty instruction: pass the prompt text, or --ni_task NAME --input TEXT"
    )
  infer_command.parse_gin(args)


def main(args):
  import jax
  from tkx import infer, multihost, partitioning
  from tkx.checkpoints import directory

  if args.ni_dir:
    from tkx.data import source

    source.check_checkout(args.ni_dir)  # before the checkpoint is loaded
  # One example: one device unless model parallelism is asked for; on several
  # processes all devices decode it together (global arrays), as tkx infer.
  devices = (
      None
      if args.num_partitions or jax.process_count() > 1
      else jax.local_devices()[:1]
  )
  # gin (and --num_partitions) apply.
  partitioner = partitioning.Partitioner(devices=devices)
  loaded = directory.load(
      args.checkpoint,
      partitioner=partitioner,
      vocab_path=args.vocab,
      gin_bindings=infer.model_overrides(),
  )
  # gin (and the decoding, --max_input_length, --input_buckets flags) apply.
  predictor = infer.make_predictor(
      loaded.model,
      loaded.params,
      partitioner=partitioner,
      # One prompt: a batch of one row per data-parallel device, unless --batch_size says.
      batch_size=args.batch_size or partitioner.data_axis_size,
  )
  max_input_length = predictor.input_buckets[-1]  # make_predictor's budget
  if args.ni_task is not None:
    task = load_ni_task(args.ni_task, args.ni_dir)
    prompt = build_prompt(
        task, args.input, args.encoding, loaded.vocabulary, max_input_length
    )
  else:
    prompt = args.text
  if args.show_prompt and multihost.is_primary_host():
    print(prompt, file=sys.stderr)
  [prediction] = infer.predict_texts(
      predictor,
      loaded.vocabulary,
      [prompt],
      max_input_length=max_input_length,
      progress=False,
  )
  if multihost.is_primary_host():
    print(prediction)
  return 0
