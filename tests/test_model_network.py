"""The Flax T5 network: parameter tree, logical axes, T5 numerics, packing, KV cache, dtypes."""

import gin
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx import decoding, gin_utils

import numerics
from tkx.models import config as config_lib
from tkx.models import models, network

P = jax.sharding.PartitionSpec


@pytest.fixture(autouse=True)
def clean_gin():
  # T5Config is gin-configurable: bindings left by a parsed gin file would fill in
  # the fields these tests leave at their defaults.
  gin.clear_config()
  yield
  gin.clear_config()


def small_config(v11=True, **overrides):
  kw = dict(
      vocab_size=96,
      emb_dim=32,
      num_heads=4,
      head_dim=8,
      mlp_dim=48,
      num_encoder_layers=2,
      num_decoder_layers=2,
      mlp_activations=("gelu", "linear") if v11 else ("relu",),
      logits_via_embedding=not v11,
      dropout_rate=0.0,
  )
  kw.update(overrides)
  return config_lib.T5Config(**kw)


SHAPES = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 6)}


@functools.lru_cache(maxsize=None)
def model_and_params(v11=True):
  """One initialisation per architecture for the whole file (compiling init takes seconds)."""
  model = models.EncoderDecoderModel(network.Transformer(small_config(v11)))
  return (
      model,
      model.get_initial_variables(jax.random.PRNGKey(0), SHAPES)["params"],
  )


def flat(tree, is_leaf=None):
  return {
      jax.tree_util.keystr(k, simple=True, separator="/"): v
      for k, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  }


def expected_params(cfg):
  """name -> (shape, logical axes) exactly as the contract of `tkx.models` (its docstring) lists them."""
  e, j, m = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
  out = {"token_embedder/embedding": ((cfg.vocab_size, e), ("vocab", "embed"))}
  mlp_in = ["wi"] if len(cfg.mlp_activations) == 1 else ["wi_0", "wi_1"]

  def attention(prefix):
    for name in ("query", "key", "value"):
      out[f"{prefix}/{name}/kernel"] = ((e, j), ("embed", "joined_kv"))
    out[f"{prefix}/out/kernel"] = ((j, e), ("joined_kv", "embed"))

  def mlp(prefix):
    for name in mlp_in:
      out[f"{prefix}/{name}/kernel"] = ((e, m), ("embed", "mlp"))
    out[f"{prefix}/wo/kernel"] = ((m, e), ("mlp", "embed"))

  norm = ((e,), ("embed",))
  for stack, n in (
      ("encoder", cfg.num_encoder_layers),
      ("decoder", cfg.num_decoder_layers),
  ):
    out[f"{stack}/relpos_bias/rel_embedding"] = (
        (cfg.num_heads, cfg.relative_attention_num_buckets),
        ("heads", "relpos_buckets"),
    )
    out[f"{stack}/{stack}_norm/scale"] = norm
    for i in range(n):
      layer = f"{stack}/layers_{i}"
      out[f"{layer}/pre_mlp_layer_norm/scale"] = norm
      mlp(f"{layer}/mlp")
      if stack == "encoder":
        out[f"{layer}/pre_attention_layer_norm/scale"] = norm
        attention(f"{layer}/attention")
      else:
        for ln in (
            "pre_self_attention_layer_norm",
            "pre_cross_attention_layer_norm",
        ):
          out[f"{layer}/{ln}/scale"] = norm
        attention(f"{layer}/self_attention")
        attention(f"{layer}/encoder_decoder_attention")
  if not cfg.logits_via_embedding:
    out["decoder/logits_dense/kernel"] = (
        (e, cfg.vocab_size),
        ("embed", "vocab"),
    )
  return out


