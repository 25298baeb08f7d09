"""Vocabularies: the embedded SentencePiece model and the real T5 / mT5 ones.

The embedded model `tasks/spm/tkx_sample.model` is a small unigram model trained
on all text of the embedded NI sample, with T5's special ids (pad 0, eos 1,
unk 2, no bos), so tests and the tiny CPU runs never download a vocabulary.
Rebuild it with

    python -m tkx.data.vocab --train_sample

Training is deterministic: one thread, input in file order, fixed random seed.
"""

import argparse
import io
import json
import os
import pathlib

import gin

from tkx import io_utils

EMBEDDED_NI_DIR = pathlib.Path(io_utils.REPO_ROOT) / "tasks"
EMBEDDED_SPM_PATH = str(EMBEDDED_NI_DIR / "spm" / "tkx_sample.model")
T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
MT5_SPM_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"

# The real T5/mT5 vocabularies carry 100 sentinel ids (<extra_id_0..99>); the embedded one has none.
_DEFAULT_EXTRA_IDS = {T5_SPM_PATH: 100, MT5_SPM_PATH: 100}

SAMPLE_VOCAB_SIZE = 1000
SAMPLE_SPM_SEED = 17

# Words the Tk-Instruct source template adds around task text; training on them keeps
# the encoded prompts short for the tiny models.
_TEMPLATE_TEXT = [
    "Definition:",
    "Positive Example 1 -",
    "Positive Example 2 -",
    "Negative Example 1 -",
    "Negative Example 2 -",
    "Input:",
    "Output:",
    "Explanation:",
    "Now complete the following example -",
    "Task:",
]


@gin.configurable
def get_vocabulary(path=None, extra_ids=None):
  """Returns a `seqio.SentencePieceVocabulary`.

  Args:
    path: SentencePiece model path (local or gs://); None means the embedded model.
    extra_ids: sentinel ids appended after the model's pieces; None means 100 for the
      real T5/mT5 paths and 0 otherwise.
  """
  path = EMBEDDED_SPM_PATH if path is None else os.fspath(path)
  if extra_ids is None:
    extra_ids = _DEFAULT_EXTRA_IDS.get(path, 0)
  if "://" not in path and not os.path.exists(path):
    raise FileNotFoundError(f"SentencePiece model not found: {path}")
  import seqio  # pylint: disable=g-import-not-at-top  # (TensorFlow: only when a vocabulary is built)

  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def sample_text_lines(ni_dir=EMBEDDED_NI_DIR):
  """All text of an NI checkout, one string per field, in sorted file order."""
  ni_dir = pathlib.Path(ni_dir)
  lines = list(_TEMPLATE_TEXT)
  for path in sorted((ni_dir / "tasks").glob("*.json")):
    with open(path, encoding="utf-8") as f:
      task = json.load(f)
    lines.append(path.stem)
    definition = task.get("Definition", [])
    lines.extend([definition] if isinstance(definition, str) else definition)
    for example in task.get("Positive Examples", []) + task.get(
        "Negative Examples", []
    ):
      lines.extend(
          example.get(k, "") for k in ("input", "output", "explanation")
      )
    for instance in task.get("Instances", []):
      lines.append(instance["input"])
      lines.extend(instance["output"])
  return [
      line.replace("\n", " ").strip() for line in lines if line and line.strip()
  ]


def train_sample_vocabulary(
    ni_dir=EMBEDDED_NI_DIR, model_prefix=None, vocab_size=SAMPLE_VOCAB_SIZE
):
  """Trains the embedded unigram model (T5 special ids) and returns its path."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  ni_dir = pathlib.Path(ni_dir)
  if model_prefix is None:
    (ni_dir / "spm").mkdir(parents=True, exist_ok=True)
    model_prefix = ni_dir / "spm" / "tkx_sample"
  lines = sample_text_lines(ni_dir)
  spm.set_random_generator_seed(SAMPLE_SPM_SEED)
  # Sentences from an iterator and the model into memory: the trainer then records no
  # temporary or absolute paths in the model proto, so rebuilding gives identical bytes.
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      model_type="unigram",
      vocab_size=vocab_size,
      character_coverage=1.0,
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      num_threads=1,
      shuffle_input_sentence=False,
      input_sentence_size=0,
      minloglevel=2,
  )
  model_path = pathlib.Path(f"{model_prefix}.model")
  model_path.write_bytes(model.getvalue())
  processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
  with open(f"{model_prefix}.vocab", "w", encoding="utf-8") as f:
    for i in range(processor.get_piece_size()):
      f.write(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n")
  print(
      f"trained {model_prefix}.model on {len(lines)} lines, {vocab_size} pieces"
  )
  return f"{model_prefix}.model"


def main(argv=None):
  parser = argparse.ArgumentParser(description="tkx vocabularies")
  parser.add_argument(
      "--train_sample",
      action="store_true",
      help="retrain tasks/spm/tkx_sample.model from the embedded NI sample",
  )
  parser.add_argument("--ni_dir", default=str(EMBEDDED_NI_DIR))
  parser.add_argument("--vocab_size", type=int, default=SAMPLE_VOCAB_SIZE)
  args = parser.parse_args(argv)
  if not args.train_sample:
    parser.error("nothing to do; pass --train_sample")
  train_sample_vocabulary(args.ni_dir, vocab_size=args.vocab_size)


if __name__ == "__main__":
  main()
