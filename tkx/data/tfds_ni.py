"""A `tensorflow_datasets` builder for Natural Instructions (the checkout is the manual dir).

Large runs prepare the selected instances once into sharded TFRecords and read
those instead of thousands of JSON files:

    tkx prepare-tfds --ni_dir /path/to/natural-instructions --data_dir ~/tensorflow_datasets \\
        [--config default|xlingual]

(or `prepare` from Python), then `register_ni(..., source="tfds", tfds_data_dir=...)`
builds the SeqIO tasks from the records. One builder config per track (`default`, `xlingual`); splits `train`
and `test`. Instance selection (test: first 100; train: 100 after a seeded shuffle,
Tk-Instruct's defaults) happens at build time, so a config fixes it; build another
`NIConfig` for other caps or seeds.

Each record is one instance with what the encodings need: `id`, `task`,
`category`, `definition` (the string Tk-Instruct uses), `input`, `outputs`, and the
task's `positive_examples` / `negative_examples` (`input`, `output`,
`explanation`, `has_explanation` so that a missing explanation stays missing).
Records keep generation order (task by task, shuffling disabled) and the builder
metadata stores each task's record range per split, so one NI task is read as a
slice `split[start:end]` instead of a filter over the whole split.

`data_dir` may be remote (`gs://...`) through `tkx.storage`: TFDS reads records
through TensorFlow's file system, which reaches no GCS emulator and is not tkx's
file layer, so a remote `data_dir` is prepared in a local temporary dir and
uploaded file by file with `dataset_info.json` last (TFDS counts a dataset as
prepared only when that file is there: a half upload is never read), and is read
from a local copy made once per process.

Contract (the names other modules rely on; change one only together with its users):
- Builder `tkx_natural_instructions` (configs `default`, `xlingual` = track; splits `train`, `test`; checkout =
  manual dir; selection fixed at build time). Records: `id, task, category, definition, input, outputs[],
  positive_examples[]/negative_examples[] {input, output, explanation, has_explanation}`; order kept and
  `info.metadata["task_ranges"][split][task] = [start, end)`. `prepare(ni_dir, data_dir, config)`,
  `from_record(record) -> (task, instance)`. The command line is `tkx prepare-tfds`
  (`tkx/commands/prepare_tfds.py`), never `python -m tkx.data.tfds_ni`: TFDS resolves a builder through
  its module's package, and a module run as `__main__` has none. A training run reads the records with
  the gin bindings `register_ni.source = 'tfds'`, `register_ni.tfds_data_dir = '<data_dir>'`
  (`trainer.register_ni_for` calls the gin-configurable `register_ni`).
"""

import dataclasses
import functools
import logging
import os
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from tkx import storage
from tkx.data import ni

_DESCRIPTION = (
    "Super-NaturalInstructions tasks and instances, as selected by Tk-Instruct."
)
_HOMEPAGE = "https://github.com/allenai/natural-instructions"
BUILDER_NAME = "tkx_natural_instructions"
SPLITS = ("train", "test")


@dataclasses.dataclass(eq=False)
class NIConfig(tfds.core.BuilderConfig):
  """A track plus the instance selection applied at build time."""

  track: str = "default"
  # Per split; a missing split means no cap. Tk-Instruct's defaults.
  max_num_instances_per_task: Optional[Dict[str, int]] = None
  seed: int = 42
  skip_missing: bool = False
  # `tkx.data.ni.Selection` value: Tk-Instruct's one-stream rule by default.
  selection: str = ni.DEFAULT_SELECTION.value

  def cap(self, split: str) -> Optional[int]:
    caps = (
        ni.DEFAULT_MAX_NUM_INSTANCES
        if self.max_num_instances_per_task is None
        else (self.max_num_instances_per_task)
    )
    return caps.get(split)


def _example_features():
  return {
      "input": tfds.features.Text(),
      "output": tfds.features.Text(),
      "explanation": tfds.features.Text(),
      "has_explanation": np.bool_,
  }


