"""`tkx infer`: decode an NI mixture or a JSONL input file into a predictions file.

    tkx infer --checkpoint CKPT --mixture ni_default_test_def_pos2 [--ni_dir DIR] --output_file OUT.jsonl
    tkx infer --checkpoint CKPT --input_file IN.jsonl --output_file OUT.jsonl

A mixture gives Tk-Instruct `predicted_examples.jsonl` records (task fields,
`Instance`, `prediction`), which `tkx score` and Tk-Instruct's own scoring script
read. An input file has one `{"id": ..., "inputs": "..."}` object per line; each
line is written back with `prediction` added. An empty `inputs` gets an empty
prediction (with a warning); inputs over `--max_input_length` tokens are cut to
the budget, first tokens kept (with a warning counting them).

Decoding flags (shared with `tkx eval` and `tkx generate`): greedy by default,
`--num_beams K [--alpha A] [--beam_procedure hf|t5x]` for beam search, `--temperature T [--top_k K]
[--top_p P] [--seed S]` for sampling, `--decode_fn NAME` for any registered method
(docs/decoding.md). Gin: `--gin_file=gin_configs/runs/infer.gin`
and `--gin.NAME=VALUE`; flags given on the command line win over gin.
"""

import sys

from tkx import errors

# The decoding flags of infer, eval, generate and serve: each is a gin binding of
# `infer.decode_flags` (`tkx.cli.flag_bindings`), applied to the run's
# `infer.DecodeConfig` as the flags choose the method (`DecodeConfig.with_settings`);
# a flag wins over gin files and the defaults live in `infer.DecodeConfig` and
# `partitioning.Partitioner`.
DECODE_FLAGS = {
    name: f"infer.decode_flags.{name}"
    for name in (
        "decode_fn",
        "num_beams",
        "alpha",
        "temperature",
        "top_k",
        "top_p",
        "max_decode_length",
        "seed",
        "beam_procedure",
    )
}
DECODE_FLAGS["num_partitions"] = "partitioning.Partitioner.num_partitions"
# Not decoding, but shared by the same four commands: applied over the checkpoint's model.gin.
DECODE_FLAGS["dtype"] = "infer.model_overrides.dtype"


def quantize_flag(text: str) -> str:
  """`--quantize int8` -> the mode for its gin binding; a ConfigError naming the flag otherwise."""
  from tkx.models import quantize  # pylint: disable=g-import-not-at-top

  return quantize.quantize_flag(text)


# The checkpoint's weights as loaded (tkx.models.quantize; every command that decodes).
DECODE_FLAGS["quantize"] = ("quantize.quantize_checkpoint.mode", quantize_flag)


def input_buckets_flag(text: str):
  """`--input_buckets 128,256` -> (128, 256); a ConfigError naming the flag otherwise."""
  try:
    buckets = tuple(int(b) for b in text.split(",") if b.strip())
  except ValueError:
    raise errors.ConfigError(
        f"--input_buckets must be comma-separated integers, got {text!r}"
    ) from None
  if not buckets or min(buckets) < 1:
    raise errors.ConfigError(
        f"--input_buckets must be positive integers, got {text!r}"
    )
  return buckets


# infer and generate: the Predictor's settings (`infer.make_predictor`, where their defaults live).
GIN_FLAGS = dict(
    DECODE_FLAGS,
    batch_size="infer.make_predictor.batch_size",
    max_input_length="infer.make_predictor.max_input_length",
    input_buckets=("infer.make_predictor.input_buckets", input_buckets_flag),
)


