"""The NI data layer at scale: Tk-Instruct's selection, one cached source, exact-epoch stream, names, checks."""

import collections

import numpy as np
import pytest

from test_data_common import small_checkout, throwaway_vocab, tk_instruct_selection, write_checkout  # noqa: F401
from tkx.data import names
from tkx.data import ni
from tkx.data import pipeline
from tkx.data import source
from tkx.data import tasks

LENGTHS = {"inputs": 64, "targets": 8}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("TKX_NI_CACHE", str(tmp_path / "cache"))
  source.clear_memory()
  yield
  source.clear_memory()


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  return small_checkout(tmp_path_factory.mktemp("ni"))


def _by_task(pairs):
  out = collections.OrderedDict()
  for task, instance in pairs:
    out.setdefault(task["Task"], []).append(instance["id"])
  return dict(out)


def test_selection_is_tk_instructs_exactly(shared_ni_dir):
  for track, split, cap in (
      ("default", "train", 100),
      ("xlingual", "train", 7),
  ):
    expected = tk_instruct_selection(shared_ni_dir, track, split, cap, seed=42)
    got = _by_task(
        ni.iter_split_instances(
            shared_ni_dir, track, split, max_num_instances_per_task=cap
        )
    )
    assert got == expected
    src = source.source_for(
        shared_ni_dir, track, split, max_num_instances_per_task=cap
    )
    assert _by_task(map(src.row, range(len(src)))) == expected
  # Test splits: the first 100 of each task, in file order.
  test = source.source_for(
      shared_ni_dir, "default", "test", max_num_instances_per_task=None
  )
  expected = tk_instruct_selection(shared_ni_dir, "default", "test", None)
  assert _by_task(map(test.row, range(len(test)))) == expected
  assert all(len(ids) <= 100 for ids in expected.values())


def test_per_task_selection_ignores_other_tasks(toy_dir, tmp_path):
  def selected(ni_dir, selection):
    return _by_task(
        ni.iter_split_instances(
            ni_dir,
            "default",
            "train",
            max_num_instances_per_task=10,
            seed=3,
            selection=selection,
        )
    )

  smaller = small_checkout(tmp_path / "smaller")
  write_checkout(
      smaller,
      {},
      {("default", "train"): ["task101_toy_train", "task102_toy_train"]},
  )
  full_per_task = selected(toy_dir, "per_task")
  smaller_per_task = selected(smaller, "per_task")
  assert smaller_per_task["task102_toy_train"] == (
      full_per_task["task102_toy_train"]
  )
  # Tk-Instruct's one stream: dropping task100 shifts the others' draws.
  assert selected(smaller, "tk_instruct")["task102_toy_train"] != (
      selected(toy_dir, "tk_instruct")["task102_toy_train"]
  )
  with pytest.raises(ValueError, match="selection must be one of"):
    ni.Selection.parse("random")


def test_source_is_cached_and_invalidated(toy_dir, tmp_path, monkeypatch):
  ni_dir = small_checkout(tmp_path / "ni")
  first = source.source_for(
      ni_dir, "default", "train", max_num_instances_per_task=5
  )
  source.clear_memory()

  def no_json(*args, **kwargs):
    raise AssertionError("the cache should have been read")

  monkeypatch.setattr(ni, "load_task", no_json)
  again = source.source_for(
      ni_dir, "default", "train", max_num_instances_per_task=5
  )
  assert source.selected_ids(again) == source.selected_ids(first)
  monkeypatch.undo()
  monkeypatch.setenv("TKX_NI_CACHE", str(tmp_path / "cache"))
  # Editing a task file (size/mtime) makes a new key: the JSON is read again.
  task_file = tmp_path / "ni" / "tasks" / "task100_toy_train.json"
  task_file.write_text(
      task_file.read_text().replace(
          "Answer the question", "Answer THE question"
      )
  )
  source.clear_memory()
  edited = source.source_for(
      ni_dir, "default", "train", max_num_instances_per_task=5
  )
  assert edited.tasks[0]["Definition"] != first.tasks[0]["Definition"]


