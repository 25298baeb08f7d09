"""SeqIO Tasks and Mixtures over Natural Instructions checkouts.

One `seqio.Task` per (track, split, encoding, NI task), named
`<prefix>_<track>_<split>_<encoding>_<taskname>`, and one `seqio.Mixture` per
(track, split, encoding), named `<prefix>_<track>_<split>_<encoding>`, mixing its
tasks at rates equal to their selected instance counts. The SeqIO split of each
task is the NI split name (`train`, `test`, ...).

Registration reads only the split files (and stats the task files), so a full
1,600-task checkout registers in about a second; a task's JSON is opened when
its dataset is built, and a mixture's rates (instance counts) are computed, and
cached, the first time the mixture is used.

Examples carry, besides the tokenized `inputs` / `targets` (`targets` is one
reference: seeded for training splits, the first one for evaluation splits):
  `id`, `task`, `category`   string scalars;
  `references`               string vector [None], every reference output;
  `inputs_pretokenized`, `targets_pretokenized`   the text.
The postprocessor hands metric functions, for each example, the list of its
references as the target, so metric functions receive `targets` as a list of
reference lists and `predictions` as a list of strings.

The embedded sample `tasks/` is registered on import (prefix `ni`) when its
vocabulary is present.
"""

import dataclasses
import functools
import logging
import os
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from tkx.data import encodings as enc
from tkx.data import ni
from tkx.data import vocab as vocab_lib

EMBEDDED_NI_DIR = str(vocab_lib.EMBEDDED_NI_DIR)
DEFAULT_PREFIX = "ni"
DEFAULT_ENCODINGS = ("def_pos2",)
# What the embedded sample is registered with on import: Tk-Instruct's evaluation
# encodings and its training mixture.
EMBEDDED_ENCODINGS = (
    "def",
    "pos2",
    "def_pos2",
    "def_pos2_neg2",
    "def_pos2_neg2_expl",
    "tk_instruct",
)
DEFAULT_MAX_SOURCE_LENGTH = 1024
DEFAULT_MAX_TARGET_LENGTH = 128
# `task_feature_lengths` for `seqio.get_dataset` / t5x, Tk-Instruct's 1024 / 128.
TASK_FEATURE_LENGTHS = {
    "inputs": DEFAULT_MAX_SOURCE_LENGTH,
    "targets": DEFAULT_MAX_TARGET_LENGTH,
}
_USE_SPLIT_DEFAULT = "split_default"

_INVALID_NAME_CHARS = re.compile(r"[^\w.:#]")

# The scalar text features of the source dataset (before tokenization); `references` is ragged.
_TEXT_FEATURES = ("id", "task", "category", "inputs", "targets")


def seqio_name(*parts: str) -> str:
  """Joins name parts with "_", mapping characters SeqIO rejects (e.g. "-") to "_"."""
  return _INVALID_NAME_CHARS.sub("_", "_".join(parts))


def mixture_name(
    track: str, split: str, encoding: str, prefix: str = DEFAULT_PREFIX
) -> str:
  return seqio_name(prefix, track, split, encoding)


def task_name(
    track: str,
    split: str,
    encoding: str,
    ni_task: str,
    prefix: str = DEFAULT_PREFIX,
) -> str:
  return seqio_name(prefix, track, split, encoding, ni_task)


