"""Numerical parity with Hugging Face transformers on random tiny T5 models (float32).

Two configs: T5 1.0 (ReLU MLP, tied and scaled logits) and T5 1.1 (gated GELU,
separate LM head). The LM head row of EOS is made likely so that greedy and beam
outputs end at different lengths and the EOS / finished-beam logic is exercised.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tkx import decoding  # noqa: E402
from tkx.checkpoints import hf  # noqa: E402
from tkx.models import models, network  # noqa: E402

VOCAB, D_MODEL, ENC_LEN, MAX_DECODE, NUM_INPUTS = 64, 32, 12, 20, 20
EOS = 1


def _hf_model(ff, tied, seed):
  config = transformers.T5Config(
      vocab_size=VOCAB,
      d_model=D_MODEL,
      d_kv=8,
      d_ff=64,
      num_layers=2,
      num_decoder_layers=2,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=20,
      feed_forward_proj=ff,
      tie_word_embeddings=tied,
      dropout_rate=0.0,
      decoder_start_token_id=0,
      pad_token_id=0,
      eos_token_id=EOS,
  )
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    if (
        not tied
    ):  # a T5 1.1 LM head of its own (transformers 5 builds it tied to `shared`)
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, D_MODEL))
    head = model.lm_head.weight
    head[EOS] = head[2:12].sum(0) * (0.6 if tied else 0.4)
  return model


def _inputs(seed):
  rng = np.random.RandomState(seed)
  tokens = np.zeros((NUM_INPUTS, ENC_LEN), np.int64)
  for i, n in enumerate(rng.randint(2, ENC_LEN + 1, size=NUM_INPUTS)):
    tokens[i, :n] = rng.randint(2, VOCAB, size=n)
  return tokens


def _cut_after_eos(rows, length):
  """Tokens up to the first EOS, then padding (HF fills finished beams with EOS, we with 0)."""
  out = np.zeros((len(rows), length), np.int64)
  for i, row in enumerate(rows):
    row = list(row)[:length]
    if EOS in row:
      row = row[: row.index(EOS) + 1]
    out[i, : len(row)] = row
  return out


@pytest.fixture(
    scope="module",
    params=[("relu", True), ("gated-gelu", False)],
    ids=["t5_1_0", "t5_1_1"],
)
def pair(request):
  ff, tied = request.param
  hf_model = _hf_model(ff, tied, seed=0 if tied else 1)
  config = hf.hf_config_to_t5config(hf_model.config.to_dict())
  assert config.logits_via_embedding == tied
  assert config.mlp_activations == (("relu",) if tied else ("gelu", "linear"))
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  params = hf.hf_to_params(state, config)
  model = models.EncoderDecoderModel(network.Transformer(config))
  return hf_model, model, params


def test_encoder_outputs_and_logits_match(pair):
  hf_model, model, params = pair
  enc = _inputs(0)
  rng = np.random.RandomState(1)
  targets = rng.randint(2, VOCAB, size=(NUM_INPUTS, 9))
  dec_in = np.concatenate(
      [np.zeros((NUM_INPUTS, 1), np.int64), targets[:, :-1]], axis=1
  )
  with torch.no_grad():
    out = hf_model(
        input_ids=torch.tensor(enc),
        attention_mask=torch.tensor(enc > 0),
        decoder_input_ids=torch.tensor(dec_in),
    )
  module = model.module

  @jax.jit  # one program instead of op by op: the same two forward passes
  def encoded_and_logits(p, enc, dec_in, targets):
    encoded = module.apply(
        {"params": p}, enc, enable_dropout=False, method=module.encode
    )
    logits = module.apply(
        {"params": p}, enc, dec_in, targets, enable_dropout=False
    )
    return encoded, logits

  encoded, logits = encoded_and_logits(
      params, jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(targets)
  )
  valid = (
      enc > 0
  )  # padded encoder positions are masked downstream; HF and t5x fill them differently
  np.testing.assert_allclose(
      np.asarray(encoded)[valid],
      out.encoder_last_hidden_state.numpy()[valid],
      atol=1e-4,
  )
  np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), atol=1e-4)


@functools.lru_cache(maxsize=None)
def _jitted_predict(model, decode_name, early_stopping=True):
  decode_fn = getattr(decoding, decode_name)
  if decode_name == "hf_beam_search":
    return jax.jit(
        lambda p, e, alpha: model.predict_batch(
            p,
            {"encoder_input_tokens": e},
            decode_fn=decode_fn,
            num_decodes=4,
            alpha=alpha,
            early_stopping=early_stopping,
            max_decode_length=MAX_DECODE,
        )
    )
  return jax.jit(
      lambda p, e: model.predict_batch(
          p,
          {"encoder_input_tokens": e},
          decode_fn=decode_fn,
          max_decode_length=MAX_DECODE,
      )
  )


def _hf_generate(hf_model, enc, **kwargs):
  with torch.no_grad():
    out = hf_model.generate(
        input_ids=torch.tensor(enc),
        attention_mask=torch.tensor(enc > 0),
        max_new_tokens=MAX_DECODE,
        do_sample=False,
        **kwargs,
    )
  return _cut_after_eos(
      out.numpy()[:, 1:], MAX_DECODE
  )  # drop the decoder start token


def test_greedy_is_token_identical_to_hf_generate(pair):
  hf_model, model, params = pair
  enc = _inputs(2)
  want = _hf_generate(hf_model, enc, num_beams=1)
  got = np.asarray(
      _jitted_predict(model, "greedy")(params, jnp.asarray(enc, jnp.int32))
  )
  np.testing.assert_array_equal(_cut_after_eos(got, MAX_DECODE), want)
  np.testing.assert_array_equal(
      got, _cut_after_eos(got, MAX_DECODE)
  )  # padding after EOS
  if model.module.config.mlp_activations != (
      "relu",
  ):  # the random T5 1.0 model repeats a token forever
    assert (want == EOS).any(axis=1).sum() >= 1  # some inputs stop early


@pytest.mark.parametrize("alpha", [0.6, 1.0])
def test_beam_search_matches_hf_generate(pair, alpha):
  hf_model, model, params = pair
  enc = _inputs(3)
  want = _hf_generate(
      hf_model, enc, num_beams=4, length_penalty=alpha, early_stopping=True
  )
  got = np.asarray(
      _jitted_predict(model, "hf_beam_search")(
          params, jnp.asarray(enc, jnp.int32), jnp.float32(alpha)
      )
  )
  np.testing.assert_array_equal(_cut_after_eos(got, MAX_DECODE), want)
  lengths = {int((row > 0).sum()) for row in want}
  assert (
      len(lengths) > 1
  )  # finished at different lengths: EOS handling is exercised


def test_beam_search_without_early_stopping_matches_hf_generate(pair):
  """HF's default early_stopping=False: stop once no running beam can beat the worst finished one."""
  hf_model, model, params = pair
  enc = _inputs(5)
  want = _hf_generate(
      hf_model, enc, num_beams=4, length_penalty=0.6, early_stopping=False
  )
  got = np.asarray(
      _jitted_predict(model, "hf_beam_search", False)(
          params, jnp.asarray(enc, jnp.int32), jnp.float32(0.6)
      )
  )
  np.testing.assert_array_equal(_cut_after_eos(got, MAX_DECODE), want)