class TkxNaturalInstructions(tfds.core.GeneratorBasedBuilder):
  """Natural Instructions from a local checkout (tasks/*.json, splits/<track>/*_tasks.txt)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Clone https://github.com/allenai/natural-instructions (or any checkout with tasks/*.json "
      "and splits/<track>/<split>_tasks.txt) and pass it as the manual dir "
      "(`--ni_dir` of `tkx prepare-tfds`, or DownloadConfig(manual_dir=...))."
  )
  BUILDER_CONFIGS = [
      NIConfig(
          name="default", description="default (English) track", track="default"
      ),
      NIConfig(
          name="xlingual", description="cross-lingual track", track="xlingual"
      ),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict(
            {
                "id": tfds.features.Text(),
                "task": tfds.features.Text(),
                "category": tfds.features.Text(),
                "definition": tfds.features.Text(),
                "input": tfds.features.Text(),
                "outputs": tfds.features.Sequence(tfds.features.Text()),
                "positive_examples": tfds.features.Sequence(
                    _example_features()
                ),
                "negative_examples": tfds.features.Sequence(
                    _example_features()
                ),
            }
        ),
        homepage=_HOMEPAGE,
        # Records stay in generation order so each task is a contiguous range.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    ni_dir = dl_manager.manual_dir
    self.info.metadata["task_ranges"] = {}
    return {
        split: self._generate_examples(os.fspath(ni_dir), split)
        for split in SPLITS
    }

  def _generate_examples(self, ni_dir: str, split: str):
    config = self.builder_config
    ranges = self.info.metadata["task_ranges"].setdefault(split, {})
    names = ni.split_tasks(
        ni_dir, config.track, split, skip_missing=config.skip_missing
    )
    lines, _ = ni.read_split_lines(ni_dir, config.track, split)
    selector = ni.SplitSelector(
        split, config.cap(split), config.seed, config.selection
    )
    present = set(names)
    position = 0
    for count, name in enumerate(lines, 1):
      if name not in present:
        continue
      task = ni.load_task(ni_dir, name)
      chosen = selector.select(task)
      if (
          name in ranges
      ):  # a repeated line: the stream advanced, the rows are read once
        continue
      start = position
      for instance in chosen:
        yield f"{position:09d}", _record(task, instance)
        position += 1
      ranges[name] = [start, position]
      if count % 100 == 0 or count == len(lines):
        logging.info(
            "%s/%s: %d/%d tasks, %d instances",
            config.track,
            split,
            count,
            len(lines),
            position,
        )


def _examples_record(examples):
  return [
      {
          "input": e["input"],
          "output": e["output"],
          "explanation": e.get("explanation", ""),
          "has_explanation": "explanation" in e,
      }
      for e in examples
  ]


def _record(task: dict, instance: dict) -> dict:
  return {
      "id": instance["id"],
      "task": task["Task"],
      "category": ni.task_category(task),
      "definition": ni.task_definition(task),
      "input": instance["input"],
      "outputs": list(instance["output"]),
      "positive_examples": _examples_record(task["Positive Examples"]),
      "negative_examples": _examples_record(task["Negative Examples"]),
  }


def _decode(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _examples_from_record(examples) -> List[dict]:
  out = []
  for i in range(len(examples["input"])):
    example = {
        "input": _decode(examples["input"][i]),
        "output": _decode(examples["output"][i]),
    }
    if examples["has_explanation"][i]:
      example["explanation"] = _decode(examples["explanation"][i])
    out.append(example)
  return out


def from_record(record) -> Tuple[dict, dict]:
  """(task dict, instance dict) in the shapes `encodings.encode_source` takes."""
  task = {
      "Task": _decode(record["task"]),
      "Definition": _decode(record["definition"]),
      "Categories": [_decode(record["category"])],
      "Positive Examples": _examples_from_record(record["positive_examples"]),
      "Negative Examples": _examples_from_record(record["negative_examples"]),
  }
  instance = {
      "id": _decode(record["id"]),
      "input": _decode(record["input"]),
      "output": [_decode(o) for o in record["outputs"]],
  }
  return task, instance


# --------------------------------------------------------------------------- reading


def builder_name(track: str) -> str:
  return f"{BUILDER_NAME}/{track}"


@functools.lru_cache(maxsize=None)
def _builder(name: str, data_dir: Optional[str]):
  return tfds.builder(name, data_dir=_local_data_dir(data_dir))


def _local_data_dir(data_dir: Optional[str]) -> Optional[str]:
  """`data_dir` itself when local; a remote one's builder copied to local disk once per process."""
  if data_dir is None or not storage.is_remote(data_dir):
    return data_dir
  remote = storage.join(data_dir, BUILDER_NAME)
  if not storage.isdir(remote):
    raise ni.NIDataError(
        "no prepared dataset there (run `tkx prepare-tfds --data_dir` first)",
        file=remote,
        field="tfds_data_dir",
    )
  return os.path.dirname(storage.cached_local_copy(remote))


