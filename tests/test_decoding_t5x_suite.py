"""t5x's public decoding tests (t5x/decoding_test.py), restated against `tkx.decoding`.

Each test below checks the behaviour one of t5x's public tests checks, with the same
toy models and expected values, written for pytest. t5x's tests that call its private
helpers (`_temperature_sample_single_trial`, or mock them) are not ported as such; the
behaviours they cover are checked through the public `temperature_sample` at the end of
this file and in tests/test_decoding_t5x.py. t5x unrolls loops with `jax.disable_jit`
to count model calls; these tests count them at run time under one jit (faster).
"""

import functools
import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx import decoding

EOS = 1
NEG = float(decoding.NEG_INF)


def constant_logits(rows):
  """tokens_to_logits returning `rows` every step, counting its calls in `.calls`
  (at run time, so under jit too: t5x unrolls the loop with `jax.disable_jit`, slower).
  """
  logits = np.asarray(rows, np.float32)

  def count():
    tokens_to_logits.calls += 1

  def tokens_to_logits(state):
    jax.debug.callback(count)
    return logits, {}

  tokens_to_logits.calls = 0
  return tokens_to_logits


def sample(inputs, model, **kwargs):
  """`temperature_sample` under one jit (array arguments traced, the rest static)."""
  arrays = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray)}
  static = {k: v for k, v in kwargs.items() if k not in arrays}

  @jax.jit
  def run(inputs, arrays):
    return decoding.temperature_sample(
        inputs, {}, model, EOS, jax.random.PRNGKey(0), **arrays, **static
    )

  return run(inputs, arrays)


# Logits of probabilities (0.3, 0, 0.1, 0.6).
SKEWED = [[-1.2, -1e7, -2.3, -0.51]]
ALWAYS_3 = [-1e7, -1e7, -1e7, 0.0]


@pytest.mark.parametrize(
    "initial_index, calls",
    [
        (None, 6),
        (np.array([1, 2], np.int32), 4),
        (np.array([1, 1], np.int32), 5),
    ],
)
def test_max_decode_steps_count_from_the_prompt_end(initial_index, calls):
  """Four steps after each row's prompt; starting later in the prompt saves calls."""
  model = constant_logits([ALWAYS_3, ALWAYS_3])
  inputs = np.array(
      [[0, 2, 0, 0, 0, 0, 0, 0], [0, 2, 2, 0, 0, 0, 0, 0]], np.int32
  )
  seqs, scores = sample(
      inputs, model, initial_index=initial_index, topk=4, max_decode_steps=4
  )
  assert model.calls == calls
  np.testing.assert_array_equal(
      seqs, [[[2, 3, 3, 3, 3, 0, 0, 0]], [[2, 2, 3, 3, 3, 3, 0, 0]]]
  )
  np.testing.assert_array_equal(scores, [[0.0], [0.0]])


def test_rows_that_end_early_are_not_written_after_their_end():
  model = constant_logits([ALWAYS_3] * 3)
  inputs = np.array(
      [
          [0, 2, 0, 0, 0, 0, 0, 0],
          [0, 2, 2, 2, 2, 2, 2, 0],
          [0, 2, 2, 2, 0, 0, 0, 0],
      ],
      np.int32,
  )
  seqs, scores = sample(
      inputs,
      model,
      initial_index=np.array([1, 6, 0]),
      topk=4,
      max_decode_steps=4,
  )
  # Row 2 starts at 0: three calls to leave its prompt and four more to decode; row 0,
  # done after four, must not be written during the last three.
  assert model.calls == 7
  np.testing.assert_array_equal(
      seqs[:, 0],
      [
          [2, 3, 3, 3, 3, 0, 0, 0],
          [2, 2, 2, 2, 2, 2, 3, 3],
          [2, 2, 2, 3, 3, 3, 3, 0],
      ],
  )
  np.testing.assert_allclose(scores, [[0.0], [0.0], [0.0]])


def test_max_decode_steps_from_initial_index_docstring_example():
  model = constant_logits([[-1e7, -1e7, 0, -1e7], ALWAYS_3])
  inputs = np.array(
      [[0, 2, 0, 0, 0, 0, 0, 0], [0, 3, 4, 0, 0, 0, 0, 0]], np.int32
  )
  seqs, _ = sample(
      inputs, model, initial_index=np.array([1, 2]), topk=4, max_decode_steps=2
  )
  assert model.calls == 2
  np.testing.assert_array_equal(
      seqs[:, 0], [[2, 2, 2, 0, 0, 0, 0, 0], [3, 4, 3, 3, 0, 0, 0, 0]]
  )


