"""XLA's own memory analysis of the compiled train step and decode step, ahead of time, allocating nothing.

`analyse(config, recipe)` builds the train step exactly as `tkx train` does (`trainer.make_train_step`,
`TrainStateInitializer`'s abstract state and shardings, `partitioning.Partitioner` on a data x model
mesh) and the decode step as `tkx infer` does (greedy `predict_batch`), lowers both with
`jax.ShapeDtypeStruct` inputs and returns `compiled.memory_analysis()` per device: argument, output,
temporary and aliased (donated) bytes, and the peak `arguments + outputs + temporaries - aliased`.

The mesh needs as many devices as the target has; `run_on_cpu_devices(config, recipe)` runs
`analyse` in a child process whose XLA sees that many forced host CPU devices
(`--xla_force_host_platform_device_count`, which XLA reads once, before JAX starts a backend).
The CPU compiler stands in for the target's: its fusion and buffer assignment differ from the
GPU/TPU compilers', so the figures are XLA's plan on CPU for the target's shapes and shardings
(docs/memory.md compares them with the formula in `tkx.models.model_info`).

An adapter recipe (`Recipe.trainable="adapters"`, LoRA's settings in `Recipe.lora`)
compiles the adapter step as `tkx train` does: the state holds the adapters, the
frozen base is a third, non-donated argument (docs/adapters.md).
"""

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any, Dict, Optional


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a training run's memory depends on besides the model (see `tkx model-info --help`)."""

  data: int = 1
  model: int = 1
  shard_params_over_data: bool = False
  optimizer: str = "adafactor"
  batch_rows: int = (
      1  # rows per step over all devices (packed rows or examples)
  )
  inputs_length: int = 1024  # tokens per encoder block
  targets_length: int = 128
  encoder_blocks: int = 1  # packed rows: encoder blocks sharing one decoder row
  packed: bool = False
  num_microbatches: int = 1
  decode_batch: int = 0  # 0: no decode step
  max_decode_length: int = 128
  trainable: str = "all"  # train_configs.Trainable's value
  lora: Optional[Dict[str, Any]] = (
      None  # lora.LoraConfig's fields (dense layer "lora")
  )

  @property
  def devices(self) -> int:
    return self.data * self.model


def batch_specs(recipe: Recipe) -> Dict[str, tuple]:
  """{feature: shape} of one global training batch (the trainer's keys, packed or not)."""
  rows, lt = recipe.batch_rows, recipe.targets_length
  encoder = (
      (rows, recipe.encoder_blocks, recipe.inputs_length)
      if recipe.encoder_blocks > 1
      else (rows, recipe.inputs_length)
  )
  shapes = {
      "encoder_input_tokens": encoder,
      "decoder_input_tokens": (rows, lt),
      "decoder_target_tokens": (rows, lt),
      "decoder_loss_weights": (rows, lt),
  }
  if recipe.packed:
    shapes.update(
        {
            "encoder_segment_ids": encoder,
            "encoder_positions": encoder,
            "decoder_segment_ids": (rows, lt),
            "decoder_positions": (rows, lt),
        }
    )
  return shapes


def _per_device(compiled) -> Dict[str, int]:
  stats = compiled.memory_analysis()
  out = {
      "arguments": int(stats.argument_size_in_bytes),
      "outputs": int(stats.output_size_in_bytes),
      "temporaries": int(stats.temp_size_in_bytes),
      "aliased": int(stats.alias_size_in_bytes),
  }
  out["peak"] = (
      out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  )
  return out


def analyse(config, recipe: Recipe) -> Dict[str, Any]:
  """Compiles (never runs) the train and decode steps on this process's devices; bytes per device."""
  import jax
  import jax.numpy as jnp

  from tkx import optimizers, partitioning, trainer
  from tkx.models import model_info
  from tkx.train_state import TrainStateInitializer

  if jax.device_count() != recipe.devices:
    raise ValueError(
        f"the mesh data={recipe.data} x model={recipe.model} needs {recipe.devices} devices, "
        f"this process has {jax.device_count()} (use run_on_cpu_devices)"
    )
  model = model_info.build_model(config)
  optimizer = (
      optimizers.adamw(1e-3)
      if recipe.optimizer == "adamw"
      else optimizers.adafactor(1e-3)
  )
  partitioner = partitioning.Partitioner(
      data_axis_size=recipe.data,
      model_axis_size=recipe.model,
      shard_params_over_data=recipe.shard_params_over_data,
  )
  initializer = TrainStateInitializer(
      model, optimizer, partitioner, trainable=recipe.trainable
  )
  data_sharding = partitioner.data_sharding
  in_shardings, frozen = (initializer.state_shardings, data_sharding), ()
  if initializer.abstract_frozen is not None:  # an adapter run: the frozen base
    in_shardings += (initializer.frozen_shardings,)
    frozen = (initializer.abstract_frozen,)

  def abstract_batch(shapes):
    return {
        k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=data_sharding)
        for k, s in shapes.items()
    }

  step = partitioner.partition(
      trainer.make_train_step(
          model, optimizer, lambda s: 1e-3, recipe.num_microbatches
      ),
      in_shardings=in_shardings,
      out_shardings=(initializer.state_shardings, partitioner.replicated),
      donate_argnums=(0,),
  )
  compiled = step.lower(
      initializer.abstract_state, abstract_batch(batch_specs(recipe)), *frozen
  ).compile()
  result = {"devices": recipe.devices, "train_step": _per_device(compiled)}
  if recipe.decode_batch:
    decode = partitioner.partition(
        lambda params, batch: model.predict_batch(params, batch),
        in_shardings=(initializer.params_shardings, data_sharding),
        out_shardings=data_sharding,
    )
    shapes = {
        "encoder_input_tokens": (
            recipe.decode_batch,
            recipe.inputs_length * recipe.encoder_blocks,
        ),
        "decoder_input_tokens": (recipe.decode_batch, recipe.max_decode_length),
    }
    compiled = decode.lower(
        initializer.abstract_params, abstract_batch(shapes)
    ).compile()
    result["decode_step"] = _per_device(compiled)
  return result


def run_on_cpu_devices(config, recipe: Recipe, timeout_s: float = 3600):
  """`analyse` in a child process with `recipe.devices` forced host CPU devices; its result dict."""
  env = dict(os.environ)
  flags = [
      f
      for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={recipe.devices}"]
  )
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  request = json.dumps(
      {
          "config": dataclasses.asdict(config),
          "recipe": dataclasses.asdict(recipe),
      },
      default=lambda v: getattr(v, "value", str(v)),
  )
  result = subprocess.run(
      [sys.executable, "-m", "tkx.models.xla_memory"],
      input=request,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout_s,
  )
  if result.returncode != 0:
    raise RuntimeError(
        "compiling the steps for XLA's memory analysis failed:\n"
        + result.stderr[-3000:]
    )
  return json.loads(result.stdout.strip().splitlines()[-1])


def _main():
  from tkx.models import config as config_lib

  request = json.loads(sys.stdin.read())
  fields = request["config"]
  fields["mlp_activations"] = tuple(fields["mlp_activations"])
  config = config_lib.T5Config(**fields)
  recipe = Recipe(**request["recipe"])
  if recipe.lora:  # the parent's gin LoraConfig, bound here
    import gin

    from tkx.models import lora  # noqa: F401  (registers "lora")

    for name, value in recipe.lora.items():
      gin.bind_parameter(
          f"lora.LoraConfig.{name}",
          tuple(value) if isinstance(value, list) else value,
      )
  print(json.dumps(analyse(config, recipe)))


if __name__ == "__main__":
  _main()
