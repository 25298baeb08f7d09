"""Weight-only int8 inference (tkx.models.quantize): the layer, the conversion, the flag, a mesh."""

import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_models

from tkx import cli, infer, partitioning
from tkx.checkpoints import directory
from tkx.data import vocab as vocab_lib
from tkx.models import base, network, quantize

PROJECTIONS = {"query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo"}


def _tiny_config(**overrides):
  return tiny_models.t5_config(
      **{
          "vocab_size": 1024,
          "emb_dim": 32,
          "head_dim": 16,
          "mlp_dim": 64,
          "num_encoder_layers": 2,
          "num_decoder_layers": 2,
          **overrides,
      }
  )


def _model_and_params(cfg, seed=1):
  model = directory.build_model(cfg, vocab_lib.get_vocabulary())
  params = jax.jit(
      lambda r: model.get_initial_variables(r, base.init_input_shapes())
  )(jax.random.PRNGKey(seed))["params"]
  return model, params


def test_int8_dense_equals_float_dense_within_the_rounding_bound():
  rng = np.random.RandomState(0)
  w = rng.normal(size=(64, 48)).astype(np.float32)
  w[:, 5] = 0.0  # an all-zero output channel stays exactly zero
  x = rng.normal(size=(3, 7, 64)).astype(np.float32)
  kernel, scale = quantize.quantize_kernel(w, in_axis=0)
  assert kernel.dtype == jnp.int8 and scale.shape == (48,)
  assert int(jnp.max(jnp.abs(kernel))) == 127
  dense = network.Dense(features=48, kernel_axes=("embed", "mlp"))
  int8 = quantize.Int8Dense(features=48, kernel_axes=("embed", "mlp"))
  want = dense.apply({"params": {"kernel": w}}, x)
  got = int8.apply(
      {"params": {"kernel": kernel, "kernel_scale": scale}}, jnp.asarray(x)
  )
  # Rounding moves each weight by at most scale/2: |error| <= sum_i |x_i| * scale_j / 2.
  bound = np.abs(x).sum(-1, keepdims=True) * np.asarray(scale) / 2
  err = np.abs(np.asarray(got) - np.asarray(want))
  assert np.all(err <= bound * (1 + 1e-5) + 1e-6)
  assert np.all(np.asarray(got)[..., 5] == 0)
  # In practice far below the bound: 1% of the output's scale.
  assert err.max() < 0.01 * np.abs(np.asarray(want)).max()


@pytest.mark.parametrize("family", ["t5_1_0", "t5_1_1", "mt5"], ids=lambda f: f)
def test_quantized_small_models_hold_a_quarter_of_the_kernel_bytes(family):
  """Abstract shapes only (nothing allocated): every projection int8 + scale, the rest float."""
  from tkx import gin_utils

  model = gin_utils.get_model_from_gin(
      [f"gin_configs/models/{family}/small.gin"],
      [
          "vocab.get_vocabulary.path = None",
          "vocab.get_vocabulary.extra_ids = 0",
      ],
  )
  shapes = model.params_shapes(base.init_input_shapes())
  qshapes = quantize.quantize_model(model).params_shapes(
      base.init_input_shapes()
  )
  flat = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
  qflat = dict(jax.tree_util.tree_flatten_with_path(qshapes)[0])
  kernels = [p for p in flat if p[-2].key in PROJECTIONS]
  cfg = model.config
  mlp = len(cfg.mlp_activations) + 1  # wi (T5 1.0) or wi_0, wi_1; and wo
  assert (
      len(kernels)
      == (4 + mlp) * cfg.num_encoder_layers + (8 + mlp) * cfg.num_decoder_layers
  )
  kernel_bytes = sum(quantize.params_bytes(flat[p]) for p in kernels)
  assert (
      sum(quantize.params_bytes(qflat[p]) for p in kernels) * 4 == kernel_bytes
  )
  for p in kernels:
    assert qflat[p].dtype == jnp.int8
    scale = qflat[p[:-1] + (jax.tree_util.DictKey("kernel_scale"),)]
    assert scale.shape == flat[p].shape[-1:] and scale.dtype == jnp.float32
  others = [p for p in flat if p not in kernels]
  assert all(
      qflat[p] == flat[p] for p in others
  )  # embeddings, logits_dense, norms stay float
  assert len(qflat) == len(flat) + len(kernels)


