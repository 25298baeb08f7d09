"""Choosing the packed row layout from the data: PACKED_* = 'auto' (docs/packing.md).

How full packed rows get depends on the proportion of target to input tokens of
the run's examples, which every encoding, track, vocabulary and checkout has
its own. With `PACKED_ENCODER_BLOCKS`, `PACKED_TARGETS_LENGTH` or
`PACKED_BATCH_SIZE` = 'auto' the trainer (`resolve_layout`) measures the token
lengths of a seeded sample of the run's own training examples (`sample_lengths`:
the same encoding, vocabulary and caps, `window` examples, packed as one window
of the run) and takes, of the candidate layouts (`candidates`), the one that
spends the largest share of its computed model FLOPs on the examples
(`LayoutStats.flop_efficiency`) under the run's constraints:

- rows per step a multiple of `row_multiple` (data-parallel devices x
  micro-batches);
- examples per step within `EXAMPLES_TOLERANCE` of the recipe's batch size
  (BATCH_SIZE, 16 for Tk-Instruct); when no candidate is, the closest;
- encoder blocks of TASK_FEATURE_LENGTHS inputs and a decoder row at least
  TASK_FEATURE_LENGTHS targets long, so that the longest example always fits.

A setting that is not 'auto' stays as given (a constraint on the others).
Ties go to the examples per step closest to the batch size, then to fewer
blocks and a shorter decoder row, so the choice depends only on the lengths.

Resume. The layout a run trains with is recorded in MODEL_DIR/`RECORD_FILE`
(primary host, when the run starts without a checkpoint); a run that finds a
checkpoint in MODEL_DIR uses the recorded layout, never a re-chosen one (the
input position of a packed checkpoint means something only with its layout).

FLOP efficiency: useful / computed model FLOPs (`tkx.data.packing.flop_counts`
for a batch; `measure` for lengths), from `tkx.models.model_info.forward_flops`.
Without a model config (a model that is not a T5) the token efficiency decides.

Contract (the names other modules rely on; change one only together with its users):
- `AUTO = "auto"`; `plan(input_lengths, target_lengths, *, feature_lengths, examples_per_step, row_multiple,
  window, config, encoder_blocks, targets_length, rows_per_step, prune=True) -> [LayoutStats]` best first: candidates
  (`candidates(...)`: blocks 1..8, decoder rows >= the targets length, multiples of 8 around the sample's demand; a
  non-'auto' setting fixed) measured by `measure(layout, inputs, targets, *, window, config, rows_per_step)` (packs as
  `count_packed_rows`; whole steps), ranked: examples per step within 25% of `examples_per_step` first, then FLOP
  efficiency (token efficiency without a config). `LayoutStats`: `.layout`, `.rows_per_step`, `.examples_per_step`,
  `.encoder_fill`, `.decoder_fill`, `.token_efficiency`, `.flop_efficiency`, `.describe()`.
- `sample_lengths(name, *, ni_dir, vocabulary, feature_lengths, size, seed) -> (inputs, targets)` a seeded sample of
  an NI name's examples, encoded as the run encodes them (`NIStream.lengths_at`).
- `resolve_layout(*, model_dir, resuming, ...) -> (RowLayout, rows per step)` (the trainer's one call): resuming
  with `MODEL_DIR/packed_layout.json` -> the recorded layout; all settings given -> them; else `plan(...)[0]`;
  logs once, records it (primary host). `read_record(model_dir)`, `write_record(...)`, `RECORD_FILE`.
- `example_flops(config, inputs, targets)`, `row_flops(config, layout)`: training FLOPs (`model_info.forward_flops`).
"""

import dataclasses
import json
import logging
import math
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tkx import errors, storage
from tkx.data import packing

log = logging.getLogger(__name__)

AUTO = "auto"
RECORD_FILE = "packed_layout.json"
# Examples per step may be this far (relative) from the batch size.
EXAMPLES_TOLERANCE = 0.25
MAX_ENCODER_BLOCKS = 8
# Decoder rows are multiples of this (accelerator-friendly shapes).
TARGETS_ALIGN = 8
# Decoder rows tried around a row's measured target demand.
_TARGET_FACTORS = (0.9, 0.95, 1.0, 1.05, 1.1)

