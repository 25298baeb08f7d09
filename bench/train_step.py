"""Full training-step throughput (optimizer included): tkx vs Hugging Face PyTorch, same run.

Both sides train the same T5 1.1 config from random initialisation (dropout off,
float32 activations) on the same random batch with AdamW (lr 1e-4, weight decay 0):
tkx runs `trainer.make_train_step` jitted with donated state (forward, backward,
global norms, the optax AdamW update), PyTorch runs forward, backward and
`torch.optim.AdamW.step()` with `set_to_none` zeroing. Model FLOP utilisation uses
`tkx.models.model_info.train_step_flops` for both and this machine's measured
float32 matmul peak (a large square matmul in JAX, same run).

    python bench/train_step.py                 # small and base, batch 4, inputs 256, targets 64
    python bench/train_step.py --quick         # small only, batch 2, 128 / 32, one timed step
    python bench/train_step.py --sizes base --batch_size 8 --inputs_length 512 --targets_length 128
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import hf_t5_config, log, random_batch, timed  # noqa: E402  (puts the repo root on sys.path)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def matmul_peak(n, repeats):
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  return (
      2.0
      * n**3
      / timed(lambda: mm(a, b).block_until_ready(), 1, repeats, f"matmul {n}")
  )


def bench_tkx(cfg, enc, dec, tgt, warmup, steps, lr):
  from tkx import optimizers, trainer
  from tkx.models import model_info

  model = model_info.build_model(cfg)
  optimizer = optimizers.create_optimizer(optimizers.adamw, learning_rate=lr)
  shapes = {
      "encoder_input_tokens": enc.shape,
      "decoder_input_tokens": dec.shape,
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
  batch = {
      "encoder_input_tokens": jnp.asarray(enc),
      "decoder_input_tokens": jnp.asarray(dec),
      "decoder_target_tokens": jnp.asarray(tgt),
      "decoder_loss_weights": jnp.ones(tgt.shape, jnp.float32),
  }
  train_step = jax.jit(
      trainer.make_train_step(model, optimizer, lr), donate_argnums=(0,)
  )
  holder = {"state": state}

  def step():
    holder["state"], metrics = train_step(holder["state"], batch)
    jax.block_until_ready(metrics["loss"])

  return timed(step, warmup, steps, "tkx (JAX)")


def bench_hf(cfg, enc, dec, tgt, warmup, steps, lr, threads):
  import torch
  from transformers import T5ForConditionalGeneration

  if threads:
    torch.set_num_threads(threads)
  hf_cfg = hf_t5_config(cfg)
  torch.manual_seed(0)
  model = T5ForConditionalGeneration(hf_cfg).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
  enc_t, dec_t, tgt_t = (
      torch.from_numpy(x.astype(np.int64)) for x in (enc, dec, tgt)
  )
  mask = torch.ones_like(enc_t)

  def step():
    optimizer.zero_grad(set_to_none=True)
    out = model(
        input_ids=enc_t,
        attention_mask=mask,
        decoder_input_ids=dec_t,
        labels=tgt_t,
    )
    out.loss.backward()
    optimizer.step()

  return timed(step, warmup, steps, "HF transformers (PyTorch)")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--sizes", default="small,base", help="t5_1_1 sizes, comma-separated"
  )
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--inputs_length", type=int, default=256)
  parser.add_argument("--targets_length", type=int, default=64)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--matmul_size", type=int, default=2048)
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument(
      "--torch_threads", type=int, default=0, help="0: PyTorch's default"
  )
  parser.add_argument(
      "--quick",
      action="store_true",
      help="small only, batch 2, 128/32, one timed step",
  )
  parser.add_argument(
      "--smoke",
      action="store_true",
      help="a few seconds' run to check the script works (tests); its figures mean nothing",
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.sizes, args.batch_size, args.inputs_length, args.targets_length = (
        "small",
        2,
        128,
        32,
    )
    args.steps, args.warmup, args.matmul_size = 1, 1, 1024
  if args.smoke:
    args.sizes, args.batch_size, args.inputs_length, args.targets_length = (
        "tiny",
        2,
        32,
        8,
    )
    args.steps, args.warmup, args.matmul_size = 1, 1, 256

  from tkx import gin_utils
  from tkx.models import model_info

  b, li, lt = args.batch_size, args.inputs_length, args.targets_length
  tokens = b * (li + lt)
  peak = matmul_peak(args.matmul_size, 3)
  rows = []
  for size in args.sizes.split(","):
    gin_file = f"gin_configs/models/t5_1_1/{size}.gin"
    cfg = gin_utils.load_config_from_gin([gin_file]).replace(
        dtype="float32", dropout_rate=0.0
    )
    flops = model_info.train_step_flops(cfg, b, li, lt)["train_step"]
    log(
        f"{size}: {model_info.count_params(cfg)['total']:,} params, {model_info.human(flops, 'FLOP')} per step"
    )
    enc, dec, tgt = random_batch(cfg.vocab_size, b, li, lt)
    jax_s = bench_tkx(
        cfg, enc, dec, tgt, args.warmup, args.steps, args.learning_rate
    )
    hf_s = bench_hf(
        cfg,
        enc,
        dec,
        tgt,
        args.warmup,
        args.steps,
        args.learning_rate,
        args.torch_threads,
    )
    rows.append((size, flops, jax_s, hf_s))

  print(
      f"\nfull train step with AdamW, t5_1_1 (float32), batch {b}, inputs {li}, targets {lt}; "
      f"{jax.devices()[0].device_kind} ({os.cpu_count()} CPUs visible)"
  )
  print(
      f"measured float32 matmul peak ({args.matmul_size}^2, JAX): {model_info.human(peak, 'FLOP/s')}"
  )
  print(
      f"{'size':<6}{'framework':<27}{'s/step':>9}{'tokens/s':>11}{'MFU':>8}{'tkx / HF':>10}"
  )
  for size, flops, jax_s, hf_s in rows:
    for name, seconds in (
        ("tkx (JAX/Flax + optax)", jax_s),
        ("HF transformers (PyTorch)", hf_s),
    ):
      ratio = f"{hf_s / jax_s:.2f}x" if name.startswith("tkx") else ""
      print(
          f"{size:<6}{name:<27}{seconds:>9.3f}{tokens / seconds:>11,.0f}"
          f"{flops / seconds / peak:>8.1%}{ratio:>10}"
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