@pytest.mark.parametrize("v11", [True, False], ids=["t5_1_1", "t5_1_0"])
def test_param_names_shapes_and_logical_axes(v11):
  cfg = small_config(v11, num_decoder_layers=3)
  model = models.EncoderDecoderModel(network.Transformer(cfg))
  # Only names, shapes and dtypes are checked: traced, nothing computed.
  params = jax.eval_shape(
      lambda r: model.get_initial_variables(r, SHAPES), jax.random.PRNGKey(0)
  )["params"]
  shapes = {k: tuple(v.shape) for k, v in flat(params).items()}
  axes = {
      k: tuple(v)
      for k, v in flat(
          model.params_logical_axes(SHAPES), is_leaf=lambda x: isinstance(x, P)
      ).items()
  }
  expected = expected_params(cfg)
  assert shapes == {k: s for k, (s, _) in expected.items()}
  assert axes == {k: a for k, (_, a) in expected.items()}
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(params))


def test_boxed_variables_give_partition_specs_and_real_sizes_need_no_memory():
  cfg = gin_utils.load_config_from_gin(["gin_configs/models/t5_1_1/xxl.gin"])
  model = models.EncoderDecoderModel(network.Transformer(cfg))
  shapes = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}
  boxed = jax.eval_shape(
      lambda r: model.get_initial_variables(r, shapes, unbox=False),
      jax.random.PRNGKey(0),
  )
  specs = models.get_logical_axes(boxed)["params"]
  assert specs["decoder"]["layers_23"]["mlp"]["wi_1"]["kernel"] == P(
      "embed", "mlp"
  )
  abstract = model.params_shapes(shapes)
  assert abstract["decoder"]["logits_dense"]["kernel"].shape == (4096, 32128)
  assert abstract["encoder"]["layers_0"]["attention"]["query"][
      "kernel"
  ].shape == (4096, 64 * 64)


def test_initialisation_follows_t5x():
  cfg = small_config(
      emb_dim=256, num_heads=4, head_dim=64, mlp_dim=512, vocab_size=512
  )
  model = models.EncoderDecoderModel(network.Transformer(cfg))
  p = model.get_initial_variables(jax.random.PRNGKey(1), SHAPES)["params"]
  att = p["encoder"]["layers_0"]["attention"]
  # embedding ~ N(0, 1); key ~ fan-in normal (std 1/sqrt(256)); the query also folds in 1/sqrt(head_dim).
  assert np.std(p["token_embedder"]["embedding"]) == pytest.approx(
      1.0, rel=0.05
  )
  assert np.std(att["key"]["kernel"]) == pytest.approx(1 / 16, rel=0.05)
  assert np.std(att["query"]["kernel"]) == pytest.approx(1 / 16 / 8, rel=0.05)
  assert np.std(att["out"]["kernel"]) == pytest.approx(1 / 16, rel=0.05)
  np.testing.assert_array_equal(
      p["encoder"]["encoder_norm"]["scale"], np.ones(256)
  )


def test_relative_position_buckets_match_hugging_face():
  torch = pytest.importorskip("torch")
  t5_modeling = pytest.importorskip("transformers.models.t5.modeling_t5")
  rel = np.arange(-300, 301)[None, :]
  for bidirectional in (True, False):
    ours = np.asarray(
        network.relative_position_bucket(
            jnp.asarray(rel), bidirectional, 32, 128
        )
    )
    theirs = t5_modeling.T5Attention._relative_position_bucket(
        torch.tensor(rel),
        bidirectional=bidirectional,
        num_buckets=32,
        max_distance=128,
    ).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_gelu_is_the_tanh_approximation_hf_calls_gelu_new():
  x = np.linspace(-6, 6, 101).astype(np.float32)
  expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
  np.testing.assert_allclose(
      network._activation("gelu")(x), expected, atol=1e-6
  )


def test_rms_norm_has_no_mean_subtraction():
  x = np.array([[1.0, 2.0, 3.0, 6.0]], np.float32)
  y, _ = network.LayerNorm().init_with_output(jax.random.PRNGKey(0), x)
  np.testing.assert_allclose(y, x / np.sqrt(np.mean(x**2) + 1e-6), rtol=1e-6)


