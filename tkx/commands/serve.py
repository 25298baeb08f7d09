"""`tkx serve`: keep a checkpoint loaded and answer instructions over HTTP, batching concurrent requests.

    tkx serve --checkpoint CKPT [--host 127.0.0.1] [--port 8000] [--batch_size 8] [--max_wait_ms 10]
              [--max_request_bytes 1048576] [--adapter NAME=PATH ...] [decoding flags of tkx infer]

`POST /v1/generate` takes `{"inputs": "<prompt>"}` or `{"definition", "positive_examples",
"negative_examples", "input", "encoding"}` (plus optional `max_decode_length`, `num_beams`,
`temperature`, `seed`, and `adapter`: a LoRA adapter served with `--adapter NAME=PATH`) and
answers `{"prediction", "input_tokens", "output_tokens", "truncated"}`.
`GET /` is a playground page, `GET /healthz` a liveness check, `GET /metrics` Prometheus metrics.
Answers are those of `tkx infer` with the same flags; SIGTERM or Ctrl-C finishes the requests in
flight, then exits.
"""

import errno
import logging
import socket
from typing import Optional, Sequence

import gin

from tkx import errors
from tkx.commands import infer as infer_command


@gin.configurable(module="serve")
def batch_shape(
    batch_size: Optional[int] = None,
    max_input_length: Optional[int] = None,
    input_buckets: Optional[Sequence[int]] = None,
) -> dict:
  """The server's batch size and input lengths (`--batch_size`, `--max_input_length`, `--input_buckets`).

  None: the defaults of `tkx infer` (`infer.default_batch_size`,
  `infer.DEFAULT_MAX_INPUT_LENGTH`, `infer.DEFAULT_INPUT_BUCKETS`), applied in `main`.
  """
  return dict(
      batch_size=batch_size,
      max_input_length=max_input_length,
      input_buckets=input_buckets,
  )


def add_arguments(parser):
  parser.add_argument(
      "--host",
      default="127.0.0.1",
      help="address to listen on (default 127.0.0.1: this machine only)",
  )
  parser.add_argument(
      "--port", type=int, default=8000, help="TCP port (default 8000)"
  )
  parser.add_argument(
      "--max_wait_ms",
      type=float,
      default=10.0,
      help="how long a batch waits for more requests after its first one arrived (default 10)",
  )
  parser.add_argument(
      "--max_request_bytes",
      type=int,
      default=1 << 20,
      help="largest request body accepted; larger ones get 413 (default 1 MiB)",
  )
  parser.add_argument(
      "--adapter",
      action="append",
      default=[],
      metavar="NAME=PATH",
      help="serve a LoRA adapter (a tkx LoRA checkpoint dir of this base model) as NAME; "
      'repeatable. Requests choose one with "adapter": "NAME" (none: the base model)',
  )
  parser.add_argument(
      "--adapter_batches",
      choices=("mixed", "per_adapter"),
      default="mixed",
      help="mixed (default): requests for different adapters share a batch; per_adapter: "
      "one adapter per batch (for comparison: bench/serve.py --adapters)",
  )
  # --checkpoint, gin and the decoding flags (incl. --batch_size, --max_input_length,
  # --input_buckets) exactly as `tkx infer` takes them.
  infer_command.add_common_arguments(parser)


def _check_port_free(host: str, port: int):
  """Fails before the (slow) model load when the address cannot be bound."""
  try:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      sock.bind((host, port))
  except OSError as e:
    reason = (
        "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
    )
    raise errors.ConfigError(f"--host {host} --port {port}: {reason}") from None


def _load_adapters(flags, loaded):
  """The `--adapter`s read and checked against the base (None without any); logged once."""
  if not flags:
    return None
  from tkx.serve import adapters as adapters_lib

  adapters_lib.check_base(loaded.model)
  adapters = adapters_lib.Adapters(
      [adapters_lib.read(name, path) for name, path in flags], loaded.params
  )
  logging.getLogger(__name__).info(
      "serving %d LoRA adapter(s) on %s: %s; one layout: rank %d, %s",
      len(adapters.names),
      loaded.path,
      adapters.describe(),
      adapters.config.rank,
      "+".join(adapters.config.targets),
  )
  return adapters


