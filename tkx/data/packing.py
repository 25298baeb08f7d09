"""Packing training examples into full rows: several examples per row, none split.

Half of a padded NI batch is padding (def_pos2 inputs average ~491 of 1024
tokens, targets ~22 of 128). `packed_batches` fills rows instead. A row
(`RowLayout`) is `encoder_blocks` encoder blocks of `inputs` tokens and one
decoder row of `targets` tokens: every example sits whole in one block and in
the decoder row. With one block this is SeqIO's
`EncDecFeatureConverter(pack=True)` format (segment ids 1, 2, ... per row,
positions restarting at 0, decoder inputs shifted right inside each segment).
With several blocks the encoder features are [rows, blocks, inputs]: the
network encodes each block on its own and the decoder row attends to all of
them (segment ids are unique across the row's blocks). Why blocks: an encoder
block of 1024 holds ~2 NI examples, i.e. ~45 target tokens, so a decoder row
of 128 per block is two-thirds padding; four blocks share one decoder row of
~200 that they fill. Which layout a run uses is chosen from its own examples
(`tkx.data.packing_plan`, docs/packing.md).

The packer reads the stream a window of `window` examples at a time and fills
one row at a time: it takes the remaining example with the largest size
(inputs / encoder capacity + targets / decoder capacity) that fits, less how
far the row's use of its two capacities would drift from the proportion in
which the window's remaining examples need them (so that what is left can
still fill rows); the example goes into the block it leaves least room in.

Guarantees: deterministic (the rows depend only on the window's lengths);
every example of the stream lands in exactly one row, whole (an example longer
than a block or the decoder row is an error, never cut or dropped); a batch may
take rows of two consecutive windows, so only the stream's last batch has
empty rows; after each batch a small JSON state `{"window_start",
"rows_emitted"}` from which `packed_batches(..., state=state)` continues
bit-identically (it reopens the stream at the window's first example and
repacks that window).

`open_stream(start)` is the data layer's: tokenised examples (1-D int32
`inputs`/`targets`, EOS included, unpadded) from global example index `start`.

Contract (the names other modules rely on; change one only together with its users):
- `RowLayout(inputs, targets, encoder_blocks=1)` (frozen): a row is `encoder_blocks` encoder blocks of `inputs`
  tokens and one decoder row of `targets` tokens; `RowLayout.for_lengths(feature_lengths, encoder_blocks=1,
  targets_length=None)` (a decoder row shorter than the targets length is a ValueError); `.encoder_shape`
  (`(inputs,)` for one block, else `(blocks, inputs)`).
- `packed_batches(open_stream, *, batch_size, layout, window, state=None) -> Iterator[(batch, state)]`:
  `open_stream(start) -> Iterator[{"inputs", "targets"}]` (1-D int32, EOS included, unpadded, within the
  layout; from global example index `start`, this host's shard). Yields numpy batches of `batch_size` rows with
  exactly SeqIO's `EncDecFeatureConverter(pack=True)` keys and int32 arrays (`encoder_input_tokens`,
  `encoder_segment_ids`, `encoder_positions`, `decoder_target_tokens`, `decoder_input_tokens` shifted right per
  segment, `decoder_segment_ids`, `decoder_positions`, `decoder_loss_weights`); with one block exactly SeqIO's
  arrays, with several the encoder arrays are `[rows, blocks, inputs]` and segment ids run through the row's
  blocks. After each batch the JSON state `{"window_start", "rows_emitted"}`; `state=` continues bit-identically.
  Every example lands whole in exactly one block of one row; windows of `window` consecutive examples are packed
  by `pack_window`; a batch may take rows of two windows; only the stream's last batch has empty (all-zero) rows.
  An example longer than a block or the decoder row raises `ValueError` naming its index.
- `pack_window(input_lengths, target_lengths, layout) -> rows of blocks of indices`; `build_rows(rows, layout)`;
  `count_packed_rows(input_lengths, target_lengths, layout, window)` (steps of an epoch = ceil(rows / rows per step)).
- The network (`network.Transformer.__call__`) takes `[batch, blocks, length]` encoder features (packed only):
  each block is encoded alone, the decoder row attends to the blocks side by side.
- `token_counts(batch) -> (real, computed)` (numpy or jax, packed or not: encoder tokens > 0 + targets with loss
  weight > 0; all encoder + decoder positions), `token_efficiency(batch) -> float`, `num_examples(batch)`.
- `segment_lengths(batch) -> (inputs, targets)` `[rows, S]` token counts of each example (packed: segment s in
  column s-1, S = decoder row length; unpacked: one column); `flop_counts(batch, config) -> (useful, computed)`
  training FLOPs: each example alone at its lengths vs the batch's shape (`model_info.forward_flops` x 3).
"""

