"""SeqIO Tasks and Mixtures over Natural Instructions checkouts: one source per split.

For each (track, split, encoding) one `seqio.Task`, `<prefix>_<track>_<split>_<encoding>_all_tasks`,
reads the split's one data source (`tkx.data.source.SplitSource`: the selected
instances of all its tasks), and the mixture `<prefix>_<track>_<split>_<encoding>`
is that one task. The SeqIO split is the NI split name (`train`, `test`, ...).
Per-task tasks `<mixture>_<taskname>` (rows of the same source) are registered
when asked for (`per_task_tasks=True`, or by `register_ni_for` on such a name);
nothing at start-up needs them, so the cost of registration does not grow with
the number of tasks beyond a stat per task file.

Registration reads only the split files (and stats the task files); the source
is built (or read from its cache) the first time a dataset is made.

Examples carry, besides the tokenized `inputs` / `targets` (`targets` is one
reference: seeded for training splits, the first one for evaluation splits):
  `id`, `task`, `category`   string scalars;
  `references`               string vector [None], every reference output;
  `inputs_pretokenized`, `targets_pretokenized`   the text.
The postprocessor hands metric functions, for each example, the list of its
references as the target, so metric functions receive `targets` as a list of
reference lists and `predictions` as a list of strings.

Training does not go through SeqIO: `tkx.data.pipeline` reads the same source
with exact epochs and O(1) resume. The embedded sample `tasks/` is registered on
import (prefix `ni`) when its vocabulary is present.

Contract (the names other modules rely on; change one only together with its users):
- `register_ni(ni_dir=None, tracks=("default",), encodings=("def_pos2",), vocabulary=None, *, splits=("train","test"),
  prefix="ni", max_num_instances_per_task=<Tk-Instruct defaults>, seed=42, max_source_length=1024,
  skip_missing=False, source="json"|"tfds", tfds_data_dir=None, metric_fns=None, selection="tk_instruct",
  per_task_tasks=True) -> list[str]` (gin-configurable) registers, per (track, split, encoding), ONE task
  `<mixture>_all_tasks` over the split's `SplitSource` and the mixture `<prefix>_<track>_<split>_<encoding>` =
  that task; with `per_task_tasks` (True, or a collection of names) also `<mixture>_<taskname>` (rows of the
  same source). Only split files are read (and task files stat'ed); characters SeqIO rejects, e.g. `-`, become
  `_`; returns the mixture names; re-registration replaces (idempotent). `task_spec(seqio_name) -> NITaskSpec`
  (`.split_source()`, `.rows()`, `ni_task` None for the all-tasks task); `iter_examples(spec, vocabulary)`.
  The embedded `tasks/` is registered on import of `tkx.data.tasks` (prefix `ni`, tracks default + xlingual,
  encodings def, pos2, def_pos2, def_pos2_neg2, def_pos2_neg2_expl, tk_instruct).
- The SeqIO split of a task is the NI split name (`train`, `test`). `TASK_FEATURE_LENGTHS = {"inputs": 1024, "targets": 128}`.
- Output features `{"inputs", "targets"}` (add_eos=True) with any `seqio.Vocabulary`; task datasets also
  carry string scalars `id`, `task`, `category`, the string vector `references` (shape [None], every
  reference output) and `inputs_pretokenized`/`targets_pretokenized`. (Mixtures keep only the output
  features, as SeqIO does; the evaluator reads the task datasets, so it sees everything.) Eval and infer
  decode the mixture as one stream; records are looked up by `(task, id)` (`infer.example_key`,
  `infer.records_for_task`) and per-task / per-category tables come from those fields.
- Eval contract: `postprocess_fn` = `references_postprocessor`: for targets it returns the example's
  `references` as a `list[str]`; predictions pass through as strings. So metric functions receive
  `targets: list[list[str]]` and `predictions: list[str]`. Default `metric_fns` is
  `[tkx.metrics.seqio_metrics.ni_metrics]` (`ni_metrics_xlingual` for the xlingual track; imported
  when metrics are computed).
- `get_vocabulary(path=None)` in `tkx.data.vocab`: default is the embedded model `tasks/spm/tkx_sample.model`.
"""