def test_mixture_names_parse_in_one_place():
  name = names.MixtureName("ni", "default", "official_test", "def_pos2_neg2")
  assert name.name == "ni_default_official_test_def_pos2_neg2"
  assert (
      names.MixtureName.parse(name.name, splits=["official_test", "test"])
      == name
  )
  assert names.MixtureName.parse("my_ni_xlingual_train_tk_instruct") == (
      names.MixtureName("my_ni", "xlingual", "train", "tk_instruct")
  )
  mixture, task, all_tasks = names.parse_name(
      "ni_default_test_def_task1_currency-x"
  )
  assert (mixture.encoding, task, all_tasks) == (
      "def",
      "task1_currency-x",
      False,
  )
  assert names.parse_name("ni_default_test_def_all_tasks")[2]
  for bad in (
      "no_such_mixture",
      "ni_default_test_definition",
      "ni_other_test_def",
  ):
    with pytest.raises(ValueError, match="not an NI name"):
      names.parse_name(bad)


def _stream(toy_dir, vocab, **kw):
  tasks.register_ni(
      toy_dir,
      encodings=("def_pos2",),
      vocabulary=vocab,
      prefix="pipe",
      splits=("train",),
      max_num_instances_per_task=7,
      max_source_length=LENGTHS["inputs"],
      per_task_tasks=False,
  )
  spec = pipeline.ni_spec("pipe_default_train_def_pos2")
  return pipeline.NIStream(spec, vocab, LENGTHS, **kw)


def _take(stream, start, n):
  it = stream.open_stream(start)
  return [next(it) for _ in range(n)]


def test_exact_epochs_seeded_order_and_o1_resume(toy_dir, throwaway_vocab):  # noqa: F811
  stream = _stream(toy_dir, throwaway_vocab, data_seed=1, workers=2)
  n = stream.examples_per_epoch
  assert n == 21  # 3 tasks x 7
  rows = [stream.row_of(i) for i in range(3 * n)]
  for epoch in range(3):
    assert sorted(rows[epoch * n : (epoch + 1) * n]) == list(range(n))
  assert rows[:n] != rows[n : 2 * n]  # a new order each epoch
  other = _stream(toy_dir, throwaway_vocab, data_seed=2)
  assert [other.row_of(i) for i in range(n)] != rows[:n]
  examples = _take(stream, 0, 2 * n + 3)
  assert [e["index"] for e in examples] == list(range(2 * n + 3))
  resumed = _take(stream, n + 5, 5)
  for a, b in zip(resumed, examples[n + 5 :]):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])
  e = examples[0]
  assert e["inputs"].dtype == np.int32 and e["inputs"][-1] == 1
  assert len(e["inputs"]) <= LENGTHS["inputs"]
  assert len(e["targets"]) <= LENGTHS["targets"] and e["targets"][-1] == 1
  # Steps per epoch are exact: floor(epochs x selected instances / batch).
  assert pipeline.steps_for_epochs("pipe_default_train_def_pos2", 2, 4) == 10


def test_hosts_read_disjoint_rows_whose_union_is_the_stream(toy_dir, throwaway_vocab):  # noqa: F811
  single = _stream(toy_dir, throwaway_vocab, data_seed=4)
  hosts = [
      _stream(toy_dir, throwaway_vocab, data_seed=4, shard_id=s, num_shards=2)
      for s in range(2)
  ]
  batch = 4
  singles = pipeline.padded_batches(
      single.open_stream, batch_size=batch, feature_lengths=LENGTHS
  )
  per_host = [
      pipeline.padded_batches(
          h.open_stream, batch_size=batch // 2, feature_lengths=LENGTHS
      )
      for h in hosts
  ]
  for _ in range(7):  # past the end of the first epoch (21 examples)
    whole, whole_state = next(singles)
    parts = [next(it) for it in per_host]
    assert [state for _, state in parts] == [whole_state, whole_state]
    union = np.concatenate([b["encoder_input_tokens"] for b, _ in parts])
    assert sorted(map(tuple, union)) == sorted(
        map(tuple, whole["encoder_input_tokens"])
    )


def test_padded_batches_layout_and_resume(toy_dir, throwaway_vocab):  # noqa: F811
  stream = _stream(toy_dir, throwaway_vocab)
  it = pipeline.padded_batches(
      stream.open_stream, batch_size=3, feature_lengths=LENGTHS
  )
  (b0, s0), (b1, s1) = next(it), next(it)
  assert s0 == {"next_index": 3} and s1 == {"next_index": 6}
  # The same arrays as SeqIO's unpacked EncDecFeatureConverter on the same examples.
  import seqio
  import tensorflow as tf

  examples = _take(stream, 0, 3)
  ds = tf.data.Dataset.from_generator(
      lambda: ({k: e[k] for k in ("inputs", "targets")} for e in examples),
      output_signature={
          k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")
      },
  )
  converted = list(
      seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS).as_numpy_iterator()
  )
  for key in b0:
    np.testing.assert_array_equal(
        b0[key], np.stack([c[key] for c in converted]), err_msg=key
    )
  resumed, _ = next(
      pipeline.padded_batches(
          stream.open_stream, batch_size=3, feature_lengths=LENGTHS, state=s0
      )
  )
  for key in b1:
    np.testing.assert_array_equal(resumed[key], b1[key])


