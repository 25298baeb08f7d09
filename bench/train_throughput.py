"""NI training throughput in examples/s: tkx packed vs Tk-Instruct's Hugging Face recipe, same run.

    python bench/train_throughput.py                      # t5_1_1 small, ~128 examples
    python bench/train_throughput.py --quick              # ~48 examples
    python bench/train_throughput.py --model tiny --examples 512 --ni_dir ../shared/natural-instructions

Both sides train the same T5 1.1 config (random initialisation, float32, dropout
off, AdamW lr 1e-4, weight decay 0) on the same NI `def_pos2` training examples
(the checkout's train split, 100 instances per task, tokenised with the
embedded vocabulary and cut to 1024 / 128 tokens as Tk-Instruct's collator
does, shuffled with seed 0), each example exactly once:

- tkx: its packed recipe, gin_configs/runs/finetune.gin's 'auto' packing (the
  layout `tkx train` chooses for this model on one device from its examples,
  `tkx.data.packing_plan.plan` on the packing window: rows per step, encoder
  blocks of 1024 and decoder row length; PACKING_WINDOW read from the file);
  the jitted `trainer.make_train_step`. The packer packs the first window of the stream,
  as a training run does, and the bench trains a seeded random sample of its
  rows (whole rows, ~`--examples` examples), so the rows are as full as the
  recipe's rows are on average (a short stream packed on its own would have
  emptier rows than a run does).
- Hugging Face transformers (PyTorch): `T5ForConditionalGeneration` on exactly
  those examples in stream order, batches of 16 padded to the longest input and
  target of the batch (Tk-Instruct's `DataCollatorForNI` with padding="longest",
  labels padded with -100), `torch.optim.AdamW`. A batch runs as micro-batches
  of `--hf_microbatch` rows (same padding, loss weighted per target token) to
  fit this machine's memory; the work is the same.

The two sides' losses differ from the first step (each framework's random
initialisation: HF draws the untied output layer with standard deviation 1, so
its first losses are far larger); the work per step does not depend on it.

Timed: each side alone (tkx first, then HF; alternating their steps was tried
and slows both on a 2-core machine, each framework's idle worker threads
competing with the other's), the optimizer steps over all batches after one warm-up step (compilation
for tkx); batch building is not timed on either side (tkx's packing costs are
printed). Real-token fraction = (input + target tokens) / positions computed.
Model FLOPs per example (`tkx.models.model_info.train_step_flops`, attention
included) are printed for both sides: the hardware-independent part of the
ratio.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO, cpu_name, hf_t5_config, log  # noqa: E402  (puts the repo root on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

LENGTHS = {"inputs": 1024, "targets": 128}
HF_BATCH = 16
FINETUNE_GIN = os.path.join(REPO, "gin_configs/runs/finetune.gin")


def recipe_window():
  """finetune.gin's PACKING_WINDOW."""
  import re

  with open(FINETUNE_GIN) as f:
    return int(
        re.search(r"^PACKING_WINDOW = (\d+)$", f.read(), re.MULTILINE)[1]
    )


def auto_packing(stream, cfg, window):
  """(rows per step, RowLayout) that 'auto' chooses for `cfg` on one device from the stream's lengths."""
  from tkx.data import packing_plan

  best = packing_plan.plan(
      [len(e["inputs"]) for e in stream],
      [len(e["targets"]) for e in stream],
      feature_lengths=LENGTHS,
      examples_per_step=HF_BATCH,
      window=window,
      config=cfg,
  )[0]
  log(f"tkx: 'auto' packing: {best.describe()}")
  return best.rows_per_step, best.layout


