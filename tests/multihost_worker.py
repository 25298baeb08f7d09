"""One process of the multi-process training check (launched by tests/test_multihost_training.py).

    python tests/multihost_worker.py --coordinator_address 127.0.0.1:PORT --num_processes 2 \
        --process_id 0 --meshes 8x1,4x2 --out result_0.json

Each process joins `jax.distributed` through `tkx.multihost.initialize`, builds a
`tkx.partitioning.Partitioner` per mesh ("DATAxMODEL" over all global devices),
trains the tiny model for a few steps, feeding only its own rows of every global
batch through `host_local_to_global`, and writes the losses as JSON. The test
runs the same `train_losses` in one process over 8 devices and compares.

`make_problem` (model + batches) and `STEPS` (a plain AdamW step, or
`tkx.trainer.make_train_step` with Adafactor and micro-batches) are the swap points.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tkx import multihost, partitioning  # noqa: E402

GLOBAL_BATCH_SIZE = 8


class Problem:
  """What to train: variable init, a loss on (params, batch), and the global batch of each step."""

  def __init__(self, init_variables, loss_fn, global_batch, model=None):
    self.init_variables = (
        init_variables  # rng -> Flax variables (logical axes annotated)
    )
    self.loss_fn = loss_fn  # (params, batch) -> scalar loss
    self.global_batch = (
        global_batch  # step -> dict of numpy arrays [GLOBAL_BATCH_SIZE, ...]
    )
    self.model = model  # an EncoderDecoderModel, for tkx.trainer's step


class TinyMlp:
  """Stand-in model (embedding + MLP with logical axes) for checks that need no T5."""

  @staticmethod
  def module():
    import flax.linen as nn
    from flax.linen import partitioning as nn_partitioning

    class Mlp(nn.Module):

      @nn.compact
      def __call__(self, tokens):
        embedding = nn_partitioning.param_with_axes(
            "embedding",
            nn.initializers.normal(1.0),
            (32, 16),
            axes=("vocab", "embed"),
        )
        wi = nn_partitioning.param_with_axes(
            "wi",
            nn.initializers.lecun_normal(),
            (16, 64),
            axes=("embed", "mlp"),
        )
        wo = nn_partitioning.param_with_axes(
            "wo",
            nn.initializers.lecun_normal(),
            (64, 16),
            axes=("mlp", "embed"),
        )
        hidden = nn_partitioning.with_sharding_constraint(
            nn.relu(embedding[tokens] @ wi), ("batch", "length", "mlp")
        )
        return (hidden @ wo) @ embedding.T

    return Mlp()


def _random_batches(vocab_size, length, seed=0):
  def global_batch(step):
    rng = np.random.default_rng(seed + step)
    return {
        "inputs": rng.integers(
            1, vocab_size, (GLOBAL_BATCH_SIZE, length), dtype=np.int32
        ),
        "targets": rng.integers(
            1, vocab_size, (GLOBAL_BATCH_SIZE, length), dtype=np.int32
        ),
    }

  return global_batch


def make_problem(name: str = "mlp") -> Problem:
  """Model + batches by name: "mlp" (TinyMlp) or "t5" (the tiny T5 of `tkx.models`).

  Fixed seeds, so every process builds the same parameters and global batches.
  """
  if name == "mlp":
    module = TinyMlp.module()

    def loss_fn(params, batch):
      logits = module.apply({"params": params}, batch["inputs"])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["targets"]
      ).mean()

    return Problem(
        lambda rng: module.init(rng, jnp.ones((1, 6), jnp.int32)),
        loss_fn,
        _random_batches(32, 6),
    )
  if name == "t5":
    from tkx.models import config as t5_config
    from tkx.models import models, network

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
    model = models.EncoderDecoderModel(network.Transformer(cfg))
    shapes = {"encoder_input_tokens": (1, 12), "decoder_input_tokens": (1, 6)}

    def t5_batch(step):
      rng = np.random.default_rng(100 + step)
      targets = rng.integers(2, 64, (GLOBAL_BATCH_SIZE, 6), dtype=np.int32)
      targets[::2, 4:] = 0  # padded targets in half the rows
      inputs = rng.integers(2, 64, (GLOBAL_BATCH_SIZE, 12), dtype=np.int32)
      return {
          "encoder_input_tokens": inputs,
          "decoder_input_tokens": np.concatenate(
              [np.zeros((GLOBAL_BATCH_SIZE, 1), np.int32), targets[:, :-1]],
              axis=1,
          ),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.float32),
      }

    return Problem(
        lambda rng: model.get_initial_variables(rng, shapes, unbox=False),
        lambda params, batch: model.loss_fn(params, batch, None)[0],
        t5_batch,
        model,
    )
  raise ValueError(f"multihost_worker: unknown problem {name!r}")


def make_train_step(loss_fn, tx):
  """A plain optax step: state (params, opt_state) -> (state, loss)."""

  def train_step(state, batch):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return train_step


def _plain_adamw(partitioner, problem, param_shardings, learning_rate):
  """(init_state(rng), state_shardings, step) for the plain AdamW step."""
  import flax.linen as nn

  tx = optax.adamw(learning_rate)
  abstract_params = nn.unbox(
      jax.eval_shape(problem.init_variables, jax.random.key(0))
  )["params"]
  opt_shardings = partitioner.optimizer_state_shardings(
      jax.eval_shape(tx.init, abstract_params), abstract_params, param_shardings
  )

  def init_state(rng):
    params = nn.unbox(problem.init_variables(rng))["params"]
    return params, tx.init(params)

  return (
      init_state,
      (param_shardings, opt_shardings),
      make_train_step(problem.loss_fn, tx),
  )


def _tkx_trainer(partitioner, problem, param_shardings, learning_rate):
  """The same for `tkx.trainer.make_train_step`: t5x Adafactor (factored), 2 micro-batches."""
  import flax.linen as nn
  from tkx import optimizers, trainer

  tx = optimizers.adafactor(learning_rate, min_dim_size_to_factor=8)
  abstract_params = nn.unbox(
      jax.eval_shape(problem.init_variables, jax.random.key(0))
  )["params"]
  opt_shardings = partitioner.optimizer_state_shardings(
      jax.eval_shape(tx.init, abstract_params), abstract_params, param_shardings
  )
  replicated = partitioner.replicated
  state_shardings = trainer.TrainState(
      step=replicated,
      params=param_shardings,
      opt_state=opt_shardings,
      rng=replicated,
  )

  def init_state(rng):
    params = nn.unbox(problem.init_variables(rng))["params"]
    return trainer.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(1),
    )

  trainer_step = trainer.make_train_step(
      problem.model, tx, learning_rate, num_microbatches=2
  )

  def step(state, batch):
    state, metrics = trainer_step(state, batch)
    return state, metrics["loss"]

  return init_state, state_shardings, step


STEPS = {"plain": _plain_adamw, "trainer": _tkx_trainer}


def train_losses(
    partitioner: partitioning.Partitioner,
    problem: Problem,
    num_steps: int = 5,
    learning_rate: float = 1e-3,
    step: str = "plain",
) -> list:
  """Trains `num_steps` steps on the partitioner's mesh; every host feeds its own rows."""
  abstract = jax.eval_shape(problem.init_variables, jax.random.key(0))
  param_shardings = partitioner.get_shardings(abstract)["params"]
  init_state, state_shardings, train_step = STEPS[step](
      partitioner, problem, param_shardings, learning_rate
  )
  state = partitioner.partition(
      init_state, in_shardings=None, out_shardings=state_shardings
  )(jax.random.key(0))
  batch_shardings = jax.tree_util.tree_map(
      lambda _: partitioner.data_sharding, problem.global_batch(0)
  )
  p_step = partitioner.partition(
      train_step,
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, partitioner.replicated),
      donate_argnums=(0,),
  )
  rows = partitioner.host_rows(GLOBAL_BATCH_SIZE)
  losses = []
  for step_index in range(num_steps):
    local = {k: v[rows] for k, v in problem.global_batch(step_index).items()}
    state, loss = p_step(state, partitioner.host_local_to_global(local))
    losses.append(float(loss))
  return losses


