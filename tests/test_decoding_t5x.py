"""tkx.decoding keeps t5x's decoding interface: signatures, defaults and documented behaviour.

Hand-checkable problems: models whose next-token distribution is a fixed table, so the
expected beams, scores and samples can be worked out on paper.
"""

import inspect
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx import decoding

EOS = 1
# Vocabulary: 0 pad, 1 EOS, 2 "A", 3 "B". Every step: p(A) = .6, p(B) = .3, p(EOS) = .1.
LOGP = {2: math.log(0.6), 3: math.log(0.3), EOS: math.log(0.1)}
FIXED_LOGITS = np.array(
    [decoding.NEG_INF, LOGP[EOS], LOGP[2], LOGP[3]], np.float32
)


def fixed_model(logits=FIXED_LOGITS, calls=None):
  """tokens_to_logits returning the same logits for every row and step."""
  logits = jnp.asarray(logits, jnp.float32)

  def tokens_to_logits(state):
    if calls is not None:
      calls.append(np.asarray(state.cur_token).ravel().tolist())
    rows = state.cur_token.shape[0]
    return jnp.broadcast_to(logits, (rows, logits.shape[-1])), state.cache

  return tokens_to_logits


def counting_model(vocab=7):
  """Logits depend on the fed token and on the sum of the tokens fed so far (kept in the
  cache per row), so a prefilled cache can be checked against teacher forcing.
  """
  table = jnp.asarray(
      np.random.RandomState(0).randn(vocab, vocab) * 3, jnp.float32
  )
  hist = jnp.asarray(np.random.RandomState(1).randn(5, vocab) * 3, jnp.float32)

  def tokens_to_logits(state):
    tok = state.cur_token[:, 0]
    cache = state.cache
    logits = table[tok] + hist[cache["token_sum"] % 5]
    return logits, {
        "token_sum": cache["token_sum"] + tok,
        "cache_index": cache["cache_index"] + 1,
    }

  return tokens_to_logits


def test_signatures_are_t5xs():
  def params(fn):
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]

  assert params(decoding.temperature_sample) == [
      "inputs", "cache", "tokens_to_logits", "eos_id", "decode_rng",
      "num_decodes", "temperature", "topk", "topp", "cache_offset",
      "initial_index", "max_decode_steps", "max_decode_steps_hard_limit",
      "rescale_log_probs", "state_callback_fn", "logit_callback_fn",
  ]  # fmt: skip
  assert params(decoding.beam_search)[:9] == [
      "inputs", "cache", "tokens_to_logits", "eos_id", "num_decodes", "alpha",
      "max_decode_len", "decode_rng", "cache_offset",
  ]  # fmt: skip
  defaults = {
      name: p.default
      for name, p in inspect.signature(
          decoding.temperature_sample
      ).parameters.items()
  }
  assert (
      defaults["topk"],
      defaults["topp"],
      defaults["rescale_log_probs"],
  ) == (
      1,
      0.0,
      True,
  )
  assert (
      inspect.signature(decoding.beam_search).parameters["alpha"].default == 0.6
  )
  assert float(decoding.NEG_INF) == -1.0e7


def test_t5x_beam_search_hand_checked():
  """K=2, two steps. Step 1 finishes [EOS] (log .1, penalty 1). Step 2's four best are AA,
  AB, BA, BB: AE (log .06) is not among them, and beams that reach the length without EOS
  are never offered to the finished list, so t5x returns [EOS] although AA is likelier.
  Hugging Face's procedure scores AA at the length limit instead."""
  inputs = np.zeros((1, 2), np.int32)
  seqs, scores = decoding.beam_search(
      inputs, {}, fixed_model(), EOS, 2
  )  # positional
  assert np.asarray(seqs[0, -1]).tolist() == [EOS, 0]
  np.testing.assert_allclose(float(scores[0, -1]), LOGP[EOS], rtol=1e-6)
  assert float(scores[0, 0]) <= -1e6  # no second finished hypothesis
  hf_seqs, hf_scores = decoding.hf_beam_search(
      inputs, {}, fixed_model(), EOS, 2
  )
  assert np.asarray(hf_seqs[0, -1]).tolist() == [2, 2]
  np.testing.assert_allclose(
      float(hf_scores[0, -1]), 2 * LOGP[2] / 2, rtol=1e-6
  )


