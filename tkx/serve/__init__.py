"""`tkx serve`: an HTTP endpoint that keeps a Tk-Instruct model loaded and batches concurrent requests.

Modules:
- `schema`: JSON request body -> a validated `GenerateRequest` (or a `RequestError` naming the field).
- `batcher`: the decode worker: requests that arrive within `max_wait_ms` with the same decode
  settings are decoded together by one `tkx.infer.Predictor` (same buckets and programs as `tkx infer`).
- `metrics`: Prometheus counters and histograms.
- `app`: the Starlette application (`/v1/generate`, `/healthz`, `/metrics`, `/`) around a `Generator`.
- `playground`: the self-contained HTML page served at `/`.
"""