def test_max_decode_steps_hard_limit_caps_the_steps():
  model = constant_logits([ALWAYS_3, ALWAYS_3])
  inputs = np.array(
      [[0, 2, 0, 0, 0, 0, 0, 0], [0, 2, 2, 0, 0, 0, 0, 0]], np.int32
  )
  seqs, scores = sample(
      inputs, model, topk=4, max_decode_steps=10, max_decode_steps_hard_limit=4
  )
  np.testing.assert_array_equal(
      seqs[:, 0], [[2, 3, 3, 3, 3, 0, 0, 0], [2, 2, 3, 3, 3, 3, 0, 0]]
  )
  np.testing.assert_array_equal(scores, [[0.0], [0.0]])


def test_topp_below_the_top_token_is_deterministic_after_temperature():
  inputs = np.zeros((1, 20), np.int32)
  seqs, scores = sample(inputs, constant_logits(SKEWED), topp=0.55, topk=0)
  np.testing.assert_array_equal(seqs, [[[3] * 20]])
  np.testing.assert_array_equal(scores, [[0.0]])
  # Temperature 0.8 first: (0.27, 0, 0.069, 0.65), so top-p 0.63 keeps token 3 alone.
  seqs, scores = sample(
      inputs, constant_logits(SKEWED), temperature=0.8, topp=0.63, topk=0
  )
  np.testing.assert_array_equal(seqs, [[[3] * 20]])
  np.testing.assert_array_equal(scores, [[0.0]])


def test_per_example_temperature_with_several_decodes():
  batch, decodes, length = 4, 2, 20
  rows = [
      [-1.2, -1e7, -2.3, -0.51],
      [-0.51, -1.2, -1e7, -2.3],
      [-1.2, -1e7, -0.51, -2.3],
      [-1.2, -0.51, -1e7, -2.3],
  ]
  model = constant_logits(
      np.repeat(np.array(rows, np.float32), decodes, axis=0)
  )
  seqs, scores = sample(
      np.zeros((batch, length), np.int32), model,
      temperature=np.array([0.5, 0, 0.3, 0.2]), topp=0.63, topk=0,
      num_decodes=decodes,
  )  # fmt: skip
  # Each example's most likely token, every step (example 3's is EOS, then padding).
  want = [[3] * length, [0] * length, [2] * length, [1] + [0] * (length - 1)]
  np.testing.assert_array_equal(
      seqs, np.repeat(np.array(want)[:, None], 2, axis=1)
  )
  np.testing.assert_array_equal(scores, np.zeros((batch, decodes)))


def test_temperature_topp_and_max_decode_steps_traced_under_jit():
  model = constant_logits(SKEWED)

  @jax.jit
  def decode(inputs, temperature, topp, max_decode_steps):
    return decoding.temperature_sample(
        inputs, {}, model, EOS, jax.random.PRNGKey(0),
        temperature=temperature, topp=topp, topk=0,
        max_decode_steps=max_decode_steps,
    )  # fmt: skip

  seqs, scores = decode(np.zeros((1, 20), np.int32), 0.8, 0.63, 10)
  np.testing.assert_array_equal(seqs, [[[3] * 10 + [0] * 10]])
  np.testing.assert_array_equal(scores, [[0.0]])


def test_sampled_logits_are_tempered_then_topp_masked():
  model = constant_logits([[-1.2, NEG, -2.3, -0.51]])
  seen = []

  def categorical(key, logits):
    jax.debug.callback(lambda x: seen.append(np.asarray(x)), logits)
    return jnp.zeros(logits.shape[:1], jnp.int32)

  with mock.patch.object(jax.random, "categorical", categorical):
    seqs, _ = sample(
        np.zeros((1, 1), np.int32), model, temperature=1.4, topp=0.7, topk=0
    )
  assert model.calls == 1
  np.testing.assert_array_equal(seqs, [[[0]]])
  np.testing.assert_array_almost_equal(
      seen[0], [[-1.2 / 1.4, NEG, NEG, -0.51 / 1.4]]
  )