def _upload(local_dir: str, remote_dir: str) -> None:
  """Copies a prepared version dir to `remote_dir`, `dataset_info.json` last (see the module docstring)."""
  names = sorted(os.listdir(local_dir), key=lambda n: n == "dataset_info.json")
  for name in names:
    storage.copy(os.path.join(local_dir, name), storage.join(remote_dir, name))


def _task_ranges(
    name: str, data_dir: Optional[str], split: str
) -> Dict[str, List[int]]:
  builder = _builder(name, data_dir)
  ranges = (
      builder.info.metadata.get("task_ranges", {}).get(split)
      if builder.info.metadata
      else None
  )
  if ranges is None:
    raise ni.NIDataError(
        f"prepared dataset has no task ranges for split {split!r}",
        file=builder.data_dir,
        field="metadata.task_ranges",
    )
  return ranges


def split_task_names(
    name: str, data_dir: Optional[str], split: str
) -> List[str]:
  """NI task names of a prepared split, in record order."""
  ranges = _task_ranges(name, data_dir, split)
  return sorted(ranges, key=lambda t: ranges[t][0])


def task_range(
    name: str, data_dir: Optional[str], split: str, ni_task: str
) -> Tuple[int, int]:
  ranges = _task_ranges(name, data_dir, split)
  if ni_task not in ranges:
    raise ni.NIDataError(
        f"task not in the prepared split {split!r}",
        file=_builder(name, data_dir).data_dir,
        task=ni_task,
        field="metadata.task_ranges",
    )
  start, end = ranges[ni_task]
  return start, end


def iter_task_instances(
    name: str, data_dir: Optional[str], split: str, ni_task: str
) -> Iterator[Tuple[dict, dict]]:
  """(task, instance) pairs of one NI task, read as a slice of the prepared split."""
  start, end = task_range(name, data_dir, split, ni_task)
  if end == start:
    return
  dataset = _builder(name, data_dir).as_dataset(
      split=f"{split}[{start}:{end}]", shuffle_files=False
  )
  for record in tfds.as_numpy(dataset):
    yield from_record(record)


def iter_split(
    name: str, data_dir: Optional[str], split: str
) -> Iterator[Tuple[dict, dict]]:
  """(task, instance) pairs of a whole prepared split, in record order."""
  dataset = _builder(name, data_dir).as_dataset(
      split=split, shuffle_files=False
  )
  for record in tfds.as_numpy(dataset):
    yield from_record(record)


def prepare(
    ni_dir, data_dir: Optional[str] = None, config="default"
) -> tfds.core.DatasetBuilder:
  """Builds (or reuses) the prepared records for one config from a checkout.

  A remote `data_dir` is prepared locally and uploaded (the returned builder is
  the local one's; its records are gone, its `info` is what was uploaded).
  """
  if data_dir is not None and storage.is_remote(data_dir):
    with tempfile.TemporaryDirectory(prefix="tkx_tfds_") as local:
      builder = prepare(ni_dir, local, config)
      relative = os.path.relpath(builder.data_dir, local)
      _upload(builder.data_dir, storage.join(data_dir, relative))
    _builder.cache_clear()
    storage.forget_local_copy(storage.join(data_dir, BUILDER_NAME))
    return builder
  builder = TkxNaturalInstructions(config=config, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(ni_dir))
  )
  _builder.cache_clear()
  return builder
