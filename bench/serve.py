"""`tkx serve` throughput and latency against a loop of generate calls on one loaded model.

For each model (random weights, fixed seed; T5 1.1 layout with a 32,128-row vocabulary):
  * tiny:  d_model 64, 2+2 layers, 4 heads;
  * small: d_model 512, 8+8 layers, 6 heads (T5 1.1 small's shape);
the prompts are test instances of the embedded NI sample encoded `def_pos2` (the 1024-token
budget; they fall in the 128- and 256-token buckets), greedy, `--max_decode_length` tokens (random
weights never emit EOS, so every answer has exactly that many).

  * peer: one process loads the checkpoint once and answers the prompts one after the other, each
    a `generate` call (`infer.predict_texts` with a batch-size-1 Predictor, as `tkx generate`
    builds it); compilation excluded.
  * serve: `tkx serve` (--batch_size 8, --max_wait_ms 10) in a subprocess on a free loopback port;
    `concurrency` client threads each send requests back to back over keep-alive connections
    (httpx) until the run's request count is reached; compilation excluded (a warm-up round).

Prints requests/s, p50/p95 latency, the server's mean batch (requests) and decode time per batch
(from its /metrics), and ratios to the peer and to concurrency 1.

    python bench/serve.py [--models tiny,small] [--max_decode_length 32] [--requests_per_client 2]

Many adapters (`--adapters N`, the first of --models): N random LoRA adapters of that model
(ranks 4, 8, 8, 16, ..., query and value), served by one `tkx serve --adapter ...` with
`--batch_size` = the `--clients` (32) concurrent clients, each request naming the next adapter
in turn. The same requests run against `--adapter_batches mixed` (requests for different
adapters share a batch) and `per_adapter` (one adapter per batch: the peer), one server each,
same run; prints requests/s and output tokens/s of both and their ratio.

    python bench/serve.py --adapters 4 [--clients 32] [--requests_per_client 4] [--smoke]
"""

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODELS = {
    "tiny": dict(
        emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128, num_layers=2
    ),
    "small": dict(
        emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, num_layers=8
    ),
}
CONCURRENCIES = (1, 8, 32)


def cpu_name():
  try:
    out = subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return "unknown CPU"


def make_checkpoint(name, path):
  """A tkx checkpoint dir of a random T5 1.1 model (embedded vocabulary, 32,128-row embedding)."""
  import jax
  from tkx.checkpoints import directory, orbax_io
  from tkx.data import vocab as vocab_lib
  from tkx.models import config as config_lib

  size = MODELS[name]
  cfg = config_lib.T5Config(
      vocab_size=32128,
      emb_dim=size["emb_dim"],
      num_heads=size["num_heads"],
      head_dim=size["head_dim"],
      mlp_dim=size["mlp_dim"],
      num_encoder_layers=size["num_layers"],
      num_decoder_layers=size["num_layers"],
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )
  model = directory.build_model(cfg, vocab_lib.get_vocabulary())
  shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
  params = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
      jax.random.PRNGKey(0)
  )["params"]
  orbax_io.save_params(path, params, step=1)
  with open(os.path.join(path, "model.gin"), "w") as f:
    f.write(directory.config_to_gin(cfg))


def make_adapters(checkpoint, count, workdir):
  """`count` tkx LoRA checkpoint dirs of `checkpoint`'s model: [(name, path)], random adapters.

  Ranks cycle 4, 8, 8, 16 with alpha 16 (so scales differ and are folded), on query and
  value; `lora_b` is random (not peft's zeros) so that every adapter changes the answers.
  """
  import dataclasses

  import jax
  import numpy as np
  from tkx.checkpoints import directory, orbax_io
  from tkx.models import lora  # noqa: F401  (registers the 'lora' dense layer)

  base_config = directory.read_config(checkpoint)
  base = orbax_io.load_params(checkpoint)
  adapters = []
  for index in range(count):
    rank = (4, 8, 8, 16)[index % 4]
    rng = np.random.default_rng(index)
    params = jax.tree_util.tree_map(np.asarray, base)
    for path, kernel in jax.tree_util.tree_leaves_with_path(base):
      keys = [k.key for k in path]
      if keys[-1] != "kernel" or keys[-2] not in ("query", "value"):
        continue
      node = params
      for key in keys[:-1]:
        node = node[key]
      node["lora_a"] = rng.normal(0, 0.05, (kernel.shape[0], rank)).astype(
          np.float32
      )
      node["lora_b"] = rng.normal(0, 0.05, (rank, kernel.shape[1])).astype(
          np.float32
      )
    name, path = f"adapter{index}", os.path.join(workdir, f"adapter{index}")
    orbax_io.save_params(path, params, step=1)
    with open(os.path.join(path, "model.gin"), "w") as f:
      f.write(
          directory.config_to_gin(
              dataclasses.replace(base_config, dense_layer="lora")
          )
      )
      f.write(
          f"lora.LoraConfig.rank = {rank}\nlora.LoraConfig.alpha = 16.0\n"
          "lora.LoraConfig.targets = ('query', 'value')\n"
      )
    adapters.append((name, path))
  return adapters


