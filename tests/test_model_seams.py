"""The model seams: the model interface, the injectable dense layer, MODEL from model.gin, shardings in one place."""

import re

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_models

import toy_dense
from tkx import gin_utils, partitioning, train_state
from tkx.checkpoints import directory, orbax_io
from tkx.models import base, models, network

SHAPES = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 6)}
PROJECTIONS = re.compile(
    r"(attention|self_attention|encoder_decoder_attention)/(query|key|value|out)"
    r"|mlp/(wi|wi_0|wi_1|wo)"
)


def tiny_config(**overrides):
  return tiny_models.t5_config(**{**overrides})


def tiny_model(**overrides):
  return models.EncoderDecoderModel(
      network.Transformer(tiny_config(**overrides))
  )


def leaves(tree):
  """{"encoder/layers_0/attention/query/kernel": leaf} of a params tree."""
  return {
      "/".join(k.key for k in path): leaf
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def test_model_interface_is_abstract_and_gives_the_derived_methods():
  with pytest.raises(TypeError):
    base.BaseModel()
  assert issubclass(models.EncoderDecoderModel, base.BaseModel)

  class Constant(base.BaseModel):
    """The smallest model: every abstract method, nothing else."""

    def loss_fn(self, params, batch, dropout_rng):
      return params["w"] * (1.0 if dropout_rng is None else 2.0), {}

    def score_batch(self, params, batch):
      return jnp.zeros(2)

    def predict_batch_with_aux(self, params, batch, rng=None, **kwargs):
      return jnp.ones((2, 3), jnp.int32), {"scores": jnp.zeros(2)}

    def get_initial_variables(self, rng, input_shapes, input_types=None):
      return {"params": {"w": jnp.ones((3,))}}

    def variables_logical_axes(self, input_shapes):
      return {"params": {"w": jax.sharding.PartitionSpec("embed")}}

  model = Constant()
  params = {"w": jnp.float32(3.0)}
  assert model.eval_fn(params, {})[0] == 3.0  # no dropout
  assert model.predict_batch(params, {}).shape == (2, 3)
  assert model.config is None and model.loss_normalizing_factor is None
  assert model.eos_id == 1  # no vocabulary: T5's EOS
  assert model.params_shapes(SHAPES)["w"].shape == (3,)
  sharding = base.param_shardings(model, partitioning.Partitioner())
  assert sharding["w"].spec == jax.sharding.PartitionSpec(None)


def test_toy_dense_layer_replaces_every_attention_and_mlp_projection():
  plain = leaves(tiny_model().params_shapes(SHAPES))
  toy = leaves(tiny_model(dense_layer="toy_scaled").params_shapes(SHAPES))
  scaled = {k.rsplit("/", 1)[0] for k in toy if k.endswith("/output_scale")}
  projections = {
      k.rsplit("/", 1)[0] for k in plain if k.endswith("/kernel")
  } - {"decoder/logits_dense"}
  assert all(PROJECTIONS.search(p) for p in projections)
  # 4 attention projections x 3 attentions + 3 MLP projections x 2 layers.
  assert scaled == projections and len(scaled) == 4 * 3 + 3 * 2
  # The rest of the tree (names, shapes) is T5's: checkpoints still import.
  kept = {k: v for k, v in toy.items() if not k.endswith("/output_scale")}
  assert {k: v.shape for k, v in kept.items()} == {
      k: v.shape for k, v in plain.items()
  }
  logical = leaves(
      tiny_model(dense_layer="toy_scaled").params_logical_axes(SHAPES)
  )
  assert logical[
      "encoder/layers_0/mlp/wi_0/output_scale"
  ] == jax.sharding.PartitionSpec("mlp")


def random_params(model, seed=0):
  """Random parameters of the model's shapes (eval_shape only: no initialiser compiled)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: rng.normal(size=s.shape).astype(s.dtype),
      model.params_shapes(SHAPES),
  )


def test_toy_dense_layer_changes_the_numbers_only_through_its_parameters():
  # One encoder layer (its attention and MLP projections); two small programs.
  plain, toy = (
      network.EncoderLayer(tiny_config(dense_layer=name))
      for name in ("dense", "toy_scaled")
  )
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 16)), jnp.float32)
  mask = jnp.ones((2, 1, 5, 5), bool)
  init = jax.jit(
      lambda rng: flax.linen.meta.unbox(
          (plain.init(rng, x, mask, None), toy.init(rng, x, mask, None))
      )
  )
  apply = jax.jit(
      lambda p, t: (plain.apply(p, x, mask, None), toy.apply(t, x, mask, None))
  )
  plain_vars, toy_vars = init(jax.random.PRNGKey(0))
  # The plain layer's kernels in the toy layer, every scale at its initial 1.
  flat_plain = leaves(plain_vars)
  toy_vars = jax.tree_util.tree_map_with_path(
      lambda p, v: flat_plain.get("/".join(k.key for k in p), v), toy_vars
  )
  expected, out = apply(plain_vars, toy_vars)
  np.testing.assert_array_equal(out, expected)
  toy_vars["params"]["mlp"]["wo"]["output_scale"] *= 2.0
  assert not np.allclose(apply(plain_vars, toy_vars)[1], expected)


def test_unknown_dense_layer_names_the_setting():
  with pytest.raises(
      ValueError, match=r"T5Config.dense_layer: unknown 'nope'.*'dense'"
  ):
    tiny_model(dense_layer="nope").params_shapes(SHAPES)
  with pytest.raises(ValueError, match="already registered"):
    network.register_dense_layer("dense")(toy_dense.ScaledDense)


@gin.configurable(module="toy_models")
class LabelledModel(models.EncoderDecoderModel):
  """A model class of its own: model.gin must name it, the reader must build it."""


def test_checkpoint_records_and_rebuilds_its_model_class_and_dense_layer(
    tmp_path,
):
  # The embedded vocabulary's 1,000 pieces fit.
  config = tiny_config(dense_layer="toy_scaled", vocab_size=1024)
  model = LabelledModel(network.Transformer(config), z_loss=3e-4)
  directory.write_model_files_for(model, str(tmp_path))
  text = (tmp_path / "model.gin").read_text()
  assert "import toy_dense" in text and "import test_model_seams" in text
  # gin's shortest unambiguous name when the gin module is not the Python module's.
  assert "MODEL = @LabelledModel()" in text
  assert "dense_layer = 'toy_scaled'" in text
  params = random_params(model)
  orbax_io.save_params(str(tmp_path), params, step=3)
  gin.clear_config()

  loaded = directory.load(str(tmp_path))
  assert type(loaded.model) is LabelledModel and loaded.step == 3
  assert loaded.model.config == model.config and loaded.model.z_loss == 3e-4
  assert loaded.vocabulary is loaded.model.output_vocabulary
  for key, value in leaves(params).items():
    np.testing.assert_array_equal(leaves(loaded.params)[key], value)


def test_model_gin_without_model_is_refused(tmp_path):
  (tmp_path / "model.gin").write_text(
      re.sub(r"MODEL = .*\n", "", directory.config_to_gin(tiny_config()))
  )
  with pytest.raises(
      directory.CheckpointError, match="model.gin: binds no MODEL"
  ):
    directory.load(str(tmp_path))
  with pytest.raises(gin_utils.GinConfigError, match="bind no MODEL"):
    gin_utils.get_model_from_gin([str(tmp_path / "model.gin")])


def test_parameter_shardings_come_from_one_place():
  model = tiny_model()
  partitioner = partitioning.Partitioner(num_partitions=2)
  abstract = base.abstract_params(model, partitioner)
  shardings = base.param_shardings(model, partitioner)
  initializer = train_state.TrainStateInitializer(
      model, __import__("optax").sgd(0.1), partitioner
  )
  flat = leaves(abstract)
  assert leaves(initializer.params_shardings) == {
      k: v.sharding for k, v in flat.items()
  }
  assert {k: v.sharding for k, v in flat.items()} == leaves(shardings)
  # The model axis splits what the logical rules say it splits.
  assert flat[
      "encoder/layers_0/mlp/wi_0/kernel"
  ].sharding.spec == jax.sharding.PartitionSpec(None, "model")
