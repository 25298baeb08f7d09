"""A training run's state and who builds it (t5x's `utils.TrainStateInitializer`).

`TrainStateInitializer(model, optimizer, partitioner, random_seed)` works out,
without allocating anything, the abstract `TrainState` and its shardings (params:
`tkx.models.base.abstract_params`; optimizer state following its params), then
builds the real state one of three ways: restored from MODEL_DIR's newest
checkpoint (`restore`), initialised from INITIAL_CHECKPOINT_PATH's params
(`from_params_checkpoint`) or initialised at random (`from_scratch`).

Contract (the names other modules rely on; change one only together with its users):
- `train_state.TrainState(step, params, opt_state, rng)` (flax struct, also `trainer.TrainState`); what a training
  checkpoint's `state/` holds. `train_state.TrainStateInitializer(model, optimizer, partitioner, random_seed)`:
  `.abstract_state`, `.state_shardings`, `.params_shardings`, `.restore(checkpoint_manager) -> (state, data_state) | None`,
  `.from_params_checkpoint(path)`, `.from_scratch()`.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from tkx.checkpoints import directory
from tkx.models import base


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # number of optimizer updates applied
  params: Any
  opt_state: Any
  rng: jnp.ndarray  # base key; dropout keys are fold_in(rng, step)


class TrainStateInitializer:
  """Abstract state, shardings and the three ways to build a `TrainState` (see the module doc)."""

  def __init__(self, model, optimizer, partitioner, random_seed: int = 0):
    self.model, self.optimizer, self.partitioner = model, optimizer, partitioner
    self.init_rng, self.state_rng = jax.random.split(
        jax.random.PRNGKey(random_seed)
    )
    self._input_shapes = base.init_input_shapes()
    # Params' shapes, dtypes and shardings (`base.abstract_params`, as every reader of params).
    self.abstract_params = base.abstract_params(model, partitioner)
    self.params_shardings = jax.tree_util.tree_map(
        lambda a: a.sharding, self.abstract_params
    )
    abstract_opt_state = jax.eval_shape(optimizer.init, self.abstract_params)
    replicated = partitioner.replicated
    self.state_shardings = TrainState(
        step=replicated,
        params=self.params_shardings,
        opt_state=partitioner.optimizer_state_shardings(
            abstract_opt_state, self.abstract_params, self.params_shardings
        ),
        rng=replicated,
    )
    abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=self.abstract_params,
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

  def from_params_checkpoint(self, path: str) -> TrainState:
    """Parameters of a tkx or t5x checkpoint (checked against the model), fresh optimizer state, step 0."""
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
