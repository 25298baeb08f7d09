"""The HTTP application: `POST /v1/generate`, `GET /healthz`, `GET /metrics`, `GET /` (playground).

`Generator` turns validated requests into token ids exactly as `tkx infer` does (ready prompts:
`infer.cut_to_budget` of the vocabulary's encoding; structured ones: the Tk-Instruct encoder with
the token budget first) and hands them to the `Batcher`, each with the row of the LoRA adapter it
names (`tkx.serve.adapters`: with adapters, every row of a batch decodes with its own).
`create_app` wraps it in Starlette: every client error is a 4xx JSON
`{"error": "<field>: <what is wrong>"}` and leaves the server serving.
"""

import asyncio
import collections
import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
from starlette import applications, concurrency, exceptions, responses, routing

from tkx import infer
from tkx.data import encodings
from tkx.models import base as models_base
from tkx.serve import adapters as adapters_lib
from tkx.serve import batcher as batcher_lib
from tkx.serve import metrics as metrics_lib
from tkx.serve import playground, schema

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
# Predictors (and decoding functions) kept for distinct decode settings.
_MAX_CACHED_PREDICTORS = 16


@dataclasses.dataclass(frozen=True)
class PreparedRequest:
  ids: List[int]  # ending in EOS, within the token budget
  config: infer.DecodeConfig
  truncated: bool  # the prompt (or its examples) did not fit the budget
  adapter: int = 0  # the stacked adapter row (0: the base model)
  adapter_name: str = adapters_lib.BASE  # for metrics


class Generator:
  """A loaded model behind a `Batcher`: requests -> ids -> batched decoding -> answers.

  Args:
    loaded: a `directory.LoadedCheckpoint`.
    partitioner: the partitioner the params were loaded with.
    batch_size: requests per batch (the compiled batch size, as `tkx infer --batch_size`).
    decode_config: the server's decoding settings; requests may override some of them.
    input_buckets: encoder lengths to pad to (as `tkx infer`).
    max_input_length: the token budget, EOS included.
    max_wait_s: how long a batch waits to fill.
    metrics: a `Metrics`.
    adapters: the served LoRA `adapters_lib.Adapters` (None: the base model only).
    mixed_adapter_batches: whether requests for different adapters share a batch
      (False: one adapter per batch, for comparison).
  """

  def __init__(
      self,
      loaded,
      *,
      partitioner,
      batch_size: int,
      decode_config: infer.DecodeConfig,
      input_buckets,
      max_input_length: int,
      max_wait_s: float,
      metrics: metrics_lib.Metrics,
      adapters: Optional[adapters_lib.Adapters] = None,
      mixed_adapter_batches: bool = True,
  ):
    self.loaded = loaded
    self.adapters = adapters
    self.vocabulary = loaded.vocabulary
    self.eos_id = loaded.model.eos_id  # as infer.Predictor takes it
    self.partitioner = partitioner
    self.batch_size = batch_size
    self.decode_config = decode_config
    self.input_buckets = tuple(input_buckets)
    self.max_input_length = min(max_input_length, max(self.input_buckets))
    self.metrics = metrics
    self._token_fns = encodings.vocabulary_token_fns(self.vocabulary)
    row_params = None
    if adapters is None:
      self.model, params, shardings = loaded.model, loaded.params, None
    else:
      self.model = adapters.model(loaded.model)
      row_params = adapters.rows(
          loaded.params,
          partitioner,
          models_base.param_shardings(self.model, partitioner),
          batch_size,
      )
      params, shardings = row_params.initial, row_params.param_shardings
    # The server's decoding functions (one per decode setting, with their compiled
    # programs): every Predictor, a sampled request's fresh one too, takes its function here.
    self._predict_fns = infer.PredictFns(
        self.model,
        partitioner,
        param_shardings=shardings,
        max_entries=_MAX_CACHED_PREDICTORS,
    )
    # Placed once; every Predictor (one per decode setting) then shares these arrays.
    self._params = jax.device_put(params, self._predict_fns.param_shardings)
    self._predictors: "collections.OrderedDict" = collections.OrderedDict()
    self._predictors_lock = threading.Lock()
    self.batcher = batcher_lib.Batcher(
        self.predictor_for,
        batch_size=batch_size,
        max_wait_s=max_wait_s,
        metrics=metrics,
        params_for_rows=row_params,
        mixed_adapters=mixed_adapter_batches,
    )

  def predictor_for(self, config: infer.DecodeConfig) -> infer.Predictor:
    """The Predictor for these settings: cached when deterministic, fresh (seeded) when sampling."""

    def make():
      return infer.Predictor(
          self.model,
          self._params,
          partitioner=self.partitioner,
          batch_size=self.batch_size,
          decode_config=config,
          input_buckets=self.input_buckets,
          predict_fns=self._predict_fns,
      )

    if config.uses_rng:
      return make()
    key = batcher_lib.batch_key(config)
    with self._predictors_lock:
      predictor = self._predictors.pop(key, None) or make()
      self._predictors[key] = predictor
      while len(self._predictors) > _MAX_CACHED_PREDICTORS:
        self._predictors.popitem(last=False)
    return predictor

  def _decode_config(self, overrides: Dict[str, Any]) -> infer.DecodeConfig:
    try:
      # The request's settings choose the method as the command flags do.
      return self.decode_config.with_settings(**overrides)
    except ValueError as e:
      # The first line: gin adds an "In call to configurable" line.
      message = str(e).splitlines()[0]
      field = next((f for f in overrides if f in message), "decoding")
      raise schema.RequestError(field, message) from None

  def prompt_of(self, request: schema.GenerateRequest) -> Tuple[str, bool]:
    """The prompt text, and whether the Tk-Instruct encoder had to cut it (or drop examples) to fit."""
    if request.prompt is not None:
      return request.prompt, False
    token_count, truncate = self._token_fns
    prompt = encodings.encode_source(
        request.task,
        request.instance,
        request.encoding,
        max_source_length=self.max_input_length,
        token_count=token_count,
        truncate=truncate,
    )
    full = encodings.encode_source(
        request.task, request.instance, request.encoding
    )
    return prompt, prompt != full

  @property
  def adapter_names(self) -> Tuple[str, ...]:
    return self.adapters.names if self.adapters is not None else ()

  def adapter_row(self, name: Optional[str]) -> int:
    """The stacked row of a request's adapter (0: none); unknown -> RequestError naming it."""
    if self.adapters is not None:
      return self.adapters.index(name)
    if name is not None:
      raise schema.RequestError(
          "adapter",
          f"unknown adapter {name!r} (this server serves none: tkx serve --adapter NAME=PATH)",
      )
    return 0

  def prepare(self, request: schema.GenerateRequest) -> PreparedRequest:
    row = self.adapter_row(request.adapter)
    config = self._decode_config(request.decode_overrides)
    prompt, truncated = self.prompt_of(request)
    ids, cut = infer.cut_to_budget(
        self.vocabulary.encode(prompt), self.max_input_length, self.eos_id
    )
    return PreparedRequest(
        ids, config, truncated or cut, row, request.adapter or adapters_lib.BASE
    )

  def answer(self, prepared: PreparedRequest, output_ids) -> Dict[str, Any]:
    [prediction] = infer.decode_ids(self.vocabulary, [output_ids])
    return {
        "prediction": prediction,
        "input_tokens": len(prepared.ids),
        "output_tokens": len(output_ids),
        "truncated": prepared.truncated,
    }

  def close(self):
    self.batcher.close()