def random_batch(rng, vocab, batch, enc_len, dec_len, pad_from=None):
  enc = rng.randint(2, vocab, (batch, enc_len))
  tgt = rng.randint(2, vocab, (batch, dec_len))
  if pad_from:
    enc[-1, pad_from[0] :] = 0
    tgt[-1, pad_from[1] :] = 0
  dec = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], 1) * (tgt > 0)
  return dict(
      encoder_input_tokens=enc,
      decoder_input_tokens=dec,
      decoder_target_tokens=tgt,
      decoder_loss_weights=(tgt > 0).astype(np.float32),
  )


@pytest.mark.parametrize("v11", [True, False], ids=["t5_1_1", "t5_1_0"])
def test_packed_batch_equals_unpacked_examples(v11):
  model, params = model_and_params(v11)
  cfg = model.config
  rng = np.random.RandomState(3)
  lengths = [(5, 3), (4, 4), (6, 2)]  # (inputs, targets) per example
  examples = [
      random_batch(rng, cfg.vocab_size, 1, le, ld) for le, ld in lengths
  ]
  enc_len, dec_len = 18, 11  # room for padding after the packed examples
  packed = {
      k: np.zeros(
          (1, enc_len if k.startswith("encoder") else dec_len), np.int32
      )
      for k in (
          "encoder_input_tokens",
          "encoder_segment_ids",
          "encoder_positions",
          "decoder_input_tokens",
          "decoder_target_tokens",
          "decoder_segment_ids",
          "decoder_positions",
      )
  }
  e0 = d0 = 0
  for seg, ex in enumerate(examples, start=1):
    le, ld = (
        ex["encoder_input_tokens"].shape[1],
        ex["decoder_target_tokens"].shape[1],
    )
    packed["encoder_input_tokens"][0, e0 : e0 + le] = ex[
        "encoder_input_tokens"
    ][0]
    packed["encoder_segment_ids"][0, e0 : e0 + le] = seg
    packed["encoder_positions"][0, e0 : e0 + le] = np.arange(le)
    for key in ("decoder_input_tokens", "decoder_target_tokens"):
      packed[key][0, d0 : d0 + ld] = ex[key][0]
    packed["decoder_segment_ids"][0, d0 : d0 + ld] = seg
    packed["decoder_positions"][0, d0 : d0 + ld] = np.arange(ld)
    e0, d0 = e0 + le, d0 + ld
  logits_and_score = jax.jit(
      lambda p, b: (model._compute_logits(p, b), model.score_batch(p, b))
  )
  packed_logits, packed_score = logits_and_score(params, packed)
  d0 = 0
  total_score = 0.0
  for ex in examples:
    ld = ex["decoder_target_tokens"].shape[1]
    # Pad every example to one shape (one compilation); trailing padding changes nothing.
    padded = {
        k: np.pad(
            v, ((0, 0), (0, (6 if k.startswith("encoder") else 4) - v.shape[1]))
        )
        for k, v in ex.items()
    }
    alone, score = logits_and_score(params, padded)
    np.testing.assert_allclose(
        np.asarray(packed_logits)[0, d0 : d0 + ld],
        alone[0, :ld],
        atol=2e-5,
        rtol=1e-5,
    )
    total_score += float(score[0])
    d0 += ld
  assert float(packed_score[0]) == pytest.approx(total_score, rel=1e-5)


