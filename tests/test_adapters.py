"""Adapters without training runs: the trainable split, gradients of the adapters only, the tuned
prompt's masks and decoding, model.gin's adapter lines, model-info's full-vs-adapters memory.
"""

import dataclasses

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_models

from tkx import trainer
from tkx.checkpoints import directory
from tkx.models import adapters, lora, model_info, models, network


def tiny_config(**overrides):
  return tiny_models.t5_config(**{"vocab_size": 32, **overrides})


BATCH = dict(
    encoder_input_tokens=np.array(
        [[5, 9, 3, 1, 0, 0], [7, 2, 2, 8, 1, 0]], np.int32
    ),
    decoder_input_tokens=np.array([[0, 4, 6], [0, 3, 3]], np.int32),
    decoder_target_tokens=np.array([[4, 6, 1], [3, 3, 1]], np.int32),
    decoder_loss_weights=np.array([[1, 1, 1], [1, 1, 0]], np.float32),
)


def init_params(config, seed=0, bump=True):
  model = models.EncoderDecoderModel(network.Transformer(config))
  params = model.get_initial_variables(
      jax.random.PRNGKey(seed), {k: v.shape for k, v in BATCH.items()}
  )["params"]
  if not bump:
    return model, params
  # Non-zero adapters, so that they matter.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.1 if adapters.is_adapter_path(p) else v, params
  )
  return model, params


def test_split_and_combine_partition_the_tree():
  _, params = init_params(tiny_config(dense_layer="lora", prompt_length=2))
  trained, frozen = adapters.split(params)
  names = {k[-1] for k in flax.traverse_util.flatten_dict(trained)}
  assert names == {"lora_a", "lora_b", "prompt"}
  assert not any(
      adapters.is_adapter_path(k)
      for k in flax.traverse_util.flatten_dict(frozen)
  )
  assert jax.tree_util.tree_structure(
      adapters.combine(trained, frozen)
  ) == jax.tree_util.tree_structure(params)


def test_gradients_are_the_adapters_only_and_equal_the_full_gradients_there():
  model, params = init_params(tiny_config(dense_layer="lora", prompt_length=2))
  trained, frozen = adapters.split(params)
  # Jitted: op by op the backward pass of even a tiny model takes seconds.
  loss, grads, _ = jax.jit(
      lambda t, f: trainer.compute_gradients(
          model, t, BATCH, None, frozen_params=f
      )
  )(trained, frozen)
  full_loss, full_grads, _ = jax.jit(
      lambda p: trainer.compute_gradients(model, p, BATCH, None)
  )(params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(
      trained
  )
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  expected, _ = adapters.split(full_grads)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
      grads,
      expected,
  )


def forward_fn(model):
  """Jitted teacher-forced logits (op by op a forward pass takes seconds)."""
  return jax.jit(
      lambda p, enc, dec, tgt: model.module.apply(
          {"params": p}, enc, dec, tgt, enable_dropout=False
      )
  )


def test_prompt_positions_are_valid_and_padding_still_masked():
  config = tiny_config(prompt_length=3)
  model, params = init_params(config)
  forward = forward_fn(model)
  module = model.module
  encoded = jax.eval_shape(
      lambda p, x: module.apply(
          {"params": p}, x, enable_dropout=False, method=module.encode
      ),
      params,
      BATCH["encoder_input_tokens"],
  )
  assert encoded.shape == (2, 3 + 6, 16)
  tokens = [BATCH[k] for k in ("encoder_input_tokens", "decoder_input_tokens")]
  tokens.append(BATCH["decoder_target_tokens"])
  logits = forward(params, *tokens)
  # More padding changes nothing: the prompt is always attended, padding never.
  padded = np.pad(tokens[0], ((0, 0), (0, 4)))
  np.testing.assert_allclose(
      logits, forward(params, padded, *tokens[1:]), rtol=1e-5, atol=1e-6
  )
  # The prompt matters (a different prompt, different logits).
  other = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 2.0 if adapters.is_adapter_path(p) else v, params
  )
  assert not np.allclose(logits, forward(other, *tokens))


