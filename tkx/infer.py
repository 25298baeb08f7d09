"""Decoding into predictions: decode settings, length buckets, the Predictor, predictions records.

A whole evaluation should compile a handful of XLA programs, not one per batch.
So inputs are sorted by length and cut into batches, each padded to the
smallest of a few lengths that holds its longest input (`input_buckets`,
by default 128, 256, 384, 512, 768, 1024 tokens), and a last, partial batch is
filled up to `batch_size` with dummy rows (a lone EOS) whose outputs are
dropped. Each (batch_size, bucket) pair is one program. The encoder masks
padding, so a row's output does not depend on its bucket.

Decoding runs under a `tkx.partitioning.Partitioner` as training does: the
parameters keep their logical-axis shardings ("model" axis) and the batch is
split over "data". On several hosts every host builds the same global batch and
feeds the rows its devices hold; the outputs are gathered on every host.

Layers here:
- `DecodeConfig`: the decoding method (a `tkx.decoding.METHODS` name) and its settings ->
  the function + its keyword arguments; `with_settings` maps flags / requests onto it.
- `PredictFns`: the jitted decoding functions of one model and mesh, owned by whoever
  decodes repeatedly (state with a lifetime, not a module cache).
- `Predictor`: token ids in, token ids out (bucketing, padding, progress).
- `make_predictor` (gin `infer.make_predictor`): the Predictor of the commands and evaluations;
  the input budget and batch size default here (`DEFAULT_MAX_INPUT_LENGTH`, `default_batch_size`).
- `predict_mixture` / `predict_input_file`: `tkx infer`'s two modes.
"""

import collections
import dataclasses
import logging
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np

from tkx import decoding, errors, io_utils, jsonl, multihost
from tkx.data import names as names_lib
from tkx.models import base as models_base

log = logging.getLogger(__name__)

# Input lengths are rounded up to one of these (the encoding budget is 1024).
DEFAULT_INPUT_BUCKETS = (128, 256, 384, 512, 768, 1024)
# The input token budget (EOS included) of every command and evaluation: Tk-Instruct's.
DEFAULT_MAX_INPUT_LENGTH = 1024
# Global decode batch rows, raised to one row per data-parallel device where there are more.
DEFAULT_BATCH_SIZE = 8
# Tk-Instruct's evaluation calls transformers 4.18 `generate(max_length=128)`, which for
# an encoder-decoder counts the decoder start token: at most 127 new tokens (EOS included).
TK_INSTRUCT_MAX_DECODE_LENGTH = 127
DEFAULT_MAX_DECODE_LENGTH = TK_INSTRUCT_MAX_DECODE_LENGTH
# Inputs sharing this many first tokens (NI: one task's definition) decode in the same
# batches, so their (similar) output lengths end the batch together.
GROUP_PREFIX_TOKENS = 64
PAD_ID = 0
EOS_ID = 1


