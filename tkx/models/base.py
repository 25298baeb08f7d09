"""The model interface train, infer, eval and serve call (t5x's `models.BaseModel`).

A model holds a Flax module and its vocabularies and turns batches (SeqIO
`EncDecFeatureConverter` outputs) into a loss, scores and decodes. The trainer,
`infer.Predictor`, the evaluator and the server only call what `BaseModel`
declares; `models.EncoderDecoderModel` implements it for T5. A new model is a
subclass registered with gin (`@gin.configurable(module=...)`) and bound as
`MODEL` in a model gin file; `tkx.checkpoints.directory` builds `%MODEL` from a
checkpoint's model.gin.

Also here, the one place parameter shardings are worked out:
`param_shardings(model, partitioner)` (from the model's logical axes) and
`abstract_params(model, partitioner)` (shapes, dtypes and those shardings,
nothing allocated); the train state, the checkpoint reader, the predictor and
the server use them.
"""

import abc
from typing import Any, Callable, Mapping, Optional

import jax

Array = jax.Array
PyTree = Any


class BaseModel(abc.ABC):
  """What tkx needs of a model; subclasses implement the abstract methods.

  Attributes every model has (set by the subclass' constructor):
    input_vocabulary, output_vocabulary: seqio vocabularies (None in tests that need none).
    loss_normalizing_factor: None when `loss_fn` divides by the batch's target
      tokens (the trainer then weighs micro-batches by their tokens), else the
      fixed number every batch's summed loss is divided by.
  """

  input_vocabulary: Any = None
  output_vocabulary: Any = None
  loss_normalizing_factor: Optional[float] = None

  @property
  def config(self) -> Any:
    """The network's hyper-parameters (a `T5Config`) when it has them; None otherwise.

    Used for model FLOPs (throughput, MFU, packing's FLOP efficiency), which
    tkx counts for T5 shapes only.
    """
    return None

  @property
  def eos_id(self) -> int:
    vocab = self.output_vocabulary
    return int(vocab.eos_id) if vocab is not None else 1

  # --- what train / infer / eval call --------------------------------------
  @abc.abstractmethod
  def loss_fn(
      self,
      params: PyTree,
      batch: Mapping[str, Array],
      dropout_rng: Optional[Array],
  ) -> tuple[Array, Mapping[str, Array]]:
    """(loss, metrics) of a batch; dropout on when `dropout_rng` is given."""

  def eval_fn(
      self, params: PyTree, batch: Mapping[str, Array]
  ) -> tuple[Array, Mapping[str, Array]]:
    """The loss without dropout (t5x's)."""
    return self.loss_fn(params, batch, None)

  @abc.abstractmethod
  def score_batch(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """Sum of target-token log-likelihoods per example, [batch]."""

  @abc.abstractmethod
  def predict_batch_with_aux(
      self,
      params: PyTree,
      batch: Mapping[str, Array],
      rng: Optional[Array] = None,
      *,
      decode_fn: Optional[Callable] = None,
      **kwargs,
  ) -> tuple[Array, Mapping[str, Array]]:
    """(decoded tokens, {"scores": ...}) with `decode_fn` (t5x's decoding interface)."""

  def predict_batch(
      self,
      params: PyTree,
      batch: Mapping[str, Array],
      rng: Optional[Array] = None,
      **kwargs,
  ) -> Array:
    return self.predict_batch_with_aux(params, batch, rng, **kwargs)[0]

  # --- parameters ------------------------------------------------------------
  @abc.abstractmethod
  def get_initial_variables(
      self,
      rng: Array,
      input_shapes: Mapping[str, tuple],
      input_types: Optional[Mapping[str, Any]] = None,
  ) -> PyTree:
    """{"params": ...} of plain arrays, from the module's initialisers."""

  @abc.abstractmethod
  def variables_logical_axes(self, input_shapes: Mapping[str, tuple]) -> PyTree:
    """A `PartitionSpec` of logical axis names per variable (same tree as the variables)."""

  def params_logical_axes(self, input_shapes: Mapping[str, tuple]) -> PyTree:
    return self.variables_logical_axes(input_shapes)["params"]

  def params_shapes(self, input_shapes: Mapping[str, tuple]) -> PyTree:
    """ShapeDtypeStructs of the parameters (nothing allocated)."""
    return jax.eval_shape(
        lambda r: self.get_initial_variables(r, input_shapes),
        jax.random.PRNGKey(0),
    )["params"]


# ------------------------------------------------------------------------------
# Parameter shardings (the one place)
# ------------------------------------------------------------------------------
def init_input_shapes(
    batch_size: int = 1, inputs_length: int = 1, targets_length: int = 1
) -> dict:
  """`input_shapes` for `get_initial_variables` & co.; T5's parameter shapes do not depend on them."""
  return {
      "encoder_input_tokens": (batch_size, inputs_length),
      "decoder_input_tokens": (batch_size, targets_length),
  }


def param_shardings(model: BaseModel, partitioner) -> PyTree:
  """`NamedSharding` per parameter: the model's logical axes through the partitioner's rules."""
  return partitioner.logical_to_sharding(
      model.params_logical_axes(init_input_shapes())
  )


def abstract_params(model: BaseModel, partitioner) -> PyTree:
  """ShapeDtypeStructs of the parameters carrying their `param_shardings` (what checkpoint reads fill)."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      model.params_shapes(init_input_shapes()),
      param_shardings(model, partitioner),
  )