import dataclasses
import functools
import logging
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from tkx import errors, storage
from tkx.data import encodings as enc
from tkx.data import names
from tkx.data import ni
from tkx.data import source as source_lib
from tkx.data import vocab as vocab_lib

log = logging.getLogger(__name__)

EMBEDDED_NI_DIR = str(vocab_lib.EMBEDDED_NI_DIR)
DEFAULT_PREFIX = names.DEFAULT_PREFIX
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

# The scalar text features of the source dataset (before tokenization); `references` is ragged.
_TEXT_FEATURES = ("id", "task", "category", "inputs", "targets")
seqio_name = names.seqio_name


def mixture_name(
    track: str, split: str, encoding: str, prefix: str = DEFAULT_PREFIX
) -> str:
  return names.MixtureName(prefix, track, split, encoding).name


def task_name(
    track: str,
    split: str,
    encoding: str,
    ni_task: str,
    prefix: str = DEFAULT_PREFIX,
) -> str:
  return names.MixtureName(prefix, track, split, encoding).task_name(ni_task)


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
  """Everything needed to build a registered task's examples, lazily.

  `ni_task` None: all the split's tasks (the `_all_tasks` task); else one NI task.
  """

  ni_dir: str
  track: str
  split: str
  ni_task: Optional[str]
  encoding: str
  max_num_instances_per_task: Optional[int]
  seed: int
  max_source_length: int
  source: str = "json"  # or "tfds"
  tfds_name: Optional[str] = None
  tfds_data_dir: Optional[str] = None
  selection: ni.Selection = ni.DEFAULT_SELECTION
  skip_missing: bool = False

  def split_source(self) -> source_lib.SplitSource:
    """The one source of this spec's split (built or read from the cache on first use)."""
    if self.source == "tfds":
      return source_lib.tfds_source(
          self.tfds_name, self.tfds_data_dir, self.track, self.split
      )
    return source_lib.source_for(
        self.ni_dir,
        self.track,
        self.split,
        max_num_instances_per_task=self.max_num_instances_per_task,
        seed=self.seed,
        selection=self.selection,
        skip_missing=self.skip_missing,
    )

  def rows(self) -> range:
    source = self.split_source()
    if self.ni_task is None:
      return range(len(source))
    return source.task_rows(self.ni_task)

  def load(self):
    """(task dict, selected instances) of a per-task spec."""
    if self.ni_task is None:
      raise ValueError("load() applies to one NI task; use split_source()")
    source = self.split_source()
    rows = self.rows()
    if not rows:
      raise ni.NIDataError("task has no selected instances", task=self.ni_task)
    return source.row(rows[0])[0], [source.instances[i] for i in rows]


# seqio task name -> its spec; read by the rate function and by tests.
_SPECS: Dict[str, NITaskSpec] = {}


def instance_count_rate(task: seqio.Task) -> float:
  """Mixture rate: the number of selected instances of the task (reads the source on first use)."""
  return float(len(_SPECS[task.name].rows()))


def iter_examples(spec: NITaskSpec, vocabulary, rows=None) -> Iterable[dict]:
  """Text examples (`encodings.make_example`) of a spec's rows, in source order."""
  token_count, truncate = enc.vocabulary_token_fns(vocabulary)
  source = spec.split_source()
  for row in spec.rows() if rows is None else rows:
    task, instance = source.row(row)
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
      raise errors.ConfigError(
          f"SeqIO task for NI {spec.ni_task or 'split'!r} has only split {spec.split!r}, "
          f"got {split!r}"
      )
    # The task file is read and encoded here, when the dataset is built, never at registration.
    return _examples_dataset(list(iter_examples(spec, vocabulary)))

  return dataset_fn