def bench_adapters(args, workdir, prompts):
  """{mode: (requests/s, output tokens/s, latencies, mean batch)} for mixed and per-adapter batches."""
  name = args.models.split(",")[0]
  checkpoint = os.path.join(workdir, name)
  os.makedirs(checkpoint)
  common.log(
      f"{name}: writing a random checkpoint and {args.adapters} adapters"
  )
  make_checkpoint(name, checkpoint)
  adapters = make_adapters(checkpoint, args.adapters, workdir)
  flags = ["--batch_size", str(args.clients)]
  for adapter, path in adapters:
    flags += ["--adapter", f"{adapter}={path}"]
  names = [a for a, _ in adapters]
  total = args.clients * args.requests_per_client
  results = {}
  for mode in ("mixed", "per_adapter"):
    common.log(f"{name}: tkx serve --adapter_batches {mode}")
    server = ServerProcess(
        checkpoint,
        args.max_decode_length,
        os.path.join(workdir, f"{mode}.log"),
        flags=flags + ["--adapter_batches", mode],
    )
    try:
      server.wait_ready()
      common.log(f"{mode}: warm-up (compiles the buckets the prompts use)")
      run_clients(server.url, prompts, args.clients, args.clients, names)
      before = server_stats(server.url)
      common.log(f"{mode}: {args.clients} clients, {total} requests")
      start = time.perf_counter()
      rps, lat, tokens = run_clients(
          server.url, prompts, args.clients, total, names
      )
      seconds = time.perf_counter() - start
      rows_sum, batches, _ = (
          a - b for a, b in zip(server_stats(server.url), before)
      )
      results[mode] = (rps, tokens / seconds, lat, rows_sum / max(batches, 1))
    finally:
      server.close()
  return name, results


def print_adapters(name, results, args, cpu):
  print(
      f"\ntkx serve, {args.adapters} LoRA adapters on one model ({name}), {args.clients} "
      f"concurrent clients, --batch_size {args.clients}; {cpu} ({os.cpu_count()} CPUs); greedy, "
      f"at most {args.max_decode_length} output tokens, random weights"
  )
  header = f"{'batches':12} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7} {'batch':>6}"
  print(header)
  print("-" * len(header))
  for mode, (rps, tps, lat, batch) in results.items():
    print(
        f"{mode:12} {rps:7.2f} {tps:8.1f} {statistics.median(lat):7.3f} "
        f"{percentile(lat, 95):7.3f} {batch:6.1f}"
    )
  ratio = results["mixed"][0] / results["per_adapter"][0]
  print(f"mixed / per_adapter: {ratio:.2f}x requests/s")
  print(
      json.dumps(
          {
              "cpu": cpu,
              "adapters": args.adapters,
              "clients": args.clients,
              "results": {
                  m: dict(rps=r[0], tokens_per_s=r[1], mean_batch=r[3])
                  for m, r in results.items()
              },
              "mixed_over_per_adapter": ratio,
          }
      )
  )


