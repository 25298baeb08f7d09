"""Forward+backward throughput of the tkx T5 against Hugging Face PyTorch, same config, same run.

Both frameworks run one training step's forward and backward pass (no
optimizer update) on random tokens at the same shapes, from random
initialisation with dropout off; their timed steps alternate so that a shared
machine's load hits both alike. Achieved FLOP/s use the formula of
`tkx.models.model_info.train_step_flops` for both, and are compared with this
machine's measured float32 matmul peak (best run of a large square matmul in
JAX and in PyTorch, the larger of the two).

    python bench/model_step.py            # t5_1_1 small, batch 8, inputs 512, targets 128
    python bench/model_step.py --quick    # one timed step each, for a smoke run
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import hf_t5_config, log, random_batch, timed  # noqa: E402  (puts the repo root on sys.path)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tkx import gin_utils  # noqa: E402
from tkx.models import model_info  # noqa: E402


def _best_seconds(fn, repeats, label):
  fn()  # warm-up / compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  log(f"{label}: best {min(times):.3f}s of {repeats}")
  return min(times)


def matmul_peak(n, repeats, with_torch=True):
  """Best float32 FLOP/s of an n x n matmul: {"jax": ..., "torch": ...}.

  The best of several runs estimates what the cores can do; the machine's peak
  is the larger of the two libraries' numbers (XLA's CPU matmul and PyTorch's
  oneDNN/MKL kernels differ).
  """
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  flops = 2.0 * n**3
  peaks = {
      "jax": (
          flops
          / _best_seconds(
              lambda: mm(a, b).block_until_ready(), repeats, f"JAX matmul {n}"
          )
      )
  }
  if with_torch:
    import torch

    ta, tb = torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b))
    peaks["torch"] = flops / _best_seconds(
        lambda: torch.matmul(ta, tb), repeats, f"PyTorch matmul {n}"
    )
  return peaks


def tkx_step(cfg, enc, dec, tgt):
  model = model_info.build_model(cfg)
  params = jax.jit(
      lambda r: model.get_initial_variables(
          r,
          {
              "encoder_input_tokens": enc.shape,
              "decoder_input_tokens": dec.shape,
          },
      )["params"]
  )(jax.random.PRNGKey(0))
  batch = {
      "encoder_input_tokens": jnp.asarray(enc),
      "decoder_input_tokens": jnp.asarray(dec),
      "decoder_target_tokens": jnp.asarray(tgt),
      "decoder_loss_weights": jnp.ones(tgt.shape, jnp.float32),
  }
  grad_fn = jax.jit(
      jax.value_and_grad(lambda p, b: model.loss_fn(p, b, None)[0])
  )

  def step():
    loss, grads = grad_fn(params, batch)
    jax.block_until_ready(grads)

  return step


def hf_step(cfg, enc, dec, tgt, threads):
  import torch
  from transformers import T5ForConditionalGeneration

  if threads:
    torch.set_num_threads(threads)
  hf_cfg = hf_t5_config(cfg)
  torch.manual_seed(0)
  model = T5ForConditionalGeneration(hf_cfg).train()
  enc_t, dec_t, tgt_t = (
      torch.from_numpy(x.astype(np.int64)) for x in (enc, dec, tgt)
  )
  mask = torch.ones_like(enc_t)

  def step():
    model.zero_grad(set_to_none=True)
    out = model(
        input_ids=enc_t,
        attention_mask=mask,
        decoder_input_ids=dec_t,
        labels=tgt_t,
    )
    out.loss.backward()

  return step


def run_interleaved(steps_by_name, warmup, steps):
  """Warms every framework up, then alternates their timed steps.

  Alternating keeps a shared machine's changing load from favouring whichever
  framework happened to run in a quiet minute. Returns {name: [seconds]}.
  """
  for name, fn in steps_by_name.items():
    timed(fn, warmup, 0, name)
  times = {name: [] for name in steps_by_name}
  for i in range(steps):
    for name, fn in steps_by_name.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
      log(f"{name}: step {i + 1}/{steps} {times[name][-1]:.2f}s")
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--gin_file", default="gin_configs/models/t5_1_1/small.gin"
  )
  parser.add_argument(
      "--dtype",
      default="float32",
      help="activation dtype for tkx (HF runs float32)",
  )
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--inputs_length", type=int, default=512)
  parser.add_argument("--targets_length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--matmul_size", type=int, default=4096)
  parser.add_argument(
      "--torch_threads", type=int, default=0, help="0: PyTorch's default"
  )
  parser.add_argument("--skip_hf", action="store_true")
  parser.add_argument(
      "--quick",
      action="store_true",
      help="1 warm-up + 1 timed step, smaller peak matmul",
  )
  parser.add_argument(
      "--smoke",
      action="store_true",
      help="a few seconds' run to check the script works (tests); its figures mean nothing",
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.warmup, args.matmul_size = 1, 1, 2048
  if args.smoke:
    args.gin_file = "gin_configs/models/t5_1_1/tiny.gin"
    args.batch_size, args.inputs_length, args.targets_length = 2, 32, 8
    args.steps, args.warmup, args.matmul_size = 1, 1, 256

  cfg = gin_utils.load_config_from_gin([args.gin_file]).replace(
      dtype=args.dtype, dropout_rate=0.0
  )
  b, li, lt = args.batch_size, args.inputs_length, args.targets_length
  flops = model_info.train_step_flops(cfg, b, li, lt)["train_step"]
  tokens = b * (li + lt)
  log(
      f"{args.gin_file}: {model_info.count_params(cfg)['total']:,} params; step = "
      f"{model_info.human(flops, 'FLOP')} (forward+backward) on {jax.devices()[0].platform}"
  )
  peaks = matmul_peak(
      args.matmul_size, max(args.steps, 3), with_torch=not args.skip_hf
  )
  peak = max(peaks.values())
  enc, dec, tgt = random_batch(cfg.vocab_size, b, li, lt)
  fns = {"tkx (JAX/Flax)": tkx_step(cfg, enc, dec, tgt)}
  if not args.skip_hf:
    fns["HF transformers (PyTorch)"] = hf_step(
        cfg, enc, dec, tgt, args.torch_threads
    )
  times = run_interleaved(fns, args.warmup, args.steps)

  print(
      f"\nforward+backward, {os.path.basename(os.path.dirname(args.gin_file))}/"
      f"{os.path.basename(args.gin_file)} ({cfg.dtype}), batch {b}, inputs {li}, targets {lt}; "
      f"{jax.devices()[0].device_kind} ({os.cpu_count()} CPUs visible), {args.steps} interleaved steps each"
  )
  print(
      f"measured float32 matmul peak ({args.matmul_size}^2, best run): "
      + ", ".join(
          f"{k} {model_info.human(v, 'FLOP/s')}" for k, v in peaks.items()
      )
      + f" -> peak {model_info.human(peak, 'FLOP/s')}"
  )
  print(
      f"{'framework':<28}{'median s':>9}{'best s':>8}{'tokens/s':>10}{'FLOP/s':>12}{'of peak':>9}{'vs HF':>7}"
  )
  hf_name = "HF transformers (PyTorch)"
  hf_time = statistics.median(times[hf_name]) if hf_name in times else None
  for name, seconds_list in times.items():
    seconds = statistics.median(seconds_list)
    achieved = flops / seconds
    speedup = f"{hf_time / seconds:.2f}x" if hf_time else "-"
    print(
        f"{name:<28}{seconds:>9.2f}{min(seconds_list):>8.2f}{tokens / seconds:>10,.0f}"
        f"{model_info.human(achieved, 'FLOP/s'):>12}{achieved / peak:>9.1%}{speedup:>7}"
    )
  print(
      "(tokens = inputs + targets; FLOP/s from the median step; 'vs HF' = HF time / this time)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
