"""LoRA's dense layer: a fresh adapter is the base model, the adapted forward equals the merged one, per-row adapters."""

import functools

import flax
import gin
import jax
import numpy as np
import pytest

import tiny_models

from tkx import errors
from tkx.models import adapters, lora, network

TOKENS = dict(
    encoder_input_tokens=np.array([[5, 9, 3, 1, 0], [7, 2, 2, 8, 1]], np.int32),
    decoder_input_tokens=np.array([[0, 4, 6], [0, 3, 3]], np.int32),
    decoder_target_tokens=np.array([[4, 6, 1], [3, 3, 1]], np.int32),
)


def tiny_config(**overrides):
  return tiny_models.t5_config(**{"vocab_size": 32, **overrides})


def paths(tree):
  return {
      "/".join(k.key for k in p): leaf
      for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def with_random_adapters(params, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, v: (
          rng.normal(size=v.shape).astype(v.dtype) * 0.3
          if p[-1].key in lora.ADAPTER_PARAM_NAMES
          else v
      ),
      params,
  )


EVERY = ("query", "key", "value", "out", "wi", "wo")
CONFIG = lora.LoraConfig(rank=4, alpha=4.0, targets=EVERY)
# A name for LoRA on every projection with CONFIG (gin's `lora.LoraConfig` is what "lora" reads).
network.register_dense_layer("test_lora_every")(
    functools.partial(lora.LoraDense, config=CONFIG)
)


@pytest.fixture(scope="module")
def models():
  adapted = network.Transformer(tiny_config(dense_layer="test_lora_every"))
  plain = network.Transformer(tiny_config())
  init = jax.jit(
      lambda r: flax.linen.meta.unbox(
          adapted.init(r, **TOKENS, enable_dropout=False)["params"]
      )
  )
  params = jax.device_get(init(jax.random.PRNGKey(0)))
  return adapted, plain, params, CONFIG


@functools.lru_cache(maxsize=None)
def _jitted_apply(module):
  # One compiled program per module (eager op-by-op calls cost a minute here).
  return jax.jit(
      lambda params: module.apply(
          {"params": params}, **TOKENS, enable_dropout=False
      )
  )


def forward(module, params):
  return _jitted_apply(module)(params)


def test_adapters_sit_beside_every_targeted_kernel_with_rank_axes(models):
  adapted, _, params, cfg = models
  flat = paths(params)
  kernels = [p[: -len("/kernel")] for p in flat if p.endswith("/kernel")]
  projections = [k for k in kernels if "logits_dense" not in k]
  assert len(projections) == 2 * 4 + 4 + 3 + 3  # enc attn+mlp, dec 2 attn+mlp
  for proj in projections:
    a, b = flat[proj + "/lora_a"], flat[proj + "/lora_b"]
    assert a.shape == (flat[proj + "/kernel"].shape[0], cfg.rank)
    assert b.shape == (cfg.rank, flat[proj + "/kernel"].shape[1])
  assert "decoder/logits_dense/lora_a" not in flat
  assert adapters.num_params(adapters.split(params)[0]) == sum(
      v.size for k, v in flat.items() if k.endswith(("lora_a", "lora_b"))
  )


def test_fresh_adapter_is_the_base_model_and_merge_equals_adapted(models):
  adapted, plain, params, cfg = models
  base = lora.merge(params, cfg)
  assert not any(k.endswith(("lora_a", "lora_b")) for k in paths(base))
  np.testing.assert_array_equal(forward(adapted, params), forward(plain, base))
  trained = with_random_adapters(params)
  merged = lora.merge(trained, cfg)
  out, expected = forward(adapted, trained), forward(plain, merged)
  assert not np.allclose(out, forward(plain, base), atol=1e-3)
  # float32, different summation order: a @ (x-side) versus folded into the kernel.
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_per_row_adapters_equal_each_adapter_alone(models):
  adapted, _, params, cfg = models
  first, second = with_random_adapters(params, 1), with_random_adapters(
      params, 2
  )
  stacked = jax.tree_util.tree_map_with_path(
      lambda p, x, y: (
          np.stack([x, y]) if p[-1].key in lora.ADAPTER_PARAM_NAMES else x
      ),
      first,
      second,
  )
  rows = forward(adapted, stacked)
  np.testing.assert_allclose(rows[0], forward(adapted, first)[0], atol=1e-5)
  np.testing.assert_allclose(rows[1], forward(adapted, second)[1], atol=1e-5)


def test_settings_are_checked_and_name_the_field():
  with pytest.raises(
      errors.ConfigError, match=r"LoraConfig.targets: unknown \['q'\]"
  ):
    lora.LoraConfig(targets=("q",))
  with pytest.raises(errors.ConfigError, match="LoraConfig.rank"):
    lora.LoraConfig(rank=0)
  cfg = lora.LoraConfig(targets=("wi",), stacks=("decoder",))
  assert cfg.is_target(("decoder", "layers_3", "mlp", "wi_1"))
  assert not cfg.is_target(("encoder", "layers_0", "mlp", "wi_1"))
  assert not cfg.is_target(("decoder", "layers_0", "self_attention", "query"))


def test_gin_binds_the_lora_layer_settings():
  gin.parse_config("lora.LoraConfig.rank = 3\nlora.LoraConfig.targets = ['wo']")
  model = network.Transformer(tiny_config(dense_layer="lora"))
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), **TOKENS, enable_dropout=False)
  )
  flat = {
      k: v for k, v in paths(flax.linen.meta.unbox(shapes["params"])).items()
  }
  adapters = {k: v.shape for k, v in flat.items() if "lora_" in k}
  assert adapters == {
      "encoder/layers_0/mlp/wo/lora_a": (24, 3),
      "encoder/layers_0/mlp/wo/lora_b": (3, 16),
      "decoder/layers_0/mlp/wo/lora_a": (24, 3),
      "decoder/layers_0/mlp/wo/lora_b": (3, 16),
  }
  axes = flax.linen.get_partition_spec(shapes["params"])
  assert tuple(axes["encoder"]["layers_0"]["mlp"]["wo"]["lora_a"]) == (
      "mlp",
      "lora_rank",
  )