@pytest.mark.float_order
@pytest.mark.parametrize("v11", [True, False], ids=["t5_1_1", "t5_1_0"])
def test_cached_decoding_matches_teacher_forced_logits(v11):
  model, params = model_and_params(v11)
  cfg = model.config
  batch = random_batch(
      np.random.RandomState(0), cfg.vocab_size, 2, 9, 7, pad_from=(6, 7)
  )
  full = np.asarray(jax.jit(model._compute_logits)(params, batch))
  inputs = batch["encoder_input_tokens"]

  @jax.jit  # one program, not op by op: the same encoder outputs and cache
  def encode_and_cache(p, x):
    encoded = model.module.apply(
        {"params": p}, x, enable_dropout=False, method=model.module.encode
    )
    return encoded, model.initial_cache(p, encoded, x, max_decode_length=7)

  encoded, cache = encode_and_cache(params, inputs)
  cross = cache["decoder"]["layers_0"]["encoder_decoder_attention"]
  assert cross["encoded_key"].shape == (
      2,
      cfg.num_heads,
      inputs.shape[1],
      cfg.head_dim,
  )
  step = jax.jit(
      lambda state, cache: model._compute_logits_from_slice(
          decoding.DecodingState(0, None, state, cache),
          params,
          encoded,
          inputs,
          7,
      )
  )
  for i in range(7):
    logits, cache = step(batch["decoder_input_tokens"][:, i : i + 1], cache)
    np.testing.assert_allclose(
        np.asarray(logits), full[:, i], atol=2e-5, rtol=1e-5
    )
  assert (
      int(
          jax.tree_util.tree_leaves(
              {
                  k: v
                  for k, v in cache["decoder"]["layers_0"][
                      "self_attention"
                  ].items()
                  if k == "cache_index"
              }
          )[0]
      )
      == 7
  )


def test_predict_batch_greedy_equals_argmax_of_teacher_forcing_on_its_output():
  model, params = model_and_params(True)
  cfg = model.config
  inputs = np.random.RandomState(1).randint(2, cfg.vocab_size, (3, 8))
  predict = jax.jit(
      functools.partial(
          model.predict_batch,
          max_decode_length=6,
          decode_fn=decoding.greedy,
      )
  )
  tokens = np.asarray(predict(params, {"encoder_input_tokens": inputs}))
  assert tokens.shape == (3, 6)
  # Feeding the decoded tokens back, every position's argmax reproduces the next decoded token.
  dec_in = np.concatenate([np.zeros((3, 1), int), tokens[:, :-1]], 1)
  targets = np.where(
      tokens > 0, tokens, 1
  )  # keep every position visible in the mask
  logits = jax.jit(model._compute_logits)(
      params,
      dict(
          encoder_input_tokens=inputs,
          decoder_input_tokens=dec_in,
          decoder_target_tokens=targets,
      ),
  )
  argmax = np.asarray(jnp.argmax(logits, -1))
  ended = (
      np.cumsum(tokens == 1, axis=1) - (tokens == 1) > 0
  )  # positions after EOS are padding
  np.testing.assert_array_equal(np.where(ended, 0, argmax), tokens)


def test_num_decodes_repeats_encoder_outputs_per_example():
  model, params = model_and_params(True)
  cfg = model.config
  inputs = np.random.RandomState(1).randint(2, cfg.vocab_size, (2, 8))
  predict = functools.partial(
      model.predict_batch_with_aux,
      max_decode_length=5,
      decode_fn=decoding.greedy,
  )
  one, aux1 = jax.jit(predict)(params, {"encoder_input_tokens": inputs})
  many, aux3 = jax.jit(
      functools.partial(predict, num_decodes=3, return_all_decodes=True)
  )(params, {"encoder_input_tokens": inputs})
  assert many.shape == (2, 3, 5)
  for j in range(3):  # greedy: every copy of an example decodes the same tokens
    np.testing.assert_array_equal(many[:, j], one)
  np.testing.assert_allclose(aux3["scores"][:, -1], aux1["scores"], rtol=1e-5)