# ----------------------------------------------------------------------------- decoding settings
@gin.configurable(module="infer")
@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to decode: a registered decoding method (`decode_fn`) and its settings.

  `decode_fn` names the method explicitly (`tkx.decoding.METHODS`: 'greedy' (default),
  'hf_beam_search', 'beam_search', 'temperature_sample', or one a user registered); gin
  may give the function itself, t5x's way (`infer.DecodeConfig.decode_fn =
  @decoding.beam_search`); it is kept as its name. Each method reads the settings it
  registered: beam searches `num_beams` and `alpha` (their length penalty; None: the
  function's default, Hugging Face's 1.0 or t5x's 0.6), sampling `temperature`, `top_k`
  and `top_p` (0 turns a filter off; not both, as t5x). A setting the method does not read
  must keep its default, so none is silently ignored. `seed` makes sampling reproducible.
  Command flags and server requests choose the method from their settings: `with_settings`.
  """

  decode_fn: Any = "greedy"
  num_beams: int = 1
  alpha: Optional[float] = None
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 0.0
  max_decode_length: int = DEFAULT_MAX_DECODE_LENGTH
  seed: int = 0

  def __post_init__(self):
    method = decoding.get_method(self.decode_fn)
    object.__setattr__(self, "decode_fn", method.name)  # one spelling
    if self.num_beams < 1:
      raise errors.ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
    if self.temperature < 0:
      raise errors.ConfigError(
          f"temperature must be >= 0, got {self.temperature}"
      )
    if self.top_k < 0:
      raise errors.ConfigError(
          f"top_k must be >= 0 (0 = off), got {self.top_k}"
      )
    if not 0.0 <= self.top_p <= 1.0:
      raise errors.ConfigError(
          f"top_p must be in [0, 1] (0 = off), got {self.top_p}"
      )
    if self.top_k and self.top_p:
      raise errors.ConfigError(
          f"set top_k or top_p, not both (got top_k={self.top_k}, top_p={self.top_p}); "
          "t5x's sampling applies one filter"
      )
    if self.max_decode_length < 1:
      raise errors.ConfigError(
          f"max_decode_length must be >= 1, got {self.max_decode_length}"
      )
    for setting, off in _OFF_SETTINGS.items():
      value = getattr(self, setting)
      if value != off and setting not in method.settings:
        readers = [
            m.name for m in decoding.METHODS.values() if setting in m.settings
        ]
        raise errors.ConfigError(
            f"{setting}={value!r} does not apply to decode_fn={method.name!r}, which "
            f"reads {', '.join(method.settings) or 'no settings'}; {setting} is read "
            f"by {', '.join(readers) or 'no registered method'}"
        )

  @property
  def decoding_method(self):
    """The registered `tkx.decoding.DecodingMethod`."""
    return decoding.get_method(self.decode_fn)

  @property
  def uses_rng(self) -> bool:
    return self.decoding_method.uses_rng

  def decode_fn_and_kwargs(self) -> Tuple[Callable, Dict[str, Any]]:
    """The decoding function (with its gin bindings) and the settings it reads, as its
    keyword arguments (without `decode_rng`)."""
    method = self.decoding_method
    kwargs = {
        keyword: getattr(self, setting)
        for setting, keyword in method.settings.items()
        if getattr(self, setting) is not None
    }
    return method.configured_fn(), kwargs

  def with_settings(self, **settings) -> "DecodeConfig":
    """This config with `settings` (command flags, a server request) applied, the method
    chosen as those flags mean it.

    `decode_fn` given: that method. Otherwise, when `num_beams`, `temperature` or
    `beam_procedure` ('hf' | 't5x', a flag only) is given: beam search for num_beams > 1
    (this config's method if it reads num_beams, else `beam_procedure`'s, Hugging Face's by
    default), sampling for temperature > 0 (this config's method if it reads temperature,
    else temperature_sample), else greedy (unless this config's method reads neither).
    Otherwise this config's method.
    """
    settings = dict(settings)
    procedure = settings.pop("beam_procedure", None)
    if procedure is not None:
      procedure = decoding.BeamProcedure.parse(procedure)
    chooses = procedure is not None or {"num_beams", "temperature"} & set(
        settings
    )
    if "decode_fn" not in settings and chooses:
      settings["decode_fn"] = self._method_for(
          settings.get("num_beams", self.num_beams),
          settings.get("temperature", self.temperature),
          procedure,
      )
    return dataclasses.replace(self, **settings)

  def _method_for(self, num_beams, temperature, procedure) -> str:
    reads = set(self.decoding_method.settings)
    beams, samples = num_beams > 1, temperature > 0
    if beams and samples and not {"num_beams", "temperature"} <= reads:
      raise errors.ConfigError(
          "choose beam search (num_beams > 1) or sampling (temperature > 0), not both"
      )
    if beams and procedure is not None:
      return decoding.get_method(procedure.decode_fn).name
    if beams:
      return self.decode_fn if "num_beams" in reads else "hf_beam_search"
    if samples:
      return self.decode_fn if "temperature" in reads else "temperature_sample"
    return "greedy" if reads & {"num_beams", "temperature"} else self.decode_fn


@gin.configurable(module="infer")
def decode_flags(
    decode_fn=None,
    num_beams=None,
    alpha=None,
    temperature=None,
    top_k=None,
    top_p=None,
    max_decode_length=None,
    seed=None,
    beam_procedure=None,
) -> Dict[str, Any]:
  """The decoding flags given on a command line (`tkx.cli.flag_bindings` binds them here)."""
  return {name: value for name, value in locals().items() if value is not None}


# Activation dtypes a decoding command may choose over the checkpoint's (`--dtype`).
DTYPES = ("float32", "bfloat16", "float16")


@gin.configurable(module="infer")
def model_overrides(dtype: Optional[str] = None) -> Tuple[str, ...]:
  """Gin bindings that decoding commands apply over a checkpoint's model.gin (`directory.load`).

  `dtype` (`--dtype`): the activation dtype (parameters keep theirs); float16
  is for GPUs without bfloat16 (T5's residual stream stays float32 there, see
  `T5Config.residual_dtype`).
  """
  if dtype is None:
    return ()
  if dtype not in DTYPES:
    raise errors.ConfigError(
        f"--dtype (infer.model_overrides.dtype): unknown {dtype!r}; choose from "
        + ", ".join(DTYPES)
    )
  return (f"network.T5Config.dtype = {dtype!r}",)


def run_decode_config(
    decode_config: Optional[DecodeConfig] = None,
) -> DecodeConfig:
  """A run's decoding: `decode_config` (default: gin's `DecodeConfig`) with the command's
  decoding flags applied as they choose the method (`DecodeConfig.with_settings`).
  """
  return (decode_config or DecodeConfig()).with_settings(**decode_flags())


# Each setting's default: its value when the method does not read it.
_OFF_SETTINGS = {
    field.name: field.default
    for field in dataclasses.fields(DecodeConfig)
    if field.name in decoding.SETTINGS
}


# ----------------------------------------------------------------------------- bucketing
def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens."""
  for bucket in sorted(buckets):
    if length <= bucket:
      return bucket
  raise ValueError(
      f"an input of {length} tokens is longer than the largest length bucket "
      f"{max(buckets)}; cut inputs to the budget first"
  )


def default_batch_size(partitioner) -> int:
  """The decode batch when none is given: `DEFAULT_BATCH_SIZE`, at least one row per data-parallel device."""
  return max(DEFAULT_BATCH_SIZE, partitioner.data_axis_size)


def buckets_up_to(
    max_input_length: int, buckets: Sequence[int] = DEFAULT_INPUT_BUCKETS
) -> Tuple[int, ...]:
  """The buckets below `max_input_length`, plus `max_input_length` itself as the last one."""
  return tuple(
      sorted(
          {int(b) for b in buckets if b < max_input_length}
          | {int(max_input_length)}
      )
  )


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    buckets: Sequence[int],
    group_keys: Optional[Sequence[Any]] = None,
) -> List[Tuple[int, List[int]]]:
  """Groups example indices into batches: [(bucket, [index, ...]), ...].

  Examples are taken by bucket, shortest bucket first, and cut into batches of
  `batch_size` (only the last batch may hold fewer), each padded to the bucket
  of its longest example. Full batches decode no dummy rows, and neighbours in
  length share a batch, so little of a batch is padding. Inside a bucket the
  padded length is the same whatever the order, so examples are ordered by
  `group_keys` (when given) before length: `Predictor` passes each input's
  first tokens, which put examples of one task (one definition) together; their
  outputs have similar lengths, so fewer finished rows keep stepping while one
  long output decodes (decode-step waste on NI test inputs, embedded vocabulary,
  reference lengths, batch 8: 51% -> 36%; docs/packing.md).
  """

  def key(index):
    bucket = bucket_length(lengths[index], buckets)
    group = group_keys[index] if group_keys is not None else ()
    return (bucket, group, lengths[index])

  order = sorted(range(len(lengths)), key=key)
  plan = []
  for start in range(0, len(order), batch_size):
    indices = order[start : start + batch_size]
    longest = max(lengths[index] for index in indices)
    plan.append((bucket_length(longest, buckets), indices))
  return plan


@dataclasses.dataclass
class PlanStats:
  """Padding of a decoding run: encoder positions and decode row-steps that did no work.

  Dummy rows (filling a last batch) count as computed, never as real.
  """

  examples: int = 0
  batches: int = 0
  encoder_real: int = 0
  encoder_computed: int = 0
  decode_useful: int = 0  # row-steps up to and including each row's EOS
  decode_computed: int = (
      0  # rows x steps the batch ran (it stops when all rows end)
  )

  @property
  def encoder_padding(self) -> float:
    return 1.0 - self.encoder_real / max(self.encoder_computed, 1)

  @property
  def decode_waste(self) -> float:
    return 1.0 - self.decode_useful / max(self.decode_computed, 1)

  def add_batch(
      self, bucket, input_lengths, decoded, max_decode_length, eos_id
  ):
    """One batch padded to `bucket`: its real rows' input lengths, all rows' decoded ids."""
    steps = []
    for row in np.asarray(decoded):
      ends = np.flatnonzero(row == eos_id)
      steps.append(int(ends[0]) + 1 if len(ends) else max_decode_length)
    self.examples += len(input_lengths)
    self.batches += 1
    self.encoder_real += int(sum(input_lengths))
    self.encoder_computed += len(steps) * bucket
    self.decode_useful += sum(steps[: len(input_lengths)])
    self.decode_computed += len(steps) * max(steps)

  def summary(self) -> str:
    return (
        f"{self.examples} examples in {self.batches} batches: encoder padding "
        f"{self.encoder_padding:.1%}, decode-step waste (finished or dummy rows still "
        f"stepping) {self.decode_waste:.1%}"
    )


def trim_output(
    tokens: Sequence[int], eos_id: int = EOS_ID, pad_id: int = PAD_ID
) -> List[int]:
  """Decoded ids up to (not including) the first EOS, without padding."""
  out = []
  for token in np.asarray(tokens).tolist():
    if token == eos_id:
      break
    if token != pad_id:
      out.append(int(token))
  return out


def cut_to_budget(
    ids: Sequence[int], max_input_length: int, eos_id: int = EOS_ID
) -> Tuple[List[int], bool]:
  """Input ids (no EOS) -> ids ending in EOS of at most `max_input_length` tokens, and whether it was cut.

  As the Tk-Instruct collator, an over-long source keeps its first tokens; the
  budget counts EOS, so at most `max_input_length - 1` text tokens stay.
  """
  ids = list(ids)
  cut = len(ids) + 1 > max_input_length
  if cut:
    ids = ids[: max_input_length - 1]
  return ids + [eos_id], cut


# ----------------------------------------------------------------------------- predictor
def _build_predict_fn(model, partitioner, param_shardings, decode_config):
  """The jitted `(params, encoder ids, rng) -> best decode ids` for one decoding setting."""
  decode_fn, decode_kwargs = decode_config.decode_fn_and_kwargs()
  max_decode_length = decode_config.max_decode_length
  uses_rng = decode_config.uses_rng

  def predict(params, encoder_input_tokens, rng):
    batch = {
        "encoder_input_tokens": encoder_input_tokens,
        # Only its shape matters to decoding (t5x convention).
        "decoder_input_tokens": jnp.zeros(
            (encoder_input_tokens.shape[0], max_decode_length), jnp.int32
        ),
    }
    kwargs = dict(decode_kwargs)
    if uses_rng:
      kwargs["decode_rng"] = rng
    out = model.predict_batch(
        params,
        batch,
        decode_fn=decode_fn,
        max_decode_length=max_decode_length,
        **kwargs,
    )
    out = out[0] if isinstance(out, tuple) else out
    # The best decode when several come back.
    return out[:, -1, :] if out.ndim == 3 else out

  return partitioner.partition(
      predict,
      in_shardings=(
          param_shardings,
          partitioner.data_sharding,
          partitioner.replicated,
      ),
      out_shardings=partitioner.data_sharding,
  )


class PredictFns:
  """The jitted decoding functions of one model on one mesh, one per decoding setting.

  Each function keeps its compiled programs (one per batch shape), so whoever decodes
  the same model repeatedly owns one `PredictFns` and hands it to each `Predictor`:
  `tkx eval --encodings` (`evaluate.SharedCheckpoint`), the server (`tkx.serve`), an
  evaluation every N training steps (`evaluate.generation_eval(predict_fns=...)`). The
  functions live as long as their owner. Settings that differ only in `seed` share one
  function (the seed is an argument). The `max_entries` settings used last are kept.

  Args:
    model: the model decoded (has `predict_batch`).
    partitioner: the mesh and rules it runs under.
    param_shardings: shardings of its parameters (default: from the logical axes).
    max_entries: how many decoding settings keep their function.
  """

  def __init__(
      self, model, partitioner, param_shardings=None, max_entries: int = 16
  ):
    self.model = model
    self.partitioner = partitioner
    if param_shardings is None:
      param_shardings = models_base.param_shardings(model, partitioner)
    self.param_shardings = param_shardings
    self.max_entries = max_entries
    self._fns: "collections.OrderedDict" = collections.OrderedDict()
    self._lock = (
        threading.Lock()
    )  # the server builds Predictors from two threads

  def get(self, decode_config: DecodeConfig) -> Callable:
    """The function for these settings (built on first use)."""
    key = dataclasses.replace(decode_config, seed=0)
    with self._lock:
      fn = self._fns.pop(key, None)
      if fn is None:
        fn = _build_predict_fn(
            self.model, self.partitioner, self.param_shardings, key
        )
      self._fns[key] = fn
      while len(self._fns) > self.max_entries:
        self._fns.popitem(last=False)
    return fn

  def __len__(self) -> int:
    return len(self._fns)


class Predictor:
  """Decodes lists of token ids in length-bucketed, fixed-shape batches.

  Args:
    model: a `tkx.models.base.BaseModel` (e.g. `models.EncoderDecoderModel`).
    params: its parameters (placed by the partitioner when not yet sharded).
    partitioner: a `tkx.partitioning.Partitioner` (default: one model partition).
    batch_size: global batch size; a multiple of the data axis size (default
      `default_batch_size(partitioner)`).
    decode_config: a `DecodeConfig`.
    input_buckets: allowed encoder lengths.
    param_shardings: shardings of `params` (default: `predict_fns`', else from the
      model's logical axes).
    predict_fns: the `PredictFns` of this model and partitioner to take the jitted
      function from (default: a new one, owned by this Predictor).
  """

  def __init__(
      self,
      model,
      params,
      *,
      partitioner=None,
      batch_size: Optional[int] = None,
      decode_config: Optional[DecodeConfig] = None,
      input_buckets: Sequence[int] = DEFAULT_INPUT_BUCKETS,
      param_shardings=None,
      predict_fns: Optional[PredictFns] = None,
  ):
    from tkx import partitioning

    if predict_fns is not None:
      if predict_fns.model is not model or (
          partitioner is not None and predict_fns.partitioner is not partitioner
      ):
        raise ValueError(
            "predict_fns belong to another model or partitioner than the Predictor's"
        )
      partitioner = predict_fns.partitioner
      param_shardings = param_shardings or predict_fns.param_shardings
    self.model = model
    self.partitioner = (
        partitioner or partitioning.Partitioner()
    )  # gin bindings apply
    self.decode_config = decode_config or DecodeConfig()
    self.input_buckets = tuple(sorted(set(int(b) for b in input_buckets)))
    if not self.input_buckets or self.input_buckets[0] < 1:
      raise errors.ConfigError(
          f"input_buckets must be positive lengths, got {input_buckets}"
      )
    data_size = self.partitioner.data_axis_size
    if batch_size is None:
      batch_size = default_batch_size(self.partitioner)
    if batch_size < 1 or batch_size % data_size:
      raise errors.ConfigError(
          f"batch_size {batch_size} must be a positive multiple of the data axis size "
          f"{data_size} (the batch is split over the 'data' mesh axis)"
      )
    self.batch_size = batch_size
    vocab = model.output_vocabulary  # a tkx.models.base.BaseModel
    self.eos_id = model.eos_id
    self.pad_id = vocab.pad_id if vocab is not None else PAD_ID
    if predict_fns is None:
      predict_fns = PredictFns(model, self.partitioner, param_shardings)
    self.param_shardings = predict_fns.param_shardings
    self.params = jax.device_put(params, self.param_shardings)
    # Shapes decoded so far: each is one compiled program.
    self.compiled_shapes = set()
    self._rng = jax.random.PRNGKey(self.decode_config.seed)
    self._num_batches = 0
    self.last_plan_stats: Optional[PlanStats] = None
    self._predict = predict_fns.get(self.decode_config)

  def _dispatch(self, rows: np.ndarray, params=None):
    """Starts decoding [batch_size, bucket] global ids (with `params`, default the Predictor's); returns the (not yet fetched) device result."""
    local = rows[self.partitioner.host_rows(self.batch_size)]
    global_rows = self.partitioner.host_local_to_global(local)
    rng = jax.random.fold_in(self._rng, self._num_batches)
    self._num_batches += 1
    self.compiled_shapes.add(rows.shape)
    params = self.params if params is None else params
    return self._predict(params, global_rows, rng)

  def _fetch(self, out) -> np.ndarray:
    """[batch_size, max_decode_length] outputs on this host."""
    return np.asarray(self.partitioner.global_to_host(out))

  def predict_ids(
      self,
      inputs: Sequence[Sequence[int]],
      *,
      progress: bool = True,
      desc: str = "decoding",
      log_plan: bool = True,
      batch_params: Optional[Callable[[List[int]], Any]] = None,
  ) -> List[List[int]]:
    """Token ids (each ending in EOS, within the largest bucket) -> output ids (no EOS).

    An empty input (no token, or only EOS) is not decoded; its output is empty.
    `log_plan=False` keeps the padding/waste summary in `last_plan_stats` only
    (a server calls this once per batch; a run logs it once). `batch_params`, when
    given, maps the indices (into `inputs`) of a batch's real rows, in row order
    (dummy rows follow), to the parameters that batch decodes with (per-row
    adapters: `tkx.serve.adapters`); by default every batch uses the Predictor's.
    """
    inputs = [list(ids) for ids in inputs]
    outputs: List[Optional[List[int]]] = [None] * len(inputs)
    todo = []
    for index, ids in enumerate(inputs):
      if not ids or ids == [self.eos_id]:
        outputs[index] = []
      else:
        todo.append(index)
    plan = plan_batches(
        [len(inputs[i]) for i in todo],
        self.batch_size,
        self.input_buckets,
        group_keys=[tuple(inputs[i][:GROUP_PREFIX_TOKENS]) for i in todo],
    )
    bar = io_utils.Progress(len(todo), desc=desc, enabled=progress)
    stats = PlanStats()

    def collect(bucket, positions, out):
      decoded = self._fetch(out)
      stats.add_batch(
          bucket,
          [len(inputs[todo[p]]) for p in positions],
          decoded,
          self.decode_config.max_decode_length,
          self.eos_id,
      )
      for row, position in enumerate(positions):
        outputs[todo[position]] = trim_output(
            decoded[row], self.eos_id, self.pad_id
        )
      bar.update(len(positions))

    pending = (
        None  # one batch in flight: the next one is prepared while it decodes
    )
    for bucket, batch_positions in plan:
      rows = np.full((self.batch_size, bucket), self.pad_id, np.int32)
      rows[:, 0] = self.eos_id  # dummy rows: a lone EOS
      for row, position in enumerate(batch_positions):
        ids = inputs[todo[position]]
        rows[row, :] = self.pad_id
        rows[row, : len(ids)] = ids
      params = None
      if batch_params is not None:
        params = batch_params([todo[p] for p in batch_positions])
      out = self._dispatch(rows, params)
      if pending is not None:
        collect(*pending)
      pending = (bucket, batch_positions, out)
    if pending is not None:
      collect(*pending)
    bar.close()
    if stats.batches and log_plan:
      log.info("%s: %s", desc, stats.summary())
    self.last_plan_stats = stats
    return outputs  # type: ignore[return-value]


# ----------------------------------------------------------------------------- texts
@gin.configurable(module="infer")
def make_predictor(
    model,
    params,
    *,
    partitioner=None,
    batch_size: Optional[int] = None,
    decode_config: Optional[DecodeConfig] = None,
    max_input_length: int = DEFAULT_MAX_INPUT_LENGTH,
    input_buckets: Sequence[int] = DEFAULT_INPUT_BUCKETS,
    predict_fns: Optional["PredictFns"] = None,
) -> Predictor:
  """The Predictor of `tkx infer`, `tkx generate` and the evaluations: inputs up to `max_input_length` tokens.

  Encoder lengths are `input_buckets` below the budget, then the budget itself
  (`buckets_up_to`); the other settings default as in `Predictor`.
  """
  return Predictor(
      model,
      params,
      partitioner=partitioner,
      batch_size=batch_size,
      decode_config=run_decode_config(decode_config),
      input_buckets=buckets_up_to(max_input_length, input_buckets),
      predict_fns=predict_fns,
  )


def encode_texts(
    vocabulary,
    texts: Sequence[str],
    max_input_length: int,
    names: Optional[Sequence[str]] = None,
) -> Tuple[List[List[int]], List[int]]:
  """Texts -> ids ending in EOS, cut to the budget; returns (ids, indices of cut inputs).

  Inputs over the budget are cut (first tokens kept, as the encoding rule does)
  and reported in one warning.
  """
  ids_list, cut_indices = [], []
  eos = getattr(vocabulary, "eos_id", EOS_ID)
  for index, text in enumerate(texts):
    if not text.strip():
      ids_list.append([])
      continue
    ids, cut = cut_to_budget(vocabulary.encode(text), max_input_length, eos)
    ids_list.append(ids)
    if cut:
      cut_indices.append(index)
  if cut_indices:
    shown = [names[i] if names else str(i) for i in cut_indices[:10]]
    log.warning(
        "%d input(s) longer than %d tokens were cut to the budget (first tokens kept): %s%s",
        len(cut_indices),
        max_input_length,
        ", ".join(shown),
        " ..." if len(cut_indices) > 10 else "",
    )
  return ids_list, cut_indices


def warn_full_budget(
    inputs: Sequence[Sequence[int]], max_input_length: int, what: str
) -> int:
  """Counts (and reports in one warning) inputs that fill the whole token budget.

  The encoding rule cut their sources to the budget (first tokens kept), so
  their instance input may be partly missing.
  """
  full = sum(1 for ids in inputs if len(ids) >= max_input_length)
  if full:
    log.warning(
        "%s: %d of %d inputs reach the %d-token budget: the encoding rule cut their sources "
        "(first tokens kept)",
        what,
        full,
        len(inputs),
        max_input_length,
    )
  return full


def decode_ids(vocabulary, outputs: Sequence[Sequence[int]]) -> List[str]:
  return [vocabulary.decode(list(ids)) if ids else "" for ids in outputs]


def predict_texts(
    predictor: Predictor,
    vocabulary,
    texts: Sequence[str],
    *,
    max_input_length: int = 1024,
    names: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> List[str]:
  """Texts -> predicted texts (empty input -> empty prediction, with a warning)."""
  ids, _ = encode_texts(
      vocabulary,
      texts,
      min(max_input_length, max(predictor.input_buckets)),
      names,
  )
  empty = [names[i] if names else str(i) for i, x in enumerate(ids) if not x]
  if empty:
    log.warning(
        "%d empty input(s) get an empty prediction: %s%s",
        len(empty),
        ", ".join(empty[:10]),
        " ..." if len(empty) > 10 else "",
    )
  return decode_ids(vocabulary, predictor.predict_ids(ids, progress=progress))


# ----------------------------------------------------------------------------- files
def prediction_record(
    task: Mapping[str, Any], instance: Mapping[str, Any], prediction: str
) -> dict:
  """One line of Tk-Instruct's `predicted_examples.jsonl`: task fields, `Instance`, `prediction`."""
  from tkx.metrics import baselines  # the one writer of this format (`tkx baseline` uses it too)

  return baselines.prediction_record(task, instance, prediction)


def read_input_file(path: str) -> List[dict]:
  """`{"id", "inputs"}` JSON lines (other fields are kept); errors name the file, line and field."""

  def fail(line_no, field, message):
    raise jsonl.line_error(path, line_no, field, message)

  records, seen = [], set()
  for line_no, record in jsonl.iter_json_objects(path):
    if "inputs" not in record:
      fail(line_no, "inputs", "missing")
    if not isinstance(record["inputs"], str):
      fail(
          line_no,
          "inputs",
          f"must be a string, got {type(record['inputs']).__name__}",
      )
    if "id" not in record:
      fail(line_no, "id", "missing")
    if record["id"] in seen:
      fail(line_no, "id", f"repeats {record['id']!r}")
    seen.add(record["id"])
    records.append(record)
  if not records:
    raise errors.InputFileError(f"{path}: no input lines (the file is empty)")
  return records


def predict_input_file(
    predictor: Predictor,
    vocabulary,
    input_file: str,
    output_file: str,
    *,
    max_input_length: int = 1024,
    progress: bool = True,
) -> int:
  """Adds `prediction` to each `{"id", "inputs"}` line of `input_file`; returns the number written."""
  records = read_input_file(input_file)
  predictions = predict_texts(
      predictor,
      vocabulary,
      [r["inputs"] for r in records],
      max_input_length=max_input_length,
      names=[str(r["id"]) for r in records],
      progress=progress,
  )
  if not multihost.is_primary_host():  # one writer on many hosts
    return len(records)
  return jsonl.write_jsonl(
      output_file,
      ({**r, "prediction": p} for r, p in zip(records, predictions)),
  )


# ----------------------------------------------------------------------------- mixtures
def resolve_mixture_or_task(name: str):
  """`seqio.get_mixture_or_task(name)`, or an error listing close names."""
  import seqio

  known = set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())
  if name not in known:
    raise errors.ConfigError(
        names_lib.close_matches_message("mixture or task", name, known)
        + " (NI mixtures are named <prefix>_<track>_<split>_<encoding>, e.g. ni_default_test_def_pos2;"
        " pass --ni_dir to register another checkout)"
    )
  return seqio.get_mixture_or_task(name)


def ni_subtasks(name: str) -> List[Any]:
  """The NI SeqIO tasks of a mixture (or the task itself), each with its `tkx.data.tasks` spec.

  An NI mixture is one task over its split's source: the whole split is one stream.
  """
  from tkx.data import tasks as tasks_lib

  mixture_or_task = resolve_mixture_or_task(name)
  subtasks = list(getattr(mixture_or_task, "tasks", [mixture_or_task]))
  for task in subtasks:
    try:
      tasks_lib.task_spec(task.name)
    except KeyError:
      raise errors.ConfigError(
          f"{task.name!r} (in {name!r}) is not an NI task registered by "
          "tkx.data.tasks.register_ni; predictions files need the NI task fields"
      ) from None
  return subtasks


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_key(example: Mapping[str, Any]) -> Tuple[str, str]:
  """(NI task, instance id) of a SeqIO example: the key of its source row."""
  return _text(example["task"]), _text(example["id"])


def task_inputs(
    task, split: str, sequence_length: Mapping[str, int]
) -> List[Tuple[Tuple[str, str], List[int]]]:
  """((NI task, instance id), input ids ending in EOS) of an NI SeqIO task, in source order."""
  ds = task.get_dataset(
      sequence_length=dict(sequence_length),
      split=split,
      shuffle=False,
      num_epochs=1,
      use_cached=False,
  )
  return [
      (example_key(ex), [int(t) for t in ex["inputs"]])
      for ex in ds.as_numpy_iterator()
  ]


def records_for_task(
    seqio_task_name: str,
    keys: Sequence[Tuple[str, str]],
    predictions: Sequence[str],
) -> List[dict]:
  """Tk-Instruct records for predictions of an NI SeqIO task, rows looked up by (task, id)."""
  from tkx.data import tasks as tasks_lib

  source = tasks_lib.task_spec(seqio_task_name).split_source()
  records = []
  for (ni_task, instance_id), prediction in zip(keys, predictions):
    try:
      task, instance = source.lookup(ni_task, instance_id)
    except KeyError as e:
      raise ValueError(f"{seqio_task_name}: {e.args[0]}") from None
    records.append(prediction_record(task, instance, prediction))
  return records


def predict_mixture(
    predictor: Predictor,
    vocabulary,
    name: str,
    *,
    max_input_length: int = 1024,
    max_target_length: int = 128,
    progress: bool = True,
) -> List[dict]:
  """Decodes every instance of an NI mixture or task -> Tk-Instruct predictions records.

  A mixture is one stream over its split's source, so batches are full across
  task boundaries.
  """
  subtasks = ni_subtasks(name)
  lengths = {"inputs": max_input_length, "targets": max_target_length}
  per_task = []
  for task in subtasks:
    split = task.splits[0]
    per_task.append((task.name, task_inputs(task, split, lengths)))
  flat = [ids for _, examples in per_task for _, ids in examples]
  num_ni_tasks = len({k[0] for _, examples in per_task for k, _ in examples})
  log.info(
      "%s: decoding %d examples of %d NI task(s)", name, len(flat), num_ni_tasks
  )
  warn_full_budget(flat, max_input_length, name)
  texts = decode_ids(
      vocabulary, predictor.predict_ids(flat, progress=progress, desc=name)
  )
  records, start = [], 0
  for task_name, examples in per_task:
    preds = texts[start : start + len(examples)]
    start += len(examples)
    records.extend(records_for_task(task_name, [k for k, _ in examples], preds))
  return records
