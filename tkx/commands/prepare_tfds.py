"""`tkx prepare-tfds`: prepare a Natural Instructions checkout as TFDS records.

    tkx prepare-tfds --ni_dir /path/to/natural-instructions --data_dir ~/tensorflow_datasets \\
        [--config default|xlingual]

Writes the `tkx_natural_instructions/<config>` builder (`tkx.data.tfds_ni`) under
`--data_dir`; a training run reads the records with the gin bindings
`register_ni.source = 'tfds'` and `register_ni.tfds_data_dir = '<data_dir>'`.
Preparing again reuses records that are already there.
"""

import logging
import os
import sys


def add_arguments(parser):
  parser.add_argument(
      "--ni_dir", required=True, help="NI checkout (tasks/, splits/)"
  )
  parser.add_argument(
      "--data_dir",
      default=None,
      help="TFDS data dir (default ~/tensorflow_datasets)",
  )
  parser.add_argument(
      "--config",
      default="default",
      choices=("default", "xlingual"),
      help="builder config = NI track",
  )


def main(args):
  logging.basicConfig(
      level=logging.INFO,
      format="%(asctime)s %(levelname)s %(name)s] %(message)s",
      stream=sys.stderr,
  )
  logging.getLogger("absl").setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from tkx import storage

  if not storage.isdir(storage.join(args.ni_dir, "tasks")):
    print(
        f"tkx prepare-tfds: --ni_dir {args.ni_dir}: no tasks/ folder (not an NI checkout)",
        file=sys.stderr,
    )
    return 2
  from tkx.data import ni
  from tkx.data import tfds_ni

  data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
  try:
    builder = tfds_ni.prepare(args.ni_dir, data_dir, args.config)
  except ni.NIDataError as e:
    print(f"tkx prepare-tfds: {e}", file=sys.stderr)
    return 2
  where = builder.data_dir
  if data_dir and storage.is_remote(data_dir):  # prepared locally, uploaded
    where = storage.join(
        data_dir, tfds_ni.BUILDER_NAME, args.config, str(builder.version)
    )
  for split, info in builder.info.splits.items():
    print(
        f"{builder.name}/{args.config} {split}: {info.num_examples} examples in {where}"
    )
  return 0