def test_bfloat16_activations_run_with_float32_params():
  cfg = small_config(True, dtype="bfloat16")
  model = models.EncoderDecoderModel(network.Transformer(cfg))
  params = model_and_params(True)[1]
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(params))
  batch = random_batch(np.random.RandomState(0), cfg.vocab_size, 2, 8, 6)
  logits = jax.jit(model._compute_logits)(params, batch)
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
  f32_model = models.EncoderDecoderModel(
      network.Transformer(cfg.replace(dtype="float32"))
  )
  f32 = jax.jit(f32_model._compute_logits)(params, batch)
  # bfloat16 has ~3 significant digits: close to float32, but not identical.
  assert (
      0
      < np.abs(np.asarray(logits) - np.asarray(f32)).max()
      < 0.1 * np.abs(np.asarray(f32)).max()
  )
  loss, _ = jax.jit(model.loss_fn)(params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss))
  inputs = batch["encoder_input_tokens"]

  def cache_of(p):
    encoded = model.module.apply(
        {"params": p}, inputs, enable_dropout=False, method=model.module.encode
    )
    return model.initial_cache(p, encoded, inputs, 6)

  cache = jax.eval_shape(cache_of, params)  # the dtypes, nothing computed
  assert (
      cache["decoder"]["layers_0"]["self_attention"]["cached_key"].dtype
      == jnp.bfloat16
  )


def test_dropout_only_when_enabled():
  cfg = small_config(True, dropout_rate=0.5)
  model = models.EncoderDecoderModel(network.Transformer(cfg))
  params = model_and_params(True)[1]
  batch = random_batch(np.random.RandomState(0), cfg.vocab_size, 2, 8, 6)
  with_dropout = jax.jit(model._compute_logits)
  without = jax.jit(lambda p, b: model._compute_logits(p, b))
  a = with_dropout(params, batch, jax.random.PRNGKey(1))
  b = with_dropout(params, batch, jax.random.PRNGKey(2))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
  np.testing.assert_array_equal(without(params, batch), without(params, batch))


@pytest.mark.parametrize("family", ["t5_1_0", "t5_1_1", "mt5"])
def test_gin_files_parse_for_every_size(family):
  expected_vocab = 250112 if family == "mt5" else 32128
  for size in ("tiny", "small", "base", "large", "xl", "xxl"):
    cfg = gin_utils.load_config_from_gin(
        [f"gin_configs/models/{family}/{size}.gin"]
    )
    assert cfg.vocab_size == (1024 if size == "tiny" else expected_vocab)
    assert cfg.logits_via_embedding == (family == "t5_1_0")
    assert cfg.mlp_activations == (
        ("relu",) if family == "t5_1_0" else ("gelu", "linear")
    )
    assert cfg.dtype == ("float32" if size == "tiny" else "bfloat16")
  cfg = gin_utils.load_config_from_gin(
      [f"gin_configs/models/{family}/base.gin"],
      ["network.T5Config.num_encoder_layers = 3", "DROPOUT_RATE = 0.25"],
  )
  assert (cfg.emb_dim, cfg.num_encoder_layers, cfg.dropout_rate) == (
      768,
      3,
      0.25,
  )


def test_tiny_gin_builds_the_model_with_the_embedded_vocabulary():
  pytest.importorskip("tkx.data.vocab")
  model = gin_utils.get_model_from_gin(["gin_configs/models/t5_1_1/tiny.gin"])
  assert model.input_vocabulary.vocab_size <= model.config.vocab_size
  assert model.eos_id == 1 and model.z_loss == 1e-4


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="mlp_activations"):
    small_config(mlp_activations=("gelu", "lineer"))
  with pytest.raises(ValueError, match="emb_dim"):
    small_config(emb_dim=0)
  with pytest.raises(FileNotFoundError, match="nope.gin"):
    gin_utils.load_config_from_gin(["gin_configs/models/nope.gin"])


