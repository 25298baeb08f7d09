"""One accelerator benchmark: tkx's bf16 training step and greedy decoding against Hugging Face PyTorch.

    python bench/accelerator.py --output results.json            # a GPU (aims: one H100/H200, < 8 min)
    python bench/accelerator.py --quick --output /tmp/quick.json # tiny sizes, runs anywhere (CPU test)

Training: T5 1.1 small, base, large and XL at 1024/128 tokens, bfloat16
activations, float32 parameters, AdamW, random tokens. tkx variants: attention
'cudnn' vs 'xla' and scan_layers vs per-layer; each reports compile time, step
time (median), tokens/s (input + target tokens) and MFU = model FLOPs
(tkx.models.model_info's formula, attention included) / step time / the
device's dense bf16 peak. Beside it, in the same run, Hugging Face
transformers `T5ForConditionalGeneration` on the same config and batch:
float32 parameters, `torch.autocast(bfloat16)`, fused AdamW.

Decoding: greedy, 128 new tokens for a batch of random inputs padded to 1024,
tkx (`predict_batch`, `tkx.decoding.greedy`) against HF `generate` with the
same weights (converted by tkx.checkpoints.hf), bfloat16 weights and
activations in both; examples/s and how many outputs are token-identical.

Every measurement runs in its own subprocess (GPU memory is returned between
them, and a failure such as an out-of-memory or an unsupported cuDNN shape is
recorded and the run goes on). Measurements run in order of importance until
--budget_s is spent; the rest are listed as skipped. Results go to --output
(JSON) and a table to stdout; the last lines give the ratios against HF.

Needs jax, flax, optax, orbax-checkpoint, numpy, torch and transformers; not
seqio, TensorFlow or gin (a stand-in is used when gin-config is absent; see
accel_common.ensure_gin).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accel_common  # noqa: E402

# Dense bfloat16 peak FLOP/s per device (vendor data sheets), matched against jax's device_kind.
BF16_PEAK_FLOPS = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM / NVL
    ("GH200", 989.4e12),
    ("A100", 312.0e12),
    ("L40S", 362.0e12),
    ("L4", 121.0e12),
    ("TPU v5p", 459.0e12),
    ("TPU v5", 197.0e12),
    ("TPU v4", 275.0e12),
)

FULL = dict(
    sizes=("small", "base", "large", "xl"),
    batch={"small": 64, "base": 32, "large": 16, "xl": 8},
    inputs_length=1024,
    targets_length=128,
    warmup=2,
    steps=5,
    decode_batch=32,
    decode_length=128,
    decode_dtype="bfloat16",
    budget_s=450,
)
QUICK = dict(
    sizes=("tiny",),
    batch={"tiny": 2},
    inputs_length=64,
    targets_length=16,
    warmup=1,
    steps=2,
    decode_batch=2,
    decode_length=8,
    # float32 here, so that the two frameworks' greedy outputs must agree exactly
    decode_dtype="float32",
    budget_s=600,
)


def peak_flops(device_kind: str):
  for name, flops in BF16_PEAK_FLOPS:
    if name in device_kind:
      return flops
  return None


def _median_time(fn, warmup, steps):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), min(times)


def _random_tokens(vocab, batch, length, seed, pad_from=None):
  import numpy as np

  rng = np.random.RandomState(seed)
  tokens = rng.randint(2, vocab, (batch, length)).astype(np.int32)
  if pad_from is not None:  # right padding from a random length per row
    lengths = rng.randint(pad_from, length + 1, batch)
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
  return tokens


# ----------------------------------------------------------------------------- workers
def worker_tkx_train(spec):
  import jax
  import numpy as np

  from tkx import partitioning
  from tkx.models import model_info

  cfg = accel_common.t5_config(
      spec["size"],
      scan_layers=spec["scan_layers"],
      attention_impl=spec["attention"],
  )
  b, li, lt = spec["batch"], spec["inputs_length"], spec["targets_length"]
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  jitted, abstract_state, abstract_batch, materialise = (
      accel_common.sharded_train_step(cfg, partitioner, b, li, lt)
  )
  t0 = time.perf_counter()
  compiled = jitted.lower(abstract_state, abstract_batch).compile()
  compile_s = time.perf_counter() - t0
  state = materialise(jax.random.PRNGKey(0))
  targets = _random_tokens(cfg.vocab_size, b, lt, 1)
  batch = {
      "encoder_input_tokens": _random_tokens(cfg.vocab_size, b, li, 0),
      "decoder_target_tokens": targets,
      "decoder_input_tokens": np.concatenate(
          [np.zeros((b, 1), np.int32), targets[:, :-1]], 1
      ),
      "decoder_loss_weights": np.ones((b, lt), np.float32),
  }
  batch = jax.device_put(batch, partitioner.data_sharding)
  holder = {"state": state}

  def step():
    with jax.set_mesh(partitioner.mesh):
      holder["state"], metrics = compiled(holder["state"], batch)
    holder["loss"] = float(metrics["loss"])  # waits for the step

  median_s, best_s = _median_time(step, spec["warmup"], spec["steps"])
  flops = model_info.train_step_flops(cfg, b, li, lt)["train_step"]
  return dict(
      compile_s=compile_s,
      step_s=median_s,
      best_step_s=best_s,
      flops_per_step=flops,
      loss=holder["loss"],
      device_kind=jax.devices()[0].device_kind,
      backend=jax.default_backend(),
  )


def _hf_model(cfg, dtype):
  import common
  import torch
  import transformers

  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(common.hf_t5_config(cfg))
  with torch.no_grad():  # T5 1.1's own LM head (transformers 5 builds it tied to `shared`)
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn(cfg.vocab_size, cfg.emb_dim) * 0.05
    )
  return model.to(dtype)


def worker_hf_train(spec):
  import torch

  cfg = accel_common.t5_config(spec["size"])
  b, li, lt = spec["batch"], spec["inputs_length"], spec["targets_length"]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = _hf_model(cfg, torch.float32).to(device).train()
  optimizer = torch.optim.AdamW(
      model.parameters(), lr=1e-4, fused=device == "cuda"
  )
  inputs = torch.tensor(
      _random_tokens(cfg.vocab_size, b, li, 0), dtype=torch.long, device=device
  )
  labels = torch.tensor(
      _random_tokens(cfg.vocab_size, b, lt, 1), dtype=torch.long, device=device
  )
  out = {}

  def step():
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
      loss = model(input_ids=inputs, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out["loss"] = float(loss)  # synchronises
    if device == "cuda":
      torch.cuda.synchronize()

  median_s, best_s = _median_time(step, spec["warmup"], spec["steps"])
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  return dict(
      step_s=median_s, best_step_s=best_s, loss=out["loss"], device=name
  )


def worker_decode(spec):
  """tkx greedy vs HF generate on the same bf16 weights and inputs (one process: JAX grows its memory on demand)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from tkx import decoding
  from tkx.checkpoints import hf
  from tkx.models import models, network

  cfg = accel_common.t5_config(
      spec["size"],
      dtype=spec["dtype"],
      param_dtype=spec["dtype"],
      attention_impl=spec["attention"],
  )
  b, li, n_new = spec["batch"], spec["inputs_length"], spec["decode_length"]
  model = models.EncoderDecoderModel(network.Transformer(cfg))
  # One set of random weights for both: made by PyTorch, converted by tkx.checkpoints.hf.
  device = "cuda" if torch.cuda.is_available() else "cpu"
  hf_model = _hf_model(cfg, torch.float32)
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  params = jax.device_put(
      hf.hf_to_params(state, cfg, dtype=jnp.dtype(spec["dtype"]), consume=True)
  )
  hf_model = hf_model.to(device=device, dtype=getattr(torch, spec["dtype"]))
  hf_model = hf_model.eval()
  inputs = _random_tokens(cfg.vocab_size, b, li, 0, pad_from=li // 4)
  predict = jax.jit(
      lambda p, x: model.predict_batch(
          p,
          {"encoder_input_tokens": x},
          decode_fn=decoding.greedy,
          max_decode_length=n_new,
      )
  )
  t0 = time.perf_counter()
  tkx_out = np.asarray(predict(params, inputs))  # compile + first run
  first_s = time.perf_counter() - t0
  tkx_s, _ = _median_time(
      lambda: np.asarray(predict(params, jnp.asarray(inputs))),
      0,
      spec["steps"],
  )
  ids = torch.tensor(inputs, dtype=torch.long, device=device)
  attention_mask = (ids > 0).long()
  hf_out = {}

  def generate():
    with torch.no_grad():
      hf_out["tokens"] = hf_model.generate(
          input_ids=ids,
          attention_mask=attention_mask,
          max_new_tokens=n_new,
          do_sample=False,
          num_beams=1,
      )
    if device == "cuda":
      torch.cuda.synchronize()

  hf_s, _ = _median_time(generate, 1, spec["steps"])
  hf_tokens = hf_out["tokens"][:, 1:].cpu().numpy()  # drop the start token

  def until_eos(row):  # both pad with 0 after EOS (id 1)
    eos = np.flatnonzero(row == 1)
    return row[: eos[0] + 1] if len(eos) else row

  identical = sum(
      int(np.array_equal(until_eos(a), until_eos(h)))
      for a, h in zip(tkx_out, hf_tokens)
  )
  return dict(
      tkx_s=tkx_s,
      tkx_first_call_s=first_s,
      hf_s=hf_s,
      tkx_examples_per_s=b / tkx_s,
      hf_examples_per_s=b / hf_s,
      identical_outputs=identical,
      examples=b,
      device_kind=jax.devices()[0].device_kind,
  )


WORKERS = {
    "tkx_train": worker_tkx_train,
    "hf_train": worker_hf_train,
    "decode": worker_decode,
}


def run_worker(spec_json: str, out_path: str):
  spec = json.loads(spec_json)
  if accel_common.ensure_gin():
    print(
        "gin-config is not installed: tkx runs with a stand-in (configs are built in Python)",
        file=sys.stderr,
    )
  try:
    result = dict(ok=True, **WORKERS[spec["kind"]](spec))
  except Exception as e:  # recorded in the results; the run goes on
    traceback.print_exc()
    result = dict(ok=False, error=f"{type(e).__name__}: {str(e)[:500]}")
  with open(out_path, "w") as f:
    json.dump(result, f)


# ----------------------------------------------------------------------------- driver
def plan(settings, args):
  """Measurements in order of importance."""
  sizes = [s for s in settings["sizes"] if s in args.sizes]
  common = dict(
      inputs_length=settings["inputs_length"],
      targets_length=settings["targets_length"],
      warmup=settings["warmup"],
      steps=settings["steps"],
  )

  def train(kind, size, scan=True, attention="cudnn"):
    spec = dict(common, kind=kind, size=size, batch=settings["batch"][size])
    if kind == "tkx_train":
      spec.update(scan_layers=scan, attention=attention)
    return spec

  def decode(size):
    return dict(
        common,
        kind="decode",
        size=size,
        batch=settings["decode_batch"],
        decode_length=settings["decode_length"],
        attention="cudnn",
        dtype=settings["decode_dtype"],
        steps=2,
    )

  if (
      args.quick
  ):  # every worker kind once (the variants differ only in T5Config fields)
    return [
        train("tkx_train", "tiny"),
        train("hf_train", "tiny"),
        decode("tiny"),
    ]
  # Most important first: XL and small against HF, XL's attention variants, decoding,
  # XL per layer, then base and large against HF, then every other variant.
  order = sorted(sizes, key=lambda s: (s != "xl", s != "small"))
  head, rest = order[:2], order[2:]
  items = []
  for size in head:
    items += [train("tkx_train", size), train("hf_train", size)]
  items += [train("tkx_train", order[0], attention="xla")]
  items += [decode(s) for s in head]
  # Per layer compiles longest (the reason for scan_layers), so after the decoding runs.
  items += [train("tkx_train", order[0], scan=False, attention="cudnn")]
  for size in rest:
    items += [train("tkx_train", size), train("hf_train", size)]
  for size in order:
    for scan, attention in ((True, "xla"), (False, "xla"), (False, "cudnn")):
      item = train("tkx_train", size, scan=scan, attention=attention)
      if item not in items:
        items.append(item)
  items += [decode(s) for s in rest]
  return items


def _worker_env(spec):
  """JAX's GPU memory: most of the device for training; on demand for decoding, which shares it with PyTorch."""
  env = dict(os.environ)
  if spec["kind"] == "tkx_train":
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
  elif spec["kind"] == "decode":
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  return env


def label(spec):
  if spec["kind"] == "tkx_train":
    return (
        f"tkx   {spec['size']:6s} {'scan' if spec['scan_layers'] else 'per-layer':9s} "
        f"{spec['attention']:5s}"
    )
  if spec["kind"] == "hf_train":
    return f"HF    {spec['size']:6s} {'':15s}"
  return f"decode {spec['size']:6s}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", required=True, help="results JSON path")
  parser.add_argument(
      "--quick", action="store_true", help="tiny sizes (CPU test)"
  )
  parser.add_argument(
      "--sizes", default=None, help="comma-separated subset of the sizes"
  )
  parser.add_argument(
      "--budget_s",
      type=float,
      default=None,
      help="stop starting new measurements after this",
  )
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker_output", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return run_worker(args.worker, args.worker_output)

  settings = QUICK if args.quick else FULL
  args.sizes = args.sizes.split(",") if args.sizes else list(settings["sizes"])
  unknown = [s for s in args.sizes if s not in settings["sizes"]]
  if unknown:
    parser.error(f"--sizes {unknown}: choose from {list(settings['sizes'])}")
  budget = args.budget_s or settings["budget_s"]
  import tkx  # noqa: F401  (adds the GPU XLA_FLAGS defaults, which the workers inherit; printed below)

  out_dir = os.path.dirname(os.path.abspath(args.output))
  os.makedirs(out_dir, exist_ok=True)
  start = time.perf_counter()
  print(
      f"host CPU: {accel_common.cpu_name()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
      f"budget {budget:.0f} s",
      flush=True,
  )
  results = []
  for spec in plan(settings, args):
    left = budget - (time.perf_counter() - start)
    if left < 15:
      results.append(
          dict(spec=spec, ok=False, error="skipped: time budget spent")
      )
      continue
    result_path = args.output + f".worker{len(results)}.json"
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(
          [
              sys.executable,
              *(
                  ["-S"] if sys.flags.no_site else []
              ),  # the same interpreter set-up
              os.path.abspath(__file__),
              "--output",
              args.output,
              "--worker",
              json.dumps(spec),
              "--worker_output",
              result_path,
          ],
          timeout=left,
          env=_worker_env(spec),
          capture_output=True,
          text=True,
      )
      if os.path.exists(result_path):
        with open(result_path) as f:
          result = json.load(f)
        os.remove(result_path)
      else:
        result = dict(
            ok=False,
            error=f"worker exited {proc.returncode}: {proc.stderr[-800:]}",
        )
      if not result["ok"]:
        sys.stderr.write(proc.stderr[-3000:])
    except subprocess.TimeoutExpired:
      result = dict(ok=False, error=f"timed out after {left:.0f} s (budget)")
    result["spec"] = spec
    result["wall_s"] = time.perf_counter() - t0
    results.append(result)
    print(f"{label(spec)}  {summary(result)}", flush=True)
    _write(args.output, settings, results, start)
  _write(args.output, settings, results, start)
  print_ratios(results)
  return 0


