"""NI training throughput in examples/s: tkx packed vs Tk-Instruct's Hugging Face recipe, same run.

    python bench/train_throughput.py                      # t5_1_1 small, 128 examples
    python bench/train_throughput.py --quick              # 48 examples
    python bench/train_throughput.py --model tiny --examples 512 --ni_dir ../shared/natural-instructions

Both sides train the same T5 1.1 config (random initialisation, float32, dropout
off, AdamW lr 1e-4, weight decay 0) on the same NI `def_pos2` training examples
(the checkout's train split, 100 instances per task, tokenised with the
embedded vocabulary and cut to 1024 / 128 tokens as Tk-Instruct's collator
does, shuffled with seed 0, the first `--examples`), each example exactly once:

- tkx: its packed recipe (gin_configs/runs/finetune.gin): `tkx.data.packing`
  rows of 1024 / 128 tokens, 8 rows per step, a window of 1000 examples; the
  jitted `trainer.make_train_step`.
- Hugging Face transformers (PyTorch): `T5ForConditionalGeneration`, batches of
  16 examples in stream order padded to the longest input and target of the
  batch (Tk-Instruct's `DataCollatorForNI` with padding="longest", labels padded
  with -100), `torch.optim.AdamW`. A batch runs as micro-batches of
  `--hf_microbatch` rows (same padding, loss weighted per target token) to fit
  this machine's memory; the work is the same.

Timed: the optimizer steps over all batches after one warm-up step (compilation
for tkx); batch building is not timed on either side (tkx's packing costs are
printed). Real-token fraction = (input + target tokens) / positions computed.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO, hf_t5_config, log  # noqa: E402  (puts the repo root on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

LENGTHS = {"inputs": 1024, "targets": 128}
HF_BATCH = 16


def cpu_name() -> str:
  try:
    out = subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=True
    ).stdout
  except (OSError, subprocess.CalledProcessError):
    return "unknown CPU"
  for line in out.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return "unknown CPU"


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
        f"--examples={num_examples}: {ni_dir} has only {len(pairs)} training instances"
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


def tkx_batches(examples, rows_per_batch, window):
  from tkx.data import packing

  t0 = time.perf_counter()
  batches = [
      batch
      for batch, _ in packing.packed_batches(
          lambda start: iter(examples[start:]),
          batch_size=rows_per_batch,
          feature_lengths=LENGTHS,
          window=window,
      )
  ]
  return batches, time.perf_counter() - t0


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
      help="training examples each side sees once (a multiple of 16)",
  )
  parser.add_argument(
      "--rows_per_batch",
      type=int,
      default=8,
      help="tkx packed rows per step (finetune.gin's PACKED_BATCH_SIZE)",
  )
  parser.add_argument(
      "--window",
      type=int,
      default=1000,
      help="tkx packing window (finetune.gin's PACKING_WINDOW)",
  )
  parser.add_argument("--hf_microbatch", type=int, default=4)
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument(
      "--torch_threads", type=int, default=0, help="0: PyTorch's default"
  )
  parser.add_argument("--quick", action="store_true", help="48 examples")
  args = parser.parse_args(argv)
  if args.quick:
    args.examples = 48
  if args.examples < HF_BATCH or args.examples % HF_BATCH:
    parser.error(
        f"--examples={args.examples} must be a positive multiple of 16"
    )
  if not os.path.isdir(os.path.join(args.ni_dir, "tasks")):
    parser.error(
        f"--ni_dir={args.ni_dir}: no tasks/ folder (not an NI checkout)"
    )

  from tkx import gin_utils

  cfg = gin_utils.load_config_from_gin(
      [os.path.join(REPO, f"gin_configs/models/t5_1_1/{args.model}.gin")]
  ).replace(dtype="float32", dropout_rate=0.0)
  t0 = time.perf_counter()
  examples = ni_examples(args.ni_dir, args.examples)
  log(f"{len(examples)} examples tokenised in {time.perf_counter() - t0:.1f}s")
  packed, pack_s = tkx_batches(examples, args.rows_per_batch, args.window)
  padded = hf_batches(examples)
  log(
      f"tkx: {len(packed)} packed batches of {args.rows_per_batch} rows (packing {pack_s:.2f}s); "
      f"HF: {len(padded)} batches of {HF_BATCH}"
  )
  tkx_s = run_tkx(cfg, packed, args.learning_rate)
  hf_s = run_hf(
      cfg, padded, args.learning_rate, args.hf_microbatch, args.torch_threads
  )

  n = len(examples)
  tkx_eff, hf_eff = fractions_tkx(packed), fractions_hf(padded)
  print(
      f"\nNI def_pos2 training, t5_1_1 {args.model} (float32, AdamW), {n} examples once each, "
      f"inputs <= 1024 / targets <= 128 tokens; {cpu_name()} ({os.cpu_count()} CPUs visible)"
  )
  print(
      f"{'':<44}{'steps':>6}{'ex/step':>9}{'s':>9}{'examples/s':>12}"
      f"{'real enc':>10}{'real dec':>10}{'real all':>10}"
  )
  for name, steps, seconds, (enc, dec, both) in (
      (
          f"tkx packed ({args.rows_per_batch} rows x 1024/128)",
          len(packed),
          tkx_s,
          tkx_eff,
      ),
      ("HF transformers (16, pad to longest)", len(padded), hf_s, hf_eff),
  ):
    print(
        f"{name:<44}{steps:>6}{n / steps:>9.1f}{seconds:>9.1f}{n / seconds:>12.2f}"
        f"{enc:>10.1%}{dec:>10.1%}{both:>10.1%}"
    )
  print(f"real-token fraction tkx/HF: {tkx_eff[2] / hf_eff[2]:.2f}")
  print(f"examples/s ratio tkx/HF: {hf_s / tkx_s:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
