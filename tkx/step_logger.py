"""What a training run reports every `log_every` steps (t5x's `MetricsManager` role).

One log line per window of steps:

    step 200/400 loss 2.3141 lr 0.001 grad_norm 0.812 | 5120 tokens/s 9.8 examples/s
    token efficiency 61.2% FLOP efficiency 58.4% 0.021 TFLOP/s MFU 12.3% input wait 0.02s | ETA 0:01:05

and the same numbers as TensorBoard scalars in MODEL_DIR/train. Tokens are the
batch's real (non-padding) tokens when the step reports `num_real_tokens`
(with `num_computed_tokens`, the tokens the step computed on: their ratio is
the token efficiency); otherwise every position of the batch counts. Model
FLOPs come from `tkx.models.model_info.train_step_flops` only, scaled to the
useful share when the step reports `num_useful_flops` / `num_computed_flops`
(the FLOP efficiency: what the examples cost alone over what the batch's shape
costs, `tkx.data.packing.flop_counts`), else to the real tokens; MFU divides
them by the devices' peak (`model_info.peak_flops_per_device`, or
`peak_flops_per_device` when given).

Contract (the names other modules rely on; change one only together with its users):
- `step_logger.StepLogger(model_dir, total_steps, start_step, tokens_per_batch, flops_per_step, peak_flops, log_every)`:
  `.add_input_wait(s)`, `.step_done(step, host_metrics, force=False)`, `.close()`. Counts `num_real_tokens` (else
  every batch position) for tokens/s; with `num_computed_tokens` logs `token efficiency NN.N%` and writes the
  `token_efficiency` scalar; with `num_useful_flops` / `num_computed_flops` logs `FLOP efficiency NN.N%` and
  writes `flop_efficiency`; model FLOPs come from `model_info.train_step_flops` scaled to that share (else to the
  real tokens).
"""

import logging
import time
from typing import Mapping, Optional

from tkx import io_utils

log = logging.getLogger(__name__)


class StepLogger:
  """Throughput, token efficiency, MFU, ETA and TensorBoard scalars of the training loop."""

  def __init__(
      self,
      *,
      model_dir: Optional[str],
      total_steps: int,
      start_step: int,
      tokens_per_batch: int,
      flops_per_step: Optional[float],
      peak_flops: Optional[float],
      log_every: int,
  ):
    self.total_steps, self.log_every = total_steps, max(int(log_every), 1)
    self.tokens_per_batch = tokens_per_batch
    self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
    self.writer = io_utils.ScalarWriter(model_dir and f"{model_dir}/train")
    self.start_step = start_step
    self.loop_start = time.time()
    self._reset_window(time.time())

  def _reset_window(self, now):
    self.window_start, self.window_steps = now, 0
    self.input_wait, self.real_tokens, self.computed_tokens = 0.0, 0.0, 0.0
    self.useful_flops, self.computed_flops = 0.0, 0.0
    self.examples = 0.0

  def add_input_wait(self, seconds: float):
    self.input_wait += seconds

  def step_done(self, step: int, metrics: Mapping[str, float], force=False):
    """Counts one finished step (host metrics); logs and writes scalars every `log_every` steps."""
    self.window_steps += 1
    real = metrics.get("num_real_tokens")
    computed = metrics.get("num_computed_tokens")
    if metrics.get("num_computed_flops") is not None:
      self.useful_flops += float(metrics["num_useful_flops"])
      self.computed_flops += float(metrics["num_computed_flops"])
    if metrics.get("num_examples") is not None:
      self.examples += float(metrics["num_examples"])
    self.real_tokens += (
        float(real) if real is not None else self.tokens_per_batch
    )
    self.computed_tokens += (
        float(computed) if computed is not None else self.tokens_per_batch
    )
    if step % self.log_every == 0 or force:
      self._report(step, metrics, has_token_counts=real is not None)

  def _report(self, step, metrics, has_token_counts):
    now = time.time()
    elapsed = max(now - self.window_start, 1e-9)
    step_time = elapsed / max(self.window_steps, 1)
    done = step - self.start_step
    eta = (now - self.loop_start) / max(done, 1) * (self.total_steps - step)
    tokens_per_s = self.real_tokens / elapsed
    real_share = (
        self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0
    )
    flop_share = (
        self.useful_flops / self.computed_flops if self.computed_flops else None
    )
    model_flops_per_s = (
        self.flops_per_step
        * (real_share if flop_share is None else flop_share)
        / step_time
        if self.flops_per_step
        else None
    )
    mfu = (
        model_flops_per_s / self.peak_flops
        if model_flops_per_s and self.peak_flops
        else None
    )
    parts = [
        f"step {step}/{self.total_steps} loss {float(metrics['loss']):.4f} "
        f"lr {float(metrics['learning_rate']):.3g} "
        f"grad_norm {float(metrics['grad_norm']):.3f} |",
        f"{tokens_per_s:.0f} tokens/s",
    ]
    examples_per_s = self.examples / elapsed if self.examples else None
    if examples_per_s is not None:
      parts.append(f"{examples_per_s:.3g} examples/s")
    if has_token_counts:
      parts.append(f"token efficiency {real_share:.1%}")
    if flop_share is not None:
      parts.append(f"FLOP efficiency {flop_share:.1%}")
    if model_flops_per_s is not None:
      parts.append(f"{model_flops_per_s / 1e12:.3f} TFLOP/s")
    if mfu is not None:
      parts.append(f"MFU {mfu:.1%}")
    parts.append(
        f"input wait {self.input_wait:.2f}s | ETA {io_utils.format_seconds(eta)}"
    )
    log.info("%s", " ".join(parts))
    self.writer.scalars(
        step,
        {
            "loss": metrics["loss"],
            "learning_rate": metrics["learning_rate"],
            "grad_norm": metrics["grad_norm"],
            "z_loss": metrics.get("z_loss"),
            "accuracy": metrics.get("accuracy"),
            "token_efficiency": real_share if has_token_counts else None,
            "flop_efficiency": flop_share,
            "timing/tokens_per_second": tokens_per_s,
            "timing/steps_per_second": 1.0 / step_time,
            "timing/examples_per_second": examples_per_s,
            "timing/model_tflops_per_second": (
                model_flops_per_s / 1e12 if model_flops_per_s else None
            ),
            "timing/mfu": mfu,
            "timing/input_wait_seconds": self.input_wait,
        },
    )
    self._reset_window(now)

  def close(self):
    self.writer.close()