def parse_mesh(text: str) -> dict:
  """Partitioner arguments for "DATAxMODEL"; a trailing "i" interleaves the hosts
  along "data" (rows 0, 2, ... on one host, 1, 3, ... on the next): a device
  order in which no host holds one block of rows."""
  interleaved = text.lower().endswith("i")
  data, model = (int(v) for v in text.lower().rstrip("i").split("x"))
  if not interleaved:
    return dict(data_axis_size=data, model_axis_size=model)
  local_position = {}
  for device in jax.devices():
    local_position[device] = sum(
        1
        for other in jax.devices()
        if other.process_index == device.process_index and other.id < device.id
    )
  order = sorted(
      jax.devices(),
      key=lambda d: (local_position[d] // model, d.process_index, d.id),
  )
  devices = np.asarray(order, dtype=object).reshape(data, model)
  return dict(mesh=jax.sharding.Mesh(devices, ("data", "model")))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument(
      "--meshes", default="8x1", help="comma-separated DATAxMODEL mesh shapes"
  )
  parser.add_argument("--problem", default="t5", help="what to train: t5 | mlp")
  parser.add_argument(
      "--step",
      default="plain",
      choices=sorted(STEPS),
      help="plain AdamW step, or tkx.trainer's step (Adafactor, 2 micro-batches; t5 only)",
  )
  parser.add_argument("--num_steps", type=int, default=5)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  multihost.initialize(
      args.coordinator_address, args.num_processes, args.process_id
  )
  problem = make_problem(args.problem)
  result = {
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "local_devices": jax.local_device_count(),
      "losses": {},
      "layouts": {},
  }
  for mesh in args.meshes.split(","):
    partitioner = partitioning.Partitioner(**parse_mesh(mesh))
    layout = partitioner.get_data_layout(GLOBAL_BATCH_SIZE)
    result["layouts"][mesh] = [
        layout.shard_id,
        layout.num_shards,
        layout.is_first_host_in_replica_set,
    ]
    result.setdefault("rows", {})[mesh] = partitioner.host_rows(
        GLOBAL_BATCH_SIZE
    ).tolist()
    result["losses"][mesh] = train_losses(
        partitioner, problem, args.num_steps, step=args.step
    )
    print(
        f"process {jax.process_index()} mesh {mesh}: losses {result['losses'][mesh]}",
        flush=True,
    )
  with open(args.out, "w") as f:
    json.dump(result, f)
  multihost.sync("multihost_worker_done")


if __name__ == "__main__":
  main()