def _error(status: int, message: str) -> responses.JSONResponse:
  return responses.JSONResponse({"error": message}, status_code=status)


async def _read_body(request, max_bytes: int) -> bytes:
  """The request body, refusing (413) one over `max_bytes` without reading all of it."""
  too_large = schema.RequestError(
      "body", f"larger than the server's --max_request_bytes {max_bytes}", 413
  )
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > max_bytes:
    raise too_large
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > max_bytes:
      raise too_large
    chunks.append(chunk)
  return b"".join(chunks)


def create_app(
    generator: Generator,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> applications.Starlette:
  """Long because the routes are closures over one Generator and its metrics, defined together."""
  metrics = generator.metrics
  max_decode_length = generator.decode_config.max_decode_length
  page = playground.page(generator.adapter_names)

  async def generate(request):
    start = time.monotonic()
    metrics.in_flight.inc()
    try:
      return await answer_generate(request, start)
    finally:
      metrics.in_flight.dec()

  async def answer_generate(request, start):
    prepared = None  # its adapter labels the per-adapter metrics once known
    try:
      body = await _read_body(request, max_request_bytes)
      parsed = schema.parse_generate_request(
          body, max_decode_length=max_decode_length
      )
      prepared = await concurrency.run_in_threadpool(generator.prepare, parsed)
      try:
        future = generator.batcher.submit(
            prepared.ids, prepared.config, prepared.adapter
        )
      except RuntimeError as e:  # shutting down
        metrics.count_request(503, prepared.adapter_name)
        return _error(503, str(e))
      output_ids = await asyncio.wrap_future(future)
    except schema.RequestError as e:
      metrics.count_request(e.status, prepared and prepared.adapter_name)
      return _error(e.status, str(e))
    except Exception:  # pylint: disable=broad-except
      log.exception("generate request failed")
      metrics.count_request(500, prepared and prepared.adapter_name)
      return _error(500, "internal error while decoding (see the server log)")
    answer = generator.answer(prepared, output_ids)
    metrics.count_answer(
        answer, prepared.adapter_name, time.monotonic() - start
    )
    return responses.JSONResponse(answer)

  async def healthz(request):
    del request
    return responses.JSONResponse(
        {
            "status": "ok",
            "checkpoint": generator.loaded.path,
            "batch_size": generator.batch_size,
            "max_input_length": generator.max_input_length,
            "adapters": list(generator.adapter_names),
            "decoding": dataclasses.asdict(generator.decode_config),
        }
    )

  async def metrics_page(request):
    del request
    return responses.Response(
        metrics.render(), media_type=metrics_lib.Metrics.content_type
    )

  async def index(request):
    del request
    return responses.HTMLResponse(page)

  async def http_error(request, exc):
    del request
    return _error(exc.status_code, f"{exc.detail}")

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    yield
    # Uvicorn has finished the requests in flight; stop the decoder thread.
    log.info("shutting down: stopping the decoder")
    await concurrency.run_in_threadpool(generator.close)
    log.info("shut down")

  return applications.Starlette(
      routes=[
          routing.Route("/v1/generate", generate, methods=["POST"]),
          routing.Route("/healthz", healthz, methods=["GET"]),
          routing.Route("/metrics", metrics_page, methods=["GET"]),
          routing.Route("/", index, methods=["GET"]),
      ],
      exception_handlers={exceptions.HTTPException: http_error},
      lifespan=lifespan,
  )
