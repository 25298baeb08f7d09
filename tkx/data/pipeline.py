"""The training input: exact epochs over one NI source, resumable in O(1), sharded over hosts.

`trainer.train` calls `train_input(...)` and reads `(host batch, state)` pairs
from `TrainInput.batches(state)`; it saves the state of the last batch it trained
on in each checkpoint and hands it back on resume.

Stream. Global example index i (counting since the start of training, across
epochs) is row `permutation(epoch)[i % N]` of the split's source, epoch = i // N,
N = the number of selected instances, `permutation(e)` = a permutation of range(N)
drawn by numpy's PCG64 seeded with (data_seed, e). So an epoch visits every
selected instance exactly once, in a seeded order, and any position is reached in
O(1): resuming reads no example before it. Host `shard_id` of `num_shards`
reads the indices with i % num_shards == shard_id (hosts of one model-parallel
replica share a shard id, hence the same rows); every global batch of B examples
is indices [bB, (b+1)B), so the union over hosts is the single-process stream.

`open_stream(start)` yields this host's examples from global index `start` on:
{"inputs", "targets": 1-D int32, EOS included, truncated to the feature lengths,
unpadded; "index": the global index}. Encoding (the 1024-token budget) and
tokenization run in a thread pool, ordered, a bounded window ahead, so the first
batch waits for one batch of work, not for the split.

Batchers take `open_stream` and a JSON state and yield `(batch, state)`:
`padded_batches` (here) gives SeqIO EncDecFeatureConverter's unpacked layout;
`tkx.data.packing.packed_batches` the packed one (gin PACK=True). The state of
`padded_batches` is {"next_index": global index of the next batch's first example}.

Checkpoints (`TrainInput.checkpoint_data_state`) hold every data shard's state,
gathered from all hosts at the save (packed positions differ per host: each packs
its own shard). A resume on the same number of shards takes its own shard's; on
another number only the unpadded stream's global index resumes (the same examples
per step), and packed or SeqIO input is refused with one line naming both numbers.

Names that are not NI names keep SeqIO's pipeline (`get_dataset`), resumed by
skipping the batches already consumed.

Contract (the names other modules rely on; change one only together with its users):
- `register_ni_for(name, ni_dir=None, vocabulary=None, max_source_length=None, *, flag=...)` registers the
  split an NI name names (the per-task task only when the name is one), checks a named checkout; non-NI names
  must already be registered. Asked again with the same settings it leaves SeqIO's registry as it is
  (`tasks._add_task`), so a command changes the registry once. `check_mixture_name(name, ni_dir, flag=)`: the
  one name check of `tkx infer` and `tkx eval` (both then register through `register_ni_for`). `ni_spec(name)`, `num_examples(name)`, `steps_for_epochs(name, epochs, batch)`.
- `NIStream(spec, vocabulary, feature_lengths, data_seed, shard_id, num_shards, workers, lookahead)`:
  `examples_per_epoch`; `row_of(index)` = `rows[permutation(epoch)[index % N]]`, permutation from
  PCG64(`data_seed`, epoch); **`open_stream(start) -> Iterator[dict]`**: this host's examples (global index
  `i >= start`, `i % num_shards == shard_id`), each `{"inputs", "targets": 1-D int32 (EOS included, cut to the
  feature lengths, unpadded), "index": i}`, encoded + tokenized in a thread pool, in order.
  `shard_row_positions(end)`: k into `rows` of this host's indices below `end`; `lengths_at(positions) ->
  (inputs, targets)` token counts, each row encoded once (packed steps per epoch).
- Batchers: `padded_batches(open_stream, *, batch_size, feature_lengths, state) -> Iterator[(batch, state)]`
  (this host's `batch_size` rows; EncDecFeatureConverter's unpacked arrays; state `{"next_index"}` = next
  batch's first global index, the same on every host). `tkx.data.packing.packed_batches(open_stream, *,
  batch_size, layout, window, state)` has the same shape (PACK=True).
- `train_input(name, *, ni_dir, vocabulary, feature_lengths, batch_size, data_seed, pack, packing_window,
  row_layout, use_cached, shard_info) -> TrainInput` (`row_layout`: packed NI rows, default one block of the
  feature lengths; anything else without PACK or for a non-NI name is a ValueError) with `.batches(state)`, `.initial_state()`, `.state_from_checkpoint(data_state,
  step)` (this host's shard's position; reads older `consumed_batches` checkpoints), `.checkpoint_data_state(state)`
  (`{"input_by_shard", "input", "batch_size", "data_seed", "mixture"}`, see `tkx.optimizers / tkx.trainer`), `.steps_for_epochs(epochs)`. `get_dataset(...)` (gin
  `trainer.get_dataset`): SeqIO batches for non-NI names, SeqIO packing and held-out loss.
"""