def test_t5x_beam_search_brevity_penalty_and_prompt():
  """Prompt B (teacher-forced, scored 0), then: step 2 finishes B-EOS with log .1 divided
  by the brevity penalty at length 2, ((5 + 2) / 6) ** alpha."""
  for alpha in (0.6, 0.0, 2.0):
    seqs, scores = decoding.beam_search(
        np.array([[0, 3, 0]], np.int32), {}, fixed_model(), EOS, 2, alpha
    )
    assert np.asarray(seqs[0, -1]).tolist() == [3, EOS, 0]
    want = LOGP[EOS] / ((5 + 2) / 6) ** alpha
    np.testing.assert_allclose(float(scores[0, -1]), want, rtol=1e-5)
    assert float(decoding.brevity_penalty(alpha, 2)) == pytest.approx(
        ((5 + 2) / 6) ** alpha
    )


def test_beam_search_initial_index_on_a_prefilled_cache_equals_teacher_forcing():
  model = counting_model()
  prompt = np.array(
      [[0, 4, 2, 0, 0, 0, 0, 0], [0, 3, 5, 0, 0, 0, 0, 0]], np.int32
  )
  empty = {"token_sum": jnp.zeros((2,), jnp.int32), "cache_index": jnp.array(0)}
  forced = decoding.beam_search(prompt, empty, model, EOS, 3)
  # The cache after feeding the start token and the first prompt token; decoding starts
  # by feeding the token at position 2.
  prefilled = {
      "token_sum": jnp.asarray(prompt[:, :2].sum(1), jnp.int32),
      "cache_index": jnp.array(2),
  }
  resumed = decoding.beam_search(
      prompt, prefilled, model, EOS, 3, initial_index=jnp.array([2, 2])
  )
  np.testing.assert_array_equal(resumed[0], forced[0])
  np.testing.assert_allclose(resumed[1], forced[1], rtol=1e-6)
  assert (np.asarray(forced[0])[:, :, :2] == prompt[:, None, 1:3]).all()
  with pytest.raises(ValueError, match="same for every example"):
    decoding.beam_search(prompt, prefilled, model, EOS, 3, initial_index=[1, 2])


def test_beam_search_min_log_prob_stops_when_no_live_beam_is_above_it():
  calls = []
  with jax.disable_jit():
    decoding.beam_search(
        np.zeros((1, 6), np.int32),
        {},
        fixed_model(calls=calls),
        EOS,
        2,
        min_log_prob=-1.0,
    )
  # Live beams: A (-.51) after step 1; AA (-1.02) and AB/BA after step 2: all below -1.
  assert len(calls) == 2


def test_greedy_is_topk_1_and_prompt_is_teacher_forced():
  model = counting_model()
  inputs = np.array([[0, 4, 6, 0, 0, 0], [0, 3, 0, 0, 0, 0]], np.int32)
  cache = {"token_sum": jnp.zeros((2,), jnp.int32), "cache_index": jnp.array(0)}
  seqs, scores = decoding.temperature_sample(inputs, cache, model, EOS)
  # Reference: feed the prompt, then argmax, by hand.
  for row, prompt in zip(np.asarray(seqs[:, 0]), inputs):
    fed, out = [0], []
    for pos in range(1, 7):
      logits, _ = model(
          decoding.DecodingState(
              cur_index=None,
              sequences=None,
              cur_token=jnp.array([[fed[-1]]]),
              cache={
                  "token_sum": jnp.array([sum(fed[:-1])]),
                  "cache_index": jnp.array(0),
              },
          )
      )
      token = (
          int(prompt[pos])
          if pos < 6 and prompt[pos]
          else int(jnp.argmax(logits))
      )
      out.append(token)
      fed.append(token)
      if token == EOS and not (pos < 6 and prompt[pos]):
        break
    out += [0] * (6 - len(out))
    assert row.tolist() == out
  np.testing.assert_array_equal(
      scores, 0.0
  )  # rescale_log_probs: greedy is certain


def test_max_decode_steps_counts_after_the_prompt():
  inputs = np.array([[0, 3, 0, 0, 0, 0], [0, 3, 3, 3, 0, 0]], np.int32)
  no_eos = FIXED_LOGITS.copy()
  no_eos[EOS] = decoding.NEG_INF
  seqs, _ = decoding.temperature_sample(
      inputs, {}, fixed_model(no_eos), EOS, max_decode_steps=2
  )
  assert np.asarray(seqs[:, 0]).tolist() == [
      [3, 2, 2, 0, 0, 0],
      [3, 3, 3, 2, 2, 0],
  ]
  capped, _ = decoding.temperature_sample(
      inputs,
      {},
      fixed_model(no_eos),
      EOS,
      max_decode_steps=5,
      max_decode_steps_hard_limit=1,
  )
  assert np.asarray(capped[:, 0]).tolist() == [
      [3, 2, 0, 0, 0, 0],
      [3, 3, 3, 2, 0, 0],
  ]