def test_add_beam_dim_and_flat_batch_beam_expand():
  x = np.array([[0, 5, 1, 0], [0, 8, 6, 9]], np.int32)
  y = decoding.add_beam_dim(x, beam_size=3)
  assert y.shape == (2, 3, 4)
  np.testing.assert_array_equal(y, np.repeat(x[:, None], 3, axis=1))
  np.testing.assert_array_equal(
      decoding.flat_batch_beam_expand(x, beam_size=2), np.repeat(x, 2, axis=0)
  )


@pytest.mark.parametrize("batch, k", [(1, 16), (8, 16), (9, 11), (32, 11)])
def test_top_k_two_stage_equals_top_k(batch, k):
  values = np.random.RandomState(batch).permutation(2047 * k * batch)
  x = jnp.asarray(values.reshape(batch, -1), jnp.float32)
  got_values, got_indices = decoding.top_k_two_stage(x, k)
  want_values, want_indices = jax.lax.top_k(x, k)
  np.testing.assert_array_equal(got_values, want_values)
  np.testing.assert_array_equal(got_indices, want_indices)


def _nested_cache():
  return {
      "layers_0": {
          "cached_key": jnp.ones([3, 6]),
          "cached_values": jnp.ones([3, 6]),
          "cache_index": jnp.ones([3]),
      },
      "layers_1": {
          "relpos_bias": {"cached_bias": jnp.ones([1, 5, 3])},
          "self_attention": {
              "cached_key": jnp.ones([2, 7]),
              "cached_values": jnp.ones([5, 8]),
              "cache_index": jnp.array(1),
          },
          "encoder_decoder_attention": {
              "cached_key": jnp.ones([10, 12, 2]),
              "cached_values": jnp.ones([4, 7, 2]),
              "cache_index": jnp.ones([4, 5, 6]),
          },
      },
      "position_embedder": {"position_embedder_index": jnp.array(-1)},
  }


@pytest.mark.parametrize("apply_to_index", [False, True])
def test_cache_map_skips_shared_leaves_and_the_index_unless_asked(
    apply_to_index,
):
  cache = _nested_cache()
  mapped = decoding.cache_map(
      functools.partial(jnp.add, 4), cache, apply_to_index=apply_to_index
  )
  flat_in = jax.tree_util.tree_flatten_with_path(cache)[0]
  flat_out = dict(jax.tree_util.tree_flatten_with_path(mapped)[0])
  for path, value in flat_in:
    leaf = path[-1].key
    changed = leaf not in ("cached_bias", "position_embedder_index") and (
        apply_to_index or leaf != "cache_index"
    )
    np.testing.assert_array_equal(
        flat_out[path], value + 4 if changed else value
    )


def test_beam_search_finds_both_best_paths_of_a_markov_chain():
  """States PAD, A, B, START, END; a first-order chain whose A/B edge scores alternate
  sign, so START-AABBA-END and START-BBAAB-END tie for best (alpha 0: no penalty).
  """
  batch, beams, length, states = 2, 2, 7, 5
  ab = np.asarray(
      [
          [[1, -1], [-1, 1]],
          [[-1, 1], [1, -1]],
          [[1, -1], [-1, 1]],
          [[-1, 1], [1, -1]],
      ]
  )
  edges = np.full([6, states, states], NEG)
  edges[1:5, 1:3, 1:3] = ab
  edges[0, 3, 1:3] = 0  # START -> A or B
  edges[5, 1:3, 4] = 0  # A or B -> END
  edges[:, 0, :] = 0  # PAD -> anything
  edges = jnp.asarray(edges)
  first = jnp.asarray([NEG, NEG, NEG, 0, NEG])  # step 0 emits START

  def tokens_to_logits(state):
    step = state.cache["step"][:, 0].astype(jnp.int32)
    table = edges[jnp.maximum(0, step - 1)]  # [rows, from, to]
    logits = jnp.take_along_axis(table, state.cur_token[:, :, None], axis=1)[
        :, 0
    ]
    logits = jnp.where((step == 0)[:, None], first, logits)
    return logits, {"step": state.cache["step"] + 1}

  seqs, _ = decoding.beam_search(
      inputs=np.zeros([batch, length]),
      cache={"step": jnp.zeros((batch, 1))},
      tokens_to_logits=tokens_to_logits,
      eos_id=4,
      num_decodes=beams,
      alpha=0.0,
      max_decode_len=length,
  )
  names = ["PAD", "A", "B", "START-", "-END"]
  found = [
      "".join(names[t] for t in np.asarray(seqs)[0, i]) for i in range(beams)
  ]
  assert found == ["START-AABBA-END", "START-BBAAB-END"]