# What each task tkx registered was registered with: (spec, vocabulary, metric fns, the Task).
_REGISTERED: Dict[str, tuple] = {}


def _registered_as(name: str, spec: NITaskSpec, vocabulary, metric_fns) -> bool:
  """Whether SeqIO holds the task tkx registered under `name` with exactly these settings."""
  held = _REGISTERED.get(name)
  if held is None or name not in seqio.TaskRegistry.names():
    return False
  return (
      held[0] == spec
      and held[1] is vocabulary
      and held[2] == tuple(metric_fns)
      and seqio.TaskRegistry.get(name) is held[3]
  )


def _add_task(name: str, spec: NITaskSpec, vocabulary, metric_fns) -> None:
  """Registers (or replaces) the task; asked again with the same settings it leaves SeqIO as it is.

  So a command whose steps each make sure of their names (the input, the packing
  plan, the evaluation) changes the registry once.
  """
  if _registered_as(name, spec, vocabulary, metric_fns):
    return
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # re-registration replaces: idempotent
  _SPECS[name] = spec
  task = seqio.TaskRegistry.add(
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
  _REGISTERED[name] = (spec, vocabulary, tuple(metric_fns), task)


def _add_mixture(name: str, task_names: Sequence[str]) -> None:
  if name in seqio.MixtureRegistry.names():
    held = seqio.MixtureRegistry.get(name)
    if sorted(t.name for t in held.tasks) == sorted(task_names) and all(
        t is seqio.TaskRegistry.get(t.name) for t in held.tasks
    ):
      return  # the same tasks, as registered now
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(
      name, [(t, instance_count_rate) for t in task_names]
  )


def _default_vocabulary():
  return vocab_lib.get_vocabulary()


def _split_task_names(
    ni_dir, track, split, *, source, tfds_data_dir, skip_missing
) -> List[str]:
  if source == "tfds":
    from tkx.data import tfds_ni  # pylint: disable=g-import-not-at-top

    return tfds_ni.split_task_names(
        tfds_ni.builder_name(track), tfds_data_dir, split
    )
  ni_tasks = ni.split_tasks(ni_dir, track, split, skip_missing=skip_missing)
  if not ni_tasks:
    raise ni.NIDataError(
        "the split lists no tasks",
        file=ni.split_path(ni_dir, track, split),
        field=f"splits/{track}/{split}_tasks.txt",
    )
  return ni_tasks


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
    selection,
    max_source_length,
    skip_missing,
    source,
    tfds_data_dir,
    metric_fns,
    per_task_tasks,
) -> List[str]:
  ni_dir = storage.abspath(ni_dir)
  if source not in ("json", "tfds"):
    raise errors.ConfigError(f"source must be 'json' or 'tfds', got {source!r}")
  if source == "json":
    source_lib.check_checkout(ni_dir)
  selection = ni.Selection.parse(selection)
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
      # Checks the split file and stats the task files; reads no task file.
      ni_tasks = _split_task_names(
          ni_dir,
          track,
          split,
          source=source,
          tfds_data_dir=tfds_data_dir,
          skip_missing=skip_missing,
      )
      for encoding in encodings:
        mixture = names.MixtureName(prefix, track, split, encoding)
        base = NITaskSpec(
            ni_dir=ni_dir,
            track=track,
            split=split,
            ni_task=None,
            encoding=encoding,
            max_num_instances_per_task=cap,
            seed=seed,
            max_source_length=max_source_length,
            source=source,
            tfds_name=_tfds_name(source, track),
            tfds_data_dir=tfds_data_dir,
            selection=selection,
            skip_missing=skip_missing,
        )
        _add_task(mixture.all_tasks_name, base, vocabulary, track_metric_fns)
        _add_mixture(mixture.name, [mixture.all_tasks_name])
        if per_task_tasks:
          _add_per_task_tasks(
              mixture,
              base,
              ni_tasks,
              vocabulary,
              track_metric_fns,
              per_task_tasks,
          )
        registered.append(mixture.name)
  log.debug("Registered %d NI mixtures from %s", len(registered), ni_dir)
  return registered


