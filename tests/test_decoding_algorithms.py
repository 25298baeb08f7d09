"""tkx.decoding on a toy cached "model", against plain-Python references of the same rules.

The toy model's next-token logits depend on the current token, on the step (the
shared scalar `cache_index`) and on the sum of the tokens fed so far (a per-row
cache entry). So a beam search that reorders or expands the cache wrongly, or
feeds the wrong token, gives different sequences than the reference.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx import decoding

V = 13
EOS = 1
MAX_LEN = 9


def make_toy(seed):
  rng = np.random.RandomState(seed)
  table = rng.randn(V, V) * 2.0
  table[:, EOS] += 1.0  # sequences end at varied lengths
  pos_table = rng.randn(MAX_LEN + 2, V)
  hist = rng.randn(7, V)
  return (
      table.astype(np.float32),
      pos_table.astype(np.float32),
      hist.astype(np.float32),
  )


def toy_logits_np(toy, prefix):
  """Reference: logits after feeding `prefix` (start token first), as the cached model computes them."""
  table, pos_table, hist = toy
  step = len(prefix) - 1
  history = sum(prefix[:-1]) % 7
  return (table[prefix[-1]] + pos_table[step] + hist[history]).astype(
      np.float64
  )


def toy_tokens_to_logits(*toys):
  """One batch row per toy model (row b uses toys[b % len(toys)]), so one compile covers several."""
  table, pos_table, hist = (jnp.asarray(np.stack(t)) for t in zip(*toys))

  def tokens_to_logits(state):
    cache = state.cache
    tok = state.cur_token[:, 0]
    m = cache["model_id"]
    logits = (
        table[m, tok]
        + pos_table[m, cache["cache_index"]]
        + hist[m, cache["token_sum"] % 7]
    )
    return logits, {
        "token_sum": cache["token_sum"] + tok,
        "cache_index": cache["cache_index"] + 1,
        "model_id": m,
    }

  return tokens_to_logits


def toy_cache(batch, num_models=1):
  return {
      "token_sum": jnp.zeros((batch,), jnp.int32),
      "cache_index": jnp.array(0, jnp.int32),
      "model_id": jnp.arange(batch, dtype=jnp.int32) % num_models,
  }


def log_softmax(x):
  x = x - x.max()
  return x - math.log(np.exp(x).sum())


def ref_greedy(toy, start, length):
  seq = [start]
  for _ in range(length):
    tok = int(np.argmax(toy_logits_np(toy, seq)))
    seq.append(tok)
    if tok == EOS:
      break
  out = seq[1:]
  return out + [0] * (length - len(out))


def ref_beam(toy, start, k, length, alpha, kind="hf", early_stopping=True):
  """Hugging Face's beam search rule, one example, written as plain loops."""
  pen = (
      (lambda n: n**alpha)
      if kind == "hf"
      else (lambda n: ((5.0 + n) / 6.0) ** alpha)
  )
  running = [((start,), 0.0)]  # only one live beam at the start
  finished = []  # (score, seq)
  improvable = True
  for step in range(length):
    cands = []
    for seq, score in running:
      lp = log_softmax(toy_logits_np(toy, list(seq)))
      cands += [(score + lp[t], seq + (t,)) for t in range(V)]
    cands.sort(key=lambda c: -c[0])
    top = cands[: 2 * k]
    was_full = len(finished) == k
    new_running = []
    for rank, (score, seq) in enumerate(top):
      ended = seq[-1] == EOS or step + 1 >= length
      if ended:
        if (
            rank < k
            and not (was_full and early_stopping is True)
            and improvable
        ):
          finished.append((score / pen(step + 1), seq))
      elif len(new_running) < k:
        new_running.append((seq, score))
    finished = sorted(finished, key=lambda f: -f[0])[:k]
    running = new_running
    if step + 1 >= length:
      break
    if len(finished) == k:
      if early_stopping is True:
        break
      best_len = (
          length if (early_stopping == "never" and alpha > 0) else step + 1
      )
      if running[0][1] / pen(best_len) <= finished[-1][0]:
        improvable = False
        break
  best = list(finished[0][1][1:])
  best = best[: best.index(EOS) + 1] if EOS in best else best
  return best + [0] * (length - len(best)), finished[0][0]