configure = infer_command.parse_gin
GIN_FLAGS = dict(
    infer_command.DECODE_FLAGS,
    batch_size="serve.batch_shape.batch_size",
    max_input_length="serve.batch_shape.max_input_length",
    input_buckets=(
        "serve.batch_shape.input_buckets",
        infer_command.input_buckets_flag,
    ),
)


def main(args):
  if not 0 <= args.port <= 65535:
    raise errors.ConfigError(f"--port must be in [0, 65535], got {args.port}")
  if args.max_wait_ms < 0:
    raise errors.ConfigError(
        f"--max_wait_ms must be >= 0, got {args.max_wait_ms}"
    )
  if args.max_request_bytes < 1:
    raise errors.ConfigError(
        f"--max_request_bytes must be >= 1, got {args.max_request_bytes}"
    )
  from tkx.serve import adapters as adapters_lib

  adapter_flags = [adapters_lib.parse_flag(text) for text in args.adapter]
  _check_port_free(args.host, args.port)
  from tkx import multihost

  cluster = multihost.resolve()  # gin is parsed (configure); nothing joins
  if cluster.is_multi_process:
    raise errors.ConfigError(
        f"tkx serve runs as one process, but this is {cluster.describe()}; "
        "serve from one host, or decode on all of them with `tkx infer`"
    )
  import uvicorn
  from tkx import infer, partitioning
  from tkx.checkpoints import directory
  from tkx.serve import app as app_lib
  from tkx.serve import metrics as metrics_lib

  decode_config = infer.run_decode_config()  # gin and the decoding flags apply
  partitioner = partitioning.Partitioner()  # gin (and --num_partitions) apply
  loaded = directory.load(
      args.checkpoint,
      partitioner=partitioner,
      vocab_path=args.vocab,
      gin_bindings=infer.model_overrides(),
  )
  shape = batch_shape()  # gin and the flags apply; None: tkx infer's defaults
  max_input_length = shape["max_input_length"] or infer.DEFAULT_MAX_INPUT_LENGTH
  buckets = shape["input_buckets"] or infer.DEFAULT_INPUT_BUCKETS
  generator = app_lib.Generator(
      loaded,
      partitioner=partitioner,
      batch_size=shape["batch_size"] or infer.default_batch_size(partitioner),
      decode_config=decode_config,
      input_buckets=infer.buckets_up_to(max_input_length, buckets),
      max_input_length=max_input_length,
      max_wait_s=args.max_wait_ms / 1000.0,
      metrics=metrics_lib.Metrics(),
      adapters=_load_adapters(adapter_flags, loaded),
      mixed_adapter_batches=args.adapter_batches == "mixed",
  )
  app = app_lib.create_app(generator, max_request_bytes=args.max_request_bytes)
  logging.getLogger(__name__).info(
      "serving %s at http://%s:%d: batch size %d, max wait %g ms, input buckets %s, %s "
      "(each new bucket or setting compiles on its first request)",
      loaded.path,
      args.host,
      args.port,
      generator.batch_size,
      args.max_wait_ms,
      ",".join(map(str, generator.input_buckets)),
      decode_config,
  )
  # Uvicorn handles SIGINT/SIGTERM: it stops accepting, finishes the requests in flight, then
  # runs the app's shutdown (which drains and stops the decoder).
  uvicorn.Server(
      uvicorn.Config(
          app,
          host=args.host,
          port=args.port,
          lifespan="on",
          # uvicorn's loggers propagate to tkx's one handler and format; its start-up
          # lines (process id, lifespan) only at debug: the line above says where we serve.
          log_config=None,
          log_level="debug" if args.log_level == "debug" else "warning",
          access_log=False,
      )
  ).run()
  return 0
