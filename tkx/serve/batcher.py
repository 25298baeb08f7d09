"""Dynamic batching: one decode thread groups queued requests into `tkx.infer.Predictor` batches.

A batch starts with the oldest waiting request and takes the requests with the same decode
settings that are waiting, up to `batch_size`, waiting at most `max_wait_s` after that oldest
request's arrival for the batch to fill. Requests with other settings wait for a later batch
(oldest first, so none starves). Sampled requests (temperature > 0) are decoded one per batch:
a Predictor's random stream depends on the batch and row, so only alone, as the first batch of
a Predictor seeded with the request's seed, is a sampled answer reproducible (and equal to
`tkx infer --seed S` on a one-line input file).

Each request names a served LoRA adapter by its row in the stacked adapters
(`tkx.serve.adapters`; 0: the base model). Requests for different adapters share a batch:
`params_for_rows` turns the batch's adapter rows into its parameters (each row applies its own
adapter). `mixed_adapters=False` batches one adapter at a time instead (the comparison
`bench/serve.py --adapters` measures).
"""

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, List, Optional, Sequence

from tkx import infer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Job:
  ids: List[int]
  config: infer.DecodeConfig
  future: concurrent.futures.Future
  enqueued: float  # time.monotonic()
  adapter: int = 0  # the stacked adapter row (0: the base model)


def batch_key(config: infer.DecodeConfig) -> infer.DecodeConfig:
  """Requests whose keys are equal decode in one batch: the seed matters only when sampling."""
  return config if config.uses_rng else dataclasses.replace(config, seed=0)


class Batcher:
  """Decodes submitted token ids on its own thread, batching requests with equal decode settings.

  Args:
    predictor_for: a decode config -> the `Predictor` that decodes a batch with it.
    batch_size: the most requests per batch (the Predictor's batch size).
    max_wait_s: how long a batch waits for more requests after its oldest one arrived.
    metrics: a `tkx.serve.metrics.Metrics` (batch sizes, queue and decode times).
    params_for_rows: the adapter rows of a batch's requests -> its parameters
      (`tkx.serve.adapters.RowParams`); None: the Predictor's own (no adapters).
    mixed_adapters: whether requests for different adapters share a batch.
  """

  def __init__(
      self,
      predictor_for: Callable[[infer.DecodeConfig], infer.Predictor],
      *,
      batch_size: int,
      max_wait_s: float,
      metrics=None,
      params_for_rows: Optional[Callable[[Sequence[int]], Any]] = None,
      mixed_adapters: bool = True,
  ):
    self.predictor_for = predictor_for
    self.params_for_rows = params_for_rows
    self.mixed_adapters = mixed_adapters
    self.batch_size = batch_size
    self.max_wait_s = max_wait_s
    self.metrics = metrics
    self._pending: collections.deque = collections.deque()
    self._cond = threading.Condition()
    self._closed = False
    self._thread = threading.Thread(
        target=self._run, name="tkx-serve-decoder", daemon=True
    )
    self._thread.start()

  def submit(
      self, ids: Sequence[int], config: infer.DecodeConfig, adapter: int = 0
  ) -> concurrent.futures.Future:
    """Queues ids (ending in EOS, within the largest bucket) for `adapter`'s row; the future gives the output ids."""
    job = _Job(
        list(ids),
        config,
        concurrent.futures.Future(),
        time.monotonic(),
        adapter,
    )
    with self._cond:
      if self._closed:
        raise RuntimeError("the server is shutting down")
      self._pending.append(job)
      self._set_depth()
      self._cond.notify_all()
    return job.future

  def close(self, timeout: Optional[float] = None):
    """Refuses new requests, decodes those already queued, then stops the thread."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()
    self._thread.join(timeout)

  def _set_depth(self):
    if self.metrics is not None:
      self.metrics.queue_depth.set(len(self._pending))

  def _key(self, job: _Job):
    key = batch_key(job.config)
    return key if self.mixed_adapters else (key, job.adapter)

  def _limit(self, config: infer.DecodeConfig) -> int:
    return 1 if config.uses_rng else self.batch_size

  def _next_batch(self) -> Optional[List[_Job]]:
    with self._cond:
      while not self._pending:
        if self._closed:
          return None
        self._cond.wait()
      first = self._pending[0]
      key = self._key(first)
      limit = self._limit(first.config)
      deadline = first.enqueued + self.max_wait_s
      while True:
        batch = [j for j in self._pending if self._key(j) == key][:limit]
        remaining = deadline - time.monotonic()
        if len(batch) >= limit or remaining <= 0 or self._closed:
          break
        self._cond.wait(remaining)
      for job in batch:
        self._pending.remove(job)
      self._set_depth()
      return batch

  def _batch_params(self, adapters: List[int]) -> dict:
    """`predict_ids`' per-batch parameters for these requests' adapters (none without adapters)."""
    if self.params_for_rows is None:
      return {}
    return {
        "batch_params": lambda indices: self.params_for_rows(
            [adapters[i] for i in indices]
        )
    }

  def _run(self):
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      start = time.monotonic()
      if self.metrics is not None:
        self.metrics.batch_size.observe(len(batch))
        for job in batch:
          self.metrics.queue_seconds.observe(start - job.enqueued)
      try:
        predictor = self.predictor_for(batch[0].config)
        outputs = predictor.predict_ids(
            [j.ids for j in batch],
            progress=False,
            log_plan=False,
            **self._batch_params([j.adapter for j in batch]),
        )
      except Exception as e:  # pylint: disable=broad-except
        log.exception("decoding a batch of %d request(s) failed", len(batch))
        for job in batch:
          job.future.set_exception(e)
        continue
      if self.metrics is not None:
        self.metrics.decode_seconds.observe(time.monotonic() - start)
      for job, output in zip(batch, outputs):
        job.future.set_result(output)