def test_prompt_tuned_greedy_decoding_equals_teacher_forced_argmax():
  config = tiny_config(prompt_length=3)
  model, params = init_params(config, seed=3)
  inputs = BATCH["encoder_input_tokens"]
  decoded = np.asarray(
      jax.jit(
          lambda p, x: model.predict_batch(
              p, {"encoder_input_tokens": x}, max_decode_length=4
          )
      )(params, inputs)
  )
  # Teacher forcing on the decoded tokens (no cache, the full masks) picks the same tokens.
  shifted = np.pad(decoded, ((0, 0), (1, 0)))[:, :-1]
  logits = forward_fn(model)(params, inputs, shifted, np.ones_like(decoded))
  np.testing.assert_array_equal(np.argmax(logits, -1), decoded)


def test_prompt_init_samples_vocabulary_rows_and_packing_is_refused():
  model, params = init_params(tiny_config(prompt_length=4), bump=False)
  embedding = params["token_embedder"]["embedding"]
  for row in params["encoder"]["prompt"]["prompt"]:
    assert np.min(np.abs(embedding - row).sum(-1)) == 0.0
  from tkx import errors

  with pytest.raises(errors.ConfigError, match="PACK = False"):
    model.module.apply(
        {"params": params},
        BATCH["encoder_input_tokens"],
        jnp.ones((2, 6), jnp.int32),
        method=model.module.encode,
    )


def test_model_gin_records_lora_settings_and_the_base(tmp_path):
  gin.bind_parameter("lora.LoraConfig.rank", 4)
  gin.bind_parameter("lora.LoraConfig.targets", ("query", "wo"))
  config = tiny_config(dense_layer="lora", prompt_length=2)
  text = directory.config_to_gin(config, base_checkpoint="/ckpt/base")
  assert "adapters.base_checkpoint.path = '/ckpt/base'" in text
  (tmp_path / "model.gin").write_text(text)
  gin.clear_config()
  read = directory.read_config(str(tmp_path))
  assert read == config
  assert lora.LoraConfig() == lora.LoraConfig(rank=4, targets=("query", "wo"))
  assert adapters.base_checkpoint() == "/ckpt/base"


def test_model_info_adapters_keep_gradients_and_optimizer_state_of_the_adapters_only():
  config = tiny_config(dense_layer="lora")
  full = model_info.memory_per_device(
      dataclasses.replace(config, dense_layer="dense"), optimizer="adamw"
  )
  ours = model_info.memory_per_device(
      config, optimizer="adamw", trainable="adapters"
  )
  _, params = init_params(config)
  n_adapters = adapters.num_params(adapters.split(params)[0])
  assert ours.trainable_params == n_adapters
  # AdamW: two float32 moments per trained parameter (+ a step count).
  assert 8 * n_adapters <= ours.optimizer_bytes_total < 8 * n_adapters + 64
  assert full.optimizer_bytes_total > 8 * full.param_bytes_total // 4 - 64
  info = model_info.report(config, optimizer="adamw", trainable="adapters")
  comparison = info["adapter_comparison"]
  assert comparison["adapters"]["gradients"] == 4 * n_adapters
  assert comparison["full"]["gradients"] == full.param_bytes_per_device
  assert "full fine-tuning vs adapters" in model_info.format_report(info)


def test_xla_adapter_step_holds_the_base_as_an_argument_and_donates_only_the_adapters():
  from tkx.models import xla_memory

  config = tiny_config(dense_layer="lora")
  recipe = xla_memory.Recipe(
      data=8,
      optimizer="adamw",
      batch_rows=8,
      inputs_length=8,
      targets_length=4,
      trainable="adapters",
  )
  step = xla_memory.analyse(config, recipe)["train_step"]
  mem = model_info.memory_per_device(
      config, data=8, optimizer="adamw", trainable="adapters"
  )
  state = mem.trainable_bytes_per_device + mem.optimizer_bytes_per_device
  # The whole model is an argument; only the adapters' state is donated (aliased).
  assert (
      step["arguments"]
      >= mem.param_bytes_per_device + mem.optimizer_bytes_per_device
  )
  assert state <= step["aliased"] <= state + 64, (step, state)


def test_an_adapter_checkpoint_whose_base_is_gone_is_one_clear_error(tmp_path):
  gin.bind_parameter(adapters.BASE_BINDING, str(tmp_path / "gone"))
  with pytest.raises(
      directory.CheckpointError, match="the adapters' base .*gone"
  ):
    directory._load_params_over_base(  # pylint: disable=protected-access
        str(tmp_path / "checkpoint_4"), {}
    )
