"""The embedded NI sample: official schema, sizes, splits, and byte-exact regeneration."""

import collections
import importlib.util
import json
import re

OFFICIAL_FIELDS = [
    "Contributors",
    "Source",
    "URL",
    "Categories",
    "Reasoning",
    "Definition",
    "Input_language",
    "Output_language",
    "Instruction_language",
    "Domains",
    "Positive Examples",
    "Negative Examples",
    "Instances",
    "Instance License",
]
EXACT_MATCH_CATEGORIES = {
    "Textual Entailment",
    "Cause Effect Classification",
    "Coreference Resolution",
    "Dialogue Act Recognition",
    "Answerability Classification",
    "Word Analogy",
}
ROUGE_L_CATEGORIES = {
    "Overlap Extraction",
    "Keyword Tagging",
    "Question Rewriting",
    "Title Generation",
    "Data to Text",
    "Grammar Error Correction",
}


def _load(ni_dir, name):
  with open(ni_dir / "tasks" / f"{name}.json", encoding="utf-8") as f:
    return json.load(f)


def _split(ni_dir, track, split):
  return (ni_dir / "splits" / track / f"{split}_tasks.txt").read_text().split()


def test_every_task_file_has_the_official_schema(embedded_ni_dir):
  files = sorted((embedded_ni_dir / "tasks").glob("*.json"))
  assert len(files) >= 12
  for path in files:
    task = json.loads(path.read_text(encoding="utf-8"))
    assert list(task) == OFFICIAL_FIELDS, path.name
    assert (
        isinstance(task["Definition"], list) and task["Definition"][0].strip()
    ), path.name
    number = re.match(r"task(\d+)_", path.stem).group(1)
    assert len(task["Instances"]) >= 30, path.name
    ids = [inst["id"] for inst in task["Instances"]]
    assert len(set(ids)) == len(ids), path.name
    inputs = [inst["input"] for inst in task["Instances"]]
    assert len(set(inputs)) == len(inputs), f"{path.name}: duplicate inputs"
    for inst in task["Instances"]:
      assert re.fullmatch(rf"task{number}-[0-9a-f]{{32}}", inst["id"]), inst[
          "id"
      ]
      assert isinstance(inst["output"], list) and all(
          o.strip() for o in inst["output"]
      )
    for example in task["Positive Examples"] + task["Negative Examples"]:
      assert set(example) == {"input", "output", "explanation"}, path.name


def test_splits_cover_every_task_once_and_test_uses_official_categories(
    embedded_ni_dir,
):
  default_train = _split(embedded_ni_dir, "default", "train")
  default_test = _split(embedded_ni_dir, "default", "test")
  xl_train = _split(embedded_ni_dir, "xlingual", "train")
  xl_test = _split(embedded_ni_dir, "xlingual", "test")
  listed = default_train + default_test + xl_train + xl_test
  on_disk = sorted(p.stem for p in (embedded_ni_dir / "tasks").glob("*.json"))
  assert sorted(listed) == on_disk
  assert not set(default_train) & set(default_test)
  assert all(name.endswith("_fi") for name in xl_train + xl_test)
  test_categories = {
      _load(embedded_ni_dir, n)["Categories"][0] for n in default_test
  }
  assert (
      test_categories & EXACT_MATCH_CATEGORIES
      and test_categories & ROUGE_L_CATEGORIES
  )
  # Every test category also appears in training, so the test tasks are reachable.
  train_categories = {
      _load(embedded_ni_dir, n)["Categories"][0] for n in default_train
  }
  assert test_categories <= train_categories
  for name in xl_train + xl_test:
    assert _load(embedded_ni_dir, name)["Input_language"] == ["Finnish"]


def test_outputs_are_short_and_classification_label_sets_small(embedded_ni_dir):
  for path in sorted((embedded_ni_dir / "tasks").glob("*.json")):
    task = json.loads(path.read_text(encoding="utf-8"))
    outputs = collections.Counter(
        o for inst in task["Instances"] for o in inst["output"]
    )
    assert max(len(o.split()) for o in outputs) <= 8, path.name
    assert (
        max(len(inst["input"].split()) for inst in task["Instances"]) <= 30
    ), path.name
  labels = {
      o
      for inst in _load(
          embedded_ni_dir, "task9013_tkx_comparison_textual_entailment"
      )["Instances"]
      for o in inst["output"]
  }
  assert labels == {"yes", "no"}


def test_build_sample_regenerates_identical_files(embedded_ni_dir, tmp_path):
  spec = importlib.util.spec_from_file_location(
      "build_sample", embedded_ni_dir / "build_sample.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.write_sample(tmp_path)
  for path in sorted(tmp_path.rglob("*.txt")) + sorted(
      tmp_path.rglob("*.json")
  ):
    committed = embedded_ni_dir / path.relative_to(tmp_path)
    assert (
        path.read_bytes() == committed.read_bytes()
    ), f"{committed} differs from build_sample.py output"