def ref_beam_t5x(toy, start, k, length, alpha):
  """t5x's beam search rule (t5x/decoding.py), one example, written as plain loops."""
  pen = lambda n: ((5.0 + n) / 6.0) ** alpha  # noqa: E731
  live = [((start,), 0.0)]
  finished = []  # (score, seq)
  for step in range(length):
    best_live = max(score for _, score in live) / pen(length + 1)
    if len(finished) == k and min(f[0] for f in finished) > best_live:
      break
    cands = []
    for seq, score in live:
      lp = log_softmax(toy_logits_np(toy, list(seq)))
      cands += [(score + lp[t], seq + (t,)) for t in range(V)]
    cands.sort(key=lambda c: -c[0])
    top = cands[: 2 * k]
    finished += [
        (score / pen(step + 1), seq) for score, seq in top if seq[-1] == EOS
    ]
    finished = sorted(finished, key=lambda f: -f[0])[:k]
    live = [(seq, score) for score, seq in top if seq[-1] != EOS][:k]
  best_score, best = finished[0] if finished else (live[0][1], live[0][0])
  best = list(best[1:])
  return best + [0] * (length - len(best)), best_score


@pytest.mark.parametrize("alpha", [0.6, 1.0])
def test_t5x_procedure_matches_t5x_rule_and_differs_from_hf(alpha):
  k, toys = 3, [make_toy(seed) for seed in range(8)]
  batch = len(toys)
  args = (jnp.zeros((batch, MAX_LEN), jnp.int32),)
  kwargs = dict(
      tokens_to_logits=toy_tokens_to_logits(*toys),
      eos_id=EOS,
      num_decodes=k,
      alpha=alpha,
  )
  seqs, scores = decoding.beam_search(
      *args, cache=toy_cache(batch, len(toys)), **kwargs
  )
  hf_seqs, _ = decoding.hf_beam_search(
      *args, cache=toy_cache(batch, len(toys)), **kwargs
  )
  differs = 0
  for b in range(batch):
    want, want_score = ref_beam_t5x(toys[b], 0, k, MAX_LEN, alpha)
    assert np.asarray(seqs[b, -1]).tolist() == want, b
    np.testing.assert_allclose(float(scores[b, -1]), want_score, rtol=1e-4)
    differs += np.asarray(hf_seqs[b, -1]).tolist() != want
  assert differs > 0  # the two rules are not the same search


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_matches_reference_and_stops_at_eos(seed):
  toy = make_toy(seed)
  batch = 6
  inputs = jnp.zeros((batch, 1), jnp.int32)
  fn = jax.jit(
      lambda c: decoding.greedy(
          inputs=inputs,
          cache=c,
          tokens_to_logits=toy_tokens_to_logits(toy),
          eos_id=EOS,
          max_decode_len=MAX_LEN,
      )
  )
  seqs, scores = fn(toy_cache(batch))
  assert seqs.shape == (batch, 1, MAX_LEN) and scores.shape == (batch, 1)
  want = ref_greedy(toy, 0, MAX_LEN)
  for row in np.asarray(seqs[:, 0]):
    assert row.tolist() == want
  # Score = model log-likelihood of the decoded tokens up to EOS.
  seq, lp = [0], 0.0
  for tok in want:
    if tok == 0 and EOS in seq:
      break
    lp += log_softmax(toy_logits_np(toy, seq))[tok]
    seq.append(tok)
  np.testing.assert_allclose(np.asarray(scores[:, 0]), lp, rtol=1e-4)


@pytest.mark.parametrize(
    "alpha,kind,early",
    [
        (0.6, "hf", True),
        (1.0, "hf", True),
        (0.0, "hf", True),
        (2.0, "hf", True),
        (0.6, "t5x", True),
        (1.0, "hf", False),
        (1.0, "hf", "never"),
    ],
)
def test_beam_search_matches_reference(alpha, kind, early):
  k, seeds = 3, range(6)
  toys = [make_toy(seed) for seed in seeds]
  batch = 2 * len(toys)
  seqs, scores = decoding.hf_beam_search(
      inputs=jnp.zeros((batch, 1), jnp.int32),
      cache=toy_cache(batch, len(toys)),
      tokens_to_logits=toy_tokens_to_logits(*toys),
      eos_id=EOS,
      max_decode_len=MAX_LEN,
      num_decodes=k,
      alpha=alpha,
      length_penalty=decoding.LengthPenalty.parse(kind),
      early_stopping=early,
  )
  assert seqs.shape == (batch, k, MAX_LEN)
  lengths = set()
  for b in range(batch):
    want, want_score = ref_beam(
        toys[b % len(toys)], 0, k, MAX_LEN, alpha, kind, early
    )
    got = np.asarray(seqs[b, -1]).tolist()  # best last
    assert got == want, (b, got, want)
    np.testing.assert_allclose(float(scores[b, -1]), want_score, rtol=1e-4)
    lengths.add(want.index(EOS) if EOS in want else MAX_LEN)
  assert len(lengths) > 1  # the toy exercises both EOS and max-length endings
  # Scores come sorted ascending (best last).
  assert np.all(np.diff(np.asarray(scores), axis=1) >= 0)


