"""Decoding on the key/value cache, with t5x's `decoding.py` interface and semantics.

`temperature_sample` and `beam_search` take t5x's parameters in t5x's order (positional
calls work), with t5x's defaults and behaviour:

* `inputs` is `[batch, length]` int32, shifted right: position 0 is the start (BOS, 0)
  token and non-zero tokens after it are a decoder prompt that is teacher-forced (kept
  in the output, scored 0). The outputs have `length` positions (the start dropped).
* `temperature_sample` defaults to greedy (`topk=1`) and `rescale_log_probs=True`;
  `topk` and `topp` are exclusive; top-p keeps every token tied with the cutoff; `topp`
  may be traced under jit; the RNG is used as t5x does, so the same `decode_rng` gives
  the same samples as t5x. `initial_index`, `max_decode_steps[_hard_limit]` and the
  state/logit callbacks work as in t5x.
* `beam_search` is t5x's procedure with the brevity penalty ((5 + len) / 6) ** alpha,
  alpha 0.6 by default.

Hugging Face's beam procedure (transformers `generate(num_beams=...)`, step for step) is
`hf_beam_search`; `tkx infer/eval/generate --num_beams` use it, for parity with the
released Tk-Instruct evaluation. `BeamProcedure` names the two. Both beam searches share
their set-up and step (`_beam_setup`, `_beam_candidates`, ...); only their rules for the
finished list and for stopping differ.

Decoding methods are registered by name (`METHODS`, `register_method`): the function and
the `infer.DecodeConfig` settings it reads. `infer.DecodeConfig.decode_fn` names one
(gin: `@decoding.beam_search`, t5x's way); command flags and server requests map onto
them (docs/decoding.md). A new method is one file plus one `register_method` line.

Where tkx deliberately differs from t5x (t5x's public decoding tests pass,
tests/test_decoding_t5x_suite.py):
* `greedy` is tkx's (HF `generate()`'s default): scores are the model's log-likelihood,
  where t5x's greedy (`temperature_sample(topk=1)`) scores 0.
* `beam_search(initial_index=...)` takes one start position for the batch: its loop
  index is one scalar, so prompts of one length are prefilled together.
* `hf_beam_search` has no decoder prompts: Hugging Face's procedure has none to match.
* `temperature_sample` and `greedy` also take `max_decode_len` (keyword only): the
  model's `predict_batch` passes every decoding function the output length.

The tkx decoding interface (see ARCHITECTURE.md "Decoding interface"): `cache` comes at
batch size and every function that decodes several sequences per example repeats its
arrays along axis `cache_offset` (t5x's flattened beams, example-major rows
`b * n + j`); `cache_index` (and `cached_bias`, `position_embedder_index`) are shared.
Beam reordering skips the per-example cross-attention leaves `encoded_key` /
`encoded_value`, which are the same for every beam of an example.
`tokens_to_logits(DecodingState) -> (logits [batch * n, vocab], new_cache)`.

Results are `(sequences [batch, n, length], scores [batch, n])`, sorted ascending by
score (best last: take `[:, -1]`). After EOS a sequence holds padding (0).
"""

import dataclasses
import enum
import functools
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

from tkx import enums, errors

PyTree = Any