def _two_token_model(beams, extra=0):
  """Example 0 prefers token 2 (then 3), example 1 token 3 (then 2), every step."""
  rows = np.array(
      [[-1e7, -1e10, -0.1, -0.9] + [-1e4] * extra,
       [-1e7, -1e10, -0.9, -0.1] + [-1e4] * extra],
      np.float32,
  )  # fmt: skip

  def tokens_to_logits(state):
    return np.repeat(rows, beams, axis=0), {}

  return tokens_to_logits, rows


def test_beam_search_forces_each_examples_prompt():
  beams = 2
  model, rows = _two_token_model(beams, extra=4)
  inputs = np.array([[0, 7, 0, 0, 0], [0, 4, 5, 0, 0]], np.int32)
  seqs, scores = decoding.beam_search(
      inputs, {}, model, EOS, num_decodes=beams, alpha=0
  )
  assert np.all(np.diff(np.asarray(scores)) >= 0)  # best last
  want = np.array(
      [[[7, 3, 2, 2, 2], [7, 2, 2, 2, 2]], [[4, 5, 2, 3, 3], [4, 5, 3, 3, 3]]]
  )
  np.testing.assert_array_equal(seqs, want)
  # Prompt tokens score 0; every other token its log-probability.
  log_probs = np.asarray(jax.nn.log_softmax(rows))
  prompt_len = [1, 2]
  want_scores = [
      [sum(log_probs[b, t] for t in beam[prompt_len[b] :]) for beam in want[b]]
      for b in range(2)
  ]
  np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_beam_search_without_prompt():
  beams = 2
  model, _ = _two_token_model(beams)
  seqs, scores = decoding.beam_search(
      np.zeros((2, 5), np.int32), {}, model, EOS, num_decodes=beams
  )
  assert np.all(np.diff(np.asarray(scores)) >= 0)
  np.testing.assert_array_equal(
      seqs,
      [[[3, 2, 2, 2, 2], [2, 2, 2, 2, 2]], [[2, 3, 3, 3, 3], [3, 3, 3, 3, 3]]],
  )


# Behaviours t5x checks through its private `_temperature_sample_single_trial`, checked
# here through `temperature_sample` (one decode per example: the same loop).
def test_zero_temperature_is_the_exact_argmax_of_close_large_logits():
  model = constant_logits(
      [[1700.47, 1700.48, 1700.51, 1700.45], [3.2, 4.8, -5.3, 5.6]]
  )
  seqs, _ = sample(np.zeros((2, 3), np.int32), model, topk=4, temperature=0.0)
  np.testing.assert_array_equal(seqs[:, 0], [[2, 2, 2], [3, 3, 3]])


def test_an_eos_in_the_prompt_does_not_end_the_row():
  model = constant_logits([[-1e7, -1e7, 0, -1e7], ALWAYS_3])
  inputs = np.array([[0, 5, 6, 1, 0], [0, 8, 1, 0, 0]], np.int32)
  seqs, _ = sample(inputs, model, topk=1)
  np.testing.assert_array_equal(seqs[:, 0], [[5, 6, 1, 2, 2], [8, 1, 3, 3, 3]])


@pytest.mark.parametrize("rescale", [True, False])
def test_greedy_log_probs_count_the_generated_tokens_only(rescale):
  # p(2) = 0.6, p(3) = 0.4; the prompt 2 2 3 is forced, then two tokens are generated.
  model = constant_logits([[-1e7, -1e7, math.log(0.6), math.log(0.4)]])
  inputs = np.array([[0, 2, 2, 3, 0, 0]], np.int32)
  seqs, scores = sample(inputs, model, topk=1, rescale_log_probs=rescale)
  np.testing.assert_array_equal(seqs[:, 0], [[2, 2, 3, 2, 2, 2]])
  # Rescaled to top-1 the greedy choice is certain; otherwise log .6 per generated token.
  want = 0.0 if rescale else 3 * math.log(0.6)
  np.testing.assert_allclose(scores, [[want]], atol=1e-5)
