"""What bench/compile_time.py and bench/accelerator.py share: T5 1.1 sizes and the sharded training step.

Imports only what the model step needs (jax, flax, optax, orbax through
tkx.trainer; no seqio, TensorFlow or gin), so that bench/accelerator.py runs
in a plain JAX + PyTorch environment. `ensure_gin()` must run before tkx is
imported there; see its docstring.
"""

import sys
import types

import common  # noqa: F401  (puts the repository root on sys.path)

# T5 1.1 sizes, as gin_configs/models/t5_1_1/<size>.gin (bfloat16 activations, float32 params).
T5_1_1_SIZES = {
    "tiny": dict(
        vocab_size=1024,
        emb_dim=128,
        num_heads=4,
        head_dim=32,
        mlp_dim=512,
        num_encoder_layers=2,
        num_decoder_layers=2,
    ),
    "small": dict(
        emb_dim=512,
        num_heads=6,
        head_dim=64,
        mlp_dim=1024,
        num_encoder_layers=8,
        num_decoder_layers=8,
    ),
    "base": dict(
        emb_dim=768,
        num_heads=12,
        head_dim=64,
        mlp_dim=2048,
        num_encoder_layers=12,
        num_decoder_layers=12,
    ),
    "large": dict(
        emb_dim=1024,
        num_heads=16,
        head_dim=64,
        mlp_dim=2816,
        num_encoder_layers=24,
        num_decoder_layers=24,
    ),
    "xl": dict(
        emb_dim=2048,
        num_heads=32,
        head_dim=64,
        mlp_dim=5120,
        num_encoder_layers=24,
        num_decoder_layers=24,
    ),
}


def ensure_gin():
  """Lets tkx import where gin-config is not installed (returns True when a stand-in was put in place).

  tkx's model, optimizer and trainer modules decorate their classes with
  `gin.configurable` and use `gin.REQUIRED` as a default; nothing else of gin
  runs unless gin files are parsed, which these benches never do (configs are
  built in Python). The stand-in's decorators return what they decorate.
  """
  try:
    import gin  # noqa: F401

    return False
  except ImportError:
    pass
  stand_in = types.ModuleType("gin")

  def configurable(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
      return args[0]
    return lambda fn: fn

  stand_in.configurable = configurable
  stand_in.external_configurable = lambda fn, *a, **k: fn
  stand_in.constants_from_enum = lambda cls, *a, **k: cls
  stand_in.REQUIRED = object()
  sys.modules["gin"] = stand_in
  return True


def t5_config(size: str, **overrides):
  from tkx.models.config import T5Config

  kw = dict(
      vocab_size=32128,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
      dtype="bfloat16",
      param_dtype="float32",
  )
  kw.update(T5_1_1_SIZES[size])
  kw.update(overrides)
  return T5Config(**kw)


def batch_shapes(batch_size, inputs_length, targets_length):
  import jax
  import jax.numpy as jnp

  return {
      "encoder_input_tokens": jax.ShapeDtypeStruct(
          (batch_size, inputs_length), jnp.int32
      ),
      "decoder_input_tokens": jax.ShapeDtypeStruct(
          (batch_size, targets_length), jnp.int32
      ),
      "decoder_target_tokens": jax.ShapeDtypeStruct(
          (batch_size, targets_length), jnp.int32
      ),
      "decoder_loss_weights": jax.ShapeDtypeStruct(
          (batch_size, targets_length), jnp.float32
      ),
  }


def sharded_train_step(
    config,
    partitioner,
    batch_size,
    inputs_length,
    targets_length,
    learning_rate=1e-4,
):
  """tkx's full training step (loss, gradients, AdamW update) jitted with parameter shardings.

  Returns (jitted step, abstract TrainState, abstract batch, init_state(rng) that
  materialises a state with those shardings). Nothing is allocated until
  init_state runs; `jitted.lower(abstract_state, abstract_batch).compile()`
  compiles ahead of time.
  """
  import jax
  import jax.numpy as jnp

  from tkx import optimizers, trainer
  from tkx.models import models, network

  model = models.EncoderDecoderModel(network.Transformer(config))
  optimizer = optimizers.adamw(learning_rate)
  step_fn = trainer.make_train_step(model, optimizer, learning_rate)
  init_shapes = {
      "encoder_input_tokens": (1, inputs_length),
      "decoder_input_tokens": (1, targets_length),
  }

  def init_state(rng):
    params = model.get_initial_variables(rng, init_shapes)["params"]
    return trainer.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=rng,
    )

  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(0))
  params_shardings = partitioner.logical_to_sharding(
      model.params_logical_axes(init_shapes)
  )
  state_shardings = trainer.TrainState(
      step=partitioner.replicated,
      params=params_shardings,
      opt_state=partitioner.optimizer_state_shardings(
          abstract_state.opt_state, abstract_state.params, params_shardings
      ),
      rng=partitioner.replicated,
  )
  abstract_batch = batch_shapes(batch_size, inputs_length, targets_length)
  batch_shardings = {k: partitioner.data_sharding for k in abstract_batch}
  jitted = partitioner.partition(
      step_fn,
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, None),
      donate_argnums=(0,),
  )
  materialise = jax.jit(init_state, out_shardings=state_shardings)
  return jitted, abstract_state, abstract_batch, materialise


cpu_name = common.cpu_name