def ni_examples(ni_dir, num_examples, seed=0):
  """Tokenised def_pos2 training examples of the checkout, shuffled, the first `num_examples`."""
  from tkx.data import encodings, ni, vocab as vocab_lib

  # Explicitly the embedded model: the small model's gin binds the real T5 vocabulary (GCS).
  vocabulary = vocab_lib.get_vocabulary(
      vocab_lib.EMBEDDED_SPM_PATH, extra_ids=0
  )
  token_count, truncate = encodings.vocabulary_token_fns(vocabulary)
  pairs = list(
      ni.iter_split_instances(
          ni_dir, "default", "train", max_num_instances_per_task=100, seed=42
      )
  )
  order = np.random.RandomState(seed).permutation(len(pairs))[:num_examples]
  if len(order) < num_examples:
    raise SystemExit(
        f"a packing window of {num_examples} examples: {ni_dir} has only "
        f"{len(pairs)} training instances (lower --window)"
    )
  examples = []
  for index in order:
    task, instance = pairs[index]
    text = encodings.make_example(
        task,
        instance,
        "def_pos2",
        split="train",
        seed=42,
        max_source_length=LENGTHS["inputs"],
        token_count=token_count,
        truncate=truncate,
    )
    ids = {}
    for feature in ("inputs", "targets"):
      tokens = list(vocabulary.encode(text[feature]))[: LENGTHS[feature] - 1]
      ids[feature] = np.asarray(tokens + [1], np.int32)  # EOS
    examples.append(ids)
  return examples


def tkx_batches(stream, num_examples, rows_per_batch, layout, seed=0):
  """Packed batches of a seeded random sample of the rows of `stream` (one packing window).

  Whole rows are taken until they hold >= `num_examples` examples and fill
  whole batches. Returns (batches, the examples they hold in stream order,
  packing seconds).
  """
  from tkx.data import packing

  t0 = time.perf_counter()
  rows = packing.pack_window(
      [len(e["inputs"]) for e in stream],
      [len(e["targets"]) for e in stream],
      layout,
  )
  pack_s = time.perf_counter() - t0
  chosen, count = [], 0
  for r in np.random.RandomState(seed).permutation(len(rows)):
    chosen.append(int(r))
    count += sum(len(block) for block in rows[r])
    if count >= num_examples and len(chosen) % rows_per_batch == 0:
      break
  else:
    raise SystemExit(
        f"--examples={num_examples}: the window's {len(rows)} rows hold fewer "
        "examples; raise --window"
    )
  chosen.sort()  # the packer's order
  batches = [
      packing.build_rows(
          [
              [[stream[i] for i in block] for block in rows[r]]
              for r in chosen[start : start + rows_per_batch]
          ],
          layout,
      )
      for start in range(0, len(chosen), rows_per_batch)
  ]
  used = sorted(i for r in chosen for block in rows[r] for i in block)
  return batches, [stream[i] for i in used], pack_s


def flops_per_example(cfg, layout, tkx_steps, padded, n):
  """Model FLOPs per example of tkx's packed steps and of HF's padded batches."""
  from tkx.models import model_info

  tkx = sum(
      model_info.train_step_flops(
          cfg,
          len(batch["decoder_target_tokens"]),
          layout.inputs,
          layout.targets,
          encoder_blocks=layout.encoder_blocks,
      )["train_step"]
      for batch in tkx_steps
  )
  hf = sum(
      model_info.train_step_flops(cfg, *input_ids.shape, labels.shape[1])[
          "train_step"
      ]
      for input_ids, _, labels in padded
  )
  return tkx / n, hf / n


def hf_batches(examples):
  """DataCollatorForNI-style batches: pad to the longest of each batch of 16; labels padded with -100."""
  out = []
  for start in range(0, len(examples), HF_BATCH):
    chunk = examples[start : start + HF_BATCH]
    n_in = max(len(e["inputs"]) for e in chunk)
    n_tgt = max(len(e["targets"]) for e in chunk)
    input_ids = np.zeros((len(chunk), n_in), np.int64)
    labels = np.full((len(chunk), n_tgt), -100, np.int64)
    for r, e in enumerate(chunk):
      input_ids[r, : len(e["inputs"])] = e["inputs"]
      labels[r, : len(e["targets"])] = e["targets"]
    out.append((input_ids, (input_ids != 0).astype(np.int64), labels))
  return out