Setting = Union[int, str, None]


@dataclasses.dataclass(frozen=True)
class LayoutStats:
  """A row layout measured on a stream of example lengths."""

  layout: packing.RowLayout
  rows_per_step: int
  rows: int  # packed rows of the measured stream
  examples: int
  real_inputs: int
  real_targets: int
  useful_flops: Optional[float]
  computed_flops: Optional[float]  # of `rows` rows

  @property
  def examples_per_row(self) -> float:
    return self.examples / self.rows

  @property
  def examples_per_step(self) -> float:
    return self.examples_per_row * self.rows_per_step

  @property
  def encoder_fill(self) -> float:
    layout = self.layout
    return self.real_inputs / (
        self.rows * layout.encoder_blocks * layout.inputs
    )

  @property
  def decoder_fill(self) -> float:
    return self.real_targets / (self.rows * self.layout.targets)

  @property
  def token_efficiency(self) -> float:
    layout = self.layout
    per_row = layout.encoder_blocks * layout.inputs + layout.targets
    return (self.real_inputs + self.real_targets) / (self.rows * per_row)

  @property
  def flop_efficiency(self) -> Optional[float]:
    if not self.computed_flops:
      return None
    return self.useful_flops / self.computed_flops

  def describe(self) -> str:
    """'4 x 1024 / 184, 2 rows: 15.8 examples per step, 95.0% tokens, 93.1% FLOPs'."""
    flops = self.flop_efficiency
    return (
        f"{layout_name(self.layout)}, {self.rows_per_step} rows: "
        f"{self.examples_per_step:.1f} examples per step, "
        f"{self.token_efficiency:.1%} tokens"
        + (f", {flops:.1%} FLOPs" if flops is not None else "")
        + " real"
    )


def layout_name(layout: packing.RowLayout) -> str:
  return f"{layout.encoder_blocks} x {layout.inputs} / {layout.targets}"


def example_flops(config, input_lengths, target_lengths) -> float:
  """Training FLOPs of the examples, each alone at its own lengths."""
  from tkx.models import model_info  # pylint: disable=g-import-not-at-top

  dense, attention = model_info.forward_flops(
      config,
      np.asarray(input_lengths, np.float64),
      np.asarray(target_lengths, np.float64),
  )
  return float(3 * (dense + attention).sum())


def row_flops(config, layout: packing.RowLayout) -> float:
  """Training FLOPs of one packed row (padding included)."""
  from tkx.models import model_info  # pylint: disable=g-import-not-at-top

  return float(
      3
      * sum(
          model_info.forward_flops(
              config, layout.inputs, layout.targets, layout.encoder_blocks
          )
      )
  )


