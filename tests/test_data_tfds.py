"""The TFDS builder: builds from a small checkout and round-trips into the same encodings."""

import pytest
import seqio

from test_data_common import small_checkout, throwaway_vocab, tk_instruct_selection, toy_task, write_checkout  # noqa: F401
from tkx.data import encodings as enc
from tkx.data import ni
from tkx.data import tasks
from tkx.data import tfds_ni

LENGTHS = {"inputs": 512, "targets": 16}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  ni_dir = small_checkout(root / "ni")
  # One older-schema task: string Definition, no ids, an example without explanation.
  old = toy_task("task105_old", Definition="Old style definition")
  for key in (
      "Input_language",
      "Output_language",
      "Instruction_language",
      "Domains",
      "Instance License",
  ):
    del old[key]
  old["Instances"] = [
      {"input": i["input"], "output": i["output"]}
      for i in old["Instances"][:12]
  ]
  write_checkout(
      ni_dir,
      {"task105_old": old},
      {
          ("default", "test"): [
              "task103_toy_test",
              "task104_toy_test",
              "task105_old",
          ]
      },
  )
  builder = tfds_ni.prepare(ni_dir, str(root / "data"), "default")
  return ni_dir, str(root / "data"), builder


def test_builds_splits_with_task_ranges(prepared):
  ni_dir, data_dir, builder = prepared
  assert builder.info.splits["train"].num_examples == 30 + 40 + 50
  assert builder.info.splits["test"].num_examples == 60 + 70 + 12
  name = tfds_ni.builder_name("default")
  assert tfds_ni.split_task_names(name, data_dir, "test") == [
      "task103_toy_test",
      "task104_toy_test",
      "task105_old",
  ]
  assert tfds_ni.task_range(name, data_dir, "test", "task104_toy_test") == (
      60,
      130,
  )
  with pytest.raises(ni.NIDataError, match="task999"):
    tfds_ni.task_range(name, data_dir, "test", "task999")


@pytest.mark.parametrize("split", ["train", "test"])
def test_round_trip_rebuilds_every_encoding(prepared, split):
  ni_dir, data_dir, _ = prepared
  name = tfds_ni.builder_name("default")
  for ni_task in tfds_ni.split_task_names(name, data_dir, split):
    task = ni.load_task(ni_dir, ni_task)
    ids = tk_instruct_selection(
        ni_dir, "default", split, ni.default_max_num_instances(split), 42
    )[ni_task]
    by_id = {i["id"]: i for i in task["Instances"]}
    expected = [by_id[i] for i in ids]
    pairs = list(tfds_ni.iter_task_instances(name, data_dir, split, ni_task))
    assert [i["id"] for _, i in pairs] == [i["id"] for i in expected]
    for (t, instance), original in zip(pairs, expected):
      assert t["Task"] == ni_task and instance["output"] == original["output"]
      for encoding in ("name_def_pos2_neg2_expl", "pos3", "def", "tk_instruct"):
        assert enc.encode_source(t, instance, encoding) == enc.encode_source(
            task, original, encoding
        )
  old_task, _ = next(
      tfds_ni.iter_task_instances(name, data_dir, "test", "task105_old")
  )
  assert old_task["Negative Examples"][1] == {
      "input": "Say hi",
      "output": "bye",
  }  # still no explanation


def test_seqio_tasks_from_tfds_match_json(prepared, throwaway_vocab):  # noqa: F811
  ni_dir, data_dir, _ = prepared
  tasks.register_ni(
      ni_dir,
      encodings=("def_pos2",),
      vocabulary=throwaway_vocab,
      prefix="viajson",
      splits=("test",),
  )
  tasks.register_ni(
      ni_dir,
      encodings=("def_pos2",),
      vocabulary=throwaway_vocab,
      prefix="viatfds",
      splits=("test",),
      source="tfds",
      tfds_data_dir=data_dir,
  )
  for ni_task in ("task104_toy_test", "task105_old"):
    a = list(
        seqio.get_mixture_or_task(f"viajson_default_test_def_pos2_{ni_task}")
        .get_dataset(LENGTHS, split="test", shuffle=False)
        .as_numpy_iterator()
    )
    b = list(
        seqio.get_mixture_or_task(f"viatfds_default_test_def_pos2_{ni_task}")
        .get_dataset(LENGTHS, split="test", shuffle=False)
        .as_numpy_iterator()
    )
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
      assert x.keys() == y.keys()
      for k in x:
        assert (
            (x[k] == y[k]).all()
            if hasattr(x[k], "shape") and x[k].shape
            else x[k] == y[k]
        ), k
  mixture = seqio.get_mixture_or_task("viatfds_default_test_def_pos2")
  assert [mixture.get_rate(t) for t in mixture.tasks] == [12.0 + 60.0 + 70.0]