@pytest.mark.float_order
@pytest.mark.parametrize("procedure", list(decoding.BeamProcedure))
def test_beam_search_traced_alpha_equals_static_alpha(procedure):
  toy = make_toy(2)
  kwargs = dict(
      inputs=jnp.zeros((2, MAX_LEN), jnp.int32),
      tokens_to_logits=toy_tokens_to_logits(toy),
      eos_id=EOS,
      num_decodes=4,
  )
  search = procedure.decode_fn
  traced = jax.jit(lambda c, a: search(cache=c, alpha=a, **kwargs))
  for alpha in (0.6, 1.0):
    static = search(cache=toy_cache(2), alpha=alpha, **kwargs)
    dynamic = traced(toy_cache(2), jnp.float32(alpha))
    np.testing.assert_array_equal(static[0], dynamic[0])
    np.testing.assert_allclose(static[1], dynamic[1], rtol=1e-6)


def test_length_penalty_and_mode_definitions():
  hf, brevity = decoding.LengthPenalty.HF, decoding.LengthPenalty.BREVITY
  assert float(hf.divisor(4, 1.0)) == 4.0
  assert float(hf.divisor(4, 0.5)) == 2.0
  assert float(brevity.divisor(7, 1.0)) == 2.0  # (5 + 7) / 6
  assert float(decoding.brevity_penalty(1.0, 7)) == 2.0
  assert decoding.EarlyStopping.parse(True) is decoding.EarlyStopping.WHEN_FULL
  assert decoding.EarlyStopping.parse(False) is decoding.EarlyStopping.HEURISTIC
  assert decoding.EarlyStopping.parse("never") is decoding.EarlyStopping.NEVER
  assert decoding.BeamProcedure.parse("hf").decode_fn is decoding.hf_beam_search
  assert decoding.BeamProcedure.T5X.decode_fn is decoding.beam_search
  common = dict(
      inputs=jnp.zeros((1, 3), jnp.int32),
      cache=toy_cache(1),
      tokens_to_logits=toy_tokens_to_logits(make_toy(0)),
      eos_id=EOS,
  )
  with pytest.raises(ValueError, match="length penalty"):
    decoding.hf_beam_search(**common, length_penalty="gnmt")
  with pytest.raises(ValueError, match="early_stopping"):
    decoding.hf_beam_search(**common, early_stopping="sometimes")
  with pytest.raises(ValueError, match="beam procedure"):
    decoding.BeamProcedure.parse("gnmt")


def test_cache_expansion_keeps_examples_together_and_shares_index():
  cache = {
      "layer": {
          "cached_key": jnp.arange(6).reshape(3, 2),
          "cache_index": jnp.array(5),
      }
  }
  out = decoding.cache_map(
      lambda x: decoding.flat_batch_beam_expand(x, 2), cache
  )
  np.testing.assert_array_equal(
      out["layer"]["cached_key"][:, 0], [0, 0, 2, 2, 4, 4]
  )
  assert out["layer"]["cache_index"].shape == ()


def test_sampling_topk1_is_greedy_and_seeds_differ():
  toy = make_toy(3)
  common = dict(
      inputs=jnp.zeros((2, 1), jnp.int32),
      cache=toy_cache(2),
      tokens_to_logits=toy_tokens_to_logits(toy),
      eos_id=EOS,
      max_decode_len=MAX_LEN,
  )
  greedy, _ = decoding.greedy(**common)
  top1, _ = decoding.temperature_sample(
      **common, topk=1, temperature=3.0, decode_rng=jax.random.PRNGKey(4)
  )
  np.testing.assert_array_equal(greedy[:, 0], top1[:, 0])
  zero_t, _ = decoding.temperature_sample(
      **common, topk=0, temperature=0.0, decode_rng=jax.random.PRNGKey(4)
  )
  default, default_scores = decoding.temperature_sample(**common)  # t5x: topk=1
  np.testing.assert_array_equal(greedy[:, 0], default[:, 0])
  np.testing.assert_array_equal(
      default_scores, 0.0
  )  # rescaled: greedy is certain
  np.testing.assert_array_equal(greedy[:, 0], zero_t[:, 0])
  a, _ = decoding.temperature_sample(
      **common,
      num_decodes=8,
      temperature=2.0,
      topk=0,
      decode_rng=jax.random.PRNGKey(0),
  )
  b, _ = decoding.temperature_sample(
      **common,
      num_decodes=8,
      temperature=2.0,
      topk=0,
      decode_rng=jax.random.PRNGKey(1),
  )
  assert a.shape == (2, 8, MAX_LEN)
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  # After EOS only padding.
  for row in np.asarray(a).reshape(-1, MAX_LEN).tolist():
    if EOS in row:
      assert all(t == 0 for t in row[row.index(EOS) + 1 :])


