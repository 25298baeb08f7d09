"""Compile time of T5 1.1 XL's full training step, per-layer vs scan_layers, on 8 forced CPU devices.

    python bench/compile_time.py [--quick] [--size xl] [--data 4 --model 2]

Ahead-of-time: `jit(step).lower(abstract state, abstract batch).compile()`, so
nothing is allocated (XL's parameters and AdamW state never exist). The step is
tkx's training step (loss, gradients, AdamW update) with parameters and
optimizer state sharded on a data x model mesh (FSDP: `embed` over `data`,
t5x's rules otherwise), bfloat16 activations, batch 8 x 1024/128 tokens.
The last line is `speed-up from scan_layers: X.XX` (per-layer / scanned).
--quick compiles T5 1.1 small instead.
"""

import argparse
import os
import sys
import time

# Before JAX loads: 8 host devices, CPU only.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
      _flags + " --xla_force_host_platform_device_count=8"
  ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accel_common  # noqa: E402
from common import log  # noqa: E402


def compile_seconds(config, partitioner, args):
  jitted, state, batch, _ = accel_common.sharded_train_step(
      config,
      partitioner,
      args.batch_size,
      args.inputs_length,
      args.targets_length,
  )
  t0 = time.perf_counter()
  lowered = jitted.lower(state, batch)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return t1 - t0, t2 - t1


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--quick", action="store_true", help="T5 1.1 small instead of XL"
  )
  parser.add_argument(
      "--size",
      default=None,
      help="T5 1.1 size (default xl; small with --quick)",
  )
  parser.add_argument("--data", type=int, default=4, help="data axis size")
  parser.add_argument("--model", type=int, default=2, help="model axis size")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--inputs_length", type=int, default=1024)
  parser.add_argument("--targets_length", type=int, default=128)
  args = parser.parse_args(argv)
  size = args.size or ("small" if args.quick else "xl")
  if size not in accel_common.T5_1_1_SIZES:
    parser.error(
        f"--size {size!r}: choose from {sorted(accel_common.T5_1_1_SIZES)}"
    )

  import jax

  from tkx import partitioning

  if jax.device_count() != args.data * args.model:
    parser.error(
        f"--data {args.data} x --model {args.model} needs {args.data * args.model} devices, "
        f"JAX has {jax.device_count()} (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})"
    )
  partitioner = partitioning.Partitioner(
      data_axis_size=args.data,
      model_axis_size=args.model,
      shard_params_over_data=True,
  )
  print(
      f"CPU: {accel_common.cpu_name()} ({os.cpu_count()} cores); {jax.device_count()} "
      f"{jax.default_backend()} devices, mesh data={args.data} x model={args.model}, FSDP"
  )
  print(
      f"T5 1.1 {size}: full training step (AdamW), batch {args.batch_size} x "
      f"{args.inputs_length}/{args.targets_length} tokens, bfloat16 activations"
  )
  # Timed compiles must compile: a persistent cache (JAX_COMPILATION_CACHE_DIR) would hand back
  # an executable an earlier run built.
  jax.config.update("jax_enable_compilation_cache", False)
  results = {}
  for scanned in (False, True):
    label = "scan_layers" if scanned else "per-layer"
    log(f"compiling {label} ...")
    config = accel_common.t5_config(size, scan_layers=scanned)
    lower_s, compile_s = compile_seconds(config, partitioner, args)
    results[scanned] = lower_s + compile_s
    print(
        f"{label:12s} trace+lower {lower_s:7.1f} s   compile {compile_s:7.1f} s   "
        f"total {lower_s + compile_s:7.1f} s",
        flush=True,
    )
  print(f"speed-up from scan_layers: {results[False] / results[True]:.2f}")


if __name__ == "__main__":
  main()
