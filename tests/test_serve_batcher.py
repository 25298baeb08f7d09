"""`tkx.serve.batcher.Batcher` grouping rules, with a recording predictor (no model, no compilation)."""

import threading

import pytest

from tkx import infer
from tkx.serve import batcher as batcher_lib

GREEDY = infer.DecodeConfig(max_decode_length=4)
BEAM = infer.DecodeConfig(
    decode_fn="hf_beam_search", max_decode_length=4, num_beams=2
)
SAMPLE = infer.DecodeConfig(
    decode_fn="temperature_sample", max_decode_length=4, temperature=0.7, seed=3
)


class _RecordingPredictor:
  """Answers each input with [its first id, number of rows in the batch]; records the batches."""

  def __init__(self, batches, config, gate):
    self.batches, self.config, self.gate = batches, config, gate

  def predict_ids(self, inputs, progress=True, log_plan=True):
    # A server decodes a batch per few requests: no per-batch progress or plan log.
    assert not progress and not log_plan
    self.gate.wait()
    self.batches.append((self.config, [ids[0] for ids in inputs]))
    return [[ids[0], len(inputs)] for ids in inputs]


def _batcher(batch_size=4, max_wait_s=0.5):
  batches, gate = [], threading.Event()
  batcher = batcher_lib.Batcher(
      lambda config: _RecordingPredictor(batches, config, gate),
      batch_size=batch_size,
      max_wait_s=max_wait_s,
  )
  return batcher, batches, gate


def test_equal_settings_share_a_batch_others_wait_and_sampling_goes_alone():
  # The greedy batch (3 of 4 rows) waits max_wait_s for a 4th: long enough to queue all jobs.
  batcher, batches, gate = _batcher(max_wait_s=2.0)
  jobs = [
      (10, GREEDY),
      (20, BEAM),
      (
          11,
          infer.DecodeConfig(max_decode_length=4, seed=9),
      ),  # seed: irrelevant when greedy
      (30, SAMPLE),
      (21, BEAM),
      (31, SAMPLE),
      (12, GREEDY),
  ]
  futures = [batcher.submit([first, 1], config) for first, config in jobs]
  gate.set()
  results = [f.result(timeout=30) for f in futures]
  batcher.close()
  assert [r[0] for r in results] == [first for first, _ in jobs]
  # Oldest first: the greedy batch (its 3 requests), then the beam one, then each sample alone.
  assert [(batcher_lib.batch_key(c), ids) for c, ids in batches] == [
      (GREEDY, [10, 11, 12]),
      (BEAM, [20, 21]),
      (SAMPLE, [30]),
      (SAMPLE, [31]),
  ]


def test_a_batch_holds_at_most_batch_size_requests():
  batcher, batches, gate = _batcher(batch_size=2)
  futures = [batcher.submit([i, 1], GREEDY) for i in range(5)]
  gate.set()
  assert [f.result(timeout=30)[1] for f in futures] == [2, 2, 2, 2, 1]
  batcher.close()
  assert [ids for _, ids in batches] == [[0, 1], [2, 3], [4]]


def test_close_decodes_what_is_queued_then_refuses_new_requests():
  batcher, batches, gate = _batcher(max_wait_s=60)
  future = batcher.submit([7, 1], GREEDY)
  gate.set()
  batcher.close()  # does not wait the 60 s for the batch to fill
  assert future.result(timeout=0)[0] == 7
  with pytest.raises(RuntimeError, match="shutting down"):
    batcher.submit([8, 1], GREEDY)


def test_a_failing_batch_fails_its_requests_only():
  calls = []

  class Failing:

    def predict_ids(self, inputs, progress=True, log_plan=True):
      del progress
      calls.append(len(inputs))
      if len(calls) == 1:
        raise ValueError("boom")
      return [[1] for _ in inputs]

  batcher = batcher_lib.Batcher(
      lambda config: Failing(), batch_size=4, max_wait_s=0.0
  )
  first = batcher.submit([5, 1], GREEDY)
  with pytest.raises(ValueError, match="boom"):
    first.result(timeout=30)
  assert batcher.submit([6, 1], GREEDY).result(timeout=30) == [1]
  batcher.close()
