"""Reading NI checkouts: both schemas, instance selection, and every kind of bad input."""

import logging
import time

import pytest

from test_data_common import toy_task, write_checkout
from tkx.data import ni


def _assert_names(error, file=None, task=None, field=None):
  message = str(error.value)
  for part in (file, task, field):
    if part is not None:
      assert str(part) in message, (part, message)


# ---------------------------------------------------------------- the shared sample


def test_reads_every_task_of_the_shared_sample_in_both_schemas(shared_ni_dir):
  for track in ni.TRACKS:
    for split in ("train", "test"):
      assert ni.split_tasks(shared_ni_dir, track, split)
  seen_schemas = set()
  for path in sorted((shared_ni_dir / "tasks").glob("*.json")):
    task = ni.load_task(shared_ni_dir, path.stem)
    assert task["Task"] == path.stem
    seen_schemas.add("Instance License" in task)
    assert isinstance(ni.task_definition(task), str)
    assert ni.task_category(task) == task["Categories"][0]
    assert all(isinstance(i["id"], str) and i["id"] for i in task["Instances"])
  assert seen_schemas == {
      True,
      False,
  }  # the 21 older-schema files are among them


def test_older_schema_string_definition_and_synthesised_ids(shared_ni_dir):
  task = ni.load_task(
      shared_ni_dir, "task131_scan_long_text_generation_action_command_long"
  )
  assert isinstance(task["Definition"], str)
  assert ni.task_definition(task) == task["Definition"]
  assert (
      task["Instances"][0]["id"]
      == "task131_scan_long_text_generation_action_command_long-0"
  )
  assert task["Instances"][7]["id"].endswith("-7")
  list_def = ni.load_task(
      shared_ni_dir, "task003_mctaco_question_generation_event_duration"
  )
  assert ni.task_definition(list_def) == list_def["Definition"][0]
  assert list_def["Instances"][0]["id"].startswith("task003-")


def test_official_test_split_names_missing_files(shared_ni_dir, caplog):
  with pytest.raises(ni.NIDataError) as error:
    ni.split_tasks(shared_ni_dir, "default", "official_test")
  _assert_names(
      error, file="official_test_tasks.txt", field="tasks/<task>.json"
  )
  with caplog.at_level(logging.WARNING):
    names = ni.split_tasks(
        shared_ni_dir, "default", "official_test", skip_missing=True
    )
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1  # ONE warning listing every skipped name
  listed = ni.read_split(shared_ni_dir, "default", "official_test")
  skipped = [n for n in listed if n not in names]
  assert len(skipped) > 50 and all(
      n in warnings[0].getMessage() for n in skipped
  )
  assert len(names) + len(skipped) == len(listed) == 119


# ---------------------------------------------------------------- selection


def test_test_split_keeps_first_100_in_order():
  task = dict(toy_task(), Task="task001_toy")
  chosen = ni.select_instances(task, "test", None, seed=1)
  assert [i["id"] for i in chosen] == [f"task001_toy-{i}" for i in range(100)]


def test_cap_after_seeded_shuffle_is_reproducible():
  task = dict(toy_task(), Task="task001_toy")
  a = [i["id"] for i in ni.select_instances(task, "train", 100, seed=42)]
  b = [i["id"] for i in ni.select_instances(task, "train", 100, seed=42)]
  c = [i["id"] for i in ni.select_instances(task, "train", 100, seed=43)]
  assert a == b and len(a) == 100 and len(set(a)) == 100
  assert a != c
  assert a != [
      f"task001_toy-{i}" for i in range(100)
  ]  # shuffled, not the file's head
  # Test tasks: the cap draws from the first 100 only.
  t = [i["id"] for i in ni.select_instances(task, "test", 10, seed=42)]
  assert len(t) == 10 and all(int(x.split("-")[1]) < 100 for x in t)
  # The same seed over the same 100 instances gives the same order regardless of split.
  full_test = ni.select_instances(task, "test", 100, seed=7)
  assert sorted(i["id"] for i in full_test) == sorted(
      f"task001_toy-{i}" for i in range(100)
  )
  # No cap, train: everything, in file order; a negative cap means no cap (as Tk-Instruct).
  assert len(ni.select_instances(task, "train", None, seed=0)) == 150
  assert len(ni.select_instances(task, "train", -1, seed=0)) == 150
  assert (
      task["Instances"][0]["id"] == "task001_toy-0"
  )  # the task is not modified


def test_selection_does_not_depend_on_other_tasks(tmp_path):
  root = write_checkout(
      tmp_path,
      {"task001_a": toy_task("task001_a"), "task002_b": toy_task("task002_b")},
      {("default", "train"): ["task001_a", "task002_b"]},
  )
  both = [
      i["id"]
      for _, i in ni.iter_split_instances(
          root, "default", "train", max_num_instances_per_task=5, seed=3
      )
  ]
  only_b = [
      i["id"]
      for _, i in ni.iter_split_instances(
          root,
          "default",
          "train",
          task_names=["task002_b"],
          max_num_instances_per_task=5,
          seed=3,
      )
  ]
  assert both[5:] == only_b and len(both) == 10


# ---------------------------------------------------------------- bad input


def _bad(tmp_path, task_or_text, name="task777_bad"):
  root = write_checkout(
      tmp_path, {name: task_or_text}, {("default", "train"): [name]}
  )
  with pytest.raises(ni.NIDataError) as error:
    ni.load_task(root, name)
  return error, str(root / "tasks" / f"{name}.json")


