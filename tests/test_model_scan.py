"""T5Config.scan_layers: the scanned model equals the per-layer one; layouts convert both ways."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tkx import decoding, gin_utils
from tkx.models import config as config_lib
from tkx.models import models, network, scan

P = jax.sharding.PartitionSpec
SHAPES = {"encoder_input_tokens": (2, 10), "decoder_input_tokens": (2, 6)}


def _config(**overrides):
  kw = dict(
      vocab_size=64,
      emb_dim=32,
      num_heads=4,
      head_dim=8,
      mlp_dim=48,
      num_encoder_layers=3,
      num_decoder_layers=2,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )
  kw.update(overrides)
  return config_lib.T5Config(**kw)


@functools.lru_cache(maxsize=None)
def _unscanned_params():
  model = models.EncoderDecoderModel(network.Transformer(_config()))
  return model.get_initial_variables(jax.random.PRNGKey(0), SHAPES)["params"]


def _model(**overrides):
  return models.EncoderDecoderModel(network.Transformer(_config(**overrides)))


def _batch(packed=False):
  rng = np.random.RandomState(0)
  batch = {
      "encoder_input_tokens": rng.randint(2, 64, (2, 10)).astype(np.int32),
      "decoder_target_tokens": rng.randint(2, 64, (2, 6)).astype(np.int32),
  }
  batch["encoder_input_tokens"][1, 7:] = 0  # padding
  batch["decoder_target_tokens"][1, 4:] = 0
  batch["decoder_input_tokens"] = np.concatenate(
      [np.zeros((2, 1), np.int32), batch["decoder_target_tokens"][:, :-1]], 1
  )
  if packed:  # two examples in row 0
    batch["encoder_segment_ids"] = np.array(
        [[1] * 5 + [2] * 5, [1] * 7 + [0] * 3], np.int32
    )
    batch["decoder_segment_ids"] = np.array(
        [[1] * 3 + [2] * 3, [1] * 4 + [0] * 2], np.int32
    )
  return batch


def _max_abs_diff(a, b):
  return max(
      jax.tree_util.tree_leaves(
          jax.tree_util.tree_map(
              lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
              a,
              b,
          )
      )
  )


@pytest.mark.slow
def test_scanned_tree_has_a_leading_layers_axis():
  model = _model(scan_layers=True)
  # Only the tree and its shapes are checked: traced, nothing computed.
  params = jax.eval_shape(
      lambda r: model.get_initial_variables(r, SHAPES), jax.random.PRNGKey(0)
  )["params"]
  assert "layers_0" not in params["encoder"]
  enc = params["encoder"]["layers"]
  assert enc["attention"]["query"]["kernel"].shape == (3, 32, 32)
  assert enc["mlp"]["wo"]["kernel"].shape == (3, 48, 32)
  assert params["decoder"]["layers"]["pre_mlp_layer_norm"]["scale"].shape == (
      2,
      32,
  )
  assert params["decoder"]["relpos_bias"]["rel_embedding"].shape == (4, 32)
  axes = model.params_logical_axes(SHAPES)
  assert axes["encoder"]["layers"]["mlp"]["wi_0"]["kernel"] == P(
      "layers", "embed", "mlp"
  )
  assert axes["decoder"]["layers"]["self_attention"]["out"]["kernel"] == P(
      "layers", "joined_kv", "embed"
  )
  assert axes["token_embedder"]["embedding"] == P("vocab", "embed")
  # The tree init builds is exactly the converted per-layer tree.
  converted = scan.scan_params(_unscanned_params())
  assert jax.tree_util.tree_structure(
      converted
  ) == jax.tree_util.tree_structure(params)
  assert jax.tree_util.tree_map(jnp.shape, converted) == jax.tree_util.tree_map(
      jnp.shape, params
  )


@pytest.mark.slow
@pytest.mark.parametrize(
    "remat_policy,packed", [("none", True), ("minimal", False)]
)
def test_scanned_loss_and_gradients_equal_unscanned(remat_policy, packed):
  params = _unscanned_params()
  batch = _batch(packed)
  plain = _model(remat_policy=remat_policy)
  scanned = _model(remat_policy=remat_policy, scan_layers=True)
  loss_fn = lambda m: jax.jit(  # noqa: E731
      jax.value_and_grad(lambda p: m.loss_fn(p, batch, None)[0])
  )
  loss0, grads0 = loss_fn(plain)(params)
  loss1, grads1 = loss_fn(scanned)(scan.scan_params(params))
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  assert _max_abs_diff(scan.unscan_params(grads1), grads0) < 1e-6


def test_scanned_dropout_draws_a_mask_per_layer_and_trains():
  """With dropout the scanned model draws new masks per layer (split rngs) and is deterministic."""
  model = _model(scan_layers=True, dropout_rate=0.3)
  params = scan.scan_params(_unscanned_params())
  batch = _batch()
  f = jax.jit(lambda p, r: model.loss_fn(p, batch, r)[0])
  a, b = f(params, jax.random.PRNGKey(1)), f(params, jax.random.PRNGKey(1))
  c = f(params, jax.random.PRNGKey(2))
  assert float(a) == float(b) and float(a) != float(c)
  assert np.isfinite(float(a))


@pytest.mark.slow
@pytest.mark.parametrize(
    "decode_fn,num_decodes",
    [(decoding.greedy, 1), (decoding.beam_search, 3)],
)
def test_scanned_decoding_equals_unscanned(decode_fn, num_decodes):
  params = _unscanned_params()
  batch = _batch()
  out = []
  for scanned in (False, True):
    model = _model(scan_layers=scanned)
    p = scan.to_layout(params, scanned)
    predict = jax.jit(
        lambda p, b, m=model: m.predict_batch_with_aux(
            p,
            b,
            decode_fn=decode_fn,
            num_decodes=num_decodes,
            max_decode_length=7,
            return_all_decodes=True,
        )
    )
    out.append(predict(p, batch))
  np.testing.assert_array_equal(out[1][0], out[0][0])
  np.testing.assert_allclose(
      out[1][1]["scores"], out[0][1]["scores"], rtol=1e-5
  )


def test_scanned_cache_is_stacked_per_layer():
  model = _model(scan_layers=True)
  params = scan.scan_params(_unscanned_params())
  batch = _batch()

  def cache_of(p, inputs):
    encoded = model.module.apply(
        {"params": p}, inputs, enable_dropout=False, method=model.module.encode
    )
    return model.initial_cache(p, encoded, inputs, 7)

  # Only the shapes are checked: traced, nothing computed.
  cache = jax.eval_shape(cache_of, params, batch["encoder_input_tokens"])
  layers = cache["decoder"]["layers"]
  assert layers["self_attention"]["cached_key"].shape == (2, 2, 4, 7, 8)
  assert layers["self_attention"]["cache_index"].shape == (2,)
  assert layers["encoder_decoder_attention"]["encoded_key"].shape == (
      2,
      2,
      4,
      10,
      8,
  )


def test_conversion_round_trip_and_idempotence():
  params = jax.tree_util.tree_map(np.asarray, _unscanned_params())
  scanned = scan.scan_params(params)
  assert scan.is_scanned(scanned) and not scan.is_scanned(params)
  for i in range(3):
    np.testing.assert_array_equal(
        scanned["encoder"]["layers"]["attention"]["key"]["kernel"][i],
        params["encoder"][f"layers_{i}"]["attention"]["key"]["kernel"],
    )
  back = scan.unscan_params(scanned)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(
      params
  )
  assert _max_abs_diff(back, params) == 0.0
  # Already in the asked layout: unchanged; a top-level "params" level is kept.
  assert _max_abs_diff(scan.scan_params(scanned), scanned) == 0.0
  assert _max_abs_diff(scan.to_layout(params, False), params) == 0.0
  wrapped = scan.scan_params({"params": params})
  assert set(wrapped) == {"params"} and scan.is_scanned(wrapped)


def test_conversion_rejects_gaps_and_mismatched_layers():
  params = jax.tree_util.tree_map(np.asarray, _unscanned_params())
  gap = dict(params, encoder=dict(params["encoder"]))
  del gap["encoder"]["layers_1"]
  with pytest.raises(ValueError, match=r"encoder: layers \[0, 2\]"):
    scan.scan_params(gap)
  odd = dict(params, decoder=dict(params["decoder"]))
  odd["decoder"]["layers_1"] = {"mlp": odd["decoder"]["layers_1"]["mlp"]}
  with pytest.raises(ValueError, match="decoder: the layers do not all have"):
    scan.scan_params(odd)


def test_hf_export_of_scanned_model_equals_unscanned_export():
  pytest.importorskip("safetensors")
  from tkx.checkpoints import hf

  params = jax.tree_util.tree_map(np.asarray, _unscanned_params())
  plain = hf.params_to_hf(params, _config())
  scanned_cfg = _config(scan_layers=True)
  scanned = hf.params_to_hf(scan.scan_params(params), scanned_cfg)
  assert sorted(plain) == sorted(scanned)
  for name in plain:
    np.testing.assert_array_equal(scanned[name], plain[name])
  # Import into a scanned config gives the scanned layout, equal to the converted one.
  imported = hf.hf_to_params(dict(plain), scanned_cfg)
  assert scan.is_scanned(imported)
  assert _max_abs_diff(imported, scan.scan_params(params)) == 0.0
  hf.check_params(imported, scanned_cfg)  # either layout passes the check


def test_model_gin_records_scan_layers(tmp_path):
  from tkx.checkpoints import directory

  for cfg in (_config(), _config(scan_layers=True, attention_impl="cudnn")):
    path = tmp_path / "model.gin"
    path.write_text(directory.config_to_gin(cfg))
    loaded = gin_utils.load_config_from_gin([str(path)])
    assert loaded.scan_layers == cfg.scan_layers
    assert loaded.attention_impl == cfg.attention_impl


def test_t5x_checkpoint_of_scanned_params_is_per_layer(tmp_path):
  pytest.importorskip("tensorstore")
  from tkx.checkpoints import t5x_format

  params = jax.tree_util.tree_map(np.asarray, _unscanned_params())
  t5x_format.save_params(str(tmp_path), scan.scan_params(params), step=3)
  loaded = t5x_format.load_params(str(tmp_path))
  assert not scan.is_scanned(loaded)
  assert _max_abs_diff(loaded, params) == 0.0


def test_initial_checkpoint_of_either_layout_loads_into_a_scanned_model(
    tmp_path,
):
  from tkx.checkpoints import directory, orbax_io

  params = jax.tree_util.tree_map(np.asarray, _unscanned_params())
  abstract = _model(scan_layers=True).params_shapes(SHAPES)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree_util.tree_map(lambda _: device, abstract)
  for name, tree in (("plain", params), ("scanned", scan.scan_params(params))):
    orbax_io.save_params(str(tmp_path / name), tree)
    loaded = directory.load_initial_params(
        str(tmp_path / name), abstract, shardings
    )
    assert _max_abs_diff(loaded, scan.scan_params(params)) == 0.0
