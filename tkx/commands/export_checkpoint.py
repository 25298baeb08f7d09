"""`tkx export-checkpoint`: a tkx checkpoint -> Hugging Face T5, t5x, and (LoRA) a peft adapter.

    tkx export-checkpoint --checkpoint ckpts/run1 --hf exported/run1
    tkx export-checkpoint --checkpoint ckpts/run1 --t5x exported/run1_t5x
    tkx export-checkpoint --checkpoint ckpts/lora1 --peft exported/lora1_adapter \
        --hf exported/lora1_base --lora_weights base

`--hf` writes `config.json`, `model.safetensors` and, when the vocabulary is a
local SentencePiece file (the checkpoint's `spm.model`, or the one its model.gin
names), the tokenizer (`spiece.model` and transformers' tokenizer files); load
them with `transformers.T5ForConditionalGeneration.from_pretrained` and
`transformers.AutoTokenizer.from_pretrained`. `--t5x` writes a t5x checkpoint
`checkpoint_<step>/` (msgpack + TensorStore zarr; `t5x_format.save_params`).

A LoRA checkpoint (model.gin: `network.T5Config.dense_layer = 'lora'` and
`lora.LoraConfig.*`; params with `lora_a`/`lora_b` beside the adapted kernels):
`--lora_weights merged` (the default) writes through `--hf`/`--t5x` the plain
model that computes what the LoRA model computes (`lora.merge`);
`--lora_weights base` writes the base model without the adapters, which is what
`--peft DIR` adapters (`adapter_config.json` + `adapter_model.safetensors`,
`peft_format.export_peft`) load onto with
`peft.PeftModel.from_pretrained(base, DIR)`. `--peft_base` is recorded as the
adapter's `base_model_name_or_path` (default: the `--hf` dir when it gets the
base, else none).
A checkpoint that holds the adapters only (an adapter run's) is merged over
the base that `--base` names (a tkx, t5x or HF checkpoint), by default the one
its model.gin names (`adapters.base_checkpoint.path`); `--peft` needs no base.
`--checkpoint` is a tkx checkpoint dir (its newest step) or one `checkpoint_<step>/`.
"""

import enum
import os

from tkx import errors

# Where an adapter checkpoint's model.gin names its base (tkx.models.adapters, the LoRA training runs).


class LoraWeights(enum.Enum):
  MERGED = "merged"  # base + scale * lora_a @ lora_b: the LoRA model's function
  BASE = "base"  # the kernels the adapters were trained on


def add_arguments(parser):
  parser.add_argument(
      "--checkpoint",
      required=True,
      help="tkx checkpoint dir (checkpoint_<step>/ + model.gin [+ spm.model]) "
      "or one checkpoint_<step>/",
  )
  parser.add_argument(
      "--hf", metavar="OUT_DIR", help="directory to write the HF checkpoint to"
  )
  parser.add_argument(
      "--t5x",
      metavar="OUT_DIR",
      help="directory to write a t5x checkpoint (checkpoint_<step>/) to",
  )
  parser.add_argument(
      "--peft",
      metavar="OUT_DIR",
      help="LoRA checkpoints: directory to write the Hugging Face peft adapter to",
  )
  parser.add_argument(
      "--lora_weights",
      choices=[w.value for w in LoraWeights],
      default=LoraWeights.MERGED.value,
      help="LoRA checkpoints: what --hf/--t5x get: the merged model (default) "
      "or the base without adapters (what --peft adapters load onto)",
  )
  parser.add_argument(
      "--base",
      metavar="CHECKPOINT",
      help="LoRA checkpoints holding the adapters only: the base checkpoint (tkx, "
      "t5x or HF dir) for --hf/--t5x (default: the one model.gin names)",
  )
  parser.add_argument(
      "--peft_base",
      metavar="NAME_OR_DIR",
      help="the peft adapter's base_model_name_or_path (default: the --hf dir "
      "with --lora_weights base, else none)",
  )