def sample_prompts(count):
  """`def_pos2` prompts of the embedded sample's test instances (1024-token budget)."""
  from tkx.commands import generate
  from tkx.data import ni
  from tkx.data import tasks as tasks_lib
  from tkx.data import vocab as vocab_lib

  vocabulary = vocab_lib.get_vocabulary()
  ni_dir = tasks_lib.EMBEDDED_NI_DIR
  prompts = []
  names = sorted(ni.read_split(ni_dir, "default", "test"))
  while len(prompts) < count:
    for name in names:
      task = ni.load_task(ni_dir, name)
      instance = task["Instances"][len(prompts) // len(names)]
      prompts.append(
          generate.build_prompt(
              task, instance["input"], "def_pos2", vocabulary, 1024
          )
      )
  return prompts[:count]


def percentile(values, q):
  ordered = sorted(values)
  return ordered[
      min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))
  ]


def run_peer(checkpoint, prompts, max_decode_length):
  """(requests/s, latencies) of sequential generate calls on one loaded model."""
  from tkx import infer
  from tkx.checkpoints import directory

  loaded = directory.load(checkpoint)
  predictor = infer.Predictor(
      loaded.model,
      loaded.params,
      batch_size=1,
      decode_config=infer.DecodeConfig(max_decode_length=max_decode_length),
  )

  def generate(prompt):
    return infer.predict_texts(
        predictor, loaded.vocabulary, [prompt], progress=False
    )[0]

  for prompt in prompts:  # compile every bucket the prompts use
    generate(prompt)
  latencies = []
  start = time.perf_counter()
  for prompt in prompts:
    t0 = time.perf_counter()
    generate(prompt)
    latencies.append(time.perf_counter() - t0)
  return len(prompts) / (time.perf_counter() - start), latencies


class ServerProcess:

  def __init__(
      self,
      checkpoint,
      max_decode_length,
      log_path,
      flags=("--batch_size", "8"),
  ):
    with socket.socket() as sock:
      sock.bind(("127.0.0.1", 0))
      self.port = sock.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    self._log = open(log_path, "w")
    self.log_path = log_path
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "tkx.cli", "serve", "--checkpoint", checkpoint]
        + ["--port", str(self.port), *flags]
        + ["--max_decode_length", str(max_decode_length)],
        stdout=self._log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=common.REPO),
    )

  def wait_ready(self, timeout_s=600):
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(
            f"tkx serve exited: {open(self.log_path).read()[-3000:]}"
        )
      try:
        if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
          return
      except httpx.TransportError:
        pass
      time.sleep(0.5)
    raise RuntimeError("tkx serve did not start")

  def close(self):
    self.proc.terminate()
    self.proc.wait(timeout=120)
    self._log.close()


def run_clients(url, prompts, concurrency, total, adapters=()):
  """(requests/s, latencies, output tokens): `concurrency` threads send `total` requests back to back.

  With `adapters` (names), request i names adapters[i % len(adapters)].
  """
  import httpx

  latencies, lock, next_index, tokens = [], threading.Lock(), [0], [0]

  def body(index):
    out = {"inputs": prompts[index % len(prompts)]}
    if adapters:
      out["adapter"] = adapters[index % len(adapters)]
    return out

  def client():
    with httpx.Client(base_url=url, timeout=600) as http:
      while True:
        with lock:
          index = next_index[0]
          next_index[0] += 1
        if index >= total:
          return
        t0 = time.perf_counter()
        response = http.post("/v1/generate", json=body(index))
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
          raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
        with lock:
          latencies.append(elapsed)
          tokens[0] += response.json()["output_tokens"]

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    for future in [pool.submit(client) for _ in range(concurrency)]:
      future.result()
  return total / (time.perf_counter() - start), latencies, tokens[0]


def server_stats(url):
  """Running sums from /metrics: batch sizes, batches, decode seconds."""
  import httpx

  wanted = (
      "tkx_serve_batch_size_sum",
      "tkx_serve_batch_size_count",
      "tkx_serve_decode_seconds_sum",
  )
  values = dict.fromkeys(wanted, 0.0)
  for line in httpx.get(url + "/metrics").text.splitlines():
    name, _, value = line.partition(" ")
    if name in values:
      values[name] = float(value)
  return [values[name] for name in wanted]