def _tfds_name(source: str, track: str) -> Optional[str]:
  if source != "tfds":
    return None
  from tkx.data import tfds_ni  # pylint: disable=g-import-not-at-top

  return tfds_ni.builder_name(track)


def _add_per_task_tasks(
    mixture, base, ni_tasks, vocabulary, metric_fns, which
) -> None:
  wanted = None if which is True else set(which)
  seen = {}
  for ni_task in ni_tasks:
    name = mixture.task_name(ni_task)
    if name in seen:
      raise ni.NIDataError(
          f"tasks {seen[name]!r} and {ni_task!r} map to the same SeqIO name {name!r}",
          file=ni.split_path(base.ni_dir, base.track, base.split),
          task=ni_task,
          field="task name",
      )
    seen[name] = ni_task
    if wanted is None or ni_task in wanted or name in wanted:
      _add_task(
          name,
          dataclasses.replace(base, ni_task=ni_task),
          vocabulary,
          metric_fns,
      )


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
    selection=ni.DEFAULT_SELECTION,
    max_source_length: int = DEFAULT_MAX_SOURCE_LENGTH,
    skip_missing: bool = False,
    source: str = "json",
    tfds_data_dir: Optional[str] = None,
    metric_fns: Optional[Sequence[Callable]] = None,
    per_task_tasks=True,
) -> List[str]:
  """Registers SeqIO tasks and mixtures for an NI checkout; returns the mixture names.

  Args:
    ni_dir: the checkout (`tasks/`, `splits/`); None means the embedded `tasks/`.
      A directory without split files is an error.
    tracks: `default` and/or `xlingual`.
    encodings: encoding names (see `tkx.data.encodings`), e.g. `def_pos2`, `tk_instruct`.
    vocabulary: any `seqio.Vocabulary`; None means `tkx.data.vocab.get_vocabulary()`.
    splits: NI split names; None means every `splits/<track>/*_tasks.txt`.
    prefix: first part of every name.
    max_num_instances_per_task: cap after a shuffle; by default Tk-Instruct's
      (100 for `train`, none otherwise); None means no cap for any split.
    seed: instance selection, training reference choice and `tk_instruct` draws.
    selection: `tk_instruct` (default: Tk-Instruct's exact choice, one random
      stream over the split) or `per_task` (each task its own seeded shuffle, so
      adding or removing a task leaves the others' selections unchanged).
    max_source_length: the source token budget (EOS included).
    skip_missing: skip, with one warning, tasks whose file is missing.
    source: `json` reads the checkout; `tfds` reads records prepared by
      `tkx.data.tfds_ni` (builder config named after the track) from `tfds_data_dir`.
    tfds_data_dir: TFDS data directory for `source="tfds"`.
    metric_fns: SeqIO metric functions; None means the NI metrics (`ni_metrics`, or
      `ni_metrics_xlingual` for the xlingual track).
    per_task_tasks: also register `<mixture>_<task>` per NI task (True), only the
      named ones (a collection of NI task or SeqIO task names), or none (False).
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
      selection=selection,
      max_source_length=max_source_length,
      skip_missing=skip_missing,
      source=source,
      tfds_data_dir=tfds_data_dir,
      metric_fns=metric_fns,
      per_task_tasks=per_task_tasks,
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
    log.warning("Embedded NI tasks not registered: no vocabulary (%s)", e)
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
        selection=ni.DEFAULT_SELECTION,
        max_source_length=DEFAULT_MAX_SOURCE_LENGTH,
        skip_missing=False,
        source="json",
        tfds_data_dir=None,
        metric_fns=None,
        per_task_tasks=True,
    )
  except ni.NIDataError as e:
    log.error("Embedded NI tasks not registered: %s", e)


_register_embedded()
