"""The real tiny T5 (`tkx.models`) on 8 CPU devices: every mesh gives one device's loss and gradients,
and parameters are laid out as the logical-axis rules say."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tkx.models import config as t5_config
from tkx.models import models, network
from tkx.partitioning import Partitioner

INPUT_SHAPES = {"encoder_input_tokens": (8, 12), "decoder_input_tokens": (8, 6)}
MESHES = {
    "data8": dict(data_axis_size=8),
    "data4_model2": dict(data_axis_size=4, model_axis_size=2),
    "data2_model4": dict(data_axis_size=2, model_axis_size=4),
    "data4_model2_fsdp": dict(num_partitions=2, shard_params_over_data=True),
}


def tiny_t5() -> models.EncoderDecoderModel:
  # Gated GELU (T5 1.1 layout: wi_0/wi_1, separate logits_dense); every sharded dim divides 8.
  cfg = t5_config.T5Config(
      vocab_size=64,
      emb_dim=16,
      num_heads=4,
      head_dim=4,
      mlp_dim=32,
      num_encoder_layers=1,
      num_decoder_layers=1,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )
  return models.EncoderDecoderModel(network.Transformer(cfg))


def fixed_batch(seed=0):
  rng = np.random.default_rng(seed)
  targets = rng.integers(2, 64, (8, 6), dtype=np.int32)
  targets[:, 4:] *= rng.integers(
      0, 2, (8, 1), dtype=np.int32
  )  # some padded targets
  inputs = rng.integers(2, 64, (8, 12), dtype=np.int32)
  inputs[:4, 9:] = 0
  return {
      "encoder_input_tokens": inputs,
      "decoder_input_tokens": np.concatenate(
          [np.zeros((8, 1), np.int32), targets[:, :-1]], axis=1
      ),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": (targets > 0).astype(np.float32),
  }


def build(partitioner, model):
  """Sharded params (initialised under the partitioner) and a jitted loss-and-grad step."""
  init = functools.partial(
      model.get_initial_variables, input_shapes=INPUT_SHAPES, unbox=False
  )
  param_shardings = partitioner.get_shardings(
      jax.eval_shape(init, jax.random.key(0))
  )["params"]
  params = partitioner.partition(
      lambda rng: nn.unbox(init(rng))["params"],
      in_shardings=None,
      out_shardings=param_shardings,
  )(jax.random.key(0))
  batch_shardings = {k: partitioner.data_sharding for k in fixed_batch()}

  def loss_and_grads(params, batch):
    return jax.value_and_grad(lambda p: model.loss_fn(p, batch, None)[0])(
        params
    )

  step = partitioner.partition(
      loss_and_grads,
      in_shardings=(param_shardings, batch_shardings),
      out_shardings=(partitioner.replicated, param_shardings),
  )
  return params, param_shardings, step


@pytest.fixture(scope="module")
def reference():
  model = tiny_t5()
  one = Partitioner(devices=jax.devices()[:1])
  params, _, step = build(one, model)
  loss, grads = step(params, one.host_local_to_global(fixed_batch()))
  return model, jax.device_get(params), float(loss), jax.device_get(grads)


@pytest.mark.parametrize("mesh", list(MESHES))
def test_mesh_matches_one_device(reference, mesh):
  model, params1, loss1, grads1 = reference
  kwargs = MESHES[mesh]
  partitioner = Partitioner(**kwargs)
  params, shardings, step = build(partitioner, model)
  data, mp = partitioner.data_axis_size, partitioner.model_axis_size
  fsdp = kwargs.get("shard_params_over_data", False)

  # Layout: wi_0 [embed, mlp] -> (data if fsdp, model); embedding [vocab, embed] -> (model, data if fsdp).
  wi_0 = params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert wi_0.sharding.spec == P("data" if fsdp else None, "model")
  assert {s.data.shape for s in wi_0.addressable_shards} == {
      (16 // (data if fsdp else 1), 32 // mp)
  }
  embedding = params["token_embedder"]["embedding"]
  assert embedding.sharding.spec == P("model", "data" if fsdp else None)
  assert {s.data.shape for s in embedding.addressable_shards} == {
      (64 // mp, 16 // (data if fsdp else 1))
  }
  query = params["decoder"]["layers_0"]["self_attention"]["query"][
      "kernel"
  ]  # [embed, joined_kv]
  assert {s.data.shape for s in query.addressable_shards} == {
      (16 // (data if fsdp else 1), 16 // mp)
  }
  rel = params["encoder"]["relpos_bias"][
      "rel_embedding"
  ]  # [heads, relpos_buckets]
  assert {s.data.shape for s in rel.addressable_shards} == {(4 // mp, 32)}

  # Same initial values as one device (the init ran sharded).
  np.testing.assert_array_equal(
      np.asarray(embedding), params1["token_embedder"]["embedding"]
  )

  loss, grads = step(params, partitioner.host_local_to_global(fixed_batch()))
  np.testing.assert_allclose(float(loss), loss1, rtol=1e-5, atol=1e-5)
  assert (
      grads["decoder"]["logits_dense"]["kernel"].sharding.spec
      == shardings["decoder"]["logits_dense"]["kernel"].spec
  )
  flat1 = jax.tree_util.tree_leaves_with_path(grads1)
  flat = dict(
      (jax.tree_util.keystr(p), g)
      for p, g in jax.tree_util.tree_leaves_with_path(grads)
  )
  assert len(flat) == len(flat1)
  for path, g1 in flat1:
    np.testing.assert_allclose(
        np.asarray(flat[jax.tree_util.keystr(path)]),
        g1,
        rtol=1e-5,
        atol=1e-5,
        err_msg=jax.tree_util.keystr(path),
    )


@pytest.mark.slow
def test_decode_under_model_parallel_matches_one_device(reference):
  model, params1, _, _ = reference
  batch = {
      k: v for k, v in fixed_batch(1).items() if k == "encoder_input_tokens"
  }

  def decode(partitioner, params):
    predict = partitioner.partition(
        functools.partial(model.predict_batch, max_decode_length=5),
        in_shardings=(
            jax.tree_util.tree_map(lambda x: x.sharding, params),
            {"encoder_input_tokens": partitioner.data_sharding},
        ),
        out_shardings=partitioner.data_sharding,
    )
    return partitioner.global_to_host(
        predict(params, partitioner.host_local_to_global(batch))
    )

  partitioner = Partitioner(data_axis_size=2, model_axis_size=4)
  params, _, _ = build(partitioner, model)
  one = Partitioner(devices=jax.devices()[:1])
  np.testing.assert_array_equal(
      decode(partitioner, params), decode(one, build(one, model)[0])
  )