def test_quantized_tiny_model_decodes_as_float_on_a_mesh_and_alone():
  """8 forced CPU devices: data x model (2 partitions) gives the tokens of one device."""
  model, params = _model_and_params(
      _tiny_config(scan_layers=True, num_encoder_layers=1, num_decoder_layers=1)
  )
  quantized = quantize.quantize_model(model)
  ids = [
      list(np.random.RandomState(i).randint(3, 1000, size=12 + i)) + [1]
      for i in range(8)
  ]
  decode = infer.DecodeConfig(max_decode_length=4)
  outputs = {}
  for name, part in {
      "one device": partitioning.Partitioner(
          num_partitions=1, devices=jax.devices()[:1]
      ),
      "2x4 mesh": partitioning.Partitioner(num_partitions=2),
  }.items():
    qparams = quantize.quantize_params(params, quantized, part)
    scale = qparams["decoder"]["layers"]["mlp"]["wi_0"]["kernel_scale"]
    kernel = qparams["decoder"]["layers"]["mlp"]["wi_0"]["kernel"]
    if name == "2x4 mesh":  # [layers, embed, mlp]: the float kernel's axes
      assert kernel.sharding.spec == jax.sharding.PartitionSpec(
          None, None, "model"
      )
      assert scale.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    outputs[name] = infer.Predictor(
        quantized,
        qparams,
        partitioner=part,
        batch_size=8,
        decode_config=decode,
        input_buckets=(32,),
    ).predict_ids(ids, progress=False)
  assert outputs["2x4 mesh"] == outputs["one device"]


def _input_file(tmp_path):
  path = tmp_path / "in.jsonl"
  lines = [
      {"id": str(i), "inputs": f"Definition: copy. Input: {w} Output:"}
      for i, w in enumerate(["India", "Nepal", "Peru", "Chile"])
  ]
  path.write_text("".join(json.dumps(x) + "\n" for x in lines))
  return path


def _infer(checkpoint, inputs, out, *extra):
  argv = ["infer", "--checkpoint", checkpoint, "--input_file", str(inputs)]
  argv += ["--output_file", str(out), "--max_decode_length", "6"]
  argv += ["--max_input_length", "64", "--no_progress", *extra]
  assert cli.main(argv) == 0
  return [json.loads(line)["prediction"] for line in out.open()]


def test_infer_quantize_int8_end_to_end_and_from_gin(
    tiny_checkpoint, tmp_path, caplog
):
  inputs = _input_file(tmp_path)
  with caplog.at_level("INFO", logger="tkx.models.quantize"):
    by_flag = _infer(
        tiny_checkpoint, inputs, tmp_path / "a.jsonl", "--quantize", "int8"
    )
  assert "quantized the projection kernels to int8" in caplog.text
  assert len(by_flag) == 4
  # The gin binding the flag becomes: the checkpoint loads quantized, and decodes as the command did.
  gin.clear_config()
  gin.parse_config("quantize.quantize_checkpoint.mode = 'int8'")
  loaded = directory.load(tiny_checkpoint)
  assert loaded.model.config.dense_layer == "int8"
  wo = loaded.params["encoder"]["layers_0"]["mlp"]["wo"]
  assert wo["kernel"].dtype == jnp.int8 and wo["kernel_scale"].shape == (32,)
  predictor = infer.Predictor(
      loaded.model,
      loaded.params,
      batch_size=8,
      decode_config=infer.DecodeConfig(max_decode_length=6),
      input_buckets=(64,),
  )
  texts = [json.loads(line)["inputs"] for line in inputs.open()]
  direct = infer.predict_texts(
      predictor, loaded.vocabulary, texts, max_input_length=64, progress=False
  )
  assert direct == by_flag


@pytest.mark.parametrize("command", ["infer", "generate", "eval", "serve"])
def test_an_unknown_quantize_value_is_one_line_naming_the_flag(
    tiny_checkpoint, tmp_path, capsys, command
):
  argv = [command, "--checkpoint", tiny_checkpoint, "--quantize", "int4"]
  if command == "infer":
    argv += ["--input_file", str(_input_file(tmp_path))]
    argv += ["--output_file", str(tmp_path / "o.jsonl")]
  elif command == "generate":
    argv += ["hello"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err == (
      f"tkx {command}: error: --quantize: unknown 'int4'; choose from none, int8"
  )
  assert not (tmp_path / "o.jsonl").exists()


def test_a_model_that_is_not_plain_dense_is_refused_by_name():
  model, _ = _model_and_params(_tiny_config())
  quantized = quantize.quantize_model(model)
  with pytest.raises(
      quantize.errors.ConfigError, match="dense_layer 'dense'.*'int8'"
  ):
    quantize.quantize_model(quantized)
  with pytest.raises(
      quantize.errors.ConfigError, match="quantize.quantize_checkpoint.mode"
  ):
    quantize.QuantizeMode.parse("fp4", "quantize.quantize_checkpoint.mode")
