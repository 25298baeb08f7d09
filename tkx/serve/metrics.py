"""Prometheus metrics of one server (its own registry, so several servers in a process stay apart)."""

from typing import Optional

import prometheus_client

# Seconds: from a millisecond queue wait to a long beam search on a large model.
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
  """Requests by status, batch sizes, queue time, decode time and request latency.

  The `adapter_*` series repeat requests, latency and tokens per served LoRA adapter
  (label `adapter`: its `--adapter` name, or "base" for requests without one).
  """

  content_type = prometheus_client.CONTENT_TYPE_LATEST

  def __init__(self):
    self.registry = prometheus_client.CollectorRegistry()
    kw = {"registry": self.registry, "namespace": "tkx_serve"}
    self.requests = prometheus_client.Counter(
        "requests",
        "generate requests answered, by HTTP status",
        ["status"],
        **kw,
    )
    self.batch_size = prometheus_client.Histogram(
        "batch_size",
        "requests decoded together in one batch",
        buckets=_BATCH_SIZE_BUCKETS,
        **kw,
    )
    self.queue_seconds = prometheus_client.Histogram(
        "queue_seconds",
        "time a request waited for its batch to start decoding",
        buckets=_LATENCY_BUCKETS,
        **kw,
    )
    self.decode_seconds = prometheus_client.Histogram(
        "decode_seconds",
        "time to decode one batch",
        buckets=_LATENCY_BUCKETS,
        **kw,
    )
    self.latency_seconds = prometheus_client.Histogram(
        "request_latency_seconds",
        "time from a generate request's arrival to its answer (2xx only)",
        buckets=_LATENCY_BUCKETS,
        **kw,
    )
    self.input_tokens = prometheus_client.Counter(
        "input_tokens", "prompt tokens decoded (EOS included)", **kw
    )
    self.output_tokens = prometheus_client.Counter(
        "output_tokens", "tokens generated (EOS not included)", **kw
    )
    self.truncated = prometheus_client.Counter(
        "truncated_prompts", "prompts cut to the token budget", **kw
    )
    self.adapter_requests = prometheus_client.Counter(
        "adapter_requests",
        "generate requests answered, by adapter (base: none) and HTTP status",
        ["adapter", "status"],
        **kw,
    )
    self.adapter_latency_seconds = prometheus_client.Histogram(
        "adapter_request_latency_seconds",
        "time from a generate request's arrival to its answer (2xx only), by adapter",
        ["adapter"],
        buckets=_LATENCY_BUCKETS,
        **kw,
    )
    self.adapter_input_tokens = prometheus_client.Counter(
        "adapter_input_tokens",
        "prompt tokens decoded (EOS included), by adapter",
        ["adapter"],
        **kw,
    )
    self.adapter_output_tokens = prometheus_client.Counter(
        "adapter_output_tokens",
        "tokens generated (EOS not included), by adapter",
        ["adapter"],
        **kw,
    )
    self.in_flight = prometheus_client.Gauge(
        "requests_in_flight",
        "generate requests received and not yet answered",
        **kw,
    )
    self.queue_depth = prometheus_client.Gauge(
        "queue_depth", "requests waiting for a batch", **kw
    )

  def count_request(self, status: int, adapter: Optional[str]) -> None:
    """One answered request; `adapter` None: refused before its adapter was known (or unknown)."""
    self.requests.labels(str(status)).inc()
    if adapter is not None:
      self.adapter_requests.labels(adapter, str(status)).inc()

  def count_answer(self, answer: dict, adapter: str, seconds: float) -> None:
    """A 200 answer: latency, tokens and truncation, overall and for its adapter."""
    self.count_request(200, adapter)
    self.latency_seconds.observe(seconds)
    self.adapter_latency_seconds.labels(adapter).observe(seconds)
    self.input_tokens.inc(answer["input_tokens"])
    self.adapter_input_tokens.labels(adapter).inc(answer["input_tokens"])
    self.output_tokens.inc(answer["output_tokens"])
    self.adapter_output_tokens.labels(adapter).inc(answer["output_tokens"])
    if answer["truncated"]:
      self.truncated.inc()

  def render(self) -> bytes:
    return prometheus_client.generate_latest(self.registry)