import collections
import concurrent.futures
import dataclasses
import enum
import logging
import os
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import gin
import numpy as np

from tkx import errors
from tkx.data import encodings as enc
from tkx.data import names as names_lib
from tkx.data import ni
from tkx.data import packing
from tkx.data import source as source_lib

log = logging.getLogger(__name__)

PAD_ID = 0
# Examples encoded ahead of the consumer; bounds memory and the work lost on exit.
DEFAULT_LOOKAHEAD = 1024
_CHUNK = 32


def _default_workers() -> int:
  return max(1, min(4, (os.cpu_count() or 1)))


# ------------------------------------------------------------------------------ registration
def _checkout_splits(ni_dir: Optional[str]):
  """(checkout, {track: its split names}): a named `ni_dir` checked, None the embedded one."""
  from tkx.data import tasks as ni_tasks  # pylint: disable=g-import-not-at-top

  checkout = (
      source_lib.check_checkout(ni_dir) if ni_dir else ni_tasks.EMBEDDED_NI_DIR
  )
  return checkout, {t: ni.list_splits(checkout, t) for t in ni.TRACKS}


def register_ni_for(
    mixture_or_task_name: str,
    ni_dir: Optional[str] = None,
    vocabulary=None,
    max_source_length: Optional[int] = None,
    *,
    flag: str = "MIXTURE_OR_TASK_NAME",
    must_exist: bool = True,
) -> Optional[names_lib.MixtureName]:
  """(Re-)registers the NI split behind an NI name with this vocabulary and token budget.

  Returns the parsed mixture, or None for a non-NI name that is already registered
  with SeqIO (else ValueError naming `flag`, unless `must_exist` is False: the caller
  reports unknown names itself). A named `ni_dir` must be a checkout (`source.check_checkout`); None
  means the embedded `tasks/`. Per-task tasks are registered only when the name
  is one (`<mixture>_<task>`).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  from tkx.data import tasks as ni_tasks  # pylint: disable=g-import-not-at-top

  checkout, splits = _checkout_splits(ni_dir)
  try:
    parsed = names_lib.parse_name(
        mixture_or_task_name, {s for names in splits.values() for s in names}
    )
  except ValueError:
    parsed = None
  if parsed is not None:
    mixture, ni_task, _ = parsed
    kwargs = {}
    if max_source_length:
      kwargs["max_source_length"] = max_source_length
    ni_tasks.register_ni(
        ni_dir=checkout,
        tracks=(mixture.track,),
        encodings=(mixture.encoding,),
        vocabulary=vocabulary,
        splits=(mixture.split,),
        prefix=mixture.prefix,
        per_task_tasks=(mixture_or_task_name,) if ni_task else False,
        **kwargs,
    )
  known = set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())
  if must_exist and mixture_or_task_name not in known:
    raise errors.ConfigError(
        f"{flag}={mixture_or_task_name!r} is not a registered SeqIO task or mixture "
        f"(NI names look like ni_default_train_def_pos2; checkout {checkout})"
    )
  return parsed[0] if parsed is not None else None


def check_mixture_name(
    mixture_or_task_name: str, ni_dir: Optional[str] = None, *, flag: str
) -> None:
  """Refuses, before any checkpoint is read or model compiled, a name that is neither NI nor registered.

  NI names are checked against the checkout's splits (`names_lib.parse_name`);
  other names must already be SeqIO tasks or mixtures. The error names `flag` and
  the close NI and registered names.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  checkout, splits = _checkout_splits(ni_dir)
  try:
    names_lib.parse_name(
        mixture_or_task_name, {s for names in splits.values() for s in names}
    )
    return
  except ValueError:
    pass
  known = set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())
  if mixture_or_task_name in known:
    return
  known.update(
      names_lib.MixtureName(
          names_lib.DEFAULT_PREFIX, track, split, encoding
      ).name
      for track, names in splits.items()
      for split in names
      for encoding in [c.name for c in enc.TK_INSTRUCT_ENCODINGS] + [
          "tk_instruct"
      ]
  )
  raise errors.ConfigError(
      f"{flag} "
      + names_lib.close_matches_message(
          "mixture or task", mixture_or_task_name, known
      )
      + f" (NI checkout {checkout})"
  )