def add_common_arguments(parser, *, checkpoint_required=True):
  """Long because it is the flag table of infer, eval, generate and serve: one add_argument per flag."""
  parser.add_argument(
      "--checkpoint",
      required=checkpoint_required,
      help="tkx checkpoint dir (checkpoint_<step>/ + model.gin [+ spm.model]) or one checkpoint_<step>/",
  )
  group = parser.add_argument_group("decoding (default: greedy)")
  group.add_argument(
      "--decode_fn",
      default=None,
      help="the decoding method by name (tkx.decoding.METHODS: greedy, hf_beam_search, "
      "beam_search, temperature_sample, or a registered one); default: chosen by "
      "--num_beams / --temperature",
  )
  group.add_argument(
      "--num_beams",
      type=int,
      default=None,
      help="beam search with this many beams (> 1); Hugging Face's procedure unless --beam_procedure t5x",
  )
  group.add_argument(
      "--beam_procedure",
      default=None,
      help="with --num_beams: 'hf' (Hugging Face generate's beam search, default) or 't5x' "
      "(t5x's beam search with its brevity penalty)",
  )
  group.add_argument(
      "--alpha",
      type=float,
      default=None,
      help="beam search length penalty: score / length**alpha (HF length_penalty, default 1.0; t5x procedure: brevity penalty, default 0.6)",
  )
  group.add_argument(
      "--temperature",
      type=float,
      default=None,
      help="sample at this temperature (> 0)",
  )
  group.add_argument(
      "--top_k",
      type=int,
      default=None,
      help="sample from the k most likely tokens (0: off; not with --top_p)",
  )
  group.add_argument(
      "--top_p",
      type=float,
      default=None,
      help="nucleus sampling: keep the most likely tokens up to this probability mass (0: off; not with --top_k)",
  )
  group.add_argument(
      "--seed", type=int, default=None, help="sampling seed (default 0)"
  )
  group.add_argument(
      "--max_decode_length",
      type=int,
      default=None,
      help="maximum output tokens, EOS included (default 127: Tk-Instruct's generate(max_length=128) minus the start token)",
  )
  group.add_argument(
      "--batch_size",
      type=int,
      default=None,
      help="global batch size, a multiple of the data axis size (default 8)",
  )
  group.add_argument(
      "--max_input_length",
      type=int,
      default=None,
      help="input token budget, EOS included (default 1024)",
  )
  group.add_argument(
      "--input_buckets",
      default=None,
      help="comma-separated encoder lengths to pad to (default 128,256,384,512,768,1024)",
  )
  group.add_argument(
      "--num_partitions",
      type=int,
      default=None,
      help="model-parallel partitions (size of the 'model' mesh axis; default 1)",
  )
  group.add_argument(
      "--quantize",
      default=None,
      help="hold the attention and MLP kernels as: none (float, as the checkpoint) or int8 "
      "(weight-only, per output channel; docs/quantization.md). Default none",
  )
  group.add_argument(
      "--vocab",
      default=None,
      help="SentencePiece model overriding the checkpoint's vocabulary",
  )
  parser.add_argument(
      "--dtype",
      default=None,
      choices=("float32", "bfloat16", "float16"),
      help="activation dtype instead of the checkpoint's (float16: GPUs without bfloat16; "
      "T5's residual stream stays float32, docs/models.md)",
  )
  parser.add_argument(
      "--no_progress",
      action="store_true",
      help="no progress bar (log lines only)",
  )


def parse_gin(args):
  """Parses run gin files and `--gin.X=Y` bindings, the flags' bindings last (imports what run files name)."""
  from tkx import evaluate, infer, multihost, partitioning  # noqa: F401  (register configurables)
  from tkx.models import quantize  # noqa: F401
  from tkx import gin_utils

  gin_utils.parse(
      args.gin_files, args.gin_bindings, search_paths=args.gin_search_paths
  )


def add_arguments(parser):
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument(
      "--mixture", help="NI mixture or task name, e.g. ni_default_test_def_pos2"
  )
  source.add_argument(
      "--input_file",
      help='JSONL with one {"id": ..., "inputs": "..."} per line',
  )
  parser.add_argument(
      "--ni_dir",
      default=None,
      help="NI checkout for --mixture (default: the embedded tasks/)",
  )
  parser.add_argument(
      "--output_file", required=True, help="predictions JSONL to write"
  )
  add_common_arguments(parser)


configure = parse_gin  # `tkx.cli` parses gin before the processes join


def main(args):
  from tkx import infer, jsonl, multihost, partitioning, storage
  from tkx.checkpoints import directory

  if args.input_file and args.ni_dir:
    raise errors.ConfigError(
        "--ni_dir applies to --mixture, not to --input_file"
    )
  if args.ni_dir:
    from tkx.data import source  # pylint: disable=g-import-not-at-top

    source.check_checkout(args.ni_dir)  # before the checkpoint is loaded
  if args.input_file and not storage.isfile(args.input_file):
    raise FileNotFoundError(f"input file not found: {args.input_file}")
  if args.mixture:
    from tkx.data import pipeline  # pylint: disable=g-import-not-at-top

    pipeline.check_mixture_name(args.mixture, args.ni_dir, flag="--mixture")
  partitioner = partitioning.Partitioner()  # gin (and --num_partitions) apply
  loaded = directory.load(
      args.checkpoint,
      partitioner=partitioner,
      vocab_path=args.vocab,
      gin_bindings=infer.model_overrides(),
  )
  # gin (and the decoding, --batch_size, --max_input_length, --input_buckets flags) apply.
  predictor = infer.make_predictor(
      loaded.model, loaded.params, partitioner=partitioner
  )
  max_input_length = predictor.input_buckets[-1]  # make_predictor's budget
  progress = not args.no_progress
  if args.mixture:
    from tkx.data import pipeline  # pylint: disable=g-import-not-at-top

    pipeline.register_ni_for(
        args.mixture,
        args.ni_dir,
        loaded.vocabulary,
        max_input_length,
        must_exist=False,  # resolve_mixture_or_task names close matches
    )
    records = infer.predict_mixture(
        predictor,
        loaded.vocabulary,
        args.mixture,
        max_input_length=max_input_length,
        progress=progress,
    )
    count = (
        jsonl.write_jsonl(args.output_file, records)
        if multihost.is_primary_host()
        else len(records)
    )
  else:
    count = infer.predict_input_file(
        predictor,
        loaded.vocabulary,
        args.input_file,
        args.output_file,
        max_input_length=max_input_length,
        progress=progress,
    )
  if multihost.is_primary_host():
    print(f"wrote {count} predictions to {args.output_file}", file=sys.stderr)
  return 0