def test_missing_checkout_is_refused_by_every_command(tmp_path):
  from tkx import cli

  missing = str(tmp_path / "no_such_checkout")
  empty = tmp_path / "empty"
  (empty / "tasks").mkdir(parents=True)
  for ni_dir in (missing, str(empty)):
    commands = [
        [
            "baseline",
            "--ni_dir",
            ni_dir,
            "--kind",
            "copy_input",
            "--output",
            str(tmp_path / "b.jsonl"),
        ],
        ["convert", "--ni_dir", ni_dir, "--output", str(tmp_path / "c.jsonl")],
        [
            "infer",
            "--checkpoint",
            str(tmp_path),
            "--mixture",
            "ni_default_test_def",
            "--ni_dir",
            ni_dir,
            "--output_file",
            str(tmp_path / "i.jsonl"),
        ],
        ["eval", "--checkpoint", str(tmp_path), "--ni_dir", ni_dir],
        [
            "generate",
            "--checkpoint",
            str(tmp_path),
            "--ni_task",
            "task1",
            "--ni_dir",
            ni_dir,
            "--input",
            "x",
        ],
    ]
    commands.append(
        [
            "train",
            "--gin_file=gin_configs/experiments/embedded_tiny.gin",
            f"--gin.NI_DIR='{ni_dir}'",
            f"--gin.MODEL_DIR='{tmp_path / 'model'}'",
        ]
    )
    for argv in commands:
      with pytest.raises(ni.NIDataError, match=str(ni_dir)):
        cli.run(argv)
      assert cli.main(argv) == 2  # the console script: one line, exit 2
    with pytest.raises(ni.NIDataError, match=str(ni_dir)):
      pipeline.register_ni_for("ni_default_train_def_pos2", ni_dir)
  assert not (tmp_path / "b.jsonl").exists()
  assert not (tmp_path / "model").exists()


def test_one_stream_has_the_per_task_inputs(toy_dir, throwaway_vocab):  # noqa: F811
  # Eval/infer decode the one stream; the per-task path decodes each task's SeqIO task.
  # Same (task, id) -> input ids, so the same predictions and per-task metrics.
  import seqio
  from tkx import infer

  tasks.register_ni(
      toy_dir,
      tracks=("default",),
      encodings=("def_pos2",),
      splits=("test",),
      vocabulary=throwaway_vocab,
      prefix="onestream",
  )
  lengths = {"inputs": 256, "targets": 16}
  mixture = seqio.get_mixture_or_task("onestream_default_test_def_pos2")
  (whole,) = mixture.tasks
  stream = infer.task_inputs(whole, "test", lengths)
  per_task = []
  for ni_task in ni.read_split(toy_dir, "default", "test"):
    task = seqio.get_mixture_or_task(
        tasks.task_name("default", "test", "def_pos2", ni_task, "onestream")
    )
    per_task.extend(infer.task_inputs(task, "test", lengths))
  assert stream == per_task and len({k[0] for k, _ in stream}) > 1
  records = infer.records_for_task(
      whole.name, [k for k, _ in stream[:3]], ["a", "b", "c"]
  )
  assert [(r["Task"], r["Instance"]["id"]) for r in records] == [
      k for k, _ in stream[:3]
  ]


