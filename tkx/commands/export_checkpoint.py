"""`tkx export-checkpoint`: a tkx checkpoint -> a Hugging Face T5 checkpoint.

    tkx export-checkpoint --checkpoint ckpts/run1 --hf exported/run1

Writes `config.json`, `model.safetensors` and, when the vocabulary is a local
SentencePiece file (the checkpoint's `spm.model`, or the one its model.gin names),
the tokenizer (`spiece.model` and transformers' tokenizer files); load them with
`transformers.T5ForConditionalGeneration.from_pretrained` and
`transformers.AutoTokenizer.from_pretrained`.
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
  hf.export_hf(
      config,
      params,
      args.hf,
      spm_model=spm,
      extra_ids=directory.extra_ids_for(spm, config) if spm else 0,
  )
  print(f"wrote Hugging Face checkpoint {args.hf}")
  return 0
