"""Preemption: SIGTERM (or JAX's preemption notice) -> every host stops at the same step boundary.

Preemptible TPUs and spot GPUs get SIGTERM some seconds before they go. Inside
the train loop a `PreemptionWatch` answers `reached(step)` after each step:

- one process: a SIGTERM handler notes the signal; the next step boundary is
  the one to save at;
- several processes (`jax.distributed`): JAX's preemption sync manager (its
  notifier takes SIGTERM on any host) agrees on one step for all hosts;
  `reached` is `multihost_utils.reached_preemption_sync_point(step)`, which
  every host calls at every step.

The trainer then saves a checkpoint at that step, logs one line naming it and
returns normally, so `tkx train` exits with status 0; the next `tkx train` with
the same MODEL_DIR resumes from it. Once a preemption is noted, further SIGTERMs
are only logged (the checkpoint being written is finished, never cut short;
checkpoints are written to a temporary directory and renamed, so even SIGKILL
leaves the previous ones intact).

Contract (the names other modules rely on; change one only together with its users):
- `PreemptionWatch().start()` / `.reached(step)` (every host, every step) / `.close()`: one process — a SIGTERM
  handler; several — `multihost_utils.reached_preemption_sync_point`. The `train_actions.PreemptionSave` action
  saves at that step, logs `Preempted: saved <MODEL_DIR>/checkpoint_<step> ...` once, and `train()` returns
  (`"preempted": True`; exit 0).
"""

import logging
import signal
import threading
from typing import Optional

import jax

log = logging.getLogger(__name__)


def _sync_manager():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  return distributed.global_state.preemption_sync_manager


class PreemptionWatch:
  """For the train loop: `start()`, `reached(step)` after each step (True at the step every host
  saves at), `close()`; also a context manager."""

  def __init__(self):
    self._signals = 0
    self._previous = None
    self._multi_process = False
    self.step: Optional[int] = None  # the step it stopped at

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.close()
    return False

  def start(self) -> "PreemptionWatch":
    self._multi_process = jax.process_count() > 1
    if self._multi_process:
      if _sync_manager() is None and jax.process_index() == 0:  # once per job
        log.warning(
            "preemption: JAX's preemption service is off (jax_enable_preemption_service); "
            "a SIGTERM will not save a checkpoint"
        )
    elif threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signals += 1
    if self._signals == 1:
      log.warning(
          "SIGTERM: saving a checkpoint at the end of the current step, then exiting"
      )
    else:
      log.warning(
          "SIGTERM again: still saving the preemption checkpoint (not interrupted)"
      )

  @property
  def requested(self) -> bool:
    return self._signals > 0

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (call once per step, on every host)."""
    if self._multi_process:
      if _sync_manager() is None:
        return False
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self._signals > 0
    if stop:
      self.step = step
    return stop

  def close(self):
    # After a preemption the handler stays: a late SIGTERM must not kill the
    # process while it exits cleanly (status 0).
    if self._previous is not None and self.step is None:
      signal.signal(signal.SIGTERM, self._previous)