# t5x's "effective negative infinity" for masking.
NEG_INF = np.array(-1.0e7)
# Temperatures at or below this are greedy (t5x's MIN_TEMPERATURE).
MIN_TEMPERATURE = np.array(1e-4)
# The one definition of "off" for the sampling filters (t5x's): no top-k cut, no top-p cut.
TOPK_OFF = 0
TOPP_OFF = 0.0


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at each step (t5x's `DecodingState`).

  Attributes:
    cur_index: position of `cur_token` in `sequences`: [batch * n] when sampling, a scalar
      in beam search (as t5x).
    sequences: [batch * n, length] the start token, prompt and tokens so far.
    cur_token: [batch * n, 1] the token to feed now.
    cache: the model's autoregressive cache.
  """

  cur_index: jnp.ndarray
  sequences: jnp.ndarray
  cur_token: jnp.ndarray
  cache: Mapping[str, jnp.ndarray]


@flax.struct.dataclass
class SamplingLoopState:
  """The sampling loop's state, as t5x's (what `state_callback_fn` / `logit_callback_fn` get).

  Attributes:
    step: scalar step count from 0.
    cur_index: [batch * n] position of the loop per row.
    sequences: [batch * n, length + 2] prompt and sampled tokens (two spare slots at the
      end; the last one absorbs writes of rows that finished their length early).
    cache: the model's cache.
    cur_token: [batch * n, 1] the token fed next.
    ended: [batch * n, 1] whether a row has finished.
    rng: the PRNG key carried by the loop.
    log_prob: [batch * n] summed log-probabilities of the sampled tokens.
  """

  step: jnp.ndarray
  cur_index: jnp.ndarray
  sequences: jnp.ndarray
  cache: Mapping[str, jnp.ndarray]
  cur_token: jnp.ndarray
  ended: jnp.ndarray
  rng: jnp.ndarray
  log_prob: jnp.ndarray


TokensToLogits = Callable[[DecodingState], Tuple[jnp.ndarray, PyTree]]
StateCallbackFn = Callable[[SamplingLoopState], SamplingLoopState]
LogitCallbackFn = Callable[[jnp.ndarray, SamplingLoopState], jnp.ndarray]


# ------------------------------------------------------------------------------
# Modes
# ------------------------------------------------------------------------------
class BeamProcedure(str, enum.Enum):
  """Which beam search: t5x's (`beam_search`) or Hugging Face's (`hf_beam_search`)."""

  T5X = "t5x"
  HF = "hf"

  @classmethod
  def parse(cls, value) -> "BeamProcedure":
    return enums.parse_enum(cls, value, "beam procedure")

  @property
  def decode_fn(self) -> Callable:
    return beam_search if self is BeamProcedure.T5X else hf_beam_search


class LengthPenalty(str, enum.Enum):
  """What `hf_beam_search` divides a finished hypothesis' summed log-probability by."""

  HF = "hf"  # length ** alpha (HF `length_penalty`)
  BREVITY = "t5x"  # ((5 + length) / 6) ** alpha (t5x's `brevity_penalty`)

  @classmethod
  def parse(cls, value) -> "LengthPenalty":
    return enums.parse_enum(cls, value, "length penalty")

  def divisor(self, length, alpha):
    """The divisor for `length` generated tokens (EOS included, start token not)."""
    if self is LengthPenalty.HF:
      return jnp.power(jnp.asarray(length, jnp.float32), alpha)
    return brevity_penalty(alpha, length)


class EarlyStopping(enum.Enum):
  """Hugging Face's `early_stopping` for `hf_beam_search` (values are HF's spellings).

  WHEN_FULL (True): an example is done once it has K finished hypotheses.
  HEURISTIC (False): done once the best running beam, scored at the current length,
    cannot beat the worst finished one.
  NEVER ("never"): as HEURISTIC, scored at the best length it could still reach.
  """

  WHEN_FULL = True
  HEURISTIC = False
  NEVER = "never"

  @classmethod
  def parse(cls, value) -> "EarlyStopping":
    if isinstance(value, cls):
      return value
    for member in cls:
      if value is member.value or (
          isinstance(value, str) and value == member.value
      ):
        return member
    raise ValueError(
        f"early_stopping must be True, False or 'never', got {value!r}"
    )


def _is_tracer(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


# ------------------------------------------------------------------------------
# Beam / cache helpers (t5x's names and signatures)
# ------------------------------------------------------------------------------
def brevity_penalty(alpha: float, length: int) -> jnp.ndarray:
  """t5x's brevity penalty ((5 + length) / 6) ** alpha."""
  return jnp.power(((5.0 + length) / 6.0), alpha)


def add_beam_dim(
    x: jnp.ndarray, beam_size: int, offset: int = 0
) -> jnp.ndarray:
  """[..., batch, ...] -> [..., batch, beam_size, ...] (new axis after `offset`), tiled."""
  x = jnp.expand_dims(x, axis=offset + 1)
  reps = [1] * x.ndim
  reps[offset + 1] = beam_size
  return jnp.tile(x, reps)


def flatten_beam_dim(x: jnp.ndarray, offset: int = 0) -> jnp.ndarray:
  """Merges axes `offset` and `offset + 1` (batch, beam) into one."""
  shape = list(x.shape)
  beams = shape.pop(offset + 1)
  shape[offset] *= beams
  return x.reshape(shape)


def unflatten_beam_dim(
    x: jnp.ndarray, batch_size: int, beam_size: int, offset: int = 0
) -> jnp.ndarray:
  """Splits axis `offset` (batch * beam) into (batch, beam)."""
  if x.shape[offset] != batch_size * beam_size:
    raise ValueError(
        f"unflatten_beam_dim: axis {offset} has {x.shape[offset]} rows, "
        f"not batch_size * beam_size = {batch_size * beam_size}"
    )
  shape = list(x.shape)
  return x.reshape(
      shape[:offset] + [batch_size, beam_size] + shape[offset + 1 :]
  )


def flat_batch_beam_expand(
    x: jnp.ndarray, beam_size: int, offset: int = 0
) -> jnp.ndarray:
  """[batch, ...] -> [batch * beam_size, ...], each row repeated beam_size times in place."""
  return flatten_beam_dim(add_beam_dim(x, beam_size, offset), offset)


# Cache leaves shared by every row (t5x excludes the same names).
_SHARED_CACHE_LEAVES = ("cached_bias", "position_embedder_index")
# Cache leaves holding the same rows for every beam of one example (cross-attention
# keys/values of the encoder outputs): beam reordering would copy them unchanged.
_PER_EXAMPLE_CACHE_LEAVES = ("encoded_key", "encoded_value")


def cache_map(fn, cache, apply_to_index: bool = False):
  """Applies `fn` to every cache array except `cache_index` (unless `apply_to_index`),
  `cached_bias` and `position_embedder_index` (t5x's `cache_map`)."""
  return _cache_map(fn, cache, apply_to_index=apply_to_index)


def _cache_map(fn, cache, apply_to_index: bool = False, skip=()):
  if not cache:
    return cache
  frozen = isinstance(cache, flax.core.FrozenDict)
  if frozen:
    cache = flax.core.unfreeze(cache)
  flat = traverse_util.flatten_dict(cache)
  excluded = _SHARED_CACHE_LEAVES + tuple(skip)
  if not apply_to_index:
    excluded += ("cache_index",)
  mapped = {k: v if k[-1] in excluded else fn(v) for k, v in flat.items()}
  out = traverse_util.unflatten_dict(mapped)
  return flax.core.freeze(out) if frozen else out


def _reorder_cache(cache, flat_rows: jnp.ndarray, offset: int = 0):
  """Takes cache rows `flat_rows` along `offset` (rows move only within an example)."""
  return _cache_map(
      lambda x: jnp.take(x, flat_rows, axis=offset),
      cache,
      skip=_PER_EXAMPLE_CACHE_LEAVES,
  )


def _call_tokens_to_logits(tokens_to_logits, decoding_state):
  frozen = isinstance(decoding_state.cache, flax.core.FrozenDict)
  logits, new_cache = tokens_to_logits(decoding_state)
  if frozen and not isinstance(new_cache, flax.core.FrozenDict):
    new_cache = flax.core.freeze(new_cache)
  # Decide in float32 whatever the activation dtype.
  return jnp.asarray(logits).astype(jnp.float32), new_cache


def _positive_int(value, name: str) -> int:
  if _is_tracer(value) or int(value) != value or int(value) < 1:
    raise ValueError(f"{name} must be a positive Python integer, got {value!r}")
  return int(value)


def _decoder_inputs(inputs, max_decode_len: Optional[int]) -> jnp.ndarray:
  """`inputs` as int32 [batch, length]; tkx's `max_decode_len` pads a shorter one with zeros."""
  inputs = jnp.asarray(inputs)
  if inputs.ndim != 2:
    raise ValueError(
        f"decoding inputs must be [batch, length] (start token, prompt, zeros), "
        f"got shape {inputs.shape}"
    )
  inputs = inputs.astype(jnp.int32)
  if max_decode_len is not None:
    length = _positive_int(max_decode_len, "max_decode_len")
    if inputs.shape[1] > length:
      raise ValueError(
          f"decoding inputs have {inputs.shape[1]} positions, more than "
          f"max_decode_len={length}"
      )
    inputs = jnp.pad(inputs, ((0, 0), (0, length - inputs.shape[1])))
  return inputs


def top_k_two_stage(x: jnp.ndarray, k: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """`lax.top_k(x, k)` over the last axis of [batch, n], in two stages (t5x's name).

  The row is cut into chunks, each chunk's k best are found, then the k best of those:
  on accelerators this is faster than one top-k over a long row (beams x vocabulary).
  Values and indices equal `lax.top_k`'s, ties included (the lower index first).
  """
  batch, n = x.shape
  chunk = max(k, int(np.ceil(np.sqrt(n * k))))
  num_chunks = -(-n // chunk)
  if num_chunks < 2:
    return lax.top_k(x, k)
  padded = jnp.pad(
      x,
      ((0, 0), (0, num_chunks * chunk - n)),
      constant_values=jnp.finfo(x.dtype).min
      if jnp.issubdtype(x.dtype, jnp.floating)
      else jnp.iinfo(x.dtype).min,
  )
  chunk_values, chunk_indices = lax.top_k(
      padded.reshape(batch, num_chunks, chunk), min(k, chunk)
  )
  # Candidates stay in index order (chunk, then rank), so ties resolve as in one top-k.
  offsets = (jnp.arange(num_chunks) * chunk)[None, :, None]
  candidates = (chunk_indices + offsets).reshape(batch, -1)
  values, picked = lax.top_k(chunk_values.reshape(batch, -1), k)
  return values, jnp.take_along_axis(candidates, picked, axis=1)


# ------------------------------------------------------------------------------
# Logit filters (t5x's masks: masked logits become NEG_INF, ties kept)
# ------------------------------------------------------------------------------
def topk_mask(logits: jnp.ndarray, k, replace_val=NEG_INF) -> jnp.ndarray:
  """Keeps the k largest logits per row and every logit tied with the k-th; the rest -> replace_val.

  `k` may be traced; k larger than the vocabulary keeps everything.
  """
  vocab = logits.shape[-1]
  if _is_tracer(k):
    ordered = -jnp.sort(-logits, axis=-1)
    index = jnp.clip(k - 1, 0, vocab - 1)
    kth = lax.dynamic_index_in_dim(ordered, index, axis=-1, keepdims=True)
  else:
    kth = lax.top_k(logits, min(int(k), vocab))[0][..., -1:]
  return jnp.where(logits >= kth, logits, jnp.full_like(logits, replace_val))


def topp_mask(logits: jnp.ndarray, p, replace_val=NEG_INF) -> jnp.ndarray:
  """Keeps the smallest set of most likely tokens whose probability reaches `p`, plus every
  token as likely as the least likely one kept (t5x keeps the tie); the rest -> replace_val.

  `p` may be traced; p <= 0 (off) leaves the logits unchanged.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  ordered = -jnp.sort(-probs, axis=-1)
  mass = jnp.cumsum(ordered, axis=-1)
  # The cutoff is the first token at which the mass reaches p (the last one if it never does).
  cutoff_index = jnp.minimum(
      jnp.sum(mass < p, axis=-1, keepdims=True), logits.shape[-1] - 1
  )
  threshold = jnp.take_along_axis(ordered, cutoff_index, axis=-1)
  masked = jnp.where(
      probs >= threshold, logits, jnp.full_like(logits, replace_val)
  )
  return jnp.where(jnp.asarray(p) > 0, masked, logits)


# ------------------------------------------------------------------------------
# Temperature sampling (t5x's procedure)
# ------------------------------------------------------------------------------
def temperature_sample(
    inputs: jnp.ndarray,
    cache: Mapping[str, jnp.ndarray],
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    decode_rng: Optional[jnp.ndarray] = None,
    num_decodes: int = 1,
    temperature: Union[float, jnp.ndarray] = 1.0,
    topk: int = 1,
    topp: float = 0.0,
    cache_offset: int = 0,
    initial_index: Optional[jnp.ndarray] = None,
    max_decode_steps: Optional[Union[int, jnp.ndarray]] = None,
    max_decode_steps_hard_limit: Optional[int] = None,
    rescale_log_probs: bool = True,
    state_callback_fn: Optional[StateCallbackFn] = None,
    logit_callback_fn: Optional[LogitCallbackFn] = None,
    *,
    max_decode_len: Optional[int] = None,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Samples `num_decodes` sequences per example (t5x's `temperature_sample`).

  Each step samples from softmax(logits / temperature), restricted to the `topk` most
  likely tokens (`topk > 0`; the default 1 is greedy) or to the top-p nucleus (`topp > 0`);
  at most one of them may be set (`TOPK_OFF`/`TOPP_OFF` = 0 is off). `temperature` at or
  below `MIN_TEMPERATURE` is greedy; a [batch] array gives each example its own.

  Args:
    inputs: [batch, length] int32: 0 (start), then an optional decoder prompt (teacher-
      forced: kept, not scored), then zeros. Decodes fill `length` positions.
    cache: the model's cache at batch size.
    tokens_to_logits: one decoder step (see module doc).
    eos_id: the end token; a sequence ends at an EOS it generated (prompt EOS do not count).
    decode_rng: PRNG key (default PRNGKey(0)); each step splits it as t5x does.
    num_decodes: sequences per example.
    temperature, topk, topp: see above; `topp` and `temperature` may be traced.
    cache_offset: the cache's batch axis (1 with scanned layers).
    initial_index: [batch] position of the token to start from when the cache already
      holds the prompt before it (then the cache index must be a [batch] vector).
    max_decode_steps: decode at most this many tokens after the prompt (may be traced).
    max_decode_steps_hard_limit: a static cap on `max_decode_steps`.
    rescale_log_probs: score under the tempered, filtered distribution that was sampled
      (True, t5x's default: greedy scores 0) or under the model (False).
    state_callback_fn: SamplingLoopState -> SamplingLoopState, before every step and
      once after the loop.
    logit_callback_fn: (logits, SamplingLoopState) -> logits, before sampling.
    max_decode_len: (tkx) pads `inputs` with zeros to this many positions.

  Returns:
    sequences [batch, num_decodes, length] and their log-probabilities, sorted ascending.
  """
  inputs = _decoder_inputs(inputs, max_decode_len)
  num_decodes = _positive_int(num_decodes, "num_decodes")
  if decode_rng is None:
    decode_rng = jax.random.PRNGKey(0)
  if (
      max_decode_steps_hard_limit is not None
      and max_decode_steps_hard_limit > 0
      and max_decode_steps is not None
  ):
    max_decode_steps = jnp.minimum(
        max_decode_steps, max_decode_steps_hard_limit
    )

  if num_decodes > 1:
    expanded_inputs = flat_batch_beam_expand(inputs, num_decodes)
    # A prefilled cache has a [batch] cache index, which must be expanded too.
    expanded_cache = cache_map(
        functools.partial(
            flat_batch_beam_expand, beam_size=num_decodes, offset=cache_offset
        ),
        cache,
        apply_to_index=initial_index is not None,
    )
    if initial_index is not None:
      initial_index = flat_batch_beam_expand(
          jnp.asarray(initial_index), num_decodes
      )
  else:
    expanded_inputs, expanded_cache = inputs, cache

  decodes, log_prob = _sample_single_trial(
      expanded_inputs,
      expanded_cache,
      tokens_to_logits,
      eos_id,
      decode_rng,
      num_decodes,
      temperature,
      topk,
      topp,
      initial_index=initial_index,
      max_decode_steps=max_decode_steps,
      rescale_log_probs=rescale_log_probs,
      state_callback_fn=state_callback_fn,
      logit_callback_fn=logit_callback_fn,
  )
  batch = inputs.shape[0]
  decodes = unflatten_beam_dim(decodes, batch, num_decodes)
  log_prob = unflatten_beam_dim(log_prob, batch, num_decodes)
  order = jnp.argsort(log_prob, axis=-1)
  return (
      jnp.take_along_axis(decodes, order[:, :, None], axis=1),
      jnp.take_along_axis(log_prob, order, axis=-1),
  )


def _sample_single_trial(
    inputs,
    cache,
    tokens_to_logits,
    eos_id,
    rng,
    num_decodes,
    temperature,
    topk,
    topp,
    *,
    initial_index,
    max_decode_steps,
    rescale_log_probs,
    state_callback_fn,
    logit_callback_fn,
):
  """One sample per row of the (already expanded) `inputs`; returns ([rows, length], [rows]).

  Long because it keeps t5x's one-function sampling loop (state, step, filters, callbacks) so the two read side by side.
  """
  static_topk = not _is_tracer(topk)
  static_topp = not _is_tracer(topp)
  if static_topk and static_topp and topp and topk:
    raise ValueError(
        "temperature_sample: at most one of topk and topp may be non-zero "
        f"(got topk={topk}, topp={topp}); 0 is off"
    )
  rows, length = inputs.shape
  if max_decode_steps is not None:
    if not _is_tracer(max_decode_steps) and max_decode_steps > length:
      raise ValueError(
          f"temperature_sample: max_decode_steps={max_decode_steps} is more than "
          f"the {length} positions of inputs"
      )
    # Each row ends after its prompt (the non-zero tokens) plus max_decode_steps tokens.
    end_index = jnp.minimum(
        length, jnp.sum(inputs != 0, axis=1) + max_decode_steps
    )
  else:
    end_index = length

  # Two spare positions: the loop writes at i + 1, and rows that reach their end
  # before others keep writing into the last one.
  spare = 2
  sequences0 = jnp.pad(inputs, ((0, 0), (0, spare)))
  if initial_index is None:
    i0 = jnp.zeros((rows,), jnp.int32)
    token0 = jnp.zeros((rows, 1), jnp.int32)
  else:
    i0 = jnp.broadcast_to(jnp.asarray(initial_index, jnp.int32), (rows,))
    token0 = jnp.take_along_axis(sequences0, i0[:, None], axis=1)
  initial_eos_count = jnp.sum(sequences0 == eos_id, axis=-1, keepdims=True)
  temperature = jnp.asarray(temperature, jnp.float32)

  def sample_nonzero_temperature(logits, temp, key):
    scaled = logits / jnp.maximum(temp, MIN_TEMPERATURE)
    if not static_topk:
      scaled = lax.cond(
          topk > 0, lambda x: topk_mask(x, topk), lambda x: x, scaled
      )
    elif topk:
      scaled = topk_mask(scaled, topk)
    if not static_topp or topp:
      scaled = topp_mask(scaled, topp)
    token = jax.random.categorical(key, scaled).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(scaled if rescale_log_probs else logits)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]

  def sample_zero_temperature(logits, temp, key):
    del temp, key
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    if rescale_log_probs:
      return token, jnp.zeros(token.shape, jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]

  def sample(logits, key):
    if temperature.ndim == 1:
      # One temperature per example; each row draws with the step key on its own, as t5x.
      def per_row(row_logits, row_temperature):
        return lax.cond(
            row_temperature > MIN_TEMPERATURE,
            sample_nonzero_temperature,
            sample_zero_temperature,
            row_logits[None],
            row_temperature,
            key,
        )

      token, log_prob = jax.vmap(per_row)(
          logits, jnp.repeat(temperature, num_decodes)
      )
      return token[:, 0], log_prob[:, 0]
    if not _is_tracer(temperature):
      greedy = float(temperature) <= float(MIN_TEMPERATURE)
      fn = sample_zero_temperature if greedy else sample_nonzero_temperature
      return fn(logits, temperature, key)
    return lax.cond(
        temperature > MIN_TEMPERATURE,
        sample_nonzero_temperature,
        sample_zero_temperature,
        logits,
        temperature,
        key,
    )

  def cond_fn(state: SamplingLoopState):
    return ~jnp.all(state.ended)

  def body_fn(state: SamplingLoopState):
    if state_callback_fn is not None:
      state = state_callback_fn(state)
    step_key, next_key = jax.random.split(state.rng)
    logits, new_cache = _call_tokens_to_logits(
        tokens_to_logits,
        DecodingState(
            cur_index=state.cur_index,
            sequences=state.sequences[:, :-spare],
            cur_token=state.cur_token,
            cache=state.cache,
        ),
    )
    if logit_callback_fn is not None:
      logits = logit_callback_fn(logits, state)
    token, token_log_prob = sample(logits, step_key)

    # Rows past their end keep writing into the last (spare) position.
    i = jnp.minimum(state.cur_index, end_index)
    forced = jnp.take_along_axis(state.sequences, (i + 1)[:, None], axis=1)[
        :, 0
    ]
    out_of_prompt = forced == 0
    token = jnp.where(out_of_prompt, token, forced)
    log_prob = state.log_prob + jnp.where(
        out_of_prompt & ~state.ended[:, 0], token_log_prob, 0.0
    )
    token_or_pad = jnp.where(state.ended, 0, token[:, None])
    write = jax.nn.one_hot(i + 1, state.sequences.shape[1], dtype=jnp.bool_)
    sequences = jnp.where(write, token_or_pad, state.sequences)
    eos_count = jnp.sum(sequences == eos_id, axis=-1, keepdims=True)
    ended = (
        state.ended
        | (eos_count > initial_eos_count)
        | (i >= end_index - 1)[:, None]
    )
    return SamplingLoopState(
        step=state.step + 1,
        cur_index=i + 1,
        sequences=sequences,
        cache=new_cache,
        cur_token=token_or_pad,
        ended=ended,
        rng=next_key,
        log_prob=log_prob,
    )

  state0 = SamplingLoopState(
      step=jnp.zeros((), jnp.int32),
      cur_index=i0,
      sequences=sequences0,
      cache=cache,
      cur_token=token0,
      ended=jnp.zeros((rows, 1), jnp.bool_),
      rng=rng,
      log_prob=jnp.zeros((rows,), jnp.float32),
  )
  final = lax.while_loop(cond_fn, body_fn, state0)
  if state_callback_fn is not None:
    final = state_callback_fn(final)
  # Drop the start token and the spare position.
  return final.sequences[:, 1:-1], final.log_prob


def greedy(
    inputs: jnp.ndarray,
    cache: Mapping[str, jnp.ndarray],
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    decode_rng: Optional[jnp.ndarray] = None,
    num_decodes: int = 1,
    cache_offset: int = 0,
    *,
    max_decode_len: Optional[int] = None,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy decoding (argmax each step; HF `generate()`'s default) scored by the model's
  log-likelihood: `temperature_sample(temperature=0, rescale_log_probs=False)`.
  """
  return temperature_sample(
      inputs,
      cache,
      tokens_to_logits,
      eos_id,
      decode_rng,
      num_decodes,
      temperature=0.0,
      topk=TOPK_OFF,
      cache_offset=cache_offset,
      rescale_log_probs=False,
      max_decode_len=max_decode_len,
  )


# ------------------------------------------------------------------------------
# Beam search: the steps both procedures share
# ------------------------------------------------------------------------------
def _gather_beams(x: jnp.ndarray, indices: jnp.ndarray) -> jnp.ndarray:
  """x [batch, beams, ...], indices [batch, k] -> [batch, k, ...]."""
  idx = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _best_k(scores: jnp.ndarray, k: int, ascending: bool) -> jnp.ndarray:
  """Indices of the k largest scores per row: best first, or worst first (t5x keeps beams
  best last)."""
  indices = lax.top_k(scores, k)[1]
  return jnp.flip(indices, axis=1) if ascending else indices


def _beam_setup(inputs, cache, num_decodes, max_decode_len, cache_offset):
  """What both beam searches check and build first.

  Returns (k, inputs as int32 [batch, length], batch, max_decode_len (default: inputs'
  length), the cache with each example's rows repeated k times).
  """
  k = _positive_int(num_decodes, "num_decodes")
  inputs = _decoder_inputs(inputs, None)
  if max_decode_len is None:
    max_decode_len = inputs.shape[1]
  max_decode_len = _positive_int(max_decode_len, "max_decode_len")
  beam_cache = cache_map(
      functools.partial(
          flat_batch_beam_expand, beam_size=k, offset=cache_offset
      ),
      cache,
  )
  return k, inputs, inputs.shape[0], max_decode_len, beam_cache


def _beam_candidates(tokens_to_logits, seqs, scores, cache, i, cur_index):
  """One decoder step for every beam -> the 2k best (beam, token) continuations.

  `seqs` [batch, k, positions] hold the token to feed at `i`; `scores` [batch, k] are
  summed log-probabilities. Returns (candidate scores [batch, 2k] best first, their
  parent beams, their tokens, the stepped cache, still in the old beam order).
  """
  batch, k = scores.shape
  flat_seqs = flatten_beam_dim(seqs)
  logits, cache = _call_tokens_to_logits(
      tokens_to_logits,
      DecodingState(
          cur_index=cur_index,
          sequences=flat_seqs,
          cur_token=lax.dynamic_slice_in_dim(flat_seqs, i, 1, axis=1),
          cache=cache,
      ),
  )
  vocab = logits.shape[-1]
  log_probs = jax.nn.log_softmax(unflatten_beam_dim(logits, batch, k))
  log_probs = log_probs + scores[:, :, None]
  top_scores, top_indices = lax.top_k(
      log_probs.reshape(batch, k * vocab), 2 * k
  )
  return top_scores, top_indices // vocab, top_indices % vocab, cache


def _extend(seqs, parents, tokens, i):
  """The parents' sequences [batch, n, positions] with `tokens` [batch, n] at `i + 1`."""
  return lax.dynamic_update_slice_in_dim(
      _gather_beams(seqs, parents), tokens[:, :, None], i + 1, axis=2
  )


def _keep_live(k, scores, seqs, parents, ended, neg_inf, ascending):
  """The k best candidates that did not end: (scores, sequences, parent beams)."""
  scores = scores + ended * neg_inf
  keep = _best_k(scores, k, ascending)
  return (
      jnp.take_along_axis(scores, keep, axis=1),
      _gather_beams(seqs, keep),
      jnp.take_along_axis(parents, keep, axis=1),
  )


def _merge_finished(finished, candidates, k, ascending):
  """The k best of a finished list and new candidates, each (scores, seqs, flags)."""
  scores, seqs, flags = (
      jnp.concatenate([old, new], axis=1)
      for old, new in zip(finished, candidates)
  )
  keep = _best_k(scores, k, ascending)
  return (
      jnp.take_along_axis(scores, keep, axis=1),
      _gather_beams(seqs, keep),
      jnp.take_along_axis(flags, keep, axis=1),
  )


def _follow_parents(cache, parents, cache_offset):
  """The cache rows of the kept beams' parents (rows move only within an example)."""
  batch, k = parents.shape
  flat_rows = (jnp.arange(batch)[:, None] * k + parents).reshape(-1)
  return _reorder_cache(cache, flat_rows, cache_offset)


# ------------------------------------------------------------------------------
# Beam search: t5x's procedure
# ------------------------------------------------------------------------------
def _static_initial_index(initial_index) -> int:
  """beam_search's loop index is one scalar: one start position for the whole batch."""
  if _is_tracer(initial_index):
    raise ValueError(
        "beam_search: initial_index must be concrete (a Python int or a concrete "
        "array with one value); tkx beam search has one start position for the batch"
    )
  values = np.unique(np.asarray(initial_index))
  if values.size != 1:
    raise ValueError(
        f"beam_search: initial_index must be the same for every example, got "
        f"{np.asarray(initial_index).tolist()}; pad prompts to one length"
    )
  return int(values[0])


def beam_search(
    inputs: jnp.ndarray,
    cache: Mapping[str, jnp.ndarray],
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 4,
    alpha: float = 0.6,
    max_decode_len: Optional[int] = None,
    decode_rng: Optional[jnp.ndarray] = None,
    cache_offset: int = 0,
    initial_index: Optional[Union[int, jnp.ndarray]] = None,
    min_log_prob: Optional[float] = None,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """t5x's beam search with `num_decodes` beams and brevity penalty ((5 + len) / 6) ** alpha.

  Each step the 2K best (beam, token) continuations by summed log-probability are kept;
  every one that ends in EOS is offered to the example's K-best finished list, scored
  `log_prob / brevity_penalty(alpha, len)` (len counts positions after the start token,
  prompt included); the K best that did not end stay live. Decoding stops at
  `max_decode_len` or once, for every example, the best live beam scored at the maximum
  length cannot beat the worst finished one. An example with nothing finished returns its
  live beams and their summed log-probabilities.

  Args:
    inputs: [batch, length] int32: 0 (start), an optional decoder prompt (teacher-forced:
      kept, scored 0), zeros.
    num_decodes: beams (and sequences returned per example).
    alpha: brevity-penalty exponent (may be traced).
    max_decode_len: output positions (default `inputs.shape[1]`).
    decode_rng: unused (beam search is deterministic).
    cache_offset: the cache's batch axis (1 with scanned layers).
    initial_index: (prefilled cache) the position of the token to start from, the same for
      every example; the prompt before it is taken as already in the cache.
    min_log_prob: stop once no live beam's summed log-probability is above this.

  Returns:
    sequences [batch, num_decodes, max_decode_len] and scores [batch, num_decodes],
    ascending (best last).

  Long because it keeps t5x's one-function shape (set-up, loop body, finished-list merge, return) so the two read side by side.
  """
  del decode_rng
  beam_size, inputs, batch, max_decode_len, beam_cache = _beam_setup(
      inputs, cache, num_decodes, max_decode_len, cache_offset
  )
  positions = max_decode_len + 1  # the start token, then max_decode_len outputs
  # Token forced at each position (0: free); padded so the last step can look one ahead.
  forced_tokens = jnp.pad(
      inputs[:, : positions + 1],
      ((0, 0), (0, max(0, positions + 1 - inputs.shape[1]))),
  )
  neg_inf = jnp.float32(NEG_INF)

  start = 0 if initial_index is None else _static_initial_index(initial_index)
  if not 0 <= start < max_decode_len:
    raise ValueError(
        f"beam_search: initial_index={start} must be in [0, max_decode_len={max_decode_len})"
    )
  live_seqs0 = jnp.zeros((batch, beam_size, positions), jnp.int32)
  if start > 0:
    prompt = forced_tokens[:, : start + 1]
    live_seqs0 = live_seqs0.at[:, :, : start + 1].set(prompt[:, None, :])
    # As after forcing a prompt: one live beam, kept last (best).
    live_logprobs0 = jnp.full((batch, beam_size), neg_inf).at[:, -1].set(0.0)
  else:
    live_logprobs0 = jnp.full((batch, beam_size), neg_inf).at[:, 0].set(0.0)

  state0 = dict(
      cur_index=jnp.array(start, jnp.int32),
      live_logprobs=live_logprobs0,
      finished_scores=jnp.full((batch, beam_size), neg_inf),
      live_seqs=live_seqs0,
      finished_seqs=jnp.zeros((batch, beam_size, positions), jnp.int32),
      finished_flags=jnp.zeros((batch, beam_size), jnp.bool_),
      cache=beam_cache,
  )

  def cond_fn(state):
    not_at_end = state["cur_index"] < positions - 1
    best_live = state["live_logprobs"][:, -1:] / brevity_penalty(
        alpha, positions
    )
    worst_finished = jnp.where(
        state["finished_flags"],
        jnp.min(state["finished_scores"], axis=1, keepdims=True),
        neg_inf,
    )
    keep_going = not_at_end & ~jnp.all(worst_finished > best_live)
    if min_log_prob is not None:
      keep_going &= jnp.any(state["live_logprobs"] > min_log_prob)
    return keep_going

  def body_fn(state):
    i = state["cur_index"]
    top_log_probs, top_beams, top_ids, cache = _beam_candidates(
        tokens_to_logits,
        state["live_seqs"],
        state["live_logprobs"],
        state["cache"],
        i,
        cur_index=i,
    )
    # Inside the prompt the forced token replaces the candidates: one beam, scored 0.
    forced = lax.dynamic_index_in_dim(
        forced_tokens, i + 1, axis=1, keepdims=True
    )
    in_prompt = forced != 0
    prompt_log_probs = (
        jnp.full((batch, 2 * beam_size), neg_inf).at[:, 0].set(0.0)
    )
    top_log_probs = jnp.where(in_prompt, prompt_log_probs, top_log_probs)
    top_ids = jnp.where(in_prompt, forced, top_ids)
    top_seqs = _extend(state["live_seqs"], top_beams, top_ids, i)
    newly_finished = top_ids == eos_id

    live_logprobs, live_seqs, parents = _keep_live(
        beam_size,
        top_log_probs,
        top_seqs,
        top_beams,
        newly_finished,
        neg_inf,
        ascending=True,
    )
    new_scores = top_log_probs / brevity_penalty(alpha, i + 1)
    new_scores = new_scores + (~newly_finished) * neg_inf
    finished_scores, finished_seqs, finished_flags = _merge_finished(
        (
            state["finished_scores"],
            state["finished_seqs"],
            state["finished_flags"],
        ),
        (new_scores, top_seqs, newly_finished),
        beam_size,
        ascending=True,
    )
    return dict(
        cur_index=i + 1,
        live_logprobs=live_logprobs,
        finished_scores=finished_scores,
        live_seqs=live_seqs,
        finished_seqs=finished_seqs,
        finished_flags=finished_flags,
        cache=_follow_parents(cache, parents, cache_offset),
    )

  final = lax.while_loop(cond_fn, body_fn, state0)
  any_finished = jnp.any(final["finished_flags"], axis=1)
  seqs = jnp.where(
      any_finished[:, None, None], final["finished_seqs"], final["live_seqs"]
  )
  scores = jnp.where(
      any_finished[:, None], final["finished_scores"], final["live_logprobs"]
  )
  return seqs[:, :, 1:], scores


# ------------------------------------------------------------------------------
# Beam search: Hugging Face's procedure
# ------------------------------------------------------------------------------
# Hugging Face's stand-in for -inf in beam search; the same float32 arithmetic keeps ties
# among masked entries resolving as in HF.
_HF_NEG_INF = np.float32(-1.0e9)


def _hf_divisor_table(max_len: int, alpha, length_penalty: LengthPenalty):
  """[max_len + 1] divisors by generated length; `alpha` may be traced."""
  if _is_tracer(alpha):
    n = jnp.maximum(jnp.arange(max_len + 1, dtype=jnp.float32), 1.0)
    return length_penalty.divisor(n, jnp.asarray(alpha, jnp.float32))
  # In double, rounded once, as HF's Python-scalar division does.
  if length_penalty is LengthPenalty.HF:
    table = [float(n) ** float(alpha) for n in range(max_len + 1)]
  else:
    table = [((5.0 + n) / 6.0) ** float(alpha) for n in range(max_len + 1)]
  table[0] = 1.0
  return jnp.asarray(np.array(table, np.float64).astype(np.float32))


def hf_beam_search(
    inputs: jnp.ndarray,
    cache: Mapping[str, jnp.ndarray],
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 4,
    alpha: float = 1.0,
    max_decode_len: Optional[int] = None,
    decode_rng: Optional[jnp.ndarray] = None,
    cache_offset: int = 0,
    *,
    early_stopping: Union[EarlyStopping, bool, str] = EarlyStopping.WHEN_FULL,
    length_penalty: Union[LengthPenalty, str] = LengthPenalty.HF,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Hugging Face's beam search: `generate(num_beams=K, length_penalty=alpha,
  early_stopping=...)` (transformers 5.x `_beam_search`) step for step.

  Each step the 2K best continuations of the K running beams are ranked by summed
  log-probability. Those among the first K that end in EOS (or reach `max_decode_len`)
  are offered to the example's K-best finished list, scored `log_prob / len ** alpha`
  (`length_penalty=LengthPenalty.BREVITY`: t5x's brevity penalty); the K best that did
  not end keep running. `early_stopping` is HF's rule (see `EarlyStopping`; True, False and
  "never" are accepted). Decoder prompts are not supported: only `inputs[:, 0]` (the
  start token) is read and `max_decode_len` defaults to `inputs.shape[1]`.

  Returns:
    sequences [batch, K, max_decode_len] and scores [batch, K], ascending (best last).

  Long because it is one procedure (transformers' BeamSearchScorer rules) in the same shape as beam_search; the shared steps are the _beam helpers.
  """
  del decode_rng  # deterministic
  early_stopping = EarlyStopping.parse(early_stopping)
  length_penalty = LengthPenalty.parse(length_penalty)
  k, inputs, batch, length, beam_cache = _beam_setup(
      inputs, cache, num_decodes, max_decode_len, cache_offset
  )
  if not _is_tracer(inputs) and np.any(np.asarray(inputs)[:, 1:] != 0):
    raise ValueError(
        "hf_beam_search has no decoder prompts (inputs must be zero after position 0); "
        "use beam_search (t5x's procedure) to force a prompt"
    )
  divisors = _hf_divisor_table(length, alpha, length_penalty)
  # One EOS token: HF keeps (1 + n_eos) * num_beams = 2K candidates.
  neg = jnp.float32(_HF_NEG_INF)

  start = inputs[:, :1]
  running_seqs0 = (
      jnp.zeros((batch, k, length + 1), jnp.int32)
      .at[:, :, :1]
      .set(start[:, None, :])
  )
  # Only the first beam is live at the start, so the first step does not pick K copies.
  running_scores0 = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(neg)
  top_k_mask = jnp.arange(2 * k) < k
  stop_when_full = early_stopping is EarlyStopping.WHEN_FULL

  state0 = dict(
      i=jnp.array(0, jnp.int32),
      running_seqs=running_seqs0,
      running_scores=running_scores0,
      finished_seqs=running_seqs0,
      finished_scores=jnp.full((batch, k), neg, jnp.float32),
      finished_flags=jnp.zeros((batch, k), bool),
      improvable=jnp.ones((batch,), bool),
      done=jnp.array(False),
      cache=beam_cache,
  )

  def body(s):
    i = s["i"]
    top_scores, top_beam, top_token, cache = _beam_candidates(
        tokens_to_logits,
        s["running_seqs"],
        s["running_scores"],
        s["cache"],
        i,
        cur_index=jnp.full((batch * k,), i, jnp.int32),
    )
    top_seqs = _extend(s["running_seqs"], top_beam, top_token, i)
    ends = (top_token == eos_id) | (i + 1 >= length)

    run_scores, running_seqs, parent = _keep_live(
        k, top_scores, top_seqs, top_beam, ends, neg, ascending=False
    )

    # Offer the ended ones among the first K to the finished list.
    just_finished = ends & top_k_mask[None, :]
    cand = top_scores / divisors[i + 1]
    full = jnp.all(s["finished_flags"], axis=-1, keepdims=True) & stop_when_full
    cand = cand + full.astype(jnp.float32) * neg
    cand = cand + (~s["improvable"])[:, None].astype(jnp.float32) * neg
    cand = cand + (~just_finished).astype(jnp.float32) * neg
    finished_scores, finished_seqs, finished_flags = _merge_finished(
        (s["finished_scores"], s["finished_seqs"], s["finished_flags"]),
        (cand, top_seqs, just_finished),
        k,
        ascending=False,
    )

    i = i + 1
    if early_stopping is EarlyStopping.NEVER:
      # HF: the best case is the longest sequence when alpha favours length.
      best_len = jnp.where(
          jnp.asarray(alpha) > 0, jnp.asarray(length, jnp.int32), i
      )
    else:
      best_len = i
    best_running = run_scores[:, :1] / divisors[best_len]
    worst_finished = jnp.where(
        finished_flags, jnp.min(finished_scores, axis=1, keepdims=True), neg
    )
    improvable = s["improvable"] & jnp.any(
        best_running > worst_finished, axis=-1
    )
    open_beams = ~(jnp.all(finished_flags) & stop_when_full)
    done = ~(jnp.any(improvable) & open_beams & ~jnp.all(ends))
    return dict(
        i=i,
        running_seqs=running_seqs,
        running_scores=run_scores,
        finished_seqs=finished_seqs,
        finished_scores=finished_scores,
        finished_flags=finished_flags,
        improvable=improvable,
        done=done,
        cache=_follow_parents(cache, parent, cache_offset),
    )

  final = lax.while_loop(lambda s: ~s["done"], body, state0)
  # Finished lists are sorted best first; return best last.
  return final["finished_seqs"][:, ::-1, 1:], final["finished_scores"][:, ::-1]


# ------------------------------------------------------------------------------
# Decoding methods: the names commands, the server and gin choose from
# ------------------------------------------------------------------------------
# The `infer.DecodeConfig` settings a method may read; each must be at its default (off)
# under a method that does not read it.
SETTINGS = ("num_beams", "alpha", "temperature", "top_k", "top_p")


@dataclasses.dataclass(frozen=True)
class DecodingMethod:
  """A decoding function under a name, with the `infer.DecodeConfig` settings it reads.

  Attributes:
    name: what `--decode_fn`, a server request's `decode_fn` and
      `infer.DecodeConfig.decode_fn` call it.
    fn: a function with t5x's decoding interface (`inputs, cache, tokens_to_logits,
      eos_id, ..., num_decodes=...`; see the module doc).
    settings: `DecodeConfig` setting -> the keyword `fn` takes it as (e.g. `num_beams`
      -> `num_decodes`). A setting left at None is not passed: the function's default
      (or its gin binding) applies.
    uses_rng: the method draws: it gets `decode_rng` (from `DecodeConfig.seed`).
  """

  name: str
  fn: Callable
  settings: Mapping[str, str] = dataclasses.field(default_factory=dict)
  uses_rng: bool = False

  def configured_fn(self) -> Callable:
    """`fn` with its gin bindings (e.g. `decoding.hf_beam_search.early_stopping`), if any."""
    try:
      return gin.get_configurable(self.fn)
    except ValueError:  # not known to gin
      return self.fn


METHODS: Dict[str, DecodingMethod] = {}


def register_method(
    name: str,
    fn: Callable,
    *,
    settings: Optional[Mapping[str, str]] = None,
    uses_rng: bool = False,
) -> DecodingMethod:
  """Makes `fn` a decoding method called `name` (one line per method: docs/decoding.md).

  `settings` maps the `infer.DecodeConfig` settings it reads (`SETTINGS`) to its keyword
  arguments; `uses_rng` if it samples. Registering the same function again is a no-op.
  """
  settings = dict(settings or {})
  unknown = sorted(set(settings) - set(SETTINGS))
  if unknown:
    raise ValueError(
        f"register_method({name!r}): unknown settings {unknown}; the settings are "
        f"{', '.join(SETTINGS)}"
    )
  method = DecodingMethod(name, fn, settings, uses_rng)
  existing = METHODS.get(name)
  if existing is not None and existing != method:
    raise ValueError(
        f"decoding method {name!r} is already registered "
        f"({existing.fn.__module__}.{existing.fn.__qualname__})"
    )
  METHODS[name] = method
  return method


def get_method(name_or_fn: Union[str, Callable]) -> DecodingMethod:
  """The registered method of a name or of a function (gin's `@decoding.beam_search` too)."""
  if isinstance(name_or_fn, str):
    if name_or_fn in METHODS:
      return METHODS[name_or_fn]
    raise errors.ConfigError(
        f"decode_fn {name_or_fn!r} is not a registered decoding method; known: "
        f"{', '.join(sorted(METHODS))} (tkx.decoding.register_method adds one)"
    )
  fn = inspect.unwrap(name_or_fn)  # gin's configurable wrappers
  for method in METHODS.values():
    if method.fn is fn:
      return method
  raise ValueError(
      f"decode_fn {getattr(fn, '__qualname__', fn)!r} is not a registered decoding "
      "method; register it with tkx.decoding.register_method(name, fn, settings=...)"
  )


_BEAM_SETTINGS = {"num_beams": "num_decodes", "alpha": "alpha"}
register_method("greedy", greedy)
register_method(
    "temperature_sample",
    temperature_sample,
    settings={"temperature": "temperature", "top_k": "topk", "top_p": "topp"},
    uses_rng=True,
)
register_method("beam_search", beam_search, settings=_BEAM_SETTINGS)
register_method("hf_beam_search", hf_beam_search, settings=_BEAM_SETTINGS)
# Gin files name them t5x's way: `infer.DecodeConfig.decode_fn = @decoding.beam_search`.
for _method in list(METHODS.values()):
  gin.external_configurable(_method.fn, module="decoding")
