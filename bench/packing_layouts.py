"""Whole-epoch efficiency of the 'auto' packed layout against the fixed 4 x 1024 / 184 rows and Tk-Instruct's batches.

    python bench/packing_layouts.py                       # the shared sample's datasets (~3 min)
    python bench/packing_layouts.py --smoke               # the embedded tasks/, seconds

For each dataset (an NI checkout's training split with one encoding; the
embedded vocabulary; inputs <= 1024 and targets <= 128 tokens, 100 instances
per task, as a training run encodes them) and each data-parallel device count:

- auto: the layout `tkx train` chooses with finetune.gin's 'auto' PACKED_*
  settings (`tkx.data.packing_plan`: a seeded sample of PACKING_WINDOW = 1000
  examples, ~16 examples per step, rows a multiple of the devices), then
  measured on the whole epoch: every example of the split in the stream's
  epoch-0 order (data_seed 0), packed window by window as a run packs them,
  the last step's empty rows counted;
- fixed: finetune.gin's former rows, 2 x (4 x 1024 / 184), on the same stream;
- Tk-Instruct: batches of 16 examples in stream order padded to their longest
  input and target (`DataCollatorForNI`, padding="longest").

Token efficiency = real tokens / computed positions; FLOP efficiency = the
examples' own model FLOPs (each alone at its lengths) / the FLOPs computed
(`tkx.models.model_info.forward_flops`, attention included; FLOPs do not depend
on the hardware). The model is the recipe's: T5 1.1 XL for the default track,
mT5 XL for the x-lingual one. "other tasks" is a checkout built at run time
from a different subset of the shared sample's tasks: those that neither
training split lists (its test tasks and unlisted ones), as the training split.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO, cpu_name, log  # noqa: E402  (puts the repo root on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

LENGTHS = {"inputs": 1024, "targets": 128}
EXAMPLES_PER_STEP = 16
WINDOW = 1000
SHARED = os.path.join(os.path.dirname(REPO), "shared", "natural-instructions")
MODELS = {
    "default": "gin_configs/models/t5_1_1/xl.gin",
    "xlingual": "gin_configs/models/mt5/xl.gin",
}
# (label, checkout: "shared" | "other" | "embedded", track, encoding)
DATASETS = [
    ("shared default def_pos2", "shared", "default", "def_pos2"),
    ("shared default def", "shared", "default", "def"),
    ("shared default pos2", "shared", "default", "pos2"),
    (
        "shared default def_pos2_neg2_expl",
        "shared",
        "default",
        "def_pos2_neg2_expl",
    ),
    ("shared default tk_instruct", "shared", "default", "tk_instruct"),
    ("shared xlingual def_pos2", "shared", "xlingual", "def_pos2"),
    ("other tasks default def_pos2", "other", "default", "def_pos2"),
]
SMOKE_DATASETS = [
    ("embedded default def_pos2", "embedded", "default", "def_pos2")
]


def other_tasks_checkout(shared_dir, out_dir):
  """A checkout whose training split is the shared sample's tasks that no training split lists."""

  def read(track):
    path = os.path.join(shared_dir, "splits", track, "train_tasks.txt")
    with open(path, encoding="utf-8") as f:
      return {line.strip() for line in f if line.strip()}

  listed = read("default") | read("xlingual")
  present = sorted(
      name[: -len(".json")]
      for name in os.listdir(os.path.join(shared_dir, "tasks"))
      if name.endswith(".json")
  )
  train = [t for t in present if t not in listed]
  os.makedirs(os.path.join(out_dir, "tasks"))
  os.makedirs(os.path.join(out_dir, "splits", "default"))
  for task in train:
    os.symlink(
        os.path.join(shared_dir, "tasks", f"{task}.json"),
        os.path.join(out_dir, "tasks", f"{task}.json"),
    )
  for name, tasks in (("train_tasks.txt", train), ("test_tasks.txt", [])):
    with open(os.path.join(out_dir, "splits", "default", name), "w") as f:
      f.write("".join(f"{t}\n" for t in tasks))
  return out_dir, len(train)


def epoch_lengths(name, ni_dir, vocabulary):
  """(inputs, targets) lengths of every training example in the epoch-0 stream order (data_seed 0)."""
  from tkx.data import pipeline

  pipeline.register_ni_for(name, ni_dir, vocabulary, LENGTHS["inputs"])
  stream = pipeline.NIStream(pipeline.ni_spec(name), vocabulary, dict(LENGTHS))
  return stream.lengths_at(
      stream.shard_row_positions(stream.examples_per_epoch)
  )


def tk_instruct_flops(config, inputs, targets):
  """FLOPs of batches of 16 in stream order, each padded to its longest input and target."""
  from tkx.data import packing_plan

  total = 0.0
  for start in range(0, len(inputs), EXAMPLES_PER_STEP):
    n_in = inputs[start : start + EXAMPLES_PER_STEP]
    n_tgt = targets[start : start + EXAMPLES_PER_STEP]
    total += packing_plan.example_flops(
        config, np.full(len(n_in), n_in.max()), np.full(len(n_in), n_tgt.max())
    )
  return total


