"""`tkx plan-packing`: the packed row layouts a run could use, with their token and FLOP efficiency.

For a checkout, an NI name (track, split, encoding), a vocabulary, a model and a
device count it samples the training examples as `tkx train` does with 'auto'
PACKED_* settings (`tkx.data.packing_plan`), measures every candidate layout
and prints them best first; the first is what the trainer would choose
(docs/packing.md):

    tkx plan-packing --ni_dir ../shared/natural-instructions --data_parallel 8
"""

import json

from tkx import errors
from tkx.data import packing_plan

DEFAULT_MODEL_GIN = "gin_configs/models/t5_1_1/xl.gin"


def _setting(value: str):
  if value == packing_plan.AUTO:
    return value
  try:
    number = int(value)
  except ValueError:
    number = 0
  if number < 1:
    raise errors.ConfigError(
        f"expected a positive integer or 'auto', got {value!r}"
    )
  return number


def add_arguments(parser):
  parser.add_argument(
      "--ni_dir",
      default=None,
      help="NI checkout (default: the embedded tasks/)",
  )
  parser.add_argument(
      "--mixture",
      default="ni_default_train_def_pos2",
      help="NI training name: track, split and encoding (MIXTURE_OR_TASK_NAME)",
  )
  parser.add_argument(
      "--vocabulary",
      default=None,
      help="SentencePiece model (default: the embedded one)",
  )
  parser.add_argument(
      "--inputs_length",
      type=int,
      default=1024,
      help="TASK_FEATURE_LENGTHS inputs: input cap and encoder block",
  )
  parser.add_argument(
      "--targets_length",
      type=int,
      default=128,
      help="TASK_FEATURE_LENGTHS targets: target cap, shortest decoder row",
  )
  parser.add_argument(
      "--data_parallel",
      type=int,
      default=1,
      help="data-parallel devices (the mesh's data axis)",
  )
  parser.add_argument(
      "--num_microbatches",
      type=int,
      default=1,
      help="NUM_MICROBATCHES (rows divide by it too)",
  )
  parser.add_argument(
      "--examples_per_step",
      type=int,
      default=16,
      help="the recipe's batch size (BATCH_SIZE)",
  )
  parser.add_argument(
      "--window", type=int, default=1000, help="PACKING_WINDOW (= sample size)"
  )
  parser.add_argument("--seed", type=int, default=0, help="DATA_SEED")
  for flag, macro in (
      ("encoder_blocks", "PACKED_ENCODER_BLOCKS"),
      ("decoder_length", "PACKED_TARGETS_LENGTH"),
      ("rows_per_step", "PACKED_BATCH_SIZE"),
  ):
    parser.add_argument(
        f"--{flag}",
        type=_setting,
        default=packing_plan.AUTO,
        help=f"{macro}: a number or 'auto' (default)",
    )
  parser.add_argument(
      "--top", type=int, default=12, help="layouts printed (best first)"
  )
  parser.add_argument("--json", action="store_true", help="print JSON")


def _check(args):
  for name in (
      "inputs_length",
      "targets_length",
      "data_parallel",
      "num_microbatches",
      "examples_per_step",
      "window",
      "top",
  ):
    if getattr(args, name) < 1:
      raise errors.ConfigError(
          f"--{name} must be positive, got {getattr(args, name)}"
      )


def _row(stats: packing_plan.LayoutStats) -> dict:
  return {
      "encoder_blocks": stats.layout.encoder_blocks,
      "inputs": stats.layout.inputs,
      "targets": stats.layout.targets,
      "rows_per_step": stats.rows_per_step,
      "examples_per_row": stats.examples_per_row,
      "examples_per_step": stats.examples_per_step,
      "encoder_fill": stats.encoder_fill,
      "decoder_fill": stats.decoder_fill,
      "token_efficiency": stats.token_efficiency,
      "flop_efficiency": stats.flop_efficiency,
  }


def format_table(ranked, top: int) -> str:
  lines = [
      f"  {'layout':<18}{'rows':>5}{'ex/row':>8}{'ex/step':>9}"
      f"{'enc real':>10}{'dec real':>10}{'tokens':>8}{'FLOPs':>8}"
  ]
  for i, stats in enumerate(ranked[:top]):
    flops = stats.flop_efficiency
    lines.append(
        f"{'*' if i == 0 else ' '} {packing_plan.layout_name(stats.layout):<18}"
        f"{stats.rows_per_step:>5}{stats.examples_per_row:>8.2f}"
        f"{stats.examples_per_step:>9.1f}{stats.encoder_fill:>10.1%}"
        f"{stats.decoder_fill:>10.1%}{stats.token_efficiency:>8.1%}"
        + (f"{flops:>8.1%}" if flops is not None else f"{'-':>8}")
    )
  return "\n".join(lines)


def main(args):
  import numpy as np  # pylint: disable=g-import-not-at-top

  from tkx import gin_utils  # pylint: disable=g-import-not-at-top
  from tkx.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top

  _check(args)
  gin_files = args.gin_files or [DEFAULT_MODEL_GIN]
  config = gin_utils.load_config_from_gin(gin_files, args.gin_bindings)
  # Explicitly: model gin files bind the real (gs://) vocabularies.
  vocabulary = vocab_lib.get_vocabulary(
      args.vocabulary or vocab_lib.EMBEDDED_SPM_PATH
  )
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  inputs, targets = packing_plan.sample_lengths(
      args.mixture,
      ni_dir=args.ni_dir,
      vocabulary=vocabulary,
      feature_lengths=lengths,
      size=args.window,
      seed=args.seed,
  )
  row_multiple = args.data_parallel * args.num_microbatches
  ranked = packing_plan.plan(
      inputs,
      targets,
      feature_lengths=lengths,
      examples_per_step=args.examples_per_step,
      row_multiple=row_multiple,
      window=args.window,
      config=config,
      encoder_blocks=args.encoder_blocks,
      targets_length=args.decoder_length,
      rows_per_step=args.rows_per_step,
      prune=False,
  )
  if args.json:
    print(json.dumps([_row(s) for s in ranked[: args.top]], indent=1))
    return 0
  print(
      f"{args.mixture} ({args.ni_dir or 'embedded tasks/'}): {len(inputs)} sampled "
      f"examples, inputs {np.mean(inputs):.0f} / targets {np.mean(targets):.1f} tokens "
      f"on average (caps {args.inputs_length} / {args.targets_length}); model "
      f"{', '.join(gin_files)}; rows a multiple of {row_multiple}, "
      f"~{args.examples_per_step} examples per step wanted"
  )
  print(format_table(ranked, args.top))
  print(
      "*: the trainer's choice with these settings ('auto'); FLOPs: the share of the "
      "model's training FLOPs that the examples would cost alone"
  )
  return 0