def fractions_tkx(batches):
  enc_real = sum(int((b["encoder_input_tokens"] > 0).sum()) for b in batches)
  dec_real = sum(int((b["decoder_loss_weights"] > 0).sum()) for b in batches)
  enc_all = sum(b["encoder_input_tokens"].size for b in batches)
  dec_all = sum(b["decoder_target_tokens"].size for b in batches)
  return (
      enc_real / enc_all,
      dec_real / dec_all,
      (enc_real + dec_real) / (enc_all + dec_all),
  )


def fractions_hf(batches):
  enc_real = sum(int(mask.sum()) for _, mask, _ in batches)
  dec_real = sum(int((labels != -100).sum()) for _, _, labels in batches)
  enc_all = sum(ids.size for ids, _, _ in batches)
  dec_all = sum(labels.size for _, _, labels in batches)
  return (
      enc_real / enc_all,
      dec_real / dec_all,
      (enc_real + dec_real) / (enc_all + dec_all),
  )


def run_tkx(cfg, batches, lr):
  import jax
  import jax.numpy as jnp
  from tkx import optimizers, trainer
  from tkx.models import model_info

  model = model_info.build_model(cfg)
  optimizer = optimizers.create_optimizer(optimizers.adamw, learning_rate=lr)
  shapes = {
      "encoder_input_tokens": (1, LENGTHS["inputs"]),
      "decoder_input_tokens": (1, LENGTHS["targets"]),
  }

  def init(rng):
    params = model.get_initial_variables(rng, shapes)["params"]
    return trainer.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(1),
    )

  state = jax.jit(init)(jax.random.PRNGKey(0))
  step = jax.jit(
      trainer.make_train_step(model, optimizer, lr), donate_argnums=(0,)
  )
  t0 = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics["loss"])
  log(f"tkx: warm-up step (compiles) {time.perf_counter() - t0:.1f}s")
  t0 = time.perf_counter()
  for i, batch in enumerate(batches):
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics["loss"])
    log(
        f"tkx: step {i + 1}/{len(batches)} loss {float(metrics['loss']):.3f} "
        f"{int(metrics['num_examples'])} examples"
    )
  return time.perf_counter() - t0