def test_malformed_json(tmp_path):
  error, path = _bad(tmp_path, '{"Definition": ["x"], "Instances": [')
  _assert_names(error, file=path, task="task777_bad", field="<json>")
  assert "malformed JSON" in str(error.value)


@pytest.mark.parametrize(
    "field",
    [
        "Definition",
        "Positive Examples",
        "Negative Examples",
        "Instances",
        "Categories",
    ],
)
def test_missing_field(tmp_path, field):
  task = toy_task()
  del task[field]
  error, path = _bad(tmp_path, task)
  _assert_names(error, file=path, task="task777_bad", field=field)
  assert "missing" in str(error.value)


@pytest.mark.parametrize(
    "field,value,named",
    [
        ("Definition", 3, "Definition"),
        ("Definition", [], "Definition"),
        ("Definition", ["ok", 5], "Definition"),
        ("Categories", "Question Answering", "Categories"),
        ("Positive Examples", {"input": "a"}, "Positive Examples"),
        ("Positive Examples", [{"input": "a"}], "Positive Examples[0].output"),
        (
            "Negative Examples",
            [{"input": "a", "output": ["b"]}],
            "Negative Examples[0].output",
        ),
        (
            "Negative Examples",
            [{"input": "a", "output": "b", "explanation": None}],
            "Negative Examples[0].explanation",
        ),
        ("Instances", {"input": "a"}, "Instances"),
        ("Instances", [{"id": "x", "output": ["a"]}], "Instances[0].input"),
        (
            "Instances",
            [{"id": "x", "input": 5, "output": ["a"]}],
            "Instances[0].input",
        ),
        (
            "Instances",
            [{"id": 1, "input": "q", "output": ["a"]}],
            "Instances[0].id",
        ),
    ],
)
def test_mistyped_field(tmp_path, field, value, named):
  error, path = _bad(tmp_path, toy_task(**{field: value}))
  _assert_names(error, file=path, task="task777_bad", field=named)


def test_empty_instances(tmp_path):
  error, path = _bad(tmp_path, toy_task(Instances=[]))
  _assert_names(error, file=path, task="task777_bad", field="Instances")
  assert "no instances" in str(error.value)


@pytest.mark.parametrize(
    "output", ["just a string", [1, 2], [["nested"]], [], None]
)
def test_output_not_a_list_of_strings(tmp_path, output):
  instances = [
      {"id": "a", "input": "q", "output": ["fine"]},
      {"id": "b", "input": "q", "output": output},
  ]
  error, path = _bad(tmp_path, toy_task(Instances=instances))
  _assert_names(
      error, file=path, task="task777_bad", field="Instances[1].output"
  )


def test_missing_task_file_and_skip_missing(tmp_path, caplog):
  root = write_checkout(
      tmp_path,
      {"task001_a": toy_task("task001_a")},
      {("default", "test"): ["task001_a", "task404_gone", "task405_gone"]},
  )
  with pytest.raises(ni.NIDataError) as error:
    ni.split_tasks(root, "default", "test")
  _assert_names(
      error,
      file="test_tasks.txt",
      task="task404_gone",
      field="tasks/<task>.json",
  )
  assert "task405_gone" in str(error.value)
  with pytest.raises(ni.NIDataError) as error:
    ni.load_task(root, "task404_gone")
  _assert_names(
      error, file=str(root / "tasks" / "task404_gone.json"), task="task404_gone"
  )
  with caplog.at_level(logging.WARNING):
    assert ni.split_tasks(root, "default", "test", skip_missing=True) == [
        "task001_a"
    ]
  messages = [
      r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
  ]
  assert (
      len(messages) == 1
      and "task404_gone" in messages[0]
      and "task405_gone" in messages[0]
  )


def test_missing_split_file_lists_available(tmp_path):
  root = write_checkout(
      tmp_path,
      {"task001_a": toy_task("task001_a")},
      {("default", "train"): ["task001_a"]},
  )
  with pytest.raises(ni.NIDataError) as error:
    ni.read_split(root, "default", "dev")
  _assert_names(
      error, file="dev_tasks.txt", field="splits/default/dev_tasks.txt"
  )
  assert "train" in str(error.value)


def test_reading_split_files_of_a_large_checkout_is_fast(tmp_path):
  names = [f"task{i:04d}_t" for i in range(1600)]
  root = tmp_path
  (root / "tasks").mkdir()
  for n in names:
    (root / "tasks" / f"{n}.json").write_text(
        "{}"
    )  # never opened by split_tasks
  write_checkout(root, {}, {("default", "train"): names})
  start = time.perf_counter()
  assert ni.split_tasks(root, "default", "train") == names
  assert time.perf_counter() - start < 1.0


def test_repeated_task_in_split_is_read_once_with_a_warning(tmp_path, caplog):
  root = write_checkout(
      tmp_path,
      {"task001_a": toy_task("task001_a")},
      {("default", "train"): ["task001_a", "", "task001_a.json"]},
  )
  with caplog.at_level(logging.WARNING):
    assert ni.read_split(root, "default", "train") == ["task001_a"]
    assert ni.split_tasks(root, "default", "train") == ["task001_a"]
  said = [r for r in caplog.records if "task001_a (line 3)" in r.getMessage()]
  assert len(said) == 1  # once, however often the split is read