def test_per_example_temperature_zero_is_greedy_for_that_example():
  toy = make_toy(5)
  common = dict(
      inputs=jnp.zeros((2, 1), jnp.int32),
      cache=toy_cache(2),
      tokens_to_logits=toy_tokens_to_logits(toy),
      eos_id=EOS,
      max_decode_len=MAX_LEN,
  )
  greedy, _ = decoding.greedy(**common)
  mixed, _ = decoding.temperature_sample(
      **common,
      num_decodes=4,
      temperature=jnp.array([0.0, 5.0]),
      topk=0,
      decode_rng=jax.random.PRNGKey(2),
  )
  for j in range(4):
    np.testing.assert_array_equal(mixed[0, j], greedy[0, 0])
  # As t5x, each row draws with the step's key on its own: the copies of an example
  # sample the same tokens; at temperature 5 they are not the greedy ones.
  copies = {tuple(r) for r in np.asarray(mixed[1]).tolist()}
  assert len(copies) == 1 and copies != {
      tuple(np.asarray(greedy[1, 0]).tolist())
  }


def _one_step_model(logits_row):
  logits_row = jnp.asarray(logits_row, jnp.float32)

  def tokens_to_logits(state):
    return (
        jnp.broadcast_to(
            logits_row, (state.cur_token.shape[0], logits_row.shape[0])
        ),
        state.cache,
    )

  return tokens_to_logits


def test_sampling_frequencies_follow_filtered_distribution():
  logits = np.log(np.array([0.05, 0.4, 0.25, 0.2, 0.1]))  # token 1 is EOS
  n = 4000
  common = dict(
      inputs=jnp.zeros((1, 1), jnp.int32),
      cache={},
      tokens_to_logits=_one_step_model(logits),
      eos_id=99,
      max_decode_len=1,
      num_decodes=n,
      decode_rng=jax.random.PRNGKey(0),
  )
  cases = {
      "plain": ({"topk": 0}, np.array([0.05, 0.4, 0.25, 0.2, 0.1])),
      "top_k=2": ({"topk": 2}, np.array([0, 0.4, 0.25, 0, 0]) / 0.65),
      # 0.4 + 0.25 = 0.65 < 0.7, so the 0.2 token is needed too.
      "top_p=0.7": (
          {"topk": 0, "topp": 0.7},
          np.array([0, 0.4, 0.25, 0.2, 0]) / 0.85,
      ),
      "temperature=0.5": (
          {"topk": 0, "temperature": 0.5},
          np.array([0.05, 0.4, 0.25, 0.2, 0.1]) ** 2,
      ),
  }
  for name, (kwargs, probs) in cases.items():
    probs = probs / probs.sum()
    seqs, _ = decoding.temperature_sample(**common, **kwargs)
    freq = np.bincount(np.asarray(seqs).reshape(-1), minlength=5) / n
    np.testing.assert_allclose(freq, probs, atol=0.03, err_msg=name)


def test_filters_match_hugging_face_warpers():
  torch = pytest.importorskip("torch")
  from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

  logits = np.random.RandomState(0).randn(5, 50).astype(np.float32) * 2
  for k in (1, 5, 20):
    ours = np.asarray(decoding.topk_mask(jnp.asarray(logits), k))
    theirs = TopKLogitsWarper(k)(None, torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(ours == decoding.NEG_INF, np.isinf(theirs))
  for p in (0.1, 0.5, 0.9, 0.99):
    # Random logits have no ties, where t5x (keeps them) and HF (may cut) differ.
    ours = np.asarray(decoding.topp_mask(jnp.asarray(logits), p))
    theirs = TopPLogitsWarper(p)(None, torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(
        ours == decoding.NEG_INF, np.isinf(theirs), err_msg=f"top_p={p}"
    )