def run_hf(cfg, batches, lr, microbatch, threads):
  import torch
  from transformers import T5ForConditionalGeneration

  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = T5ForConditionalGeneration(hf_t5_config(cfg)).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

  def step(input_ids, mask, labels):
    optimizer.zero_grad(set_to_none=True)
    total = float((labels != -100).sum())
    # HF's loss is the mean over one call's targets: weight each micro-batch by its share.
    loss_sum = 0.0
    for start in range(0, len(input_ids), microbatch):
      part = slice(start, start + microbatch)
      lab = torch.from_numpy(labels[part])
      out = model(
          input_ids=torch.from_numpy(input_ids[part]),
          attention_mask=torch.from_numpy(mask[part]),
          labels=lab,
      )
      share = float((lab != -100).sum()) / total
      (out.loss * share).backward()
      loss_sum += float(out.loss.detach()) * share
    optimizer.step()
    return loss_sum

  t0 = time.perf_counter()
  step(*batches[0])
  log(f"HF: warm-up step {time.perf_counter() - t0:.1f}s")
  t0 = time.perf_counter()
  for i, batch in enumerate(batches):
    loss = step(*batch)
    log(f"HF: step {i + 1}/{len(batches)} loss {loss:.3f}")
  return time.perf_counter() - t0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--ni_dir",
      default=os.path.join(
          os.path.dirname(REPO), "shared", "natural-instructions"
      ),
      help="NI checkout (default: ../shared/natural-instructions beside the repo)",
  )
  parser.add_argument("--model", choices=("tiny", "small"), default="small")
  parser.add_argument(
      "--examples",
      type=int,
      default=128,
      help="about this many training examples each side sees once (whole packed rows)",
  )
  parser.add_argument(
      "--window",
      type=int,
      default=None,
      help="examples packed (default: finetune.gin's PACKING_WINDOW)",
  )
  parser.add_argument("--hf_microbatch", type=int, default=4)
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument(
      "--torch_threads", type=int, default=0, help="0: PyTorch's default"
  )
  parser.add_argument("--quick", action="store_true", help="~48 examples")
  args = parser.parse_args(argv)
  if args.quick:
    args.examples = 48
  if args.examples < 1:
    parser.error(f"--examples={args.examples} must be positive")
  if not os.path.isdir(os.path.join(args.ni_dir, "tasks")):
    parser.error(
        f"--ni_dir={args.ni_dir}: no tasks/ folder (not an NI checkout)"
    )

  from tkx import gin_utils

  window = args.window or recipe_window()
  cfg = gin_utils.load_config_from_gin(
      [os.path.join(REPO, f"gin_configs/models/t5_1_1/{args.model}.gin")]
  ).replace(dtype="float32", dropout_rate=0.0)
  t0 = time.perf_counter()
  stream = ni_examples(args.ni_dir, window)
  log(f"{len(stream)} examples tokenised in {time.perf_counter() - t0:.1f}s")
  rows_per_batch, layout = auto_packing(stream, cfg, window)
  packed, examples, pack_s = tkx_batches(
      stream, args.examples, rows_per_batch, layout
  )
  padded = hf_batches(examples)
  n = len(examples)
  shape = (
      f"{layout.encoder_blocks} x {layout.inputs}"
      if layout.encoder_blocks > 1
      else f"{layout.inputs}"
  ) + f" / {layout.targets}"
  log(
      f"tkx: packed {len(stream)} examples in {pack_s:.2f}s; {n} examples in "
      f"{len(packed)} steps of {rows_per_batch} rows ({shape}); "
      f"HF: {len(padded)} batches of <= {HF_BATCH}"
  )
  tkx_s = run_tkx(cfg, packed, args.learning_rate)
  hf_s = run_hf(
      cfg, padded, args.learning_rate, args.hf_microbatch, args.torch_threads
  )

  tkx_eff, hf_eff = fractions_tkx(packed), fractions_hf(padded)
  tkx_flops, hf_flops = flops_per_example(cfg, layout, packed, padded, n)
  print(
      f"\nNI def_pos2 training, t5_1_1 {args.model} (float32, AdamW), {n} examples once each, "
      f"inputs <= 1024 / targets <= 128 tokens; {cpu_name()} ({os.cpu_count()} CPUs visible)"
  )
  print(
      f"{'':<44}{'steps':>6}{'ex/step':>9}{'s':>9}{'examples/s':>12}"
      f"{'real enc':>10}{'real dec':>10}{'real all':>10}{'GFLOP/ex':>10}"
  )
  for name, steps, seconds, (enc, dec, both), flops in (
      (
          f"tkx packed ({rows_per_batch} rows x {shape})",
          len(packed),
          tkx_s,
          tkx_eff,
          tkx_flops,
      ),
      (
          "HF transformers (16, pad to longest)",
          len(padded),
          hf_s,
          hf_eff,
          hf_flops,
      ),
  ):
    print(
        f"{name:<44}{steps:>6}{n / steps:>9.1f}{seconds:>9.1f}{n / seconds:>12.2f}"
        f"{enc:>10.1%}{dec:>10.1%}{both:>10.1%}{flops / 1e9:>10.1f}"
    )
  print(f"real-token fraction tkx/HF: {tkx_eff[2] / hf_eff[2]:.2f}")
  print(f"model FLOPs per example HF/tkx: {hf_flops / tkx_flops:.2f}")
  print(f"examples/s ratio tkx/HF: {hf_s / tkx_s:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
