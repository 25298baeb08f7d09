"""Decoding on the key/value cache: greedy, temperature / top-k / top-p sampling, beam search.

Conventions follow t5x's `decoding.py`, so model code written for t5x drives these
functions unchanged:

* A decode function is called as
  `fn(*, inputs, cache, tokens_to_logits, eos_id, max_decode_len=None, **options)`.
  `inputs` is `[batch, L]` int32; only column 0 is read: the token decoding starts
  from (T5's decoder start token, 0). Without `max_decode_len` it is `L`, so t5x's
  zero "decoder prompt" of shape `[batch, max_decode_len]` works as is.
* `tokens_to_logits(state: DecodingState) -> (logits [batch * n, vocab], new_cache)`
  is called once per step with the current token `state.cur_token` `[batch * n, 1]`.
* The `cache` comes in at batch size; functions that decode several sequences per
  example (`num_decodes`, beams) repeat every cache array along axis 0, keeping
  the copies of one example together (t5x's "flattened beams": row `b * n + j`).
  The encoder outputs the model closes over must be expanded the same way
  (`flat_batch_beam_expand`). Leaves named `cache_index` (and other scalars) are
  shared and left alone.
* Results are `(sequences [batch, n, max_decode_len], scores [batch, n])`, sorted by
  score in ascending order (best last, as t5x: take `[:, -1]`). After EOS a
  sequence holds padding (0). The start token is not part of `sequences`.

Everything is jit-compatible: one `lax.while_loop` per call that stops as soon as
every sequence is finished.

Beam search reproduces Hugging Face `generate(num_beams=K, length_penalty=alpha,
early_stopping=...)` (transformers 5.x `_beam_search`) step for step; see
`beam_search` for the rule and for the t5x brevity penalty option.
"""

import functools
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# Hugging Face's stand-in for -inf in beam search. The same float32 arithmetic
# keeps ties among masked entries resolving as in HF.
NEG_INF = np.float32(-1.0e9)
# Temperatures at or below this are greedy (t5x's MIN_TEMPERATURE).
MIN_TEMPERATURE = 1e-4

