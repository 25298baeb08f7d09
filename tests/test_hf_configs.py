"""Released Hugging Face T5 configs map onto tkx's model gin sizes and parameter trees.

The config.json fields below are those of the released checkpoints (t5-base is T5 1.0;
google/t5-base-lm-adapt, the base of allenai/tk-instruct-base-def-pos, and
google/t5-xl-lm-adapt, the base of tk-instruct-3b, are T5 1.1; google/mt5-base).
Shapes are computed with jax.eval_shape, so nothing of that size is allocated.
"""

import dataclasses

import pytest

from tkx import gin_utils
from tkx.checkpoints import directory, hf
from tkx.models import config as config_lib
from tkx.models import models, network

T5_1_1 = {
    "model_type": "t5",
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "vocab_size": 32128,
    "d_kv": 64,
    "relative_attention_num_buckets": 32,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
}
RELEASED = {
    "t5-base": (
        "gin_configs/models/t5_1_0/base.gin",
        {
            "model_type": "t5",
            "vocab_size": 32128,
            "d_model": 768,
            "d_kv": 64,
            "d_ff": 3072,
            "num_layers": 12,
            "num_heads": 12,
            "relative_attention_num_buckets": 32,
            "dropout_rate": 0.1,
            "layer_norm_epsilon": 1e-6,
        },
    ),
    "google/t5-base-lm-adapt": (
        "gin_configs/models/t5_1_1/base.gin",
        dict(
            T5_1_1,
            d_model=768,
            d_ff=2048,
            num_layers=12,
            num_decoder_layers=12,
            num_heads=12,
        ),
    ),
    "google/t5-xl-lm-adapt": (
        "gin_configs/models/t5_1_1/xl.gin",
        dict(
            T5_1_1,
            d_model=2048,
            d_ff=5120,
            num_layers=24,
            num_decoder_layers=24,
            num_heads=32,
        ),
    ),
    "google/mt5-base": (
        "gin_configs/models/mt5/base.gin",
        dict(
            T5_1_1,
            model_type="mt5",
            vocab_size=250112,
            d_model=768,
            d_ff=2048,
            num_layers=12,
            num_decoder_layers=12,
            num_heads=12,
        ),
    ),
}


def _architecture(config):
  # Fields that fix the weights; dtype and dropout are run choices.
  return {
      k: v
      for k, v in dataclasses.asdict(config).items()
      if k not in ("dtype", "param_dtype", "dropout_rate")
  }


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_config_matches_gin_size_and_param_tree(name):
  gin_file, hf_config = RELEASED[name]
  config = hf.hf_config_to_t5config(hf_config, source=f"{name}/config.json")
  assert _architecture(config) == _architecture(
      gin_utils.load_config_from_gin([gin_file])
  )
  model = models.EncoderDecoderModel(network.Transformer(config))
  shapes = model.params_shapes(
      {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
  )
  from flax import traverse_util

  got = {
      k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()
  }
  assert got == hf.expected_shapes(config)
  # Exported back, the HF config describes the same model.
  assert hf.hf_config_to_t5config(hf.t5config_to_hf_config(config)) == config


@pytest.mark.parametrize(
    "activations",
    [("relu",), ("gelu", "linear"), ("relu", "linear"), ("gelu_exact",)],
)
def test_config_gin_round_trip(tmp_path, activations):
  config = config_lib.T5Config(
      vocab_size=1024,
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=3,
      num_decoder_layers=1,
      mlp_activations=activations,
      logits_via_embedding=activations == ("relu",),
      dropout_rate=0.05,
      dtype="bfloat16",
      relative_attention_num_buckets=16,
      relative_attention_max_distance=64,
      layer_norm_epsilon=1e-5,
  )
  path = tmp_path / "model.gin"
  path.write_text(directory.config_to_gin(config, comment="test\nsecond line"))
  assert gin_utils.load_config_from_gin([str(path)]) == config
  assert (
      hf.hf_config_to_t5config(
          hf.t5config_to_hf_config(config), dtype="bfloat16"
      )
      == config
  )
  # The gin file builds the whole model (MODEL, VOCABULARY), not only the config.
  model = gin_utils.get_model_from_gin([str(path)])
  assert model.module.config == config
  assert model.output_vocabulary.vocab_size <= config.vocab_size