def _lora_config(config, params, args):
  """The checkpoint's LoraConfig (model.gin's bindings) when its params hold adapters, else None."""
  from tkx.models import lora

  if not lora.adapter_params(params):
    if args.peft:
      raise errors.ConfigError(
          f"--peft: {args.checkpoint} holds no LoRA adapters "
          f"(model.gin's network.T5Config.dense_layer is {config.dense_layer!r})"
      )
    return None
  if config.dense_layer != "lora":
    raise errors.ConfigError(
        f"{args.checkpoint}: params hold LoRA adapters but model.gin's "
        f"network.T5Config.dense_layer is {config.dense_layer!r}, not 'lora': "
        "the adapters' scale (lora.LoraConfig) is unknown"
    )
  return lora.LoraConfig()  # as model.gin binds it (parsed by directory.read)


def _plain_params(
    params, lora_config, weights: LoraWeights, plain_config, source
):
  """The plain T5 params --hf/--t5x write (checked against the config)."""
  import jax
  import numpy as np
  from tkx.checkpoints import hf, peft_format
  from tkx.models import lora

  base = params if lora_config is None else peft_format.without_adapters(params)
  try:  # before merging: the base's kernels must be there
    hf.check_params(base, plain_config, source=source)
  except hf.CheckpointFormatError as e:
    if lora_config is None:
      raise
    raise hf.CheckpointFormatError(
        f"{e}; a checkpoint of LoRA adapters only needs its base: --base CHECKPOINT"
    ) from None
  if lora_config is None or weights is LoraWeights.BASE:
    return base
  return jax.tree.map(np.asarray, lora.merge(params, lora_config))


def _read_base(path: str):
  """numpy params (adapters dropped) of a tkx, Hugging Face or t5x checkpoint."""
  from tkx.checkpoints import hf, orbax_io, peft_format, t5x_format

  if orbax_io.is_tkx_checkpoint(path):
    params = orbax_io.load_params(path)
  elif hf.is_hf_checkpoint(path):
    _, params, _ = hf.import_hf(path)
  else:
    params = t5x_format.load_params(path)
  return peft_format.without_adapters(params)


def _over_base(params, base_path):
  """The checkpoint's params laid over its base's (the base's kernels where it holds adapters only)."""
  from tkx.models import scan

  base = scan.to_layout(_read_base(base_path), scan.is_scanned(params))

  def lay(under, over):
    out = dict(under)
    for key, value in over.items():
      mapping = isinstance(value, dict) and isinstance(out.get(key), dict)
      out[key] = lay(out[key], value) if mapping else value
    return out

  return lay(base, scan.to_layout(params, scan.is_scanned(params)))


def main(args):
  from tkx import gin_utils
  from tkx.checkpoints import directory, hf, layout, peft_format, t5x_format

  if not (args.hf or args.t5x or args.peft):
    raise errors.ConfigError(
        "tkx export-checkpoint: give at least one of --hf, --t5x, --peft"
    )
  config, params, spm = directory.read(args.checkpoint)
  lora_config = _lora_config(config, params, args)
  from tkx.models import adapters  # pylint: disable=g-import-not-at-top

  base_path = args.base or gin_utils.query(adapters.BASE_BINDING)
  if lora_config is not None and base_path and (args.hf or args.t5x):
    params = _over_base(params, base_path)
  weights = LoraWeights(args.lora_weights)
  plain_config = config.replace(dense_layer="dense")
  if args.hf or args.t5x:
    plain = _plain_params(
        params, lora_config, weights, plain_config, args.checkpoint
    )
  if args.hf:
    hf.export_hf(
        plain_config,
        plain,
        args.hf,
        spm_model=spm,
        extra_ids=directory.extra_ids_for(spm, config) if spm else 0,
    )
    print(
        f"wrote Hugging Face checkpoint {args.hf}{_what(lora_config, weights)}"
    )
  if args.t5x:
    step = layout.step_of(layout.find_step_dir(args.checkpoint))
    out = t5x_format.save_params(args.t5x, plain, step=step)
    print(f"wrote t5x checkpoint {out}{_what(lora_config, weights)}")
  if args.peft:
    base = args.peft_base
    if base is None and args.hf and weights is LoraWeights.BASE:
      base = os.path.abspath(args.hf)
    peft_format.export_peft(config, lora_config, params, args.peft, base)
    print(f"wrote peft LoRA adapter {args.peft}")
  return 0


def _what(lora_config, weights: LoraWeights) -> str:
  if lora_config is None:
    return ""
  if weights is LoraWeights.BASE:
    return " (the base model, LoRA adapters left out)"
  return " (LoRA adapters merged)"