def test_tk_instruct_eval_settings_decode_as_many_tokens_as_its_generate_call(
    pair,
):
  """Tk-Instruct evaluates with transformers 4.18 `generate(max_length=128)`, which counts
  the decoder start token: outputs that never reach EOS stop after 127 tokens. The eval
  gin and tkx's default decode exactly that many."""
  import gin

  from tkx import infer
  from tkx import io_utils

  hf_model, model, params = pair
  gin.clear_config()
  try:
    gin.parse_config_file(
        f"{io_utils.REPO_ROOT}/gin_configs/runs/eval.gin", skip_unknown=True
    )
    eval_settings = infer.DecodeConfig()
  finally:
    gin.clear_config()
  assert eval_settings == infer.DecodeConfig()  # the gin and the default agree
  assert eval_settings.decode_fn == "greedy"
  enc = _inputs(6)[:8]
  with torch.no_grad():
    want = hf_model.generate(
        input_ids=torch.tensor(enc),
        attention_mask=torch.tensor(enc > 0),
        max_length=128,
        do_sample=False,
        num_beams=1,
    ).numpy()[:, 1:]
  decode_fn, kwargs = eval_settings.decode_fn_and_kwargs()
  got = np.asarray(
      jax.jit(
          lambda p, e: model.predict_batch(
              p,
              {"encoder_input_tokens": e},
              decode_fn=decode_fn,
              max_decode_length=eval_settings.max_decode_length,
              **kwargs,
          )
      )(params, jnp.asarray(enc, jnp.int32))
  )
  assert got.shape == (8, 127)
  run_to_limit = ~(want == EOS).any(axis=1)
  assert run_to_limit.sum() >= 2  # the test needs outputs that never end
  # generate(max_length=128) returns the start token and 127 new tokens (pad ids may be
  # among them: the random model emits token 0 as any other).
  assert want.shape[1] == 127
  np.testing.assert_array_equal(got[run_to_limit], want[run_to_limit])


def test_logits_match_with_more_decoder_than_encoder_layers():
  # (HF 5.24 `generate` fails for num_decoder_layers != num_layers -- its cache is sized by num_layers --
  # so only the teacher-forced forward pass is compared here.)
  config_hf = transformers.T5Config(
      vocab_size=VOCAB,
      d_model=D_MODEL,
      d_kv=8,
      d_ff=64,
      num_layers=1,
      num_decoder_layers=3,
      num_heads=4,
      feed_forward_proj="gated-gelu",
      tie_word_embeddings=False,
      dropout_rate=0.0,
  )
  torch.manual_seed(7)
  hf_model = transformers.T5ForConditionalGeneration(config_hf).eval()
  config = hf.hf_config_to_t5config(hf_model.config.to_dict())
  assert (config.num_encoder_layers, config.num_decoder_layers) == (1, 3)
  params = hf.hf_to_params(
      {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}, config
  )
  enc = _inputs(4)[:4]
  targets = np.array([[5, 9, 2, 8], [7, 7, 7, 7], [3, 1, 4, 4], [60, 2, 33, 1]])
  dec_in = np.concatenate([np.zeros((4, 1), np.int64), targets[:, :-1]], axis=1)
  with torch.no_grad():
    want = hf_model(
        input_ids=torch.tensor(enc),
        attention_mask=torch.tensor(enc > 0),
        decoder_input_ids=torch.tensor(dec_in),
    ).logits.numpy()
  module = network.Transformer(config)
  got = jax.jit(  # one program instead of op by op: the same forward pass
      lambda p, e, d, t: module.apply(
          {"params": p}, e, d, t, enable_dropout=False
      )
  )(params, jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(targets))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