PyTree = Any


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at each step (t5x's `DecodingState`).

  Attributes:
    cur_index: [batch * n] position of `cur_token` in `sequences` (0 at the start token).
    sequences: [batch * n, max_decode_len + 1] the start token followed by the tokens so far.
    cur_token: [batch * n, 1] the token to feed now.
    cache: the model's autoregressive cache.
  """

  cur_index: jnp.ndarray
  sequences: jnp.ndarray
  cur_token: jnp.ndarray
  cache: Mapping[str, Any]


TokensToLogits = Callable[[DecodingState], Tuple[jnp.ndarray, PyTree]]


# ------------------------------------------------------------------------------
# Beam / batch reshaping helpers (t5x names)
# ------------------------------------------------------------------------------


def flat_batch_beam_expand(
    x: jnp.ndarray, beam_size: int, offset: int = 0
) -> jnp.ndarray:
  """[..., batch, ...] -> [..., batch * beam_size, ...] repeating each row beam_size times."""
  return jnp.repeat(x, beam_size, axis=offset)


def unflatten_beam_dim(
    x: jnp.ndarray, batch_size: int, beam_size: int
) -> jnp.ndarray:
  return x.reshape((batch_size, beam_size) + x.shape[1:])


def flatten_beam_dim(x: jnp.ndarray) -> jnp.ndarray:
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


# Cache leaves that are shared by every row and must not be repeated or gathered.
_SHARED_CACHE_LEAVES = ("cache_index", "cached_bias", "position_embedder_index")


def cache_map(
    fn: Callable[[jnp.ndarray], jnp.ndarray], cache: PyTree, skip=()
) -> PyTree:
  """Applies `fn` to every per-row cache array (not to indices, scalars or leaves named in `skip`)."""
  if not cache:
    return cache
  frozen = isinstance(cache, flax.core.FrozenDict)
  if frozen:
    cache = flax.core.unfreeze(cache)
  flat = traverse_util.flatten_dict(cache)
  mapped = {
      k: (
          v
          if (
              k[-1] in _SHARED_CACHE_LEAVES or k[-1] in skip or jnp.ndim(v) == 0
          )
          else fn(v)
      )
      for k, v in flat.items()
  }
  out = traverse_util.unflatten_dict(mapped)
  return flax.core.freeze(out) if frozen else out


# Cache leaves that hold the same rows for every decode of one example (the
# encoder outputs' keys/values in cross-attention): beam reordering, which only
# moves rows within an example, would copy them unchanged, so it skips them.
_PER_EXAMPLE_CACHE_LEAVES = ("encoded_key", "encoded_value")


def _reorder_cache(
    cache: PyTree, flat_rows: jnp.ndarray, offset: int = 0
) -> PyTree:
  """Takes cache rows `flat_rows` (indices within each example's block of rows) along `offset`."""
  return cache_map(
      lambda x: jnp.take(x, flat_rows, axis=offset),
      cache,
      skip=_PER_EXAMPLE_CACHE_LEAVES,
  )


def _expand_cache(cache: PyTree, n: int, offset: int = 0) -> PyTree:
  if n == 1:
    return cache
  return cache_map(
      functools.partial(flat_batch_beam_expand, beam_size=n, offset=offset),
      cache,
  )


def _max_decode_len(inputs: jnp.ndarray, max_decode_len: Optional[int]) -> int:
  if inputs.ndim != 2:
    raise ValueError(
        f"decoding inputs must be [batch, length] start tokens, got shape {inputs.shape}"
    )
  length = (
      int(max_decode_len)
      if max_decode_len is not None
      else int(inputs.shape[1])
  )
  if length < 1:
    raise ValueError(f"max_decode_len must be >= 1, got {length}")
  return length


def _call_tokens_to_logits(
    tokens_to_logits, cur_index, sequences, cur_token, cache
):
  frozen = isinstance(cache, flax.core.FrozenDict)
  logits, new_cache = tokens_to_logits(
      DecodingState(
          cur_index=cur_index,
          sequences=sequences,
          cur_token=cur_token,
          cache=cache,
      )
  )
  if frozen and not isinstance(new_cache, flax.core.FrozenDict):
    new_cache = flax.core.freeze(new_cache)
  # Decide in float32 whatever the activation dtype (HF does the same).
  return logits.astype(jnp.float32), new_cache


# ------------------------------------------------------------------------------
# Logit filters (Hugging Face TopK / TopP warper semantics)
# ------------------------------------------------------------------------------


def top_k_filter(logits: jnp.ndarray, k: int) -> jnp.ndarray:
  """Keeps the k largest logits per row (and anything tied with the k-th); the rest -> -inf."""
  k = min(int(k), logits.shape[-1])
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jnp.ndarray, p: float) -> jnp.ndarray:
  """Nucleus filter: keeps the smallest set of most likely tokens whose probability reaches p.

  A token is dropped when the tokens more likely than it already reach p; the
  most likely token is always kept.
  """
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  drop_sorted = mass_before >= p
  drop_sorted = drop_sorted.at[..., 0].set(False)
  # Scatter the decision back to vocabulary order.
  drop = (
      jnp.zeros_like(drop_sorted)
      .at[jnp.arange(logits.shape[0])[:, None], order]
      .set(drop_sorted)
  )
  return jnp.where(drop, -jnp.inf, logits)


# ------------------------------------------------------------------------------
# Greedy and temperature sampling
# ------------------------------------------------------------------------------


def temperature_sample(
    *,
    inputs: jnp.ndarray,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    max_decode_len: Optional[int] = None,
    decode_rng: Optional[jax.Array] = None,
    num_decodes: int = 1,
    temperature: Union[float, jnp.ndarray] = 1.0,
    topk: int = 0,
    topp: float = 0.0,
    rescale_log_probs: bool = False,
    cache_offset: int = 0,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Samples `num_decodes` continuations per example; temperature 0 is greedy.

  Filters are applied as Hugging Face does: logits / temperature, then top-k
  (`topk` > 0), then top-p (0 < `topp` < 1); both may be set. `topk=1` or
  `temperature=0` is greedy decoding.

  Returns:
    sequences [batch, num_decodes, max_decode_len] and their log-probabilities
    [batch, num_decodes] (sum over generated tokens up to and including EOS) under
    the model (`rescale_log_probs=False`) or under the filtered, tempered
    distribution that was sampled (`rescale_log_probs=True`, t5x's default), both
    sorted ascending.
  """
  length = _max_decode_len(inputs, max_decode_len)
  batch = inputs.shape[0]
  n = int(num_decodes)
  if n < 1:
    raise ValueError(f"num_decodes must be >= 1, got {num_decodes}")
  rows = batch * n
  if decode_rng is None:
    decode_rng = jax.random.PRNGKey(0)
  static_temperature = (
      float(temperature)
      if not isinstance(temperature, jax.core.Tracer)
      and np.ndim(temperature) == 0
      else None
  )
  greedy_only = (
      static_temperature is not None and static_temperature <= MIN_TEMPERATURE
  ) or topk == 1
  temperature = jnp.asarray(temperature, jnp.float32)
  if temperature.ndim == 1:  # one temperature per example
    temperature = flat_batch_beam_expand(temperature, n)[:, None]

  start = flat_batch_beam_expand(inputs[:, :1].astype(jnp.int32), n)
  sequences0 = jnp.zeros((rows, length + 1), jnp.int32).at[:, :1].set(start)
  cache = _expand_cache(cache, n, cache_offset)

  def pick(logits, rng):
    if greedy_only:
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return token, jax.nn.log_softmax(
          logits
      ) if not rescale_log_probs else jnp.zeros_like(logits)
    scaled = logits / jnp.maximum(temperature, MIN_TEMPERATURE)
    if topk and topk > 0:
      scaled = top_k_filter(scaled, topk)
    if topp and 0.0 < topp < 1.0:
      scaled = top_p_filter(scaled, topp)
    sampled = jax.random.categorical(rng, scaled).astype(jnp.int32)
    # A per-example temperature of 0 means greedy for that example.
    token = jnp.where(
        jnp.broadcast_to(temperature, (rows, 1))[:, 0] <= MIN_TEMPERATURE,
        jnp.argmax(logits, axis=-1).astype(jnp.int32),
        sampled,
    )
    return token, jax.nn.log_softmax(scaled if rescale_log_probs else logits)

  def cond(state):
    i, _, _, ended, _, _ = state
    return (i < length) & ~jnp.all(ended)

  def body(state):
    i, sequences, cache, ended, rng, log_prob = state
    rng, step_rng = jax.random.split(rng)
    cur_token = jax.lax.dynamic_slice_in_dim(sequences, i, 1, axis=1)
    logits, cache = _call_tokens_to_logits(
        tokens_to_logits,
        jnp.full((rows,), i, jnp.int32),
        sequences,
        cur_token,
        cache,
    )
    token, log_probs = pick(logits, step_rng)
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[
        :, 0
    ]
    log_prob = log_prob + jnp.where(ended, 0.0, token_log_prob)
    token = jnp.where(ended, 0, token)  # padding after EOS
    sequences = jax.lax.dynamic_update_slice_in_dim(
        sequences, token[:, None], i + 1, axis=1
    )
    ended = ended | (token == eos_id)
    return i + 1, sequences, cache, ended, rng, log_prob

  init = (
      jnp.array(0, jnp.int32),
      sequences0,
      cache,
      jnp.zeros((rows,), bool),
      decode_rng,
      jnp.zeros((rows,), jnp.float32),
  )
  _, sequences, _, _, _, log_prob = jax.lax.while_loop(cond, body, init)

  sequences = unflatten_beam_dim(sequences[:, 1:], batch, n)
  log_prob = unflatten_beam_dim(log_prob, batch, n)
  order = jnp.argsort(log_prob, axis=-1)
  return (
      jnp.take_along_axis(sequences, order[:, :, None], axis=1),
      jnp.take_along_axis(log_prob, order, axis=-1),
  )


def greedy(**kwargs) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy decoding (argmax each step); same arguments and results as `temperature_sample`.

  Scores are the model log-likelihoods of the decoded sequences.
  """
  kwargs.setdefault("num_decodes", 1)
  kwargs["temperature"] = 0.0
  kwargs.setdefault("rescale_log_probs", False)
  return temperature_sample(**kwargs)


# ------------------------------------------------------------------------------
# Beam search
# ------------------------------------------------------------------------------

LENGTH_PENALTIES = ("hf", "t5x")


def length_penalty_divisor(
    length: int, alpha: float, kind: str = "hf"
) -> float:
  """What a finished hypothesis' summed log-probability is divided by.

  kind="hf": `length ** alpha` (Hugging Face `length_penalty`; `length` counts the
      generated tokens including EOS, not the decoder start token).
  kind="t5x": `((5 + length) / 6) ** alpha` (GNMT brevity penalty used by t5x's
      `decoding.brevity_penalty`).
  """
  if kind == "hf":
    return float(length) ** float(alpha)
  if kind == "t5x":
    return ((5.0 + length) / 6.0) ** float(alpha)
  raise ValueError(
      f"length_penalty_type must be one of {LENGTH_PENALTIES}, got {kind!r}"
  )


def _divisor_table(max_len: int, alpha, kind: str) -> jnp.ndarray:
  """[max_len + 1] divisors by generated length; `alpha` may be traced (one compile for all alphas)."""
  if isinstance(alpha, jax.core.Tracer):
    if kind not in LENGTH_PENALTIES:
      raise ValueError(
          f"length_penalty_type must be one of {LENGTH_PENALTIES}, got {kind!r}"
      )
    n = jnp.maximum(jnp.arange(max_len + 1, dtype=jnp.float32), 1.0)
    base = n if kind == "hf" else (5.0 + n) / 6.0
    return base ** jnp.asarray(alpha, jnp.float32)
  # Computed in double and rounded once, as HF's Python-scalar division does.
  return jnp.asarray(
      np.array(
          [
              length_penalty_divisor(n, alpha, kind) if n else 1.0
              for n in range(max_len + 1)
          ],
          np.float64,
      ).astype(np.float32)
  )


def _gather_beams(x: jnp.ndarray, indices: jnp.ndarray) -> jnp.ndarray:
  """x [batch, beams, ...], indices [batch, k] -> [batch, k, ...]."""
  idx = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _best_continuations(
    tokens_to_logits, seqs, scores, cache, i, num_candidates
):
  """One decoder step for every beam, then the `num_candidates` best (beam, token) extensions.

  seqs: [batch, beams, len] with the current token at position i; scores: [batch, beams]
  summed log-probabilities. Returns candidate scores [batch, n], their sequences with the new
  token written at i + 1, the new tokens, the beams they extend, and the stepped cache (rows
  still in the old beam order).
  """
  batch, beams = scores.shape
  flat_seqs = flatten_beam_dim(seqs)
  cur_token = jax.lax.dynamic_slice_in_dim(flat_seqs, i, 1, axis=1)
  logits, cache = _call_tokens_to_logits(
      tokens_to_logits,
      jnp.full((batch * beams,), i, jnp.int32),
      flat_seqs,
      cur_token,
      cache,
  )
  vocab = logits.shape[-1]
  log_probs = unflatten_beam_dim(jax.nn.log_softmax(logits), batch, beams)
  log_probs = (log_probs + scores[:, :, None]).reshape(batch, beams * vocab)
  top_scores, top_idx = jax.lax.top_k(log_probs, num_candidates)
  top_beam = top_idx // vocab
  top_token = (top_idx % vocab).astype(jnp.int32)
  top_seqs = _gather_beams(seqs, top_beam)
  top_seqs = jax.lax.dynamic_update_slice_in_dim(
      top_seqs, top_token[:, :, None], i + 1, axis=2
  )
  return top_scores, top_seqs, top_token, top_beam, cache


def beam_search(
    *,
    inputs: jnp.ndarray,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    max_decode_len: Optional[int] = None,
    num_decodes: int = 4,
    alpha: float = 1.0,
    length_penalty_type: str = "hf",
    early_stopping: Union[bool, str] = True,
    procedure: str = "hf",
    cache_offset: int = 0,
    decode_rng: Optional[jax.Array] = None,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Beam search with `num_decodes` beams, as Hugging Face `generate(num_beams=...)`.

  Each step, the 2K best continuations of the K running beams are ranked by summed
  log-probability. Those among the first K that end in EOS (or reach
  `max_decode_len`) are offered to the example's K-best list of finished
  hypotheses, scored `sum_log_prob / length_penalty_divisor(len, alpha)`; the K best
  candidates that did not end keep running. With `early_stopping=True` an example
  is done once it has K finished hypotheses; `False` stops when the best running
  beam, scored at the current length, can no longer beat the worst finished one;
  `"never"` uses the best possible length for that bound (HF's definitions).

  `length_penalty_type="hf"` (default, for parity with HF and the released
  Tk-Instruct evaluation) divides by `len ** alpha`; `"t5x"` by t5x's brevity
  penalty `((5 + len) / 6) ** alpha`. `alpha` is HF's `length_penalty` (HF
  default 1.0; t5x's default 0.6). The penalty alone does not change the search.

  `procedure="t5x"` runs t5x's `decoding.beam_search` rule instead (use it with
  `length_penalty_type="t5x", alpha=0.6` for t5x's behaviour): every EOS
  candidate among the 2K is offered to the finished list, beams that reach
  `max_decode_len` without EOS are not (an example with no finished hypothesis
  returns its live beams and their summed log-probabilities), and decoding stops
  once, for every example, the best live beam scored at the maximum length
  cannot beat the worst finished one. `early_stopping` does not apply to it.

  Returns:
    sequences [batch, K, max_decode_len] and their scores [batch, K], ascending
    (best last).
  """
  del decode_rng  # deterministic
  length = _max_decode_len(inputs, max_decode_len)
  if int(num_decodes) < 1:
    raise ValueError(
        f"beam_search needs num_decodes (beams) >= 1, got {num_decodes}"
    )
  if early_stopping not in (True, False, "never"):
    raise ValueError(
        f"early_stopping must be True, False or 'never', got {early_stopping!r}"
    )
  divisors = _divisor_table(
      length, alpha, length_penalty_type
  )  # [length + 1], by generated length
  if procedure == "t5x":
    return _beam_search_t5x(
        inputs=inputs,
        cache=cache,
        tokens_to_logits=tokens_to_logits,
        eos_id=eos_id,
        length=length,
        k=int(num_decodes),
        alpha=alpha,
        kind=length_penalty_type,
        divisors=divisors,
        cache_offset=cache_offset,
    )
  if procedure != "hf":
    raise ValueError(
        f"beam_search procedure must be 'hf' or 't5x', got {procedure!r}"
    )
  batch = inputs.shape[0]
  k = int(num_decodes)
  candidates = (
      2 * k
  )  # one EOS token: HF keeps (1 + n_eos) * num_beams candidates
  neg = jnp.float32(NEG_INF)

  start = inputs[:, :1].astype(jnp.int32)
  running_seqs0 = (
      jnp.zeros((batch, k, length + 1), jnp.int32)
      .at[:, :, :1]
      .set(start[:, None, :])
  )
  # Only the first beam is live at the start, so the first step does not pick K copies.
  running_scores0 = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(neg)
  top_k_mask = jnp.arange(candidates) < k

  state0 = dict(
      i=jnp.array(0, jnp.int32),
      running_seqs=running_seqs0,
      running_scores=running_scores0,
      finished_seqs=running_seqs0,
      finished_scores=jnp.full((batch, k), neg, jnp.float32),
      finished_flags=jnp.zeros((batch, k), bool),
      improvable=jnp.ones((batch,), bool),
      done=jnp.array(False),
      cache=_expand_cache(cache, k, cache_offset),
  )

  def cond(s):
    return ~s["done"]

  def body(s):
    i = s["i"]
    # The 2K best continuations over all beams.
    top_scores, top_seqs, top_token, top_beam, cache = _best_continuations(
        tokens_to_logits,
        s["running_seqs"],
        s["running_scores"],
        s["cache"],
        i,
        candidates,
    )
    ends = (top_token == eos_id) | (i + 1 >= length)

    # K best continuations that did not end keep running.
    running_cand = top_scores + ends.astype(jnp.float32) * neg
    run_scores, run_idx = jax.lax.top_k(running_cand, k)
    running_seqs = _gather_beams(top_seqs, run_idx)
    parent = jnp.take_along_axis(top_beam, run_idx, axis=1)

    # Offer the ended ones among the first K to the finished list.
    just_finished = ends & top_k_mask[None, :]
    cand = top_scores / divisors[i + 1]
    full = jnp.all(s["finished_flags"], axis=-1, keepdims=True) & (
        early_stopping is True
    )
    cand = cand + full.astype(jnp.float32) * neg
    cand = cand + (~s["improvable"])[:, None].astype(jnp.float32) * neg
    cand = cand + (~just_finished).astype(jnp.float32) * neg
    merged_scores = jnp.concatenate([s["finished_scores"], cand], axis=1)
    merged_seqs = jnp.concatenate([s["finished_seqs"], top_seqs], axis=1)
    merged_flags = jnp.concatenate([s["finished_flags"], just_finished], axis=1)
    finished_scores, keep = jax.lax.top_k(merged_scores, k)
    finished_seqs = _gather_beams(merged_seqs, keep)
    finished_flags = jnp.take_along_axis(merged_flags, keep, axis=1)

    # Reorder the cache rows to follow their beams.
    flat_parent = (jnp.arange(batch)[:, None] * k + parent).reshape(-1)
    cache = _reorder_cache(cache, flat_parent, cache_offset)

    i = i + 1
    if (
        early_stopping == "never"
    ):  # HF: the best case is the longest sequence when alpha favours length
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

    open_beams = ~(jnp.all(finished_flags) & (early_stopping is True))
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
        cache=cache,
    )

  final = jax.lax.while_loop(cond, body, state0)
  # Finished lists are sorted best first; t5x returns best last.
  sequences = final["finished_seqs"][:, ::-1, 1:]
  scores = final["finished_scores"][:, ::-1]
  return sequences, scores


def _beam_search_t5x(
    *,
    inputs,
    cache,
    tokens_to_logits,
    eos_id,
    length,
    k,
    alpha,
    kind,
    divisors,
    cache_offset,
):
  """t5x's beam search rule (see `beam_search(procedure="t5x")`), same inputs and outputs."""
  batch = inputs.shape[0]
  candidates = 2 * k
  neg = jnp.float32(-1.0e7)  # t5x's NEG_INF
  start = inputs[:, :1].astype(jnp.int32)
  live_seqs0 = (
      jnp.zeros((batch, k, length + 1), jnp.int32)
      .at[:, :, :1]
      .set(start[:, None, :])
  )
  # t5x bounds live beams by the penalty at one past the maximum length (its dummy start token).
  if isinstance(alpha, jax.core.Tracer):
    base = (
        jnp.float32(length + 1)
        if kind == "hf"
        else (5.0 + jnp.float32(length + 1)) / 6.0
    )
    max_len_divisor = base ** jnp.asarray(alpha, jnp.float32)
  else:
    max_len_divisor = jnp.float32(
        length_penalty_divisor(length + 1, alpha, kind)
    )

  state0 = dict(
      i=jnp.array(0, jnp.int32),
      live_seqs=live_seqs0,
      live_scores=jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(neg),
      finished_seqs=live_seqs0,
      finished_scores=jnp.full((batch, k), neg, jnp.float32),
      finished_flags=jnp.zeros((batch, k), bool),
      cache=_expand_cache(cache, k, cache_offset),
  )

  def cond(s):
    best_live = (
        jnp.max(s["live_scores"], axis=1, keepdims=True) / max_len_divisor
    )
    worst_finished = jnp.where(
        s["finished_flags"],
        jnp.min(s["finished_scores"], axis=1, keepdims=True),
        neg,
    )
    terminated = jnp.all(worst_finished > best_live)
    return (s["i"] < length) & ~terminated

  def body(s):
    i = s["i"]
    top_scores, top_seqs, top_token, top_beam, cache = _best_continuations(
        tokens_to_logits,
        s["live_seqs"],
        s["live_scores"],
        s["cache"],
        i,
        candidates,
    )
    ended = top_token == eos_id

    live_scores, live_idx = jax.lax.top_k(
        top_scores + ended.astype(jnp.float32) * neg, k
    )
    live_seqs = _gather_beams(top_seqs, live_idx)
    parent = jnp.take_along_axis(top_beam, live_idx, axis=1)
    flat_parent = (jnp.arange(batch)[:, None] * k + parent).reshape(-1)
    cache = _reorder_cache(cache, flat_parent, cache_offset)

    new_scores = (
        top_scores / divisors[i + 1] + (~ended).astype(jnp.float32) * neg
    )
    merged_scores = jnp.concatenate([s["finished_scores"], new_scores], axis=1)
    finished_scores, keep = jax.lax.top_k(merged_scores, k)
    finished_seqs = _gather_beams(
        jnp.concatenate([s["finished_seqs"], top_seqs], axis=1), keep
    )
    finished_flags = jnp.take_along_axis(
        jnp.concatenate([s["finished_flags"], ended], axis=1), keep, axis=1
    )
    return dict(
        i=i + 1,
        live_seqs=live_seqs,
        live_scores=live_scores,
        finished_seqs=finished_seqs,
        finished_scores=finished_scores,
        finished_flags=finished_flags,
        cache=cache,
    )

  final = jax.lax.while_loop(cond, body, state0)
  any_finished = jnp.any(final["finished_flags"], axis=1)
  seqs = jnp.where(
      any_finished[:, None, None], final["finished_seqs"], final["live_seqs"]
  )
  scores = jnp.where(
      any_finished[:, None], final["finished_scores"], final["live_scores"]
  )
  # Both lists are sorted best first; return best last.
  return seqs[:, ::-1, 1:], scores[:, ::-1]