import dataclasses
from typing import (
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

import numpy as np

from tkx import errors

# Examples looked ahead over (docs/packing.md).
DEFAULT_WINDOW = 1000

FEATURES = (
    "encoder_input_tokens",
    "encoder_segment_ids",
    "encoder_positions",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
)

Example = Mapping[str, np.ndarray]
Batch = Dict[str, np.ndarray]
# A packed row: its blocks, each the examples (or their indices) it holds.
Row = List[List]


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """A packed row: `encoder_blocks` blocks of `inputs` tokens, one decoder row of `targets`."""

  inputs: int
  targets: int
  encoder_blocks: int = 1

  def __post_init__(self):
    for name in ("inputs", "targets", "encoder_blocks"):
      if getattr(self, name) < 1:
        raise errors.ConfigError(
            f"packed row {name} must be >= 1, got {getattr(self, name)}"
        )

  @classmethod
  def for_lengths(
      cls,
      feature_lengths: Mapping[str, int],
      encoder_blocks: int = 1,
      targets_length: Optional[int] = None,
  ) -> "RowLayout":
    """Blocks of TASK_FEATURE_LENGTHS inputs; a decoder row of `targets_length` (default: the targets length)."""
    targets = targets_length or feature_lengths["targets"]
    if targets < feature_lengths["targets"]:
      raise errors.ConfigError(
          f"the packed decoder row ({targets} tokens) is shorter than an example's "
          f"targets may be (TASK_FEATURE_LENGTHS targets = {feature_lengths['targets']})"
      )
    return cls(feature_lengths["inputs"], targets, encoder_blocks)

  @property
  def encoder_shape(self) -> Tuple[int, ...]:
    """Shape of a row's encoder features: (inputs,) for one block, else (blocks, inputs)."""
    if self.encoder_blocks == 1:
      return (self.inputs,)
    return (self.encoder_blocks, self.inputs)


def pack_window(
    input_lengths: Sequence[int],
    target_lengths: Sequence[int],
    layout: RowLayout,
) -> List[Row]:
  """Rows of blocks of example indices (into the window); see the module docstring.

  Each block lists its examples in stream order; rows come in the order they
  were filled. Ties go to the earlier example and the earlier block, so the
  result depends only on the lengths.
  """
  inputs = np.asarray(input_lengths, np.int64)
  targets = np.asarray(target_lengths, np.int64)
  blocks, block_len = layout.encoder_blocks, layout.inputs
  # Sizes as fractions of a row's encoder and decoder capacity.
  size_in = inputs / (blocks * block_len)
  size_tgt = targets / layout.targets
  left = np.ones(len(inputs), bool)
  rows: List[Row] = []
  while left.any():
    # The window's remaining demand, decoder per encoder: a row aims to use its
    # capacities in that proportion (the scarcer one fully).
    ratio = size_tgt[left].sum() / max(size_in[left].sum(), 1e-12)
    weight_in, weight_tgt = min(ratio, 1.0), min(1.0 / max(ratio, 1e-12), 1.0)
    room = np.full(blocks, block_len, np.int64)
    room_tgt = layout.targets
    used_in = used_tgt = 0.0
    row: Row = [[] for _ in range(blocks)]
    while True:
      fits = left & (targets <= room_tgt) & (inputs <= room.max())
      if not fits.any():
        break
      drift = np.abs(
          weight_in * (used_in + size_in) - weight_tgt * (used_tgt + size_tgt)
      )
      score = np.where(fits, size_in + size_tgt - drift, -np.inf)
      index = int(np.argmax(score))
      block = int(
          np.argmin(
              np.where(room >= inputs[index], room, np.iinfo(np.int64).max)
          )
      )
      row[block].append(index)
      left[index] = False
      room[block] -= inputs[index]
      room_tgt -= targets[index]
      used_in += size_in[index]
      used_tgt += size_tgt[index]
    for examples in row:
      examples.sort()
    rows.append(row)
  return rows


def _check_example(example: Example, index: int, layout: RowLayout) -> None:
  for feature, limit, where in (
      ("inputs", layout.inputs, "an encoder block"),
      ("targets", layout.targets, "the packed decoder row"),
  ):
    length = len(example[feature])
    if length > limit:
      raise ValueError(
          f"example {index} of the stream has {length} {feature} tokens, more than "
          f"{where} holds ({limit}); the data layer must truncate examples to "
          "TASK_FEATURE_LENGTHS before packing"
      )


def build_rows(rows: Sequence[Row], layout: RowLayout) -> Batch:
  """Packed-format arrays of `rows` (each a list of blocks of examples).

  Segments are numbered 1, 2, ... through the row, block by block; an empty
  row is all zeros (no segment, no loss).
  """
  batch = {
      name: np.zeros(
          (len(rows),)
          + (
              layout.encoder_shape
              if name.startswith("encoder")
              else (layout.targets,)
          ),
          np.int32,
      )
      for name in FEATURES
  }
  enc = {
      name: batch[name].reshape(len(rows), layout.encoder_blocks, layout.inputs)
      for name in FEATURES
      if name.startswith("encoder")
  }  # views: writing a block writes the batch
  for r, row in enumerate(rows):
    segment = at_tgt = 0
    for b, block in enumerate(row):
      at_in = 0
      for example in block:
        segment += 1
        inputs = np.asarray(example["inputs"], np.int32)
        targets = np.asarray(example["targets"], np.int32)
        end_in, end_tgt = at_in + len(inputs), at_tgt + len(targets)
        enc["encoder_input_tokens"][r, b, at_in:end_in] = inputs
        enc["encoder_segment_ids"][r, b, at_in:end_in] = segment
        enc["encoder_positions"][r, b, at_in:end_in] = np.arange(len(inputs))
        batch["decoder_target_tokens"][r, at_tgt:end_tgt] = targets
        # Shifted right inside the segment: each segment starts from 0 (seqio).
        batch["decoder_input_tokens"][r, at_tgt + 1 : end_tgt] = targets[:-1]
        batch["decoder_segment_ids"][r, at_tgt:end_tgt] = segment
        batch["decoder_positions"][r, at_tgt:end_tgt] = np.arange(len(targets))
        batch["decoder_loss_weights"][r, at_tgt:end_tgt] = targets != 0
        at_in, at_tgt = end_in, end_tgt
  return batch


def packed_batches(
    open_stream: Callable[[int], Iterator[Example]],
    *,
    batch_size: int,
    layout: RowLayout,
    window: int,
    state: Optional[Mapping[str, int]] = None,
) -> Iterator[Tuple[Batch, dict]]:
  """Yields (packed batch of `batch_size` rows, state after it) until the stream ends.

  `state` (from a previous yield) resumes: the stream is reopened at
  `state["window_start"]`, that window repacked and its first
  `state["rows_emitted"]` rows skipped. The last batch, when the stream ends,
  is filled up with empty rows.
  """
  if batch_size < 1:
    raise errors.ConfigError(
        f"packed batch_size must be >= 1 rows, got {batch_size}"
    )
  if window < 1:
    raise errors.ConfigError(
        f"packing window must be >= 1 examples, got {window}"
    )
  window_start = int(state["window_start"]) if state else 0
  skip_rows = int(state["rows_emitted"]) if state else 0
  stream = iter(open_stream(window_start))
  # Rows not yet handed out: (window_start, row index in its window, row of examples).
  pending: List[Tuple[int, int, Row]] = []

  def state_after() -> dict:
    if pending:
      return {"window_start": pending[0][0], "rows_emitted": pending[0][1]}
    return {"window_start": window_start, "rows_emitted": 0}

  def take_batch() -> Batch:
    taken = [row for _, _, row in pending[:batch_size]]
    del pending[:batch_size]
    taken += [[]] * (batch_size - len(taken))
    return build_rows(taken, layout)

  while True:
    examples = []
    for example in stream:
      _check_example(example, window_start + len(examples), layout)
      examples.append(example)
      if len(examples) == window:
        break
    if not examples:
      break
    rows = pack_window(
        [len(e["inputs"]) for e in examples],
        [len(e["targets"]) for e in examples],
        layout,
    )
    for r, row in enumerate(rows[skip_rows:], start=skip_rows):
      pending.append(
          (window_start, r, [[examples[i] for i in block] for block in row])
      )
    skip_rows = 0
    # The next window starts after this one's last example, as a global stream index
    # (a host's shard reads every num_shards-th index, so counting examples is not it).
    window_start = (
        int(examples[-1]["index"]) + 1
        if "index" in examples[-1]
        else window_start + len(examples)
    )
    while len(pending) >= batch_size:
      batch = take_batch()
      yield batch, state_after()
    if len(examples) < window:
      break
  if pending:
    batch = take_batch()
    yield batch, state_after()


def count_packed_rows(
    input_lengths: Sequence[int],
    target_lengths: Sequence[int],
    layout: RowLayout,
    window: int,
) -> int:
  """Rows `packed_batches` makes of a stream with these lengths (its batches: ceil(rows / batch_size))."""
  total = 0
  for start in range(0, len(input_lengths), window):
    total += len(
        pack_window(
            input_lengths[start : start + window],
            target_lengths[start : start + window],
            layout,
        )
    )
  return total


def token_counts(batch) -> Tuple:
  """(real, computed) tokens of a batch: numpy or jax arrays, packed or not.

  Real: encoder tokens > 0 plus target tokens with loss weight > 0. Computed:
  every position of the encoder and decoder arrays.
  """
  real = (batch["encoder_input_tokens"] > 0).sum() + (
      batch["decoder_loss_weights"] > 0
  ).sum()
  computed = (
      batch["encoder_input_tokens"].size + batch["decoder_target_tokens"].size
  )
  return real, computed


def token_efficiency(batch) -> float:
  """Real tokens / computed tokens of a batch (see `token_counts`)."""
  real, computed = token_counts(batch)
  return float(real) / float(computed) if computed else 0.0


def segment_lengths(batch) -> Tuple:
  """(inputs, targets) tokens of each example of a batch: two [rows, S] arrays, numpy or jax.

  Packed (segment ids present): column s-1 is segment s of the row (S = the
  decoder row's length, which bounds a row's examples: each has a target token;
  absent segments are 0). Unpacked: one column, the row's real tokens.
  """
  if "decoder_segment_ids" not in batch:
    return (
        (batch["encoder_input_tokens"] > 0).sum(axis=-1)[:, None],
        (batch["decoder_loss_weights"] > 0).sum(axis=-1)[:, None],
    )
  rows, targets = batch["decoder_segment_ids"].shape
  encoder = batch["encoder_segment_ids"].reshape(rows, -1)
  segments = np.arange(1, targets + 1)
  decoder = batch["decoder_segment_ids"] * (batch["decoder_loss_weights"] > 0)
  return (
      (encoder[:, :, None] == segments).sum(axis=1),
      (decoder[:, :, None] == segments).sum(axis=1),
  )


def flop_counts(batch, config) -> Tuple:
  """(useful, computed) training FLOPs of a batch for a `T5Config`, numpy or jax.

  Useful: what each example costs alone at its own lengths; computed: what the
  batch's shape costs (padding, other examples' attention keys, empty rows).
  Both from `tkx.models.model_info.forward_flops` (x3: forward + backward).
  """
  from tkx.models import model_info  # pylint: disable=g-import-not-at-top

  inputs, targets = segment_lengths(batch)
  dense, attention = model_info.forward_flops(
      config, inputs.astype(np.float32), targets.astype(np.float32)
  )
  useful = 3 * (dense + attention).sum()
  shape = batch["encoder_input_tokens"].shape
  blocks = shape[1] if len(shape) == 3 else 1
  computed = 3 * sum(
      model_info.forward_flops(
          config,
          shape[-1],
          batch["decoder_target_tokens"].shape[-1],
          blocks,
          batch_size=shape[0],
      )
  )
  return useful, float(computed)


def num_examples(batch):
  """Examples in a batch: segments when packed, rows with a loss-bearing target otherwise."""
  if "decoder_segment_ids" in batch:
    return batch["decoder_segment_ids"].max(axis=-1).sum()
  return (batch["decoder_loss_weights"] > 0).any(axis=-1).sum()