def _enrich(results):
  for r in results:
    spec = r["spec"]
    if not r.get("ok") or "step_s" not in r:
      continue
    tokens = spec["batch"] * (spec["inputs_length"] + spec["targets_length"])
    r["tokens_per_s"] = tokens / r["step_s"]
    if "flops_per_step" in r:
      peak = peak_flops(r.get("device_kind", ""))
      r["peak_bf16_flops"] = peak
      r["mfu"] = r["flops_per_step"] / r["step_s"] / peak if peak else None


def summary(r):
  _enrich([r])
  if not r.get("ok"):
    return f"FAILED ({r.get('error', '')[:160]})"
  if r["spec"]["kind"] == "decode":
    return (
        f"tkx {r['tkx_examples_per_s']:8.2f} ex/s   HF generate {r['hf_examples_per_s']:8.2f} ex/s   "
        f"x{r['tkx_examples_per_s'] / r['hf_examples_per_s']:.2f}   identical {r['identical_outputs']}/{r['examples']}"
    )
  text = (
      f"step {r['step_s'] * 1e3:9.1f} ms   {r['tokens_per_s']:10.0f} tokens/s"
  )
  if r.get("mfu") is not None:
    text += f"   MFU {100 * r['mfu']:5.1f}%"
  if "compile_s" in r:
    text += f"   compile {r['compile_s']:6.1f} s"
  return text


