"""`tkx import-checkpoint`: a Hugging Face or t5x T5 checkpoint -> a tkx checkpoint.

    tkx import-checkpoint --hf allenai/tk-instruct-base-def-pos --output ckpts/tk-base
    tkx import-checkpoint --hf /path/to/hf_dir --output ckpts/mine [--dtype bfloat16]
    tkx import-checkpoint --t5x gs_copy/checkpoint_1000000 --gin_file gin_configs/models/t5_1_1/base.gin \
        --output ckpts/t5x_base
    tkx import-checkpoint --peft my_adapter --hf /path/to/hf_base --output ckpts/my_lora

The output directory gets `checkpoint_<step>/` (orbax, params only), `model.gin`
(the model config: from the HF `config.json`, or from the gin files given for a
t5x checkpoint) and `spm.model` (the HF `spiece.model`, when there is one).
A Hub name is downloaded with `huggingface_hub` (needs network).

`--peft ADAPTER_DIR` (a Hugging Face peft LoRA adapter: adapter_config.json +
adapter_model.safetensors) adds the adapter to the base that `--hf` or `--t5x`
names (without either: the adapter's `base_model_name_or_path`): the output is a
tkx LoRA checkpoint, the base's params with `lora_a`/`lora_b` beside each adapted
kernel (`peft_format.read_peft`), and a model.gin that rebuilds the LoRA model
(`network.T5Config.dense_layer = 'lora'`, `lora.LoraConfig.*`).
"""

import logging

from tkx import errors

DTYPES = ("float32", "bfloat16")


def add_arguments(parser):
  source = parser.add_mutually_exclusive_group()
  source.add_argument(
      "--hf",
      metavar="DIR_OR_HUB_NAME",
      help="Hugging Face T5 checkpoint dir (config.json + weights) or Hub name",
  )
  source.add_argument(
      "--t5x",
      metavar="PATH",
      help="t5x checkpoint dir (checkpoint_<step>/ with a msgpack 'checkpoint' file) or its parent",
  )
  parser.add_argument(
      "--peft",
      metavar="ADAPTER_DIR",
      help="Hugging Face peft LoRA adapter dir to add to the --hf/--t5x base "
      "(default base: the adapter's base_model_name_or_path)",
  )
  parser.add_argument(
      "--output", required=True, help="tkx checkpoint dir to create"
  )
  parser.add_argument(
      "--dtype",
      choices=DTYPES,
      default="float32",
      help="stored parameter dtype",
  )
  parser.add_argument(
      "--step",
      type=int,
      default=0,
      help="step number of the written checkpoint (default 0)",
  )


def _check_output(path):
  from tkx.checkpoints import layout

  if layout.list_steps(path):
    raise FileExistsError(
        f"--output {path} already holds checkpoint_<step> directories; "
        "choose an empty --output"
    )


def _read_t5x(args, dtype):
  """(config, params, vocab_path, extra_ids) of the --t5x checkpoint and its --gin_file config."""
  from tkx import gin_utils
  from tkx.checkpoints import hf, t5x_format

  if not args.gin_files:
    raise errors.ConfigError(
        "--t5x needs --gin_file with the model config "
        "(e.g. gin_configs/models/t5_1_1/base.gin): t5x checkpoints do not store it"
    )
  config = gin_utils.load_config_from_gin(args.gin_files, args.gin_bindings)
  vocab_path = gin_utils.query("vocab.get_vocabulary.path")
  extra_ids = gin_utils.query("vocab.get_vocabulary.extra_ids")
  params = t5x_format.load_params(args.t5x)
  hf.check_params(params, config, source=args.t5x)
  from tkx.models import scan

  params = scan.to_layout(params, config.scan_layers)
  params = _cast(params, dtype)
  return config.replace(param_dtype=dtype), params, vocab_path, extra_ids


def _cast(params, dtype):
  import jax
  import jax.numpy as jnp
  import numpy as np

  return jax.tree_util.tree_map(
      lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params
  )


def _peft_base(args):
  """--hf for --peft without a base: the adapter's base_model_name_or_path."""
  from tkx.checkpoints import peft_format

  base = peft_format.read_adapter_config(args.peft).get(
      "base_model_name_or_path"
  )
  if not base:
    raise errors.ConfigError(
        f"--peft {args.peft}: adapter_config.json names no base_model_name_or_path; "
        "give the base with --hf or --t5x"
    )
  return base


def _add_peft(args, config, params, comment):
  """(config, params, comment) with the --peft adapter added to the base; gin's LoraConfig bound to it."""
  import gin
  from tkx.checkpoints import peft_format
  from tkx.models import lora

  lora_config, adapters = peft_format.read_peft(args.peft, config)
  params = peft_format.with_adapters(params, adapters)
  # model.gin records gin's LoraConfig (directory.config_to_gin) for the dense layer "lora".
  gin.parse_config(lora.gin_bindings(lora_config))
  logging.info(
      "%s: LoRA rank %d, alpha %s on %s of the %s",
      args.peft,
      lora_config.rank,
      lora_config.alpha,
      "/".join(lora_config.targets),
      " and ".join(lora_config.stacks),
  )
  comment = f"Imported by tkx import-checkpoint: peft adapter {args.peft} on {comment}"
  return config.replace(dense_layer="lora"), params, comment


def main(args):
  import jax.numpy as jnp
  from tkx.checkpoints import directory, hf

  _check_output(args.output)
  if not (args.hf or args.t5x):
    if not args.peft:
      raise errors.ConfigError(
          "tkx import-checkpoint: give --hf or --t5x (and --peft for a LoRA adapter)"
      )
    args.hf = _peft_base(args)
  spm = vocab_path = extra_ids = None
  if args.hf:
    config, params, spm = hf.import_hf(args.hf, dtype=jnp.dtype(args.dtype))
    comment = f"Hugging Face {args.hf}"
  else:
    config, params, vocab_path, extra_ids = _read_t5x(args, args.dtype)
    comment = f"t5x checkpoint {args.t5x}"  # no vocabulary: the gin files' one
  if args.peft:
    config, params, comment = _add_peft(args, config, params, comment)
  else:
    comment = f"Imported by tkx import-checkpoint from {comment}"
  out = directory.write_checkpoint(
      config,
      params,
      args.output,
      spm_model=spm,
      step=args.step,
      vocab_path=vocab_path,
      extra_ids=extra_ids,
      comment=comment,
  )
  if args.hf and spm is None:
    logging.warning(
        "%s has no spiece.model: model.gin names the embedded sample vocabulary; "
        "pass --vocab to tkx infer/eval or copy the right SentencePiece model to %s/spm.model",
        args.hf,
        out,
    )
  print(f"wrote tkx checkpoint {out}")
  return 0