def test_same_rng_gives_t5xs_samples():
  """t5x's use of the key: each step splits it in two, samples with the first half
  (one categorical draw over the whole [rows, vocab] batch) and carries the second.
  """
  logits = jnp.asarray(np.random.RandomState(3).randn(4, 9), jnp.float32)
  key = jax.random.PRNGKey(42)
  seqs, _ = decoding.temperature_sample(
      np.zeros((4, 5), np.int32),
      {},
      lambda state: (logits, state.cache),
      eos_id=99,
      decode_rng=key,
      topk=0,
      temperature=1.3,
  )
  want = []
  for _ in range(5):
    step_key, key = jax.random.split(key)
    want.append(np.asarray(jax.random.categorical(step_key, logits / 1.3)))
  np.testing.assert_array_equal(np.asarray(seqs[:, 0]), np.stack(want, 1))


def test_top_p_keeps_the_tie_at_the_cutoff_and_refuses_topk_with_it():
  logits = jnp.log(jnp.array([[0.4, 0.2, 0.2, 0.2]]))
  # 0.4 + 0.2 reaches 0.5 at a token tied with two others: t5x keeps all three.
  assert (np.asarray(decoding.topp_mask(logits, 0.5)) != decoding.NEG_INF).all()
  kept = np.asarray(decoding.topp_mask(logits, 0.3)) != decoding.NEG_INF
  assert kept.tolist() == [[True, False, False, False]]
  # Off (0) changes nothing; top-k keeps ties too.
  np.testing.assert_array_equal(
      decoding.topp_mask(logits, decoding.TOPP_OFF), logits
  )
  assert (np.asarray(decoding.topk_mask(logits, 2)) != decoding.NEG_INF).all()
  with pytest.raises(ValueError, match="at most one of topk and topp"):
    decoding.temperature_sample(
        np.zeros((1, 3), np.int32), {}, fixed_model(), EOS, topk=2, topp=0.9
    )


def test_dynamic_topp_under_jit():
  # p = (0.3, 0, 0.1, 0.6): any topp under 0.6 keeps only token 3.
  logits = np.log(np.array([0.3, 1e-30, 0.1, 0.6], np.float32))

  @jax.jit
  def decode(topp, key):
    return decoding.temperature_sample(
        np.zeros((1, 8), np.int32),
        {},
        fixed_model(logits),
        EOS,
        key,
        topk=0,
        topp=topp,
    )

  seqs, scores = decode(jnp.float32(0.55), jax.random.PRNGKey(0))
  assert np.asarray(seqs).ravel().tolist() == [3] * 8
  np.testing.assert_allclose(scores, 0.0, atol=1e-6)
  # A traced 0 is off: the same samples as without top-p.
  off, _ = decode(jnp.float32(0.0), jax.random.PRNGKey(1))
  plain, _ = decoding.temperature_sample(
      np.zeros((1, 8), np.int32),
      {},
      fixed_model(logits),
      EOS,
      jax.random.PRNGKey(1),
      topk=0,
  )
  np.testing.assert_array_equal(off, plain)


def test_state_and_logit_callbacks():
  inputs = np.zeros((2, 5), np.int32)

  def logit_callback_fn(logits, state):
    # Row 0 always picks B; row 1 picks A until step 2, then EOS.
    forced = jnp.where(
        (jnp.arange(2) == 0) | (state.step < 2), jnp.array([3, 2]), EOS
    )
    return jnp.where(
        jnp.arange(logits.shape[-1]) == forced[:, None], 0.0, decoding.NEG_INF
    )

  seqs, _ = decoding.temperature_sample(
      inputs, {}, fixed_model(), EOS, logit_callback_fn=logit_callback_fn
  )
  assert np.asarray(seqs[:, 0]).tolist() == [[3, 3, 3, 3, 3], [2, 2, EOS, 0, 0]]

  def state_callback_fn(state):
    # Writes EOS right after the first generated token of every row.
    i = state.cur_index
    first_token_written = i == 1
    sequences = jnp.where(
        first_token_written[:, None]
        & (jnp.arange(state.sequences.shape[1]) == 2)[None, :],
        EOS,
        state.sequences,
    )
    return state.replace(sequences=sequences)

  seqs, _ = decoding.temperature_sample(
      inputs, {}, fixed_model(), EOS, state_callback_fn=state_callback_fn
  )
  assert np.asarray(seqs[:, 0]).tolist() == [[2, EOS, 0, 0, 0]] * 2


