"""A training run's state and who builds it (t5x's `utils.TrainStateInitializer`).

`TrainStateInitializer(model, optimizer, partitioner, random_seed)` works out,
without allocating anything, the abstract `TrainState` and its shardings (params:
`tkx.models.base.abstract_params`; optimizer state following its params), then
builds the real state one of three ways: restored from MODEL_DIR's newest
checkpoint (`restore`), initialised from INITIAL_CHECKPOINT_PATH's params
(`from_params_checkpoint`) or initialised at random (`from_scratch`).

With `trainable=Trainable.ADAPTERS` the state's `params` are the adapters only
(`tkx.models.adapters.split`): the optimizer state follows them, and the frozen
base is read once from INITIAL_CHECKPOINT_PATH (`load_frozen_base`) and held by
the trainer beside the state, a non-donated input of the step. Fresh adapters
are initialised by the model's own initialisers applied over that base (so a
prompt initialised from vocabulary embeddings samples the base's).

Contract (the names other modules rely on; change one only together with its users):
- `train_state.TrainState(step, params, opt_state, rng)` (flax struct, also `trainer.TrainState`); what a training
  checkpoint's `state/` holds. `train_state.TrainStateInitializer(model, optimizer, partitioner, random_seed)`:
  `.abstract_state`, `.state_shardings`, `.params_shardings` (the whole model's), `.restore(checkpoint_manager) -> (state, data_state) | None`,
  `.from_params_checkpoint(path)`, `.from_scratch()`; with `trainable=Trainable.ADAPTERS` also
  `.frozen_shardings` and `.load_frozen_base(path)`, and `from_params_checkpoint(path)` is
  `from_frozen_base(load_frozen_base(path))`.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from tkx import errors
from tkx.checkpoints import directory
from tkx.models import adapters, base
from tkx.train_configs import Trainable

NO_BASE_ERROR = (
    "TRAINABLE='adapters' trains adapters over a base model: set "
    "INITIAL_CHECKPOINT_PATH to the base checkpoint"
)


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # number of optimizer updates applied
  params: Any
  opt_state: Any
  rng: jnp.ndarray  # base key; dropout keys are fold_in(rng, step)


class TrainStateInitializer:
  """Abstract state, shardings and the three ways to build a `TrainState` (see the module doc)."""

  def __init__(
      self,
      model,
      optimizer,
      partitioner,
      random_seed: int = 0,
      trainable: Trainable = Trainable.ALL,
  ):
    self.model, self.optimizer, self.partitioner = model, optimizer, partitioner
    self.trainable = Trainable.parse(trainable)
    self.init_rng, self.state_rng = jax.random.split(
        jax.random.PRNGKey(random_seed)
    )
    self._input_shapes = base.init_input_shapes()
    # Params' shapes, dtypes and shardings (`base.abstract_params`, as every reader of params).
    self.abstract_params = base.abstract_params(model, partitioner)
    self.params_shardings = jax.tree_util.tree_map(
        lambda a: a.sharding, self.abstract_params
    )
    # What the state trains (all params, or the adapters) and the frozen rest.
    trained, self.abstract_frozen = self.abstract_params, None
    if self.trainable is Trainable.ADAPTERS:
      trained, self.abstract_frozen = adapters.split(self.abstract_params)
      if not trained:
        raise errors.ConfigError(
            "TRAINABLE='adapters' but the model has no adapter parameters: set "
            "network.T5Config.dense_layer = 'lora' and/or network.T5Config.prompt_length"
        )
    self.abstract_trained = trained
    shardings_of = lambda tree: jax.tree_util.tree_map(
        lambda a: a.sharding, tree
    )
    trained_shardings = shardings_of(trained)
    self.frozen_shardings = (
        None
        if self.abstract_frozen is None
        else shardings_of(self.abstract_frozen)
    )
    abstract_opt_state = jax.eval_shape(optimizer.init, trained)
    replicated = partitioner.replicated
    self.state_shardings = TrainState(
        step=replicated,
        params=trained_shardings,
        opt_state=partitioner.optimizer_state_shardings(
            abstract_opt_state, trained, trained_shardings
        ),
        rng=replicated,
    )
    abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=trained,
        opt_state=abstract_opt_state,
        rng=jax.eval_shape(lambda: self.state_rng),
    )
    self.abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state,
        self.state_shardings,
    )

  def _state_from(self, params, state_rng):
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=self.optimizer.init(params),
        rng=state_rng,
    )

  def from_scratch(self) -> TrainState:
    """Random parameters (the model's initialisers), fresh optimizer state, step 0."""
    if self.trainable is Trainable.ADAPTERS:
      raise errors.ConfigError(NO_BASE_ERROR)
    input_shapes, model = self._input_shapes, self.model

    def init(init_rng, state_rng):
      params = model.get_initial_variables(init_rng, input_shapes)["params"]
      return self._state_from(params, state_rng)

    replicated = self.partitioner.replicated
    p_init = self.partitioner.partition(
        init,
        in_shardings=(replicated, replicated),
        out_shardings=self.state_shardings,
    )
    return p_init(self.init_rng, self.state_rng)

  def load_frozen_base(self, path: str):
    """The base model's parameters (all but the adapters) from a tkx, t5x or HF checkpoint, placed."""
    return directory.load_initial_params(
        path, self.abstract_frozen, self.frozen_shardings
    )

  def from_frozen_base(self, frozen) -> TrainState:
    """Fresh adapters (the model's initialisers over `frozen`), fresh optimizer state, step 0."""
    init_over = _initialiser_over_base(self.model, self._input_shapes)
    p_init = self.partitioner.partition(
        lambda rng, frozen, state_rng: self._state_from(
            adapters.split(init_over(rng, frozen))[0], state_rng
        ),
        in_shardings=(
            self.partitioner.replicated,
            self.frozen_shardings,
            self.partitioner.replicated,
        ),
        out_shardings=self.state_shardings,
    )
    return p_init(self.init_rng, frozen, self.state_rng)

  def from_params_checkpoint(self, path: str) -> TrainState:
    """Parameters of a tkx or t5x checkpoint (checked against the model), fresh optimizer state, step 0."""
    if self.trainable is Trainable.ADAPTERS:
      return self.from_frozen_base(self.load_frozen_base(path))
    params = directory.load_initial_params(
        path, self.abstract_params, self.params_shardings
    )
    p_init = self.partitioner.partition(
        self._state_from,
        in_shardings=(self.params_shardings, self.partitioner.replicated),
        out_shardings=self.state_shardings,
    )
    return p_init(params, self.state_rng)

  def restore(self, checkpoints):
    """`(state, data_state)` of the newest readable checkpoint of an `orbax_io.CheckpointManager`, or None."""
    return checkpoints.restore_latest(self.abstract_state)


def _initialiser_over_base(model, input_shapes):
  """init(rng, base_params) -> the whole params: `base_params` kept, the missing (adapters) initialised.

  Flax initialises a parameter a module asks for that the given variables lack
  when "params" is mutable; the adapters' initialisers so see the base (the
  prompt's vocabulary sampling reads the base's embedding). Models without a
  Flax `module` get the adapters of their random initial variables.
  """
  import flax.linen as nn

  module = getattr(model, "module", None)
  if module is None:

    def init_random(rng, frozen):
      del frozen
      return model.get_initial_variables(rng, input_shapes)["params"]

    return init_random

  def init(rng, frozen):
    enc = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
    dec = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
    _, variables = module.apply(
        {"params": frozen},
        enc,
        dec,
        dec,
        enable_dropout=False,
        rngs={"params": rng},
        mutable=["params"],
    )
    return nn.meta.unbox(variables["params"])

  return init