def run_dataset(label, ni_dir, track, encoding, devices, vocabulary):
  from tkx import gin_utils
  from tkx.data import packing, packing_plan

  config = gin_utils.load_config_from_gin([os.path.join(REPO, MODELS[track])])
  name = f"ni_{track}_train_{encoding}"
  t0 = time.perf_counter()
  inputs, targets = epoch_lengths(name, ni_dir, vocabulary)
  log(
      f"{label}: {len(inputs)} examples encoded in {time.perf_counter() - t0:.1f}s"
  )
  sample = packing_plan.sample_lengths(
      name,
      ni_dir=ni_dir,
      vocabulary=vocabulary,
      feature_lengths=LENGTHS,
      size=WINDOW,
      seed=0,
  )
  useful = packing_plan.example_flops(config, inputs, targets)
  fixed = packing_plan.measure(
      packing.RowLayout(1024, 184, 4),
      inputs,
      targets,
      window=WINDOW,
      config=config,
      rows_per_step=2,
      useful_flops=useful,
  )
  tk_flops = tk_instruct_flops(config, inputs, targets)
  rows = []
  for d in devices:
    t0 = time.perf_counter()
    best = packing_plan.plan(
        *sample,
        feature_lengths=LENGTHS,
        examples_per_step=EXAMPLES_PER_STEP,
        row_multiple=d,
        window=WINDOW,
        config=config,
    )[0]
    choose_s = time.perf_counter() - t0
    epoch = packing_plan.measure(
        best.layout,
        inputs,
        targets,
        window=WINDOW,
        config=config,
        rows_per_step=best.rows_per_step,
        useful_flops=useful,
    )
    rows.append(
        {
            "dataset": label,
            "examples": len(inputs),
            "mean": f"{inputs.mean():.0f} / {targets.mean():.1f}",
            "devices": d,
            "auto": (
                f"{best.rows_per_step} x ({packing_plan.layout_name(best.layout)})"
            ),
            "ex_step": epoch.examples / (epoch.rows / epoch.rows_per_step),
            "tokens": epoch.token_efficiency,
            "flops": epoch.flop_efficiency,
            "expected": best.flop_efficiency,
            "fixed_tokens": fixed.token_efficiency,
            "fixed_flops": fixed.flop_efficiency,
            "tk_tokens": None,
            "tk_ratio": tk_flops / epoch.computed_flops,
            "choose_s": choose_s,
        }
    )
    log(
        f"{label}, {d} device(s): {epoch.describe()} (chosen in {choose_s:.1f}s)"
    )
  return rows


def print_table(rows):
  print(
      "| dataset | examples | mean tokens in / out | devices | auto layout (rows x row) "
      "| ex/step | auto tokens | auto FLOPs | fixed 2 x (4 x 1024 / 184) tokens | FLOPs "
      "| Tk-Instruct FLOPs per example / auto |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(
        f"| {r['dataset']} | {r['examples']:,} | {r['mean']} | {r['devices']} | {r['auto']} "
        f"| {r['ex_step']:.1f} | {r['tokens']:.1%} | **{r['flops']:.1%}** "
        f"| {r['fixed_tokens']:.1%} | {r['fixed_flops']:.1%} | {r['tk_ratio']:.2f}x |"
    )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ni_dir", default=SHARED, help="the shared NI sample")
  parser.add_argument(
      "--smoke", action="store_true", help="the embedded tasks/ only (seconds)"
  )
  parser.add_argument(
      "--datasets",
      default=None,
      help="comma-separated substrings of the dataset labels to run (default: all)",
  )
  parser.add_argument("--devices", default="1,8", help="data-parallel devices")
  args = parser.parse_args(argv)
  devices = [int(d) for d in args.devices.split(",")]
  datasets = SMOKE_DATASETS if args.smoke else DATASETS
  if args.datasets:
    wanted = args.datasets.split(",")
    datasets = [d for d in datasets if any(w in d[0] for w in wanted)]
  if not args.smoke and not os.path.isdir(os.path.join(args.ni_dir, "tasks")):
    parser.error(
        f"--ni_dir={args.ni_dir}: no tasks/ folder (not an NI checkout)"
    )

  from tkx.data import vocab as vocab_lib

  vocabulary = vocab_lib.get_vocabulary(vocab_lib.EMBEDDED_SPM_PATH)
  t0 = time.perf_counter()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    checkouts = {"shared": args.ni_dir, "embedded": None}
    if any(d[1] == "other" for d in datasets):
      checkouts["other"], n = other_tasks_checkout(
          args.ni_dir, os.path.join(tmp, "other")
      )
      log(f"other tasks: a checkout of {n} tasks of {args.ni_dir}")
    for label, checkout, track, encoding in datasets:
      rows += run_dataset(
          label, checkouts[checkout], track, encoding, devices, vocabulary
      )
  print(
      f"\nWhole-epoch packing efficiency, inputs <= 1024 / targets <= 128, embedded "
      f"vocabulary, ~{EXAMPLES_PER_STEP} examples per step, window {WINDOW}; FLOPs of "
      f"T5 1.1 XL (mT5 XL for x-lingual); {cpu_name()}, {time.perf_counter() - t0:.0f}s\n"
  )
  print_table(rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