def test_beam_helpers_follow_t5x():
  x = jnp.arange(6).reshape(2, 3)
  assert decoding.add_beam_dim(x, 2).shape == (2, 2, 3)
  flat = decoding.flat_batch_beam_expand(x, 2)
  assert np.asarray(flat)[:, 0].tolist() == [0, 0, 3, 3]
  np.testing.assert_array_equal(
      decoding.unflatten_beam_dim(flat, 2, 2), decoding.add_beam_dim(x, 2)
  )
  y = jnp.zeros((5, 2, 3, 4))
  assert decoding.flatten_beam_dim(y, offset=1).shape == (5, 6, 4)
  cache = {
      "a": {"cached_key": jnp.ones((2, 3)), "cache_index": jnp.array(4)},
      "relpos": {"cached_bias": jnp.ones((1, 2))},
  }
  plus = decoding.cache_map(lambda v: v + 1, cache)
  assert float(plus["a"]["cached_key"][0, 0]) == 2.0
  assert int(plus["a"]["cache_index"]) == 4
  assert float(plus["relpos"]["cached_bias"][0, 0]) == 1.0
  with_index = decoding.cache_map(lambda v: v + 1, cache, apply_to_index=True)
  assert int(with_index["a"]["cache_index"]) == 5


def test_t5x_style_gin_binding_of_beam_search_alpha_takes_effect():
  """t5x gin files (dynamic registration) bind `decoding.beam_search.alpha`."""
  gin.clear_config()
  try:
    gin.parse_config(
        "from __gin__ import dynamic_registration\n"
        "from tkx import decoding\n"
        "decoding.beam_search.alpha = 0.0\n"
    )
    configured = gin.get_configurable(decoding.beam_search)
    _, scores = configured(
        np.array([[0, 3, 0]], np.int32), {}, fixed_model(), EOS, 2
    )
  finally:
    gin.clear_config()
  # alpha 0: no brevity penalty, B-EOS scores log .1 exactly (0.6 would divide it).
  np.testing.assert_allclose(float(scores[0, -1]), LOGP[EOS], rtol=1e-6)


def test_sampling_initial_index_on_a_prefilled_cache_equals_teacher_forcing():
  model = counting_model()
  prompt = np.array([[0, 4, 2, 5, 0, 0, 0], [0, 3, 0, 0, 0, 0, 0]], np.int32)
  empty = {"token_sum": jnp.zeros((2,), jnp.int32), "cache_index": jnp.array(0)}
  forced, forced_scores = decoding.temperature_sample(
      prompt, empty, model, EOS, num_decodes=2, rescale_log_probs=False
  )
  # Rows start at their last prompt token; the cache (with a [batch] index, as t5x
  # requires) holds the tokens before it.
  initial_index = np.array([3, 1], np.int32)
  prefilled = {
      "token_sum": jnp.asarray(
          [prompt[b, : initial_index[b]].sum() for b in range(2)], jnp.int32
      ),
      "cache_index": jnp.asarray(initial_index),
  }
  resumed, resumed_scores = decoding.temperature_sample(
      prompt,
      prefilled,
      model,
      EOS,
      num_decodes=2,
      initial_index=initial_index,
      rescale_log_probs=False,
  )
  np.testing.assert_array_equal(resumed, forced)
  np.testing.assert_allclose(resumed_scores, forced_scores, rtol=1e-6)


def test_cache_offset_for_scanned_layers():
  """With scanned layers the cache has a leading layers axis: batch is axis 1."""
  flat_model = counting_model()

  def layered_model(state):
    cache = state.cache
    logits, new = flat_model(
        state.replace(
            cache={
                "token_sum": cache["token_sum"][0],
                "cache_index": cache["cache_index"][0],
            }
        )
    )
    return logits, {
        "token_sum": jnp.stack([new["token_sum"]] * 2),
        "cache_index": jnp.stack([new["cache_index"]] * 2),
    }

  inputs = np.zeros((2, 6), np.int32)
  flat_cache = {
      "token_sum": jnp.zeros((2,), jnp.int32),
      "cache_index": jnp.array(0),
  }
  layered_cache = {
      "token_sum": jnp.zeros((2, 2), jnp.int32),
      "cache_index": jnp.zeros((2,), jnp.int32),
  }
  # Each search jitted whole (one program, not op by op): the same decodes.
  for search in (decoding.beam_search, decoding.hf_beam_search):
    want = jax.jit(lambda x, c: search(x, c, flat_model, EOS, 3))(
        inputs, flat_cache
    )
    got = jax.jit(
        lambda x, c: search(x, c, layered_model, EOS, 3, cache_offset=1)
    )(inputs, layered_cache)
    np.testing.assert_array_equal(got[0], want[0])
  want = jax.jit(
      lambda x, c: decoding.temperature_sample(
          x, c, flat_model, EOS, num_decodes=3
      )
  )(inputs, flat_cache)
  got = jax.jit(
      lambda x, c: decoding.temperature_sample(
          x, c, layered_model, EOS, num_decodes=3, cache_offset=1
      )
  )(inputs, layered_cache)
  np.testing.assert_array_equal(got[0], want[0])