def test_remat_policies_give_the_same_gradients():
  batch = random_batch(np.random.RandomState(0), 96, 2, 8, 6)
  # One layer and no dropout (threefry bits are slow to compile on CPU) keep the three compiles short.
  one_layer = dict(num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  params = models.EncoderDecoderModel(
      network.Transformer(small_config(True, **one_layer))
  ).get_initial_variables(jax.random.PRNGKey(0), SHAPES)["params"]
  grads = {}
  for policy in ("none", "minimal", "full"):
    model = models.EncoderDecoderModel(
        network.Transformer(
            small_config(True, remat_policy=policy, **one_layer)
        )
    )
    grads[policy] = jax.jit(
        jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(3))[0])
    )(params)
  for policy in ("minimal", "full"):
    for a, b in zip(
        jax.tree_util.tree_leaves(grads[policy]),
        jax.tree_util.tree_leaves(grads["none"]),
    ):
      np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(
        np.abs(a).max() > 0 for a in jax.tree_util.tree_leaves(grads[policy])
    )
  with pytest.raises(ValueError, match="remat_policy"):
    small_config(remat_policy="some")


@pytest.mark.float_order
@pytest.mark.parametrize("chunk_rows", [1, 2])
def test_attention_in_row_chunks_equals_whole_batch_attention(chunk_rows):
  """attention_chunk_rows only changes how the batch is swept: logits and gradients stay the same."""
  params = model_and_params(True)[1]
  batch = random_batch(np.random.RandomState(3), 96, 4, 8, 6, pad_from=(5, 4))
  results = []
  for rows in (0, chunk_rows):
    model = models.EncoderDecoderModel(
        network.Transformer(small_config(True, attention_chunk_rows=rows))
    )
    loss_and_grads = jax.jit(
        jax.value_and_grad(lambda p: model.loss_fn(p, batch, None)[0])
    )
    results.append(
        (jax.jit(model._compute_logits)(params, batch), *loss_and_grads(params))
    )
  (logits0, loss0, grads0), (logits1, loss1, grads1) = results
  # Chunking changes the summation order only: 2+2 layers of 32-wide reductions.
  order = dict(reduction_size=small_config().emb_dim, depth=4)
  numerics.assert_close_up_to_order(logits1, logits0, **order)
  numerics.assert_close_up_to_order(loss1, loss0, **order)
  for name, g in flat(grads0).items():
    numerics.assert_close_up_to_order(
        flat(grads1)[name], g, **order, err_msg=name
    )


def test_attention_chunk_rows_rejects_negatives():
  with pytest.raises(ValueError, match="attention_chunk_rows"):
    small_config(True, attention_chunk_rows=-1)


def test_attention_dropout_in_row_chunks_is_seeded_and_drops_weights():
  rng = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rng.randn(4, 5, 2, 3), jnp.float32) for _ in range(3))
  attend = jax.jit(
      functools.partial(
          network.dot_product_attention, dropout_rate=0.5, chunk_rows=1
      )
  )
  plain = network.dot_product_attention(q, k, v)
  a, b = attend(q, k, v, dropout_rng=jax.random.PRNGKey(1)), attend(
      q, k, v, dropout_rng=jax.random.PRNGKey(1)
  )
  c = attend(q, k, v, dropout_rng=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c)) and not np.allclose(
      np.asarray(a), np.asarray(plain)
  )
  np.testing.assert_allclose(
      np.asarray(attend(q, k, v)), np.asarray(plain), rtol=1e-6
  )  # no key: no dropout


def test_shared_bias_gradient_sums_over_the_batch_like_plain_autodiff():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(3, 2, 4, 5), jnp.float32)
  bias = jnp.asarray(rng.randn(1, 2, 4, 5), jnp.float32)
  weights = jnp.asarray(rng.randn(3, 2, 4, 5), jnp.float32)
  ours = jax.grad(
      lambda l, b: jnp.sum(network._add_shared_bias(l, b) ** 2 * weights),
      argnums=(0, 1),
  )
  plain = jax.grad(lambda l, b: jnp.sum((l + b) ** 2 * weights), argnums=(0, 1))
  for got, want in zip(ours(logits, bias), plain(logits, bias)):
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6
    )