def output_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  return {
      "inputs": seqio.Feature(
          vocabulary=vocabulary, add_eos=True, required=True
      ),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


# --------------------------------------------------------------------------- metrics


def references_postprocessor(output, example=None, is_target=False):
  """Targets become the example's list of references; predictions stay strings."""
  if is_target:
    if example is not None and "references" in example:
      return [
          r.decode("utf-8") if isinstance(r, bytes) else str(r)
          for r in example["references"]
      ]
    return [output]
  return output


def ni_metrics(targets, predictions):
  """`tkx.metrics.seqio_metrics.ni_metrics`, imported when metrics are computed."""
  from tkx.metrics import seqio_metrics  # pylint: disable=g-import-not-at-top

  return seqio_metrics.ni_metrics(targets, predictions)


def ni_metrics_xlingual(targets, predictions):
  """`tkx.metrics.seqio_metrics.ni_metrics_xlingual` (language-neutral ROUGE), imported lazily."""
  from tkx.metrics import seqio_metrics  # pylint: disable=g-import-not-at-top

  return seqio_metrics.ni_metrics_xlingual(targets, predictions)


def default_metric_fns(track: str) -> List[Callable]:
  return [ni_metrics_xlingual] if track == "xlingual" else [ni_metrics]


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class NITaskSpec:
  """Everything needed to build one NI task's examples, lazily."""

  ni_dir: str
  track: str
  split: str
  ni_task: str
  encoding: str
  max_num_instances_per_task: Optional[int]
  seed: int
  max_source_length: int
  source: str = "json"  # or "tfds"
  tfds_name: Optional[str] = None
  tfds_data_dir: Optional[str] = None

  def load(self):
    """(task dict, selected instances) from the JSON checkout."""
    task = ni.load_task(self.ni_dir, self.ni_task)
    return task, ni.select_instances(
        task, self.split, self.max_num_instances_per_task, self.seed
    )


# seqio task name -> its spec; read by the rate function and by tests.
_SPECS: Dict[str, NITaskSpec] = {}


@functools.lru_cache(maxsize=None)
def _num_instances(spec: NITaskSpec) -> int:
  if spec.source == "tfds":
    from tkx.data import tfds_ni  # pylint: disable=g-import-not-at-top

    start, end = tfds_ni.task_range(
        spec.tfds_name, spec.tfds_data_dir, spec.split, spec.ni_task
    )
    return end - start
  return len(spec.load()[1])


def instance_count_rate(task: seqio.Task) -> float:
  """Mixture rate: the number of selected instances of the task (loaded on first use)."""
  # The count does not depend on the encoding: share one cache entry across encodings.
  spec = dataclasses.replace(
      _SPECS[task.name], encoding="", max_source_length=0
  )
  return float(_num_instances(spec))


def _iter_examples(spec: NITaskSpec, vocabulary) -> Iterable[dict]:
  token_count, truncate = enc.vocabulary_token_fns(vocabulary)
  if spec.source == "tfds":
    from tkx.data import tfds_ni  # pylint: disable=g-import-not-at-top

    pairs = tfds_ni.iter_task_instances(
        spec.tfds_name, spec.tfds_data_dir, spec.split, spec.ni_task
    )
  else:
    task, instances = spec.load()
    pairs = ((task, instance) for instance in instances)
  for task, instance in pairs:
    yield enc.make_example(
        task,
        instance,
        spec.encoding,
        split=spec.split,
        seed=spec.seed,
        max_source_length=spec.max_source_length,
        token_count=token_count,
        truncate=truncate,
    )


def _examples_dataset(examples: Sequence[dict]) -> tf.data.Dataset:
  """Column-wise `from_tensor_slices` (much cheaper per example than `from_generator`)."""
  columns = {
      k: tf.constant([e[k] for e in examples], dtype=tf.string)
      for k in _TEXT_FEATURES
  }
  references = [e["references"] for e in examples]
  columns["references"] = tf.RaggedTensor.from_row_lengths(
      tf.constant([r for refs in references for r in refs], dtype=tf.string),
      tf.constant([len(refs) for refs in references], dtype=tf.int64),
  )
  return tf.data.Dataset.from_tensor_slices(columns)


def _dataset_fn(spec: NITaskSpec, vocabulary) -> Callable[..., tf.data.Dataset]:

  def dataset_fn(
      split: str, shuffle_files: bool, seed: Optional[int] = None
  ) -> tf.data.Dataset:
    del (
        shuffle_files,
        seed,
    )  # one ordered stream per task; SeqIO shuffles examples
    if split != spec.split:
      raise ValueError(
          f"SeqIO task for NI task {spec.ni_task!r} has only split {spec.split!r}, "
          f"got {split!r}"
      )
    # The task file is read and encoded here, when the dataset is built, never at registration.
    return _examples_dataset(list(_iter_examples(spec, vocabulary)))

  return dataset_fn


def _add_task(name: str, spec: NITaskSpec, vocabulary, metric_fns) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # re-registration replaces: idempotent
  _SPECS[name] = spec
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          _dataset_fn(spec, vocabulary), splits=(spec.split,)
      ),
      preprocessors=[
          functools.partial(
              seqio.preprocessors.tokenize, copy_pretokenized=True
          ),
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=output_features(vocabulary),
      postprocess_fn=references_postprocessor,
      metric_fns=list(metric_fns),
  )


def _add_mixture(name: str, task_names: Sequence[str]) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(
      name, [(t, instance_count_rate) for t in task_names]
  )


def _default_vocabulary():
  return vocab_lib.get_vocabulary()


