"""`tkx train`: fine-tune a T5 model on NI mixtures, configured by gin (as t5x's train.py).

    tkx train --gin_file=gin_configs/runs/finetune.gin \\
              --gin_file=gin_configs/models/t5_1_1/small.gin \\
              --gin.MIXTURE_OR_TASK_NAME="'ni_default_train_def_pos2'" \\
              --gin.MODEL_DIR="'/tmp/tk_small'"

A run is configured by gin: a run file (gin_configs/runs/finetune.gin), a model
file (gin_configs/models/<family>/<size>.gin) or an experiment file that includes
both (gin_configs/experiments/), then --gin.NAME=VALUE bindings. The run file's
macros are what a user sets: MODEL_DIR and MIXTURE_OR_TASK_NAME (required),
TRAIN_STEPS, BATCH_SIZE, TASK_FEATURE_LENGTHS, LEARNING_RATE, NUM_MICROBATCHES,
INITIAL_CHECKPOINT_PATH, NI_DIR, SAVE_EVERY, EVAL_EVERY, ...; any argument of a
configurable can be bound too (--gin.train_configs.LoggingConfig.log_every=20).
Settings are grouped in `tkx.train_configs`; what runs between steps is an
action (`tkx.train_actions`); docs/training.md.
A run resumes from MODEL_DIR's latest checkpoint when there is one.
"""

import logging
import sys

from tkx import errors, gin_utils

# Modules whose configurables run, model and experiment gin files name.
CONFIGURABLE_MODULES = (
    "tkx.data.tasks",
    "tkx.data.vocab",
    "tkx.models.models",
    "tkx.multihost",
    "tkx.optimizers",
    "tkx.partitioning",
    "tkx.train_actions",
    "tkx.train_configs",
    "tkx.trainer",
)


def add_arguments(parser):
  parser.add_argument(
      "--multihost",
      action="store_true",
      help="require a multi-host cluster: fail unless other processes join "
      "(tkx.multihost.initialize() always runs; it reads TKX_*/JAX_* variables or "
      "detects the cluster, see docs/clusters.md)",
  )


def parse_gin(gin_files, gin_bindings, search_paths=()):
  """Imports every module gin files may name, then parses files and bindings."""
  import importlib

  for name in CONFIGURABLE_MODULES:
    importlib.import_module(name)
  gin_utils.parse(gin_files, gin_bindings, search_paths=search_paths)


def configure(args):
  """gin, before `tkx.cli` joins the processes (so `multihost.initialize.*` bindings count)."""
  if not args.gin_files:
    raise errors.ConfigError(
        "give at least one --gin_file (e.g. --gin_file=gin_configs/runs/finetune.gin "
        "--gin_file=gin_configs/models/t5_1_1/small.gin); see tkx train --help"
    )
  parse_gin(args.gin_files, args.gin_bindings, args.gin_search_paths)


def main(args):
  if args.multihost:
    import jax

    if jax.process_count() == 1:
      print(
          "tkx train --multihost: only one process joined (set TKX_COORDINATOR_ADDRESS, "
          "TKX_NUM_PROCESSES, TKX_PROCESS_ID, or run under a cluster launcher)",
          file=sys.stderr,
      )
      return 2
  from tkx import trainer

  try:
    trainer.train()
  except trainer.NonFiniteLossError as e:
    logging.error("%s", e)
    return 3
  return 0
