"""`tkx import-checkpoint`: a Hugging Face or t5x T5 checkpoint -> a tkx checkpoint.

    tkx import-checkpoint --hf allenai/tk-instruct-base-def-pos --output ckpts/tk-base
    tkx import-checkpoint --hf /path/to/hf_dir --output ckpts/mine [--dtype bfloat16]
    tkx import-checkpoint --t5x gs_copy/checkpoint_1000000 --gin_file gin_configs/models/t5_1_1/base.gin \
        --output ckpts/t5x_base

The output directory gets `checkpoint_<step>/` (orbax, params only), `model.gin`
(the model config: from the HF `config.json`, or from the gin files given for a
t5x checkpoint) and `spm.model` (the HF `spiece.model`, when there is one).
A Hub name is downloaded with `huggingface_hub` (needs network).
"""

import logging

from tkx import errors

DTYPES = ("float32", "bfloat16")


def add_arguments(parser):
  source = parser.add_mutually_exclusive_group(required=True)
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


def _import_t5x(args, dtype):
  from tkx import gin_utils
  from tkx.checkpoints import directory, hf, t5x_format

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
  config = config.replace(param_dtype=dtype)
  # A t5x checkpoint carries no vocabulary: keep the one the gin files name.
  return directory.write_checkpoint(
      config,
      params,
      args.output,
      step=args.step,
      vocab_path=vocab_path,
      extra_ids=extra_ids,
      comment=f"Imported by tkx import-checkpoint from t5x checkpoint {args.t5x}",
  )


def _cast(params, dtype):
  import jax
  import jax.numpy as jnp
  import numpy as np

  return jax.tree_util.tree_map(
      lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params
  )


def main(args):
  import jax.numpy as jnp
  from tkx.checkpoints import directory, hf

  _check_output(args.output)
  if args.hf:
    config, params, spm = hf.import_hf(args.hf, dtype=jnp.dtype(args.dtype))
    out = directory.write_checkpoint(
        config,
        params,
        args.output,
        spm_model=spm,
        step=args.step,
        comment=f"Imported by tkx import-checkpoint from Hugging Face {args.hf}",
    )
    if spm is None:
      logging.warning(
          "%s has no spiece.model: model.gin names the embedded sample vocabulary; "
          "pass --vocab to tkx infer/eval or copy the right SentencePiece model to %s/spm.model",
          args.hf,
          out,
      )
  else:
    out = _import_t5x(args, args.dtype)
  print(f"wrote tkx checkpoint {out}")
  return 0