@pytest.mark.slow
def test_two_processes_read_disjoint_rows_whose_union_is_the_stream(tmp_path):
  import json
  import os

  import ni_data_worker
  import test_multihost_training as mh

  worker = os.path.join(mh.REPO_ROOT, "tests", "ni_data_worker.py")
  mh.launch(
      lambda i: [worker, "--out", str(tmp_path / f"rows_{i}.json")],
      tmp_path,
      timeout_s=400,
  )
  results = [
      json.loads((tmp_path / f"rows_{i}.json").read_text()) for i in range(2)
  ]
  single = ni_data_worker.read_batches(0, 1)
  n = ni_data_worker.GLOBAL_BATCH
  for mesh, shards in (("8x1", 2), ("2x4", 2), ("1x8", 1)):
    hosts = [r[mesh] for r in results]
    assert sorted(h["shard"][1] for h in hosts) == [shards, shards]
    if shards == 1:  # hosts of one replica set read the same rows
      assert hosts[0]["rows"] == hosts[1]["rows"] == single["rows"]
      continue
    assert sorted(h["shard"][0] for h in hosts) == [0, 1]
    union = sorted(hosts[0]["indices"] + hosts[1]["indices"])
    assert union == list(range(len(union)))  # disjoint, nothing skipped
    for b in range(ni_data_worker.NUM_BATCHES):
      assert sorted(hosts[0]["rows"][b] + hosts[1]["rows"][b]) == sorted(
          single["rows"][b]
      )
      assert (
          hosts[0]["states"][b]
          == hosts[1]["states"][b]
          == {"next_index": (b + 1) * n}
      )