def _register(
    ni_dir,
    tracks,
    splits,
    encodings,
    vocabulary,
    *,
    prefix,
    max_num_instances_per_task,
    seed,
    max_source_length,
    skip_missing,
    source,
    tfds_data_dir,
    metric_fns,
) -> List[str]:
  ni_dir = os.fspath(ni_dir)
  if source not in ("json", "tfds"):
    raise ValueError(f"source must be 'json' or 'tfds', got {source!r}")
  for encoding in encodings:
    enc.parse_encoding(encoding)  # fail early on a bad name
  vocabulary = vocabulary if vocabulary is not None else _default_vocabulary()
  registered = []
  for track in tracks:
    track_metric_fns = (
        default_metric_fns(track) if metric_fns is None else list(metric_fns)
    )
    for split in (ni.list_splits(ni_dir, track) if splits is None else splits):
      cap = (
          ni.default_max_num_instances(split)
          if max_num_instances_per_task == _USE_SPLIT_DEFAULT
          else max_num_instances_per_task
      )
      tfds_name = None
      if source == "tfds":
        from tkx.data import tfds_ni  # pylint: disable=g-import-not-at-top

        tfds_name = tfds_ni.builder_name(track)
        ni_tasks = tfds_ni.split_task_names(tfds_name, tfds_data_dir, split)
      else:
        ni_tasks = ni.split_tasks(
            ni_dir, track, split, skip_missing=skip_missing
        )
      if not ni_tasks:
        raise ni.NIDataError(
            "the split lists no tasks",
            file=ni.split_path(ni_dir, track, split),
            field=f"splits/{track}/{split}_tasks.txt",
        )
      for encoding in encodings:
        seen = {}
        task_names = []
        for ni_task in ni_tasks:
          name = task_name(track, split, encoding, ni_task, prefix)
          if name in seen:
            raise ni.NIDataError(
                f"tasks {seen[name]!r} and {ni_task!r} map to the same SeqIO name "
                f"{name!r}",
                file=ni.split_path(ni_dir, track, split),
                task=ni_task,
                field="task name",
            )
          seen[name] = ni_task
          spec = NITaskSpec(
              ni_dir=ni_dir,
              track=track,
              split=split,
              ni_task=ni_task,
              encoding=encoding,
              max_num_instances_per_task=cap,
              seed=seed,
              max_source_length=max_source_length,
              source=source,
              tfds_name=tfds_name,
              tfds_data_dir=tfds_data_dir,
          )
          _add_task(name, spec, vocabulary, track_metric_fns)
          task_names.append(name)
        mixture = mixture_name(track, split, encoding, prefix)
        _add_mixture(mixture, task_names)
        registered.append(mixture)
  logging.info("Registered %d NI mixtures from %s", len(registered), ni_dir)
  return registered


@gin.configurable
def register_ni(
    ni_dir=None,
    tracks: Sequence[str] = ("default",),
    encodings: Sequence[str] = DEFAULT_ENCODINGS,
    vocabulary: Optional[seqio.Vocabulary] = None,
    *,
    splits: Optional[Sequence[str]] = ("train", "test"),
    prefix: str = DEFAULT_PREFIX,
    max_num_instances_per_task=_USE_SPLIT_DEFAULT,
    seed: int = 42,
    max_source_length: int = DEFAULT_MAX_SOURCE_LENGTH,
    skip_missing: bool = False,
    source: str = "json",
    tfds_data_dir: Optional[str] = None,
    metric_fns: Optional[Sequence[Callable]] = None,
) -> List[str]:
  """Registers SeqIO tasks and mixtures for an NI checkout; returns the mixture names.

  Args:
    ni_dir: the checkout (`tasks/`, `splits/`); None means the embedded `tasks/`.
    tracks: `default` and/or `xlingual`.
    encodings: encoding names (see `tkx.data.encodings`), e.g. `def_pos2`, `tk_instruct`.
    vocabulary: any `seqio.Vocabulary`; None means `tkx.data.vocab.get_vocabulary()`.
    splits: NI split names; None means every `splits/<track>/*_tasks.txt`.
    prefix: first part of every name.
    max_num_instances_per_task: cap after a seeded shuffle; by default Tk-Instruct's
      (100 for `train`, none otherwise); None means no cap for any split.
    seed: instance selection, training reference choice and `tk_instruct` draws.
    max_source_length: the source token budget (EOS included).
    skip_missing: skip, with one warning, tasks whose file is missing.
    source: `json` reads the checkout; `tfds` reads records prepared by
      `tkx.data.tfds_ni` (builder config named after the track) from `tfds_data_dir`.
    tfds_data_dir: TFDS data directory for `source="tfds"`.
    metric_fns: SeqIO metric functions; None means the NI metrics (`ni_metrics`, or
      `ni_metrics_xlingual` for the xlingual track).
  """
  return _register(
      EMBEDDED_NI_DIR if ni_dir is None else ni_dir,
      tuple(tracks),
      splits,
      tuple(encodings),
      vocabulary,
      prefix=prefix,
      max_num_instances_per_task=max_num_instances_per_task,
      seed=seed,
      max_source_length=max_source_length,
      skip_missing=skip_missing,
      source=source,
      tfds_data_dir=tfds_data_dir,
      metric_fns=metric_fns,
  )


def task_spec(name: str) -> NITaskSpec:
  """The spec behind a registered NI SeqIO task name."""
  return _SPECS[name]


def _register_embedded() -> None:
  if not os.path.isdir(os.path.join(EMBEDDED_NI_DIR, "splits")):
    return
  try:
    vocabulary = _default_vocabulary()
  except (ImportError, FileNotFoundError) as e:
    logging.warning("Embedded NI tasks not registered: no vocabulary (%s)", e)
    return
  tracks = [t for t in ni.TRACKS if ni.list_splits(EMBEDDED_NI_DIR, t)]
  try:
    _register(
        EMBEDDED_NI_DIR,
        tracks,
        None,
        EMBEDDED_ENCODINGS,
        vocabulary,
        prefix=DEFAULT_PREFIX,
        max_num_instances_per_task=_USE_SPLIT_DEFAULT,
        seed=42,
        max_source_length=DEFAULT_MAX_SOURCE_LENGTH,
        skip_missing=False,
        source="json",
        tfds_data_dir=None,
        metric_fns=None,
    )
  except ni.NIDataError as e:
    logging.error("Embedded NI tasks not registered: %s", e)


_register_embedded()
