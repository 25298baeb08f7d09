"""NI at its real size: tkx's input pipeline on an N-task checkout vs Tk-Instruct's loader.

    python bench/ni_scale.py [--num_tasks 1616] [--ni_dir ../shared/natural-instructions] [--quick]

Builds, in a temporary directory, an NI-layout checkout whose train split lists
N tasks (symlinks `tasks/task<k>_scale_<original>.json` to the given checkout's
task files, cycling through them), and measures, each in a fresh process:

  tkx (cold)   `pipeline.train_input` on `ni_default_train_def_pos2` with an
               empty source cache: registration, time to the first batch
               (8 x 1024/128 tokens), peak RSS, steady examples/s of the stream;
  tkx (warm)   the same run again, the source read from the cache it wrote;
  reference    a plain-Python mirror of Tk-Instruct's `ni_dataset.py` (random.seed(42),
               every task JSON loaded, shuffle + first 100 per task, all examples
               generated before training starts, as `datasets.load_dataset` does)
               + `DataCollatorForNI` (def_pos2 source under the 1024-token budget,
               tokenized; tkx's `encodings.encode_source` is that collator's rule)
               with a shuffled sampler. `datasets` is not installed here, so the
               reference holds its examples in memory instead of an Arrow file.

and a 30-task run of tkx for the memory comparison. Both sides use the same
SentencePiece vocabulary (the embedded sample's). Prints ratios tkx/reference and
names the CPU.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import common

LENGTHS = {"inputs": 1024, "targets": 128}
BATCH = 8
MIXTURE = "ni_default_train_def_pos2"


def cpu_name() -> str:
  try:
    out = subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or "unknown CPU"


def build_checkout(root: str, ni_dir: str, num_tasks: int) -> str:
  ni_dir = os.path.abspath(ni_dir)
  originals = sorted(
      f[: -len(".json")]
      for f in os.listdir(os.path.join(ni_dir, "tasks"))
      if f.endswith(".json")
  )
  os.makedirs(os.path.join(root, "tasks"))
  os.makedirs(os.path.join(root, "splits", "default"))
  names = []
  for k in range(num_tasks):
    original = originals[k % len(originals)]
    name = f"task{k + 1:05d}_scale_{original}"
    os.symlink(
        os.path.join(ni_dir, "tasks", original + ".json"),
        os.path.join(root, "tasks", name + ".json"),
    )
    names.append(name)
  with open(
      os.path.join(root, "splits", "default", "train_tasks.txt"), "w"
  ) as f:
    f.write("\n".join(names) + "\n")
  return root


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------ workers
def worker_tkx(checkout: str, steady_batches: int) -> dict:
  from tkx.data import pipeline  # pylint: disable=g-import-not-at-top
  from tkx.data import vocab  # pylint: disable=g-import-not-at-top

  vocabulary = vocab.get_vocabulary()
  rss_before = _peak_rss_mib()
  t0 = time.perf_counter()
  pipeline.register_ni_for(MIXTURE, checkout, vocabulary, LENGTHS["inputs"])
  registered = time.perf_counter() - t0
  train_input = pipeline.train_input(
      MIXTURE,
      ni_dir=checkout,
      vocabulary=vocabulary,
      feature_lengths=LENGTHS,
      batch_size=BATCH,
  )
  batches = train_input.batches(train_input.initial_state())
  next(batches)
  first = time.perf_counter() - t0
  t1 = time.perf_counter()
  for _ in range(steady_batches):
    next(batches)
  steady = steady_batches * BATCH / (time.perf_counter() - t1)
  return {
      "register_s": registered,
      "first_batch_s": first,
      "examples_per_s": steady,
      "peak_rss_mib": _peak_rss_mib(),
      "rss_before_mib": rss_before,
      "examples": train_input.stream.examples_per_epoch,
  }


def worker_reference(checkout: str, steady_batches: int) -> dict:
  """ni_dataset.py's generation + DataCollatorForNI's encoding, in plain Python."""
  import random  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from tkx.data import encodings as enc  # pylint: disable=g-import-not-at-top
  from tkx.data import vocab  # pylint: disable=g-import-not-at-top

  vocabulary = vocab.get_vocabulary()
  token_count, truncate = enc.vocabulary_token_fns(vocabulary)
  rss_before = _peak_rss_mib()
  t0 = time.perf_counter()
  random.seed(42)  # run_s2s.py: set_seed(42) before load_dataset
  examples = []
  with open(
      os.path.join(checkout, "splits", "default", "train_tasks.txt"),
      encoding="utf-8",
  ) as split_f:
    for line in split_f:
      task_name = line.strip()
      task_path = os.path.join(checkout, "tasks", task_name + ".json")
      with open(task_path, encoding="utf-8") as task_f:
        task_data = json.loads(task_f.read())
      task_data["Task"] = task_name
      task_data.pop("Instruction Source", None)
      instances = task_data.pop("Instances")
      random.shuffle(instances)
      for index, instance in enumerate(instances[:100]):
        example = task_data.copy()
        # Older-schema tasks have no ids (Tk-Instruct's reader would fail on them).
        example["id"] = instance.setdefault("id", f"{task_name}-{index}")
        example["Instance"] = instance
        examples.append(example)
  registered = time.perf_counter() - t0  # load_dataset returns here
  order = np.random.default_rng(42).permutation(len(examples))

  def batch_at(b):
    rows = [examples[i] for i in order[b * BATCH : (b + 1) * BATCH]]
    sources = [
        enc.encode_source(
            e,
            e["Instance"],
            "def_pos2",
            max_source_length=LENGTHS["inputs"],
            token_count=token_count,
            truncate=truncate,
        )
        for e in rows
    ]
    inputs = [
        vocabulary.encode(s)[: LENGTHS["inputs"] - 1] + [1] for s in sources
    ]
    labels = [
        vocabulary.encode(random.choice(e["Instance"]["output"]))[
            : LENGTHS["targets"] - 1
        ]
        + [1]
        for e in rows
    ]
    return inputs, labels

  batch_at(0)
  first = time.perf_counter() - t0
  t1 = time.perf_counter()
  for b in range(1, steady_batches + 1):
    batch_at(b)
  steady = steady_batches * BATCH / (time.perf_counter() - t1)
  return {
      "register_s": registered,
      "first_batch_s": first,
      "examples_per_s": steady,
      "peak_rss_mib": _peak_rss_mib(),
      "rss_before_mib": rss_before,
      "examples": len(examples),
  }


def run_worker(kind, checkout, cache, steady_batches) -> dict:
  env = dict(os.environ, TKX_NI_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(
      [
          sys.executable,
          os.path.abspath(__file__),
          "--_worker",
          kind,
          "--_checkout",
          checkout,
          "--_steady_batches",
          str(steady_batches),
      ],
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  if out.returncode:
    sys.stderr.write(out.stderr[-3000:])
    raise SystemExit(f"{kind} worker failed ({out.returncode})")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_tasks", type=int, default=1616)
  parser.add_argument(
      "--ni_dir",
      default=os.path.join(common.REPO, "..", "shared", "natural-instructions"),
  )
  parser.add_argument(
      "--quick", action="store_true", help="60 tasks, 10 steady batches"
  )
  parser.add_argument("--steady_batches", type=int, default=50)
  parser.add_argument("--_worker", help=argparse.SUPPRESS)
  parser.add_argument("--_checkout", help=argparse.SUPPRESS)
  parser.add_argument("--_steady_batches", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._worker:
    fn = worker_tkx if args._worker == "tkx" else worker_reference
    print(json.dumps(fn(args._checkout, args._steady_batches)))
    return
  if not os.path.isdir(os.path.join(args.ni_dir, "tasks")):
    raise SystemExit(f"--ni_dir {args.ni_dir}: no tasks/ directory")
  num_tasks = 60 if args.quick else args.num_tasks
  steady = 10 if args.quick else args.steady_batches
  with tempfile.TemporaryDirectory() as tmp:
    big = build_checkout(os.path.join(tmp, "big"), args.ni_dir, num_tasks)
    small = build_checkout(os.path.join(tmp, "small"), args.ni_dir, 30)
    cache = os.path.join(tmp, "cache")
    common.log(f"checkout of {num_tasks} tasks at {big}")
    results = {}
    for label, kind, checkout in (
        ("tkx 30 tasks (cold cache)", "tkx", small),
        (f"tkx {num_tasks} tasks (cold cache)", "tkx", big),
        (f"tkx {num_tasks} tasks (warm cache)", "tkx", big),
        (f"reference {num_tasks} tasks", "reference", big),
    ):
      common.log(f"running {label}")
      results[label] = run_worker(kind, checkout, cache, steady)
  print(
      f"\nNI input pipeline at {num_tasks} tasks, batch {BATCH} x 1024/128 tokens"
  )
  print(f"CPU: {cpu_name()} ({os.cpu_count()} cores visible)")
  header = f"{'run':38s} {'examples':>9s} {'register s':>10s} {'1st batch s':>11s} {'peak RSS MiB':>12s} {'ex/s':>8s}"
  print(header)
  for label, r in results.items():
    print(
        f"{label:38s} {r['examples']:9d} {r['register_s']:10.2f} {r['first_batch_s']:11.2f} "
        f"{r['peak_rss_mib']:12.0f} {r['examples_per_s']:8.1f}"
    )
  ref = results[f"reference {num_tasks} tasks"]
  for cache_state in ("cold", "warm"):
    r = results[f"tkx {num_tasks} tasks ({cache_state} cache)"]
    print(
        f"tkx ({cache_state}) / reference: first batch {r['first_batch_s'] / ref['first_batch_s']:.2f}x, "
        f"peak RSS {r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x, "
        f"examples/s {r['examples_per_s'] / ref['examples_per_s']:.2f}x"
    )
  small_rss = results["tkx 30 tasks (cold cache)"]["peak_rss_mib"]
  big_rss = results[f"tkx {num_tasks} tasks (cold cache)"]["peak_rss_mib"]
  print(
      f"tkx peak RSS {num_tasks} tasks - 30 tasks: {big_rss - small_rss:.0f} MiB (aim: <= 1024)"
  )


if __name__ == "__main__":
  main()