def test_row_lengths_follow_each_host_stream(toy_dir, throwaway_vocab):  # noqa: F811
  # Lengths are encoded once per row, only for rows this host reads; its positions give
  # its stream's lengths for any number of epochs (a part of the last one too).
  for shard_id in (0, 1):
    stream = _stream(
        toy_dir, throwaway_vocab, data_seed=3, shard_id=shard_id, num_shards=2
    )
    end = 2 * stream.examples_per_epoch + 5
    expected = [
        (len(e["inputs"]), len(e["targets"]))
        for e in _take(stream, 0, (end - shard_id + 1) // 2)
    ]
    positions = stream.shard_row_positions(end)
    inputs, targets = stream.lengths_at(positions)
    assert list(zip(inputs, targets)) == expected
    # Only this host's rows were encoded (2 epochs + 5 of 2 hosts miss some rows).
    encoded = (stream._row_lengths[:, 0] >= 0).sum()  # pylint: disable=protected-access
    assert encoded == len(set(positions.tolist())) <= stream.examples_per_epoch


def test_packed_train_input_counts_epochs_and_resumes(toy_dir, throwaway_vocab):  # noqa: F811
  # The trainer's packed input (PACK=True): steps of an epoch are the packed batches of
  # its examples, and a checkpointed position resumes the same batches.
  from tkx.data import packing

  _stream(toy_dir, throwaway_vocab)  # registers pipe_default_train_def_pos2
  train = pipeline.train_input(
      "pipe_default_train_def_pos2",
      ni_dir=None,
      vocabulary=throwaway_vocab,
      feature_lengths=LENGTHS,
      batch_size=2,
      pack=True,
      packing_window=8,
  )
  n = train.stream.examples_per_epoch
  lengths = [
      (len(e["inputs"]), len(e["targets"]))
      for e in _take(train.stream, 0, 2 * n)
  ]
  rows = packing.count_packed_rows(
      [i for i, _ in lengths],
      [t for _, t in lengths],
      packing.RowLayout.for_lengths(LENGTHS),
      8,
  )
  steps = train.steps_for_epochs(2)
  assert steps == -(-rows // 2)
  batches = train.batches(train.initial_state())
  taken = [next(batches) for _ in range(steps)]
  examples = sum(packing.num_examples(b) for b, _ in taken)
  assert (
      2 * n - 8 < examples <= 2 * n + 8
  )  # two epochs, up to the window at the end
  saved = train.checkpoint_data_state(taken[1][1])
  resumed = train.batches(train.state_from_checkpoint(saved, 2))
  for (expected, _), (batch, _) in zip(
      taken[2:4], [next(resumed), next(resumed)]
  ):
    for key in expected:
      np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
  with pytest.raises(ValueError, match="PACK"):
    pipeline.train_input(
        "pipe_default_train_def_pos2",
        ni_dir=None,
        vocabulary=throwaway_vocab,
        feature_lengths=LENGTHS,
        batch_size=2,
    ).state_from_checkpoint(saved, 2)


def test_packed_resume_of_one_host_shard(toy_dir, throwaway_vocab):  # noqa: F811
  # A host reads every num_shards-th global index: the packer's saved window start
  # is a global index, so the resumed host repacks the same window.
  from tkx.data import packing

  host = _stream(toy_dir, throwaway_vocab, shard_id=1, num_shards=2)
  kw = dict(
      batch_size=1, layout=packing.RowLayout.for_lengths(LENGTHS), window=4
  )
  whole = packing.packed_batches(host.open_stream, **kw)
  taken = [next(whole) for _ in range(8)]
  for k in (2, 5):
    resumed = packing.packed_batches(host.open_stream, state=taken[k][1], **kw)
    for expected, _ in taken[k + 1 : k + 3]:
      batch, _ = next(resumed)
      for key in expected:
        np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)


def _train_input(vocab, *, pack, shard_id=0, num_shards=1):
  import seqio

  return pipeline.train_input(
      "pipe_default_train_def_pos2",
      ni_dir=None,
      vocabulary=vocab,
      feature_lengths=LENGTHS,
      batch_size=4,
      pack=pack,
      packing_window=4,
      shard_info=seqio.ShardInfo(shard_id, num_shards),
  )


def test_checkpoint_resumes_each_shard_or_refuses_other_shard_counts(toy_dir, throwaway_vocab):  # noqa: F811
  # Two hosts pack their own shards, so their positions differ; a checkpoint holds both
  # (`input_by_shard`, gathered at the save) and each host resumes its own.
  _stream(toy_dir, throwaway_vocab)  # registers pipe_default_train_def_pos2
  hosts = [
      _train_input(throwaway_vocab, pack=True, shard_id=s, num_shards=2)
      for s in (0, 1)
  ]
  runs = [h.batches(h.initial_state()) for h in hosts]
  taken = [[next(run) for _ in range(5)] for run in runs]
  positions = [t[2][1] for t in taken]
  assert positions[0] != positions[1]
  saved = dict(
      hosts[0].checkpoint_data_state(positions[0]),
      input_by_shard=positions,
  )
  for host, expected in zip(hosts, taken):
    resumed = host.batches(host.state_from_checkpoint(saved, 3))
    for want, _ in expected[3:5]:
      got, _ = next(resumed)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # Packed positions are per shard: another number of shards is refused, naming both.
  with pytest.raises(
      ValueError,
      match=r"checkpoint_3 was written with 2 data shard\(s\).*this run has 1",
  ):
    _train_input(throwaway_vocab, pack=True).state_from_checkpoint(saved, 3)
  # A checkpoint of one position (older tkx: the primary host's) cannot resume host 1.
  legacy = {"input": positions[0], "batch_size": 4, "data_seed": 0}
  with pytest.raises(ValueError, match="only the first host's input position"):
    hosts[1].state_from_checkpoint(legacy, 3)
  # Unpadded input: the position is a global example index, valid on any number of
  # hosts; one host then reads exactly the examples the two hosts' batches held.
  two = [
      _train_input(throwaway_vocab, pack=False, shard_id=s, num_shards=2)
      for s in (0, 1)
  ]
  state = {"next_index": 8}
  saved = dict(two[0].checkpoint_data_state(state), input_by_shard=[state] * 2)
  one = _train_input(throwaway_vocab, pack=False)
  assert one.state_from_checkpoint(saved, 2) == state
  whole, _ = next(one.batches(one.state_from_checkpoint(saved, 2)))
  parts = [next(h.batches(h.state_from_checkpoint(saved, 2)))[0] for h in two]
  union = np.concatenate([p["encoder_input_tokens"] for p in parts])
  assert sorted(map(tuple, union)) == sorted(
      map(tuple, whole["encoder_input_tokens"])
  )


def test_a_name_registered_again_alike_leaves_seqio_as_it_is(toy_dir, throwaway_vocab):  # noqa: F811
  """A command's steps (packing plan, input, evaluation) each make sure of a name: SeqIO changes once."""
  import seqio

  name = "registeronce_default_test_def_pos2"
  pipeline.register_ni_for(name, toy_dir, throwaway_vocab, 64)
  task = seqio.TaskRegistry.get(name + "_all_tasks")
  mixture = seqio.MixtureRegistry.get(name)
  pipeline.register_ni_for(name, toy_dir, throwaway_vocab, 64)
  assert seqio.TaskRegistry.get(name + "_all_tasks") is task
  assert seqio.MixtureRegistry.get(name) is mixture
  pipeline.register_ni_for(name, toy_dir, throwaway_vocab, 32)  # another budget
  replaced = seqio.TaskRegistry.get(name + "_all_tasks")
  assert replaced is not task
  assert tasks.task_spec(replaced.name).max_source_length == 32
  assert seqio.MixtureRegistry.get(name).tasks == [replaced]
