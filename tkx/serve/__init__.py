"""`tkx serve`: an HTTP endpoint that keeps a Tk-Instruct model loaded and batches concurrent requests.

Modules:
- `schema`: JSON request body -> a validated `GenerateRequest` (or a `RequestError` naming the field).
- `batcher`: the decode worker: requests that arrive within `max_wait_ms` with the same decode
  settings are decoded together by one `tkx.infer.Predictor` (same buckets and programs as `tkx infer`).
- `metrics`: Prometheus counters and histograms.
- `app`: the Starlette application (`/v1/generate`, `/healthz`, `/metrics`, `/`) around a `Generator`.
- `playground`: the self-contained HTML page served at `/`.

Contract (the names other modules rely on; change one only together with its users):
- Uses `tkx.infer`'s public pieces only: `load_checkpoint`, `Predictor` (+ `PredictFns`, owned by the `Generator`,
  whose parameter shardings are `base.param_shardings`), `DecodeConfig` (request settings through `with_settings`, as the flags),
  `buckets_up_to`, `cut_to_budget`, `decode_ids`; prompts from `encodings.encode_source` with
  `encodings.vocabulary_token_fns`. Contract: an answer equals `tkx infer`'s for the same input and flags.
- `schema.parse_generate_request(body: bytes, *, max_decode_length) -> GenerateRequest` (a ready `prompt`, or
  `task`/`instance`/`encoding` in `ni.load_task`'s shape, plus `decode_overrides`); raises
  `schema.RequestError(field, message, status)`, whose str is `"<field>: <message>"`.
- `batcher.Batcher(predictor_for, *, batch_size, max_wait_s, metrics)`: `submit(ids, config) -> Future[list[int]]`
  (thread-safe), `close()` drains the queue then stops. `batch_key(config)`: requests with equal keys share a batch
  (seed ignored unless sampling; sampled requests are decoded alone, as a fresh Predictor's first batch).
- `app.Generator(loaded, *, partitioner, batch_size, decode_config, input_buckets, max_input_length, max_wait_s,
  metrics)`: `prepare(request) -> PreparedRequest(ids, config, truncated)`, `answer(prepared, output_ids) -> dict`;
  `app.create_app(generator, *, max_request_bytes) -> Starlette`; errors are 4xx/5xx JSON `{"error": str}`.
"""