def ni_spec(mixture_or_task_name: str):
  """The `tasks.NITaskSpec` behind a registered NI mixture or task name, or None."""
  import seqio  # pylint: disable=g-import-not-at-top
  from tkx.data import tasks as ni_tasks  # pylint: disable=g-import-not-at-top

  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  subtasks = list(getattr(provider, "tasks", [provider]))
  if len(subtasks) != 1:
    return None
  try:
    return ni_tasks.task_spec(subtasks[0].name)
  except KeyError:
    return None


def num_examples(mixture_or_task_name: str) -> int:
  """Examples in one epoch: an NI name's selected instances; a SeqIO mixture's summed rates."""
  import seqio  # pylint: disable=g-import-not-at-top

  spec = ni_spec(mixture_or_task_name)
  if spec is not None:
    return len(spec.rows())
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  total = getattr(provider, "total_rate", None)
  if total is not None:
    return int(total)
  return sum(
      1
      for _ in provider.get_dataset(
          None,
          split=_split_of(mixture_or_task_name),
          shuffle=False,
          num_epochs=1,
      )
  )


def steps_for_epochs(
    mixture_or_task_name: str, epochs: float, batch_size: int
) -> int:
  """floor(epochs x examples / batch): NI names count their selected instances exactly."""
  examples = num_examples(mixture_or_task_name)
  steps = int(epochs * float(examples) // batch_size)
  log.info(
      "%s: %d examples x %g epochs / batch %d = %d steps",
      mixture_or_task_name,
      examples,
      epochs,
      batch_size,
      steps,
  )
  return max(steps, 1)


def _split_of(mixture_or_task_name: str) -> str:
  """The one split an NI task/mixture has (its NI split name); 'train' otherwise."""
  import seqio  # pylint: disable=g-import-not-at-top

  splits = tuple(
      getattr(seqio.get_mixture_or_task(mixture_or_task_name), "splits", ())
      or ()
  )
  return splits[0] if len(splits) == 1 else "train"


# ------------------------------------------------------------------------------ the stream
def _ordered_map(fn, items: Iterator[Any], workers: int, lookahead: int):
  """fn over items in a thread pool, results in input order, at most `lookahead` ahead.

  A result is handed out as soon as it and all before it are done, so the first
  one does not wait for the window to fill.
  """
  if workers <= 1:
    for item in items:
      yield fn(item)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    try:
      for item in items:
        pending.append(pool.submit(fn, item))
        while pending and (len(pending) >= lookahead or pending[0].done()):
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()


@dataclasses.dataclass
class NIStream:
  """The encoded, tokenized training examples of one NI source (see the module docstring)."""

  spec: Any  # tasks.NITaskSpec
  vocabulary: Any
  feature_lengths: Mapping[str, int]
  data_seed: int = 0
  shard_id: int = 0
  num_shards: int = 1
  workers: int = dataclasses.field(default_factory=_default_workers)
  lookahead: int = DEFAULT_LOOKAHEAD

  def __post_init__(self):
    self.source = self.spec.split_source()
    self.rows = np.asarray(self.spec.rows(), np.int64)
    if not len(self.rows):
      raise ni.NIDataError(
          f"{self.spec.track}/{self.spec.split} selects no instance",
          file=self.spec.ni_dir,
      )
    self._perm_epoch, self._perm = None, None
    self._row_lengths = None
    self._token_fns = enc.vocabulary_token_fns(self.vocabulary)
    self._eos = getattr(self.vocabulary, "eos_id", 1)

  @property
  def examples_per_epoch(self) -> int:
    return len(self.rows)

  def permutation(self, epoch: int) -> np.ndarray:
    if self._perm_epoch != epoch:
      rng = np.random.Generator(np.random.PCG64([self.data_seed, epoch]))
      self._perm, self._perm_epoch = rng.permutation(len(self.rows)), epoch
    return self._perm

  def row_of(self, index: int) -> int:
    """The source row of global example index `index`."""
    epoch, position = divmod(index, len(self.rows))
    return int(self.rows[self.permutation(epoch)[position]])

  def _indices(self, start: int) -> Iterator[int]:
    first = start + (self.shard_id - start) % self.num_shards
    index = first
    while True:
      yield index
      index += self.num_shards

  def _tokens(self, text: str, length: int) -> np.ndarray:
    ids = list(self.vocabulary.encode(text))[: length - 1] + [self._eos]
    return np.asarray(ids, np.int32)

  def encode_row(self, row: int) -> Dict[str, np.ndarray]:
    task, instance = self.source.row(row)
    token_count, truncate = self._token_fns
    example = enc.make_example(
        task,
        instance,
        self.spec.encoding,
        split=self.spec.split,
        seed=self.spec.seed,
        max_source_length=self.spec.max_source_length,
        token_count=token_count,
        truncate=truncate,
    )
    return {
        "inputs": self._tokens(
            example["inputs"], self.feature_lengths["inputs"]
        ),
        "targets": self._tokens(
            example["targets"], self.feature_lengths["targets"]
        ),
    }

  def lengths_at(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) token counts, EOS included, of `rows[k]` for each k in `positions`.

    An example's tokens do not depend on its epoch, so each row is encoded (in
    the thread pool) the first time it is asked for only.
    """
    if self._row_lengths is None:
      self._row_lengths = np.full((len(self.rows), 2), -1, np.int64)
    known = self._row_lengths
    missing = np.unique(positions[known[positions, 0] < 0])

    def lengths(chunk):
      encoded = [self.encode_row(int(self.rows[k])) for k in chunk]
      return [(len(e["inputs"]), len(e["targets"])) for e in encoded]

    chunks = (
        missing[start : start + _CHUNK]
        for start in range(0, len(missing), _CHUNK)
    )
    done = 0
    for chunk_lengths in _ordered_map(
        lengths, chunks, self.workers, max(1, self.lookahead // _CHUNK)
    ):
      chunk = missing[done : done + len(chunk_lengths)]
      known[chunk] = chunk_lengths
      done += len(chunk_lengths)
    return known[positions, 0], known[positions, 1]

  def shard_row_positions(self, end: int) -> np.ndarray:
    """k (into `rows`) of this host's global indices below `end`, in stream order."""
    n = len(self.rows)
    positions = []
    for epoch in range(-(-end // n)):
      lo, hi = epoch * n, min((epoch + 1) * n, end)
      first = lo + (self.shard_id - lo) % self.num_shards
      indices = np.arange(first, hi, self.num_shards)
      positions.append(self.permutation(epoch)[indices - lo])
    return np.concatenate(positions) if positions else np.zeros(0, np.int64)

  def open_stream(self, start: int) -> Iterator[Dict[str, Any]]:
    """This host's examples from global index `start` on (endless: epoch after epoch)."""
    indices = self._indices(int(start))

    def chunks():
      while True:
        chunk = [next(indices) for _ in range(_CHUNK)]
        # Rows are looked up here, in order, so the permutation cache is used by one thread.
        yield [(i, self.row_of(i)) for i in chunk]

    def encode_chunk(chunk):
      return [dict(self.encode_row(row), index=i) for i, row in chunk]

    for encoded in _ordered_map(
        encode_chunk,
        chunks(),
        self.workers,
        max(1, self.lookahead // _CHUNK),
    ):
      yield from encoded


def padded_batches(
    open_stream: Callable[[int], Iterator[Dict[str, Any]]],
    *,
    batch_size: int,
    feature_lengths: Mapping[str, int],
    state: Optional[Mapping[str, Any]] = None,
) -> Iterator[Tuple[Dict[str, np.ndarray], Dict[str, int]]]:
  """Unpacked EncDecFeatureConverter batches of `batch_size` rows (this host's), with their state.

  decoder_input_tokens = targets shifted right (0 first); loss weights 1 on
  target tokens. The state after a batch is the global index of the next batch's
  first example, the same on every host (indices rounded up to the shard stride).
  """
  start = int((state or {}).get("next_index", 0))
  stream = open_stream(start)
  in_len, tgt_len = feature_lengths["inputs"], feature_lengths["targets"]
  # The shard stride: consecutive examples of a host are `stride` global indices apart.
  stride = getattr(getattr(open_stream, "__self__", None), "num_shards", None)
  while True:
    rows = [next(stream) for _ in range(batch_size)]
    if stride is None and batch_size > 1:
      stride = rows[1]["index"] - rows[0]["index"]
    batch = {
        "encoder_input_tokens": np.full((batch_size, in_len), PAD_ID, np.int32),
        "decoder_target_tokens": np.full(
            (batch_size, tgt_len), PAD_ID, np.int32
        ),
        "decoder_input_tokens": np.full(
            (batch_size, tgt_len), PAD_ID, np.int32
        ),
        "decoder_loss_weights": np.zeros((batch_size, tgt_len), np.int32),
    }
    for r, example in enumerate(rows):
      inputs, targets = example["inputs"], example["targets"]
      batch["encoder_input_tokens"][r, : len(inputs)] = inputs
      batch["decoder_target_tokens"][r, : len(targets)] = targets
      shifted = targets[: tgt_len - 1]  # SeqIO shifts the padded targets right
      batch["decoder_input_tokens"][r, 1 : len(shifted) + 1] = shifted
      batch["decoder_loss_weights"][r, : len(targets)] = 1
    last = rows[-1]["index"]
    step = stride or 1
    yield batch, {"next_index": (last // step + 1) * step}


# ------------------------------------------------------------------------------ SeqIO path
@gin.configurable(module="trainer")
def get_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    split: Optional[str] = None,
    shuffle: bool = True,
    seed: Optional[int] = 0,
    pack: bool = False,
    use_cached: bool = False,
    num_epochs: Optional[int] = None,
    shard_info=None,
    skip_batches: int = 0,
):
  """Host-local batches (a tf.data dataset) of SeqIO's EncDecFeatureConverter output.

  For non-NI names, packing without `tkx.data.packing`, and held-out loss.
  `batch_size` is global; each of `shard_info.num_shards` hosts reads its shard.
  `skip_batches` fast-forwards to where a checkpoint left it.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  split = split or _split_of(mixture_or_task_name)
  num_shards = shard_info.num_shards if shard_info is not None else 1
  if batch_size % num_shards:
    raise errors.ConfigError(
        f"BATCH_SIZE={batch_size} is not divisible by the {num_shards} data shards (hosts)"
    )
  ds = seqio.get_dataset(
      mixture_or_task_name,
      task_feature_lengths=dict(task_feature_lengths),
      feature_converter=seqio.EncDecFeatureConverter(pack=pack),
      dataset_split=split,
      use_cached=use_cached,
      shuffle=shuffle,
      num_epochs=num_epochs,
      shard_info=shard_info,
      seed=seed,
      verbose=False,
  )
  ds = ds.batch(batch_size // num_shards, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(2)


# ------------------------------------------------------------------------------ what the trainer reads
class InputKind(enum.Enum):
  NI_STREAM = "ni_stream"  # exact epochs over the NI source
  SEQIO = "seqio"  # SeqIO's pipeline, resumed by skipping batches


@dataclasses.dataclass
class TrainInput:
  """The trainer's input: host batches with resumable states."""

  mixture_or_task_name: str
  kind: InputKind
  batch_size: int  # global
  feature_lengths: Mapping[str, int]
  data_seed: int
  pack: bool
  use_cached: bool
  shard_info: Any
  stream: Optional[NIStream] = None
  packing_window: int = packing.DEFAULT_WINDOW
  row_layout: Optional[packing.RowLayout] = None  # packed NI rows

  @property
  def num_shards(self) -> int:
    return self.shard_info.num_shards if self.shard_info is not None else 1

  def steps_for_epochs(self, epochs: float) -> int:
    if self.kind is InputKind.NI_STREAM and self.pack:
      return self._packed_steps_for_epochs(epochs)
    return steps_for_epochs(self.mixture_or_task_name, epochs, self.batch_size)

  def _packed_steps_for_epochs(self, epochs: float) -> int:
    """ceil(packed rows of the epochs' examples / rows per step), the most of any host.

    The rows are counted by packing the lengths of this host's examples of the first
    `epochs` x N global indices window by window, as `packed_batches` does (a window
    that crosses the end is counted with the examples before it). Hosts whose shard
    packs into fewer rows read on into the next epoch for the last steps.
    """
    total = int(epochs * self.stream.examples_per_epoch)
    input_lengths, target_lengths = self.stream.lengths_at(
        self.stream.shard_row_positions(total)
    )
    rows = packing.count_packed_rows(
        input_lengths, target_lengths, self.row_layout, self.packing_window
    )
    local = self.batch_size // self.num_shards
    steps = -(-rows // local)
    if self.num_shards > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      steps = int(np.max(multihost_utils.process_allgather(np.int64(steps))))
    log.info(
        "%s: %d examples x %g epochs pack into %d rows on this host = %d steps of %d rows",
        self.mixture_or_task_name,
        self.stream.examples_per_epoch,
        epochs,
        rows,
        steps,
        self.batch_size,
    )
    return max(steps, 1)

  def initial_state(self) -> Dict[str, Any]:
    if self.kind is InputKind.NI_STREAM:
      return (
          {"window_start": 0, "rows_emitted": 0}
          if self.pack
          else {"next_index": 0}
      )
    return {"consumed_batches": 0}

  @property
  def shard_id(self) -> int:
    return self.shard_info.index if self.shard_info is not None else 0

  def state_from_checkpoint(
      self, data_state: Mapping[str, Any], start_step: int
  ) -> Dict[str, Any]:
    """This host's input state from a checkpoint's `data_state` (see `checkpoint_data_state`).

    The position of this host's data shard when the checkpoint has the same
    number of shards; on another number only a position that does not depend on
    the sharding (unpadded NI input: the next global example index) resumes, and
    anything else is a ValueError naming both numbers. Older checkpoints (one
    position, written by the primary host; `consumed_batches`) are read where
    that position is valid for every host.
    """
    if data_state.get("batch_size", self.batch_size) != self.batch_size or (
        data_state.get("data_seed", self.data_seed) != self.data_seed
    ):
      log.warning(
          "Resuming with a different BATCH_SIZE or data seed than the checkpoint (%s): "
          "the input order will not match the interrupted run.",
          {k: v for k, v in data_state.items() if k != "input_by_shard"},
      )
    consumed = int(data_state.get("consumed_batches", start_step))
    saved = self._saved_position(data_state, start_step)
    if self.kind is InputKind.NI_STREAM and self.pack:
      if "window_start" not in saved:
        raise errors.ConfigError(
            f"the checkpoint's input position {saved or data_state} is not a packed "
            "one: resume with the PACK setting the run was started with"
        )
      return {
          "window_start": int(saved["window_start"]),
          "rows_emitted": int(saved["rows_emitted"]),
      }
    if self.kind is InputKind.NI_STREAM:
      if "window_start" in saved:
        raise errors.ConfigError(
            "the checkpoint's input position is a packed one: resume with PACK=True"
        )
      return {
          "next_index": int(saved.get("next_index", consumed * self.batch_size))
      }
    return {"consumed_batches": int(saved.get("consumed_batches", consumed))}

  def _saved_position(self, data_state, start_step) -> dict:
    """The recorded position that applies to this host's shard (ValueError when none does)."""
    from tkx.checkpoints import layout  # pylint: disable=g-import-not-at-top

    by_shard = data_state.get("input_by_shard")
    if not by_shard:  # older tkx: one position, the primary host's
      if self.num_shards == 1 or self._position_is_global():
        return dict(data_state.get("input") or {})
      raise errors.ConfigError(
          f"{layout.step_dir_name(start_step)}: its data_state holds only the first host's input "
          f"position (written before tkx recorded every host's), so the other "
          f"{self.num_shards - 1} data shard(s) cannot resume exactly; start a new "
          "MODEL_DIR from it (INITIAL_CHECKPOINT_PATH) or resume unpacked"
      )
    saved_shards = len(by_shard)
    if saved_shards == self.num_shards:
      return dict(by_shard[self.shard_id])
    if self._position_is_global():
      from tkx import multihost  # pylint: disable=g-import-not-at-top

      position = dict(by_shard[0])
      if multihost.is_primary_host():
        log.info(
            "%s was written with %d data shards, this run has %d: the "
            "unpacked input resumes at global example %s, so every step trains on "
            "the same examples as before (their rows sit on other devices)",
            layout.step_dir_name(start_step),
            saved_shards,
            self.num_shards,
            position.get("next_index"),
        )
      return position
    what = "packed rows" if self.pack else "SeqIO's sharded pipeline"
    raise errors.ConfigError(
        f"{layout.step_dir_name(start_step)} was written with {saved_shards} data shard(s) "
        f"(hosts), this run has {self.num_shards}: the input ({what}) is per "
        f"shard and cannot resume exactly on a different number; resume with "
        f"{saved_shards} data shard(s), or start a new MODEL_DIR from the "
        "checkpoint (INITIAL_CHECKPOINT_PATH)"
    )

  def _position_is_global(self) -> bool:
    # Unpadded NI input: every host's state is the next batch's first global index.
    return self.kind is InputKind.NI_STREAM and not self.pack

  def checkpoint_data_state(self, input_state: Mapping[str, Any]) -> dict:
    """What a checkpoint stores next to the parameters: every data shard's input position.

    `input_by_shard[k]` is shard k's state (gathered from every host: call it
    on all hosts at the same step); `input` keeps the primary host's for older
    readers.
    """
    return {
        "input": dict(input_state),
        "input_by_shard": self._gather_shard_states(input_state),
        "batch_size": self.batch_size,
        "data_seed": self.data_seed,
        "mixture": self.mixture_or_task_name,
    }

  def _gather_shard_states(self, input_state: Mapping[str, Any]) -> list:
    """[state of shard 0, ..., shard num_shards-1], from every process (one all-gather)."""
    import jax  # pylint: disable=g-import-not-at-top

    keys = sorted(input_state)
    if jax.process_count() == 1:
      return [dict(input_state) for _ in range(self.num_shards)]
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    mine = np.array(
        [self.shard_id] + [int(input_state[k]) for k in keys], np.int64
    )
    rows = np.asarray(multihost_utils.process_allgather(mine))
    by_shard = {}
    for row in rows:
      state = dict(zip(keys, (int(v) for v in row[1:])))
      if by_shard.setdefault(int(row[0]), state) != state:
        raise RuntimeError(  # hosts of one data shard read the same input
            f"hosts of data shard {int(row[0])} are at different input positions: "
            f"{by_shard[int(row[0])]} and {state}"
        )
    return [by_shard[k] for k in range(self.num_shards)]

  def batches(self, state: Mapping[str, Any]) -> Iterator[tuple]:
    """(host batch, state after it) from `state` on."""
    local = self.batch_size // self.num_shards
    if self.kind is InputKind.NI_STREAM:
      if self.pack:
        yield from packing.packed_batches(
            self.stream.open_stream,
            batch_size=local,
            layout=self.row_layout,
            window=self.packing_window,
            state=state,
        )
        return
      yield from padded_batches(
          self.stream.open_stream,
          batch_size=local,
          feature_lengths=self.feature_lengths,
          state=state,
      )
      return
    consumed = int(state.get("consumed_batches", 0))
    ds = get_dataset(
        self.mixture_or_task_name,
        self.feature_lengths,
        self.batch_size,
        split=None,
        shuffle=True,
        seed=self.data_seed,
        pack=self.pack,
        use_cached=self.use_cached,
        shard_info=self.shard_info,
        skip_batches=consumed,
    )
    for batch in ds.as_numpy_iterator():
      consumed += 1
      yield batch, {"consumed_batches": consumed}


def train_input(
    mixture_or_task_name: str,
    *,
    ni_dir: Optional[str],
    vocabulary,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    data_seed: int = 0,
    pack: bool = False,
    packing_window: int = packing.DEFAULT_WINDOW,
    row_layout: Optional[packing.RowLayout] = None,
    use_cached: bool = False,
    shard_info=None,
) -> TrainInput:
  """Registers the name (NI names from `ni_dir`, see `register_ni_for`) and sets up its input.

  `row_layout` (packed NI input only; default: one block of the feature lengths)
  shapes the packed rows.
  """
  register_ni_for(
      mixture_or_task_name, ni_dir, vocabulary, feature_lengths["inputs"]
  )
  num_shards = shard_info.num_shards if shard_info is not None else 1
  if batch_size % num_shards:
    raise errors.ConfigError(
        f"BATCH_SIZE={batch_size} is not divisible by the {num_shards} data shards (hosts)"
    )
  spec = ni_spec(mixture_or_task_name)
  use_stream = spec is not None
  stream = None
  if pack and use_stream:
    row_layout = row_layout or packing.RowLayout.for_lengths(feature_lengths)
  elif row_layout is not None and row_layout != packing.RowLayout.for_lengths(
      feature_lengths
  ):
    raise errors.ConfigError(
        f"{mixture_or_task_name!r}: packed rows of several encoder blocks or a longer "
        "decoder row (PACKED_ENCODER_BLOCKS, PACKED_TARGETS_LENGTH) need PACK = True "
        "and an NI mixture (SeqIO's own packing makes rows of TASK_FEATURE_LENGTHS)"
    )
  else:
    row_layout = None
  if use_stream:
    stream = NIStream(
        spec,
        vocabulary,
        dict(feature_lengths),
        data_seed=data_seed,
        shard_id=shard_info.index if shard_info is not None else 0,
        num_shards=num_shards,
    )
  return TrainInput(
      mixture_or_task_name=mixture_or_task_name,
      kind=InputKind.NI_STREAM if use_stream else InputKind.SEQIO,
      batch_size=batch_size,
      feature_lengths=dict(feature_lengths),
      data_seed=data_seed,
      pack=pack,
      use_cached=use_cached,
      shard_info=shard_info,
      stream=stream,
      packing_window=packing_window,
      row_layout=row_layout,
  )
