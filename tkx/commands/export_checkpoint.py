"""`tkx export-checkpoint`: a tkx checkpoint -> a Hugging Face T5 checkpoint.

    tkx export-checkpoint --checkpoint ckpts/run1 --hf exported/run1

Writes `config.json`, `model.safetensors` and, when the checkpoint has `spm.model`,
`spiece.model`; load it with `transformers.T5ForConditionalGeneration.from_pretrained`.
`--checkpoint` is a tkx checkpoint dir (its newest step) or one `checkpoint_<step>/`.
"""


def add_arguments(parser):
  parser.add_argument(
      "--checkpoint",
      required=True,
      help="tkx checkpoint dir (checkpoint_<step>/ + model.gin [+ spm.model]) "
      "or one checkpoint_<step>/",
  )
  parser.add_argument(
      "--hf",
      required=True,
      metavar="OUT_DIR",
      help="directory to write the HF checkpoint to",
  )


def main(args):
  from tkx.checkpoints import directory, hf

  config, params, spm = directory.read(args.checkpoint)
  hf.export_hf(config, params, args.hf, spm_model=spm)
  print(f"wrote Hugging Face checkpoint {args.hf}")
  return 0