def _write(path, settings, results, start):
  _enrich(results)
  payload = dict(
      settings={k: v for k, v in settings.items()},
      host_cpu=accel_common.cpu_name(),
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      elapsed_s=time.perf_counter() - start,
      results=results,
  )
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, path)


def print_ratios(results):
  """tkx's best variant per size against HF PyTorch on the same config."""
  ok = [r for r in results if r.get("ok")]
  for size in dict.fromkeys(r["spec"]["size"] for r in ok):
    tkx = [
        r
        for r in ok
        if r["spec"]["size"] == size and r["spec"]["kind"] == "tkx_train"
    ]
    hf = [
        r
        for r in ok
        if r["spec"]["size"] == size and r["spec"]["kind"] == "hf_train"
    ]
    if tkx and hf:
      best = max(tkx, key=lambda r: r["tokens_per_s"])
      s = best["spec"]
      print(
          f"{size}: tkx ({'scan' if s['scan_layers'] else 'per-layer'}, {s['attention']}) "
          f"{best['tokens_per_s']:.0f} tokens/s vs HF PyTorch {hf[0]['tokens_per_s']:.0f}: "
          f"x{best['tokens_per_s'] / hf[0]['tokens_per_s']:.2f}"
      )


if __name__ == "__main__":
  sys.exit(main())