def bench_model(name, args, workdir, prompts):
  checkpoint = os.path.join(workdir, name)
  os.makedirs(checkpoint)
  common.log(f"{name}: writing a random checkpoint")
  make_checkpoint(name, checkpoint)
  common.log(f"{name}: peer (sequential generate calls on one loaded model)")
  peer_rps, peer_lat = run_peer(
      checkpoint, prompts[: args.peer_requests], args.max_decode_length
  )
  rows = [("peer: generate loop", 1, len(peer_lat), peer_rps, peer_lat, None)]
  common.log(f"{name}: starting tkx serve")
  server = ServerProcess(
      checkpoint, args.max_decode_length, os.path.join(workdir, f"{name}.log")
  )
  try:
    server.wait_ready()
    common.log(f"{name}: warm-up (compiles every bucket the prompts use)")
    run_clients(server.url, prompts, 8, len(prompts))
    for concurrency in CONCURRENCIES:
      total = max(8, concurrency * args.requests_per_client)
      before = server_stats(server.url)
      common.log(f"{name}: concurrency {concurrency}, {total} requests")
      rps, lat, _ = run_clients(server.url, prompts, concurrency, total)
      rows_sum, batches, decode_s = (
          a - b for a, b in zip(server_stats(server.url), before)
      )
      batches = max(1.0, batches)
      rows.append(
          (
              "tkx serve",
              concurrency,
              total,
              rps,
              lat,
              (rows_sum / batches, decode_s / batches),
          )
      )
  finally:
    server.close()
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="tiny,small")
  parser.add_argument("--max_decode_length", type=int, default=32)
  parser.add_argument(
      "--requests_per_client",
      type=int,
      default=2,
      help="requests per client thread at each concurrency (at least 8 in all)",
  )
  parser.add_argument("--peer_requests", type=int, default=16)
  parser.add_argument(
      "--adapters",
      type=int,
      default=0,
      help="N > 0: the many-adapters comparison with N adapters (see above)",
  )
  parser.add_argument(
      "--clients",
      type=int,
      default=32,
      help="concurrent clients of --adapters (also the server's --batch_size)",
  )
  parser.add_argument(
      "--smoke",
      action="store_true",
      help="a short run (its figures mean nothing): tiny, 4 output tokens, 1 request per client",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    args.models, args.max_decode_length, args.requests_per_client = "tiny", 4, 1
  names = [n for n in args.models.split(",") if n]
  for n in names:
    if n not in MODELS:
      parser.error(
          f"--models: unknown model {n!r}; choose from {', '.join(MODELS)}"
      )
  prompts = sample_prompts(64)
  cpu = cpu_name()
  if args.adapters > 0:
    with tempfile.TemporaryDirectory(prefix="tkx_bench_serve_") as workdir:
      name, results = bench_adapters(args, workdir, prompts)
    print_adapters(name, results, args, cpu)
    return
  results = {}
  with tempfile.TemporaryDirectory(prefix="tkx_bench_serve_") as workdir:
    for name in names:
      results[name] = bench_model(name, args, workdir, prompts)
  print(
      f"\ntkx serve vs a generate loop on one loaded model; {cpu} ({os.cpu_count()} CPUs); "
      f"greedy, {args.max_decode_length} output tokens, random weights"
  )
  header = f"{'model':6} {'mode':20} {'conc':>4} {'reqs':>5} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'batch':>5} {'dec s':>6} {'x peer':>7} {'x c=1':>6}"
  print(header)
  print("-" * len(header))
  summary = {}
  for name, rows in results.items():
    peer_rps = rows[0][3]
    c1_rps = next(r[3] for r in rows if r[0] == "tkx serve" and r[1] == 1)
    for mode, conc, total, rps, lat, server in rows:
      # Server side: mean requests per batch and mean seconds decoding one batch.
      batch = f"{server[0]:5.1f} {server[1]:6.3f}" if server else "    -      -"
      vs_c1 = f"{rps / c1_rps:6.2f}" if mode == "tkx serve" else "     -"
      print(
          f"{name:6} {mode:20} {conc:4d} {total:5d} {rps:7.2f} {statistics.median(lat):7.3f} "
          f"{percentile(lat, 95):7.3f} {batch} {rps / peer_rps:7.2f} {vs_c1}"
      )
      summary.setdefault(name, []).append(
          dict(
              mode=mode,
              concurrency=conc,
              requests=total,
              rps=rps,
              p50=statistics.median(lat),
              p95=percentile(lat, 95),
          )
      )
  print(json.dumps({"cpu": cpu, "results": summary}))


if __name__ == "__main__":
  main()