def measure(
    layout: packing.RowLayout,
    input_lengths: Sequence[int],
    target_lengths: Sequence[int],
    *,
    window: int,
    config=None,
    rows_per_step: int = 1,
    useful_flops: Optional[float] = None,
) -> LayoutStats:
  """Packs the lengths as a run does (windows of `window`) and counts what the rows hold.

  Whole steps: the rows are rounded up to `rows_per_step` (the last step's
  empty rows are computed too). `useful_flops` may be passed when known (it does
  not depend on the layout).
  """
  inputs = np.asarray(input_lengths, np.int64)
  targets = np.asarray(target_lengths, np.int64)
  rows = packing.count_packed_rows(inputs, targets, layout, window)
  rows = -(-rows // rows_per_step) * rows_per_step
  computed = useful = None
  if config is not None:
    computed = rows * row_flops(config, layout)
    useful = (
        useful_flops
        if useful_flops is not None
        else example_flops(config, inputs, targets)
    )
  return LayoutStats(
      layout,
      rows_per_step,
      rows,
      len(inputs),
      int(inputs.sum()),
      int(targets.sum()),
      useful,
      computed,
  )


def _align(n: float) -> int:
  return int(math.ceil(n / TARGETS_ALIGN) * TARGETS_ALIGN)


def candidates(
    feature_lengths: Mapping[str, int],
    input_lengths: Sequence[int],
    target_lengths: Sequence[int],
    *,
    encoder_blocks: Setting = AUTO,
    targets_length: Setting = AUTO,
    examples_per_step: int = 16,
    min_rows: Optional[int] = None,
) -> List[packing.RowLayout]:
  """Row layouts worth measuring: the given settings, 'auto' ones varied.

  Blocks 1..MAX_ENCODER_BLOCKS (with `min_rows`, not so many that that many
  rows clearly exceed `examples_per_step` examples); decoder rows: the targets length and multiples
  of TARGETS_ALIGN around the target tokens a full row's inputs bring (the
  sample's targets per input token x the row's encoder tokens).
  """
  cap_in, cap_tgt = feature_lengths["inputs"], feature_lengths["targets"]
  ratio = float(np.sum(target_lengths)) / max(float(np.sum(input_lengths)), 1)
  if encoder_blocks != AUTO:
    blocks = [int(encoder_blocks)]
  else:
    # Rows of g blocks hold about g x cap_in / mean input examples: skip those whose
    # fewest rows per step already bring far more examples than wanted (one block stays).
    per_block = cap_in / max(float(np.mean(input_lengths)), 1.0)
    blocks = [
        g
        for g in range(1, MAX_ENCODER_BLOCKS + 1)
        if g == 1
        or min_rows is None
        or 0.8 * g * per_block * min_rows
        <= (1 + EXAMPLES_TOLERANCE) * examples_per_step
    ]
  layouts = []
  for g in blocks:
    if targets_length == AUTO:
      demand = g * cap_in * ratio
      lengths = {cap_tgt} | {
          max(cap_tgt, _align(demand * f)) for f in _TARGET_FACTORS
      }
    else:
      lengths = {int(targets_length)}
    layouts += [
        packing.RowLayout.for_lengths(feature_lengths, g, t)
        for t in sorted(lengths)
    ]
  return layouts


def rows_for(
    examples_per_row: float, examples_per_step: int, row_multiple: int
) -> int:
  """The multiple of `row_multiple` rows whose examples come closest to `examples_per_step`."""
  k = max(1, round(examples_per_step / (examples_per_row * row_multiple)))
  return k * row_multiple


def _rank(stats: LayoutStats, examples_per_step: int):
  off = abs(stats.examples_per_step - examples_per_step) / examples_per_step
  within = off <= EXAMPLES_TOLERANCE
  efficiency = stats.flop_efficiency
  if efficiency is None:
    efficiency = stats.token_efficiency
  return (
      not within,
      0.0 if within else off,
      -round(efficiency, 4),
      off,
      stats.layout.encoder_blocks,
      stats.layout.targets,
  )


def plan(
    input_lengths: Sequence[int],
    target_lengths: Sequence[int],
    *,
    feature_lengths: Mapping[str, int],
    examples_per_step: int,
    row_multiple: int = 1,
    window: int = packing.DEFAULT_WINDOW,
    config=None,
    encoder_blocks: Setting = AUTO,
    targets_length: Setting = AUTO,
    rows_per_step: Setting = AUTO,
    prune: bool = True,
) -> List[LayoutStats]:
  """Every candidate measured on the lengths, best first (`plan(...)[0]` is the choice).

  `prune=False` also measures block counts that cannot come near the examples
  per step (to show the trade-off; the choice is the same).
  """
  if rows_per_step != AUTO and int(rows_per_step) % row_multiple:
    raise errors.ConfigError(
        f"PACKED_BATCH_SIZE={rows_per_step} must be divisible by the data-parallel "
        f"size x NUM_MICROBATCHES = {row_multiple}"
    )
  useful = (
      example_flops(config, input_lengths, target_lengths)
      if config is not None
      else None
  )
  results = []
  for layout in candidates(
      feature_lengths,
      input_lengths,
      target_lengths,
      encoder_blocks=encoder_blocks,
      targets_length=targets_length,
      examples_per_step=examples_per_step,
      min_rows=(
          None
          if not prune
          else row_multiple
          if rows_per_step == AUTO
          else int(rows_per_step)
      ),
  ):
    stats = measure(
        layout,
        input_lengths,
        target_lengths,
        window=window,
        config=config,
        useful_flops=useful,
    )
    rows = (
        int(rows_per_step)
        if rows_per_step != AUTO
        else rows_for(stats.examples_per_row, examples_per_step, row_multiple)
    )
    results.append(dataclasses.replace(stats, rows_per_step=rows))
  return sorted(results, key=lambda s: _rank(s, examples_per_step))


def sample_lengths(
    mixture_or_task_name: str,
    *,
    ni_dir: Optional[str],
    vocabulary,
    feature_lengths: Mapping[str, int],
    size: int,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
  """Token lengths (EOS included, within the caps) of a seeded sample of an NI name's examples.

  `size` distinct examples (all when the split has fewer), in a seeded random
  order, as a shuffled training stream would bring them.
  """
  from tkx.data import pipeline  # pylint: disable=g-import-not-at-top

  pipeline.register_ni_for(
      mixture_or_task_name, ni_dir, vocabulary, feature_lengths["inputs"]
  )
  spec = pipeline.ni_spec(mixture_or_task_name)
  if spec is None:
    raise errors.ConfigError(
        f"MIXTURE_OR_TASK_NAME={mixture_or_task_name!r}: 'auto' packed layouts need an "
        "NI name (set PACKED_ENCODER_BLOCKS, PACKED_TARGETS_LENGTH, PACKED_BATCH_SIZE)"
    )
  stream = pipeline.NIStream(spec, vocabulary, dict(feature_lengths))
  rng = np.random.Generator(np.random.PCG64([seed, 0x5A3]))
  n = stream.examples_per_epoch
  positions = rng.permutation(n)[: min(size, n)]
  return stream.lengths_at(positions)


# ------------------------------------------------------------------------------ the trainer's side
def _is_auto(value: Setting) -> bool:
  return isinstance(value, str) and value == AUTO


def _check_setting(name: str, value: Setting, allow_none: bool = False):
  if _is_auto(value) or (value is None and allow_none):
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise errors.ConfigError(
        f"{name} must be a positive integer or 'auto', got {value!r}"
    )


def _log_once(level: int, message: str, *args) -> None:
  """Logs on the primary host only (every host makes the same choice)."""
  from tkx import multihost  # pylint: disable=g-import-not-at-top

  if multihost.is_primary_host():
    log.log(level, message, *args)


def read_record(model_dir: str) -> Optional[dict]:
  """The layout recorded in MODEL_DIR (None when there is none)."""
  path = storage.join(model_dir, RECORD_FILE)
  if not storage.exists(path):
    return None
  with storage.open(path) as f:
    try:
      record = json.load(f)
      packing.RowLayout(
          record["inputs"], record["targets"], record["encoder_blocks"]
      )
      int(record["rows_per_step"])
    except (ValueError, KeyError, TypeError) as e:
      raise errors.InputFileError(
          f"{path}: not a packed layout record ({e}); remove it to choose again"
      ) from None
  return record


def write_record(
    model_dir: str, layout: packing.RowLayout, rows: int, how: str
):
  from tkx import io_utils, multihost  # pylint: disable=g-import-not-at-top

  if not multihost.is_primary_host():
    return
  record = dict(dataclasses.asdict(layout), rows_per_step=rows, chosen=how)
  with io_utils.atomic_write(storage.join(model_dir, RECORD_FILE)) as f:
    json.dump(record, f, indent=1)
    f.write("\n")


def _recorded_layout(
    model_dir, record, settings
) -> Tuple[packing.RowLayout, int]:
  """The layout a resumed run started with (its record wins over different settings, said once)."""
  layout = packing.RowLayout(
      record["inputs"], record["targets"], record["encoder_blocks"]
  )
  rows = int(record["rows_per_step"])
  given = (layout.encoder_blocks, layout.targets, rows)
  if any(
      not _is_auto(s) and s is not None and s != g
      for s, g in zip(settings, given)
  ):
    _log_once(
        logging.WARNING,
        "PACKED_ENCODER_BLOCKS/PACKED_TARGETS_LENGTH/PACKED_BATCH_SIZE = %s differ "
        "from the layout this run started with (%s); resuming with the recorded one",
        settings,
        record,
    )
  _log_once(
      logging.INFO,
      "PACK: resuming with the recorded layout (%s): %d rows per step of %s",
      storage.join(model_dir, RECORD_FILE),
      rows,
      layout_name(layout),
  )
  return layout, rows


def resolve_layout(
    *,
    model_dir: str,
    resuming: bool,
    mixture_or_task_name: str,
    ni_dir: Optional[str],
    vocabulary,
    feature_lengths: Mapping[str, int],
    config,
    encoder_blocks: Setting,
    targets_length: Setting,
    rows_per_step: Setting,
    examples_per_step: int,
    row_multiple: int,
    window: int,
    seed: int,
) -> Tuple[packing.RowLayout, int]:
  """(row layout, rows per step) of a packed run: recorded (resume), given, or chosen from the data.

  `rows_per_step` None means BATCH_SIZE rows (`examples_per_step`), as before
  'auto' existed. Logs the layout once and records it in MODEL_DIR.
  """
  _check_setting("PACKED_ENCODER_BLOCKS", encoder_blocks)
  _check_setting("PACKED_TARGETS_LENGTH", targets_length, allow_none=True)
  _check_setting("PACKED_BATCH_SIZE", rows_per_step, allow_none=True)
  if rows_per_step is None:
    rows_per_step = examples_per_step
  settings = (encoder_blocks, targets_length, rows_per_step)
  record = read_record(model_dir) if resuming else None
  if record is not None:
    return _recorded_layout(model_dir, record, settings)
  if resuming and any(_is_auto(s) for s in settings):
    _log_once(
        logging.WARNING,
        "PACK: %s has checkpoints but no %s (a run started before 'auto' layouts): "
        "choosing a layout; set PACKED_ENCODER_BLOCKS/PACKED_TARGETS_LENGTH/"
        "PACKED_BATCH_SIZE to the values the run started with for an exact resume",
        model_dir,
        RECORD_FILE,
    )
  if not any(_is_auto(s) for s in settings):
    layout = packing.RowLayout.for_lengths(
        feature_lengths, encoder_blocks, targets_length
    )
    _log_once(
        logging.INFO,
        "PACK: %d rows per step, each %d encoder block(s) of %d tokens and a "
        "decoder row of %d",
        rows_per_step,
        layout.encoder_blocks,
        layout.inputs,
        layout.targets,
    )
    write_record(model_dir, layout, rows_per_step, "given")
    return layout, rows_per_step
  inputs, targets = sample_lengths(
      mixture_or_task_name,
      ni_dir=ni_dir,
      vocabulary=vocabulary,
      feature_lengths=feature_lengths,
      size=window,
      seed=seed,
  )
  ranked = plan(
      inputs,
      targets,
      feature_lengths=feature_lengths,
      examples_per_step=examples_per_step,
      row_multiple=row_multiple,
      window=window,
      config=config,
      encoder_blocks=encoder_blocks,
      targets_length=(
          feature_lengths["targets"]
          if targets_length is None
          else targets_length
      ),
      rows_per_step=rows_per_step,
  )
  best = ranked[0]
  _log_once(
      logging.INFO,
      "PACK auto: %s (expected, from %d sampled examples; %d layouts compared, "
      "rows a multiple of %d, ~%d examples per step wanted; `tkx plan-packing` lists them)",
      best.describe(),
      len(inputs),
      len(ranked),
      row_multiple,
      examples_per_step,
  )
  write_record(model_dir, best.layout, best.rows_per_step, "auto")
  return best.layout, best.rows_per_step
