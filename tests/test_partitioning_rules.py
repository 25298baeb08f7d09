"""Partitioner on 8 host CPU devices with a small Flax module of logical axes (no T5 needed)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.linen import partitioning as nn_partitioning
from jax.sharding import PartitionSpec as P

from tkx import partitioning
from tkx.partitioning import Partitioner

MESHES = [
    dict(data_axis_size=8),
    dict(num_partitions=2),
    dict(data_axis_size=2, model_axis_size=4),
    dict(num_partitions=2, shard_params_over_data=True),
]


class TinyMlp(nn.Module):
  """Embedding + MLP using both annotation styles (t5x `param_with_axes` and boxed params)."""

  vocab: int = 16
  embed: int = 8
  mlp: int = 16

  @nn.compact
  def __call__(self, tokens):
    embedding = nn_partitioning.param_with_axes(
        "embedding",
        nn.initializers.normal(1.0),
        (self.vocab, self.embed),
        axes=("vocab", "embed"),
    )
    wi = self.param(
        "wi",
        nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "mlp")
        ),
        (self.embed, self.mlp),
    )
    wo = nn_partitioning.param_with_axes(
        "wo",
        nn.initializers.lecun_normal(),
        (self.mlp, self.embed),
        axes=("mlp", "embed"),
    )
    scale = self.param(
        "scale", nn.initializers.ones, (self.embed,)
    )  # unannotated: replicated
    x = embedding[tokens]
    h = nn.relu(x @ wi)
    h = nn_partitioning.with_sharding_constraint(h, ("batch", "length", "mlp"))
    y = (h @ wo) * scale
    return y @ embedding.T


def _loss(params, batch):
  logits = TinyMlp().apply({"params": params}, batch["inputs"])
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["targets"]
  ).mean()


def _batch(seed=0, batch_size=8, length=6):
  rng = np.random.default_rng(seed)
  return {
      "inputs": rng.integers(0, 16, (batch_size, length), dtype=np.int32),
      "targets": rng.integers(0, 16, (batch_size, length), dtype=np.int32),
  }


def _sharded_params_and_step(partitioner):
  model = TinyMlp()
  abstract = jax.eval_shape(
      model.init, jax.random.key(0), jnp.ones((1, 6), jnp.int32)
  )
  shardings = partitioner.get_shardings(abstract)["params"]
  init = partitioner.partition(
      lambda rng: nn.unbox(model.init(rng, jnp.ones((1, 6), jnp.int32)))[
          "params"
      ],
      in_shardings=None,
      out_shardings=shardings,
  )
  params = init(jax.random.key(0))
  batch_shardings = {
      "inputs": partitioner.data_sharding,
      "targets": partitioner.data_sharding,
  }
  step = partitioner.partition(
      jax.value_and_grad(_loss),
      in_shardings=(shardings, batch_shardings),
      out_shardings=(partitioner.replicated, shardings),
  )
  return params, shardings, step


@pytest.mark.parametrize(
    "dims,activation,embed_mlp,vocab_embed,embed_only",
    [
        # t5x's 1-D rules: batch over data, the large parameter dims over model.
        (
            (1, 1),
            P("data", None, None),
            P(None, "model"),
            P("model", None),
            P(None),
        ),
        # 2-D activations: embed of activations over model (params: model is taken first).
        (
            (2, 1),
            P("data", None, "model"),
            P(None, "model"),
            P("model", None),
            P("model"),
        ),
        # 2-D parameters: embed of parameters over data (activations: data taken by batch).
        (
            (1, 2),
            P("data", None, None),
            P("data", "model"),
            P("model", "data"),
            P("data"),
        ),
        (
            (2, 2),
            P("data", None, "model"),
            P("data", "model"),
            P("model", "data"),
            P("model"),
        ),
    ],
)
def test_standard_rules_follow_t5x(
    dims, activation, embed_mlp, vocab_embed, embed_only
):
  rules = partitioning.standard_logical_axis_rules(*dims)
  partitioner = Partitioner(num_partitions=2, logical_axis_rules=rules)
  to_mesh = partitioner.logical_to_mesh_axes
  assert to_mesh(P("batch", "length", "embed")) == activation
  assert to_mesh(P("embed", "mlp")) == embed_mlp
  assert to_mesh(P("vocab", "embed")) == vocab_embed
  assert to_mesh(P("embed")) == embed_only
  assert to_mesh(P("heads", "kv")) == P("model", None)
  assert to_mesh(P("relpos_buckets", "heads")) == P(None, "model")
  # Keyword form, and additional rules go last.
  named = partitioning.standard_logical_axis_rules(
      activation_partitioning_dims=dims[0],
      parameter_partitioning_dims=dims[1],
      additional_rules=[("experts", "data")],
  )
  assert named[:-1] == rules and named[-1] == ("experts", "data")


def test_standard_rules_refuse_other_dims_and_shard_params_over_data_is_2d_params():
  with pytest.raises(ValueError, match="parameter_partitioning_dims=3"):
    partitioning.standard_logical_axis_rules(1, 3)
  fsdp = Partitioner(num_partitions=2, shard_params_over_data=True)
  assert list(
      fsdp.logical_axis_rules
  ) == partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
  assert (
      list(Partitioner(num_partitions=2).logical_axis_rules)
      == partitioning.standard_logical_axis_rules()
  )


def test_t5x_gin_bindings_bind_and_take_effect():
  import gin

  gin.parse_config(
      "tkx_t5x_gin/partitioning.PjitPartitioner.num_partitions = 4\n"
      "tkx_t5x_gin/partitioning.PjitPartitioner.logical_axis_rules = "
      "@partitioning.standard_logical_axis_rules()\n"
      "tkx_t5x_gin/partitioning.standard_logical_axis_rules.activation_partitioning_dims = 2\n"
      "tkx_t5x_gin/partitioning.standard_logical_axis_rules.parameter_partitioning_dims = 2"
  )
  with gin.config_scope("tkx_t5x_gin"):
    partitioner = partitioning.PjitPartitioner()
  assert (partitioner.data_axis_size, partitioner.model_axis_size) == (2, 4)
  to_mesh = partitioner.logical_to_mesh_axes
  assert to_mesh(P("batch", "length", "embed")) == P("data", None, "model")
  assert to_mesh(P("embed", "mlp")) == P("data", "model")


def test_t5x_gin_file_with_dynamic_registration_configures_tkx():
  import gin

  gin.clear_config()
  try:
    gin.parse_config(
        "from __gin__ import dynamic_registration\n"
        "from tkx import partitioning\n"
        "partitioning.PjitPartitioner.num_partitions = 2\n"
        "partitioning.PjitPartitioner.logical_axis_rules = "
        "@partitioning.standard_logical_axis_rules()\n"
        "partitioning.standard_logical_axis_rules.activation_partitioning_dims = 2\n"
    )
    partitioner = partitioning.PjitPartitioner()
  finally:
    gin.clear_config()
  assert partitioner.model_axis_size == 2
  assert partitioner.logical_to_mesh_axes(P("batch", "length", "embed")) == P(
      "data", None, "model"
  )


def test_pjit_partitioner_takes_t5x_arguments_and_refuses_what_tkx_cannot_do():
  tile = partitioning.PjitPartitioner(model_parallel_submesh=(1, 1, 1, 2))
  assert tile.model_axis_size == 2
  assert (
      partitioning.PjitPartitioner(
          num_partitions=1, backend="cpu"
      ).data_axis_size
      == 8
  )
  for kwargs, message in [
      (dict(), "set num_partitions or model_parallel_submesh"),
      (dict(num_partitions=2, model_parallel_submesh=(1, 1, 1, 2)), "not both"),
      (dict(model_parallel_submesh=(2, 1)), "4-tuple"),
      (dict(num_partitions=2, params_on_devices=False), "params_on_devices"),
      (dict(num_partitions=2, ici_mesh_shape=(1, 4, 2)), "set both"),
  ]:
    with pytest.raises(ValueError, match=message):
      partitioning.PjitPartitioner(**kwargs)


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (dict(), (8, 1)),
        (dict(num_partitions=2), (4, 2)),
        (dict(data_axis_size=2), (2, 4)),
        (dict(data_axis_size=2, model_axis_size=4), (2, 4)),
        (dict(model_axis_size=8), (1, 8)),
    ],
)
def test_mesh_shapes(kwargs, shape):
  mesh = Partitioner(**kwargs).mesh
  assert mesh.axis_names == ("data", "model")
  assert (mesh.shape["data"], mesh.shape["model"]) == shape
  # "model" varies fastest: neighbouring devices form one model replica.
  assert [d.id for d in mesh.devices.reshape(-1)] == sorted(
      d.id for d in jax.devices()
  )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            dict(data_axis_size=4, model_axis_size=4),
            "= 16, but there are 8 devices",
        ),
        (dict(num_partitions=3), "does not divide the 8 devices"),
        (dict(num_partitions=2, model_axis_size=4), "disagree"),
        (dict(data_axis_size=0), "positive integer"),
        (
            dict(logical_axis_rules=[("batch", "replica")]),
            "names mesh axis 'replica'",
        ),
    ],
)
def test_bad_mesh_settings_name_the_problem(kwargs, message):
  with pytest.raises(ValueError, match=message):
    Partitioner(**kwargs)


def test_logical_to_mesh_axes_never_reuses_a_mesh_axis():
  fsdp = Partitioner(num_partitions=2, shard_params_over_data=True)
  tree = {
      "act": P("batch", "length", "embed"),
      "emb": P("vocab", "embed"),
      "wi": P("embed", "mlp"),
      "bias": P("heads", "relpos_buckets"),
      "none": None,
  }
  mesh_axes = fsdp.logical_to_mesh_axes(tree)
  assert mesh_axes == {
      "act": P("data", None, None),
      "emb": P("model", "data"),
      "wi": P("data", "model"),
      "bias": P("model", None),
      "none": P(),
  }
  plain = Partitioner(num_partitions=2).logical_to_mesh_axes(tree)
  assert plain["act"] == P("data", None, None) and plain["emb"] == P(
      "model", None
  )
  shardings = fsdp.logical_to_sharding(tree)
  assert (
      shardings["wi"].spec == P("data", "model")
      and shardings["wi"].mesh is fsdp.mesh
  )


def test_explicit_rules_with_shard_params_over_data_replace_embed_rule():
  partitioner = Partitioner(
      logical_axis_rules=[("batch", "data"), ("embed", None), ("mlp", "model")],
      num_partitions=2,
      shard_params_over_data=True,
  )
  assert partitioner.logical_to_mesh_axes(P("embed", "mlp")) == P(
      "data", "model"
  )


def test_logical_axes_from_both_annotation_styles():
  abstract = jax.eval_shape(
      TinyMlp().init, jax.random.key(0), jnp.ones((1, 6), jnp.int32)
  )
  axes = Partitioner().get_logical_axes(abstract)
  assert set(axes) == {"params"}
  assert axes["params"] == {
      "embedding": P("vocab", "embed"),
      "wi": P("embed", "mlp"),
      "wo": P("mlp", "embed"),
      "scale": P(),
  }


@pytest.mark.parametrize(
    "kwargs", MESHES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
)
def test_params_sharded_as_rules_say_and_loss_matches_one_device(kwargs):
  partitioner = Partitioner(**kwargs)
  params, shardings, step = _sharded_params_and_step(partitioner)
  data, model = partitioner.data_axis_size, partitioner.model_axis_size
  embed_ways = data if kwargs.get("shard_params_over_data") else 1
  assert params["wi"].sharding.spec == shardings["wi"].spec
  assert {s.data.shape for s in params["wi"].addressable_shards} == {
      (8 // embed_ways, 16 // model)
  }
  assert {s.data.shape for s in params["embedding"].addressable_shards} == {
      (16 // model, 8 // embed_ways)
  }
  assert {s.data.shape for s in params["scale"].addressable_shards} == {(8,)}

  batch = partitioner.host_local_to_global(_batch())
  assert batch["inputs"].sharding.spec == P("data")
  loss, grads = step(params, batch)
  assert grads["wo"].sharding.spec == shardings["wo"].spec

  one = Partitioner(devices=jax.devices()[:1])
  params1, _, step1 = _sharded_params_and_step(one)
  loss1, grads1 = step1(params1, one.host_local_to_global(_batch()))
  np.testing.assert_allclose(loss, loss1, rtol=1e-5, atol=1e-6)
  for name in grads1:
    np.testing.assert_allclose(grads[name], grads1[name], rtol=1e-5, atol=1e-6)


def test_activation_constraints_inside_the_model_take_effect():
  partitioner = Partitioner(num_partitions=2)

  def hidden(x):
    return nn_partitioning.with_sharding_constraint(
        x * 2.0, ("batch", "length", "mlp")
    )

  out = partitioner.partition(hidden, in_shardings=None, out_shardings=None)(
      jnp.ones((8, 6, 16))
  )
  assert out.sharding.spec == P("data", None, "model")


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optax.adamw(1e-3),
        lambda: optax.adafactor(1e-3, min_dim_size_to_factor=4),
    ],
    ids=["adamw", "adafactor"],
)
def test_optimizer_state_follows_params(make_tx):
  partitioner = Partitioner(num_partitions=2, shard_params_over_data=True)
  params, shardings, _ = _sharded_params_and_step(partitioner)
  tx = make_tx()
  abstract_state = jax.eval_shape(tx.init, params)
  state_shardings = partitioner.optimizer_state_shardings(
      abstract_state, params, shardings
  )
  flat = {
      jax.tree_util.keystr(p): (leaf, s)
      for (p, leaf), s in zip(
          jax.tree_util.tree_flatten_with_path(abstract_state)[0],
          jax.tree_util.tree_leaves(state_shardings),
      )
  }
  checked = 0
  for key, (leaf, sharding) in flat.items():
    if leaf.shape == (8, 16) and "wi" in key:  # full-shape moments of wi
      assert sharding.spec == P("data", "model"), key
      checked += 1
    elif "wi" in key and leaf.shape == (
        8,
    ):  # Adafactor's factored row statistic
      assert sharding.spec == P("data"), key
      checked += 1
    elif "wi" in key and leaf.shape == (16,):  # ... and column statistic
      assert sharding.spec == P("model"), key
      checked += 1
    elif leaf.ndim == 0:
      assert sharding.spec == P(), key
  assert checked >= 2
  state = partitioner.partition(
      tx.init, in_shardings=(shardings,), out_shardings=state_shardings
  )(params)
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(
      abstract_state
  )


def test_data_layout_single_process():
  partitioner = Partitioner(num_partitions=2)
  layout = partitioner.get_data_layout(batch_size=8)
  assert (
      layout.shard_id,
      layout.num_shards,
      layout.is_first_host_in_replica_set,
  ) == (0, 1, True)
  assert layout.per_host_batch_size == 8
  info = partitioner.get_data_shard_info()
  assert (info.index, info.num_shards) == (0, 1)
  with pytest.raises(ValueError, match="not divisible by the data axis size 4"):
    partitioner.get_data_layout(batch_size=6)


def test_host_local_to_global_keeps_values_and_checks_shapes():
  partitioner = Partitioner(num_partitions=2)
  batch = _batch(seed=3)
  global_batch = partitioner.host_local_to_global(batch)
  np.testing.assert_array_equal(
      np.asarray(global_batch["targets"]), batch["targets"]
  )
  assert len(global_batch["inputs"].addressable_shards) == 8
  assert {s.data.shape for s in global_batch["inputs"].addressable_shards} == {
      (2, 6)
  }
  np.testing.assert_array_equal(
      partitioner.global_to_host(global_batch)["inputs"], batch["inputs"]
  )
  with pytest.raises(ValueError, match="not divisible by the data axis size 4"):
    partitioner.host_local_to_global({"inputs": np.zeros((6, 3), np.int32)})
  with pytest.raises(ValueError, match="scalar"):
    partitioner.host_local_to_global({"step": np.int32(3)})


def test_uneven_dimensions_stay_unsharded():
  partitioner = Partitioner(num_partitions=4)

  class Odd(nn.Module):

    @nn.compact
    def __call__(self, x):
      w = nn_partitioning.param_with_axes(
          "w", nn.initializers.zeros, (8, 6), axes=("embed", "mlp")
      )
      v = nn_partitioning.param_with_axes(
          "v", nn.initializers.zeros, (8, 12), axes=("embed", "mlp")
      )
      return x @ w, x @ v

  abstract = jax.eval_shape(Odd().init, jax.random.key(0), jnp.ones((1, 8)))
  shardings = partitioner.get_shardings(abstract)["params"]
  assert shardings["w"].spec == P(None, None)  # 6 is not divisible by model=4
  assert shardings["v"].spec == P(None, "model")


def test_gin_configures_the_partitioner():
  import gin

  gin.parse_config(
      "tkx_partitioning_test/partitioning.Partitioner.num_partitions = 4\n"
      "tkx_partitioning_test/partitioning.Partitioner.shard_params_over_data = True"
  )
  with gin.config_scope("tkx_partitioning_test"):
    partitioner = Partitioner()
  assert (partitioner.data_axis_size, partitioner.model_axis_size) == (2, 4)
  assert partitioner.logical_to_mesh_axes(P("vocab", "embed")) == P(
      "model", "data"
  )
