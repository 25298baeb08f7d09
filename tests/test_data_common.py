"""Helpers shared by the data tests: hand-made NI checkouts and a throwaway vocabulary.

(Imported by the other `test_data_*` files; pytest puts `tests/` on sys.path.)
"""

import io
import json
import pathlib

import pytest


def toy_task(name="task001_toy", **overrides):
  """A small task in the current NI schema with hand-checkable text."""
  task = {
      "Contributors": ["tkx"],
      "Source": ["toy"],
      "Categories": ["Question Answering"],
      "Definition": ["Answer the question", "An ignored second definition."],
      "Positive Examples": [
          {
              "input": " What is 2+2? ",
              "output": "4",
              "explanation": "Two plus two is four",
          },
          {
              "input": "Name a color",
              "output": "blue.",
              "explanation": "Blue is a color!",
          },
          {"input": "third", "output": "x"},
      ],
      "Negative Examples": [
          {"input": "What is 1+1?", "output": "3", "explanation": "Wrong sum"},
          {"input": "Say hi", "output": "bye"},
      ],
      "Input_language": ["English"],
      "Output_language": ["English"],
      "Instruction_language": ["English"],
      "Domains": ["Math"],
      "Instances": [
          {
              "id": f"{name}-{i}",
              "input": f"What is {i}+{i}?",
              "output": [str(2 * i), f"n{2 * i}"],
          }
          for i in range(150)
      ],
      "Instance License": ["Unknown"],
  }
  task.update(overrides)
  return task


def tk_instruct_selection(ni_dir, track, split, cap, seed=42):
  """{task: selected ids}: a plain-Python replica of Tk-Instruct's run_s2s.py + ni_dataset.py.

  `set_seed(seed)` seeds the module-level `random`; each task of the split file, in
  order, keeps its first 100 instances for test, then `random.shuffle` + cap.
  """
  import os
  import random

  random.seed(seed)
  selected = {}
  split_file = os.path.join(ni_dir, "splits", track, f"{split}_tasks.txt")
  with open(split_file, encoding="utf-8") as split_f:
    for line in split_f:
      task_name = line.strip()
      if not task_name:
        continue
      path = os.path.join(ni_dir, "tasks", task_name + ".json")
      with open(path, encoding="utf-8") as task_f:
        task_data = json.loads(task_f.read())
      all_instances = task_data.pop("Instances")
      instances = all_instances[:100] if split == "test" else all_instances
      if cap is not None and cap >= 0:
        random.shuffle(instances)
        instances = instances[:cap]
      selected.setdefault(
          task_name,
          [
              i.get("id", f"{task_name}-{all_instances.index(i)}")
              for i in instances
          ],
      )
  return selected


def write_checkout(root, tasks, splits):
  """Writes `tasks/*.json` and `splits/<track>/<split>_tasks.txt` under root.

  tasks: {name: dict or raw str}; splits: {(track, split): [names]}.
  """
  root = pathlib.Path(root)
  (root / "tasks").mkdir(parents=True, exist_ok=True)
  for name, task in tasks.items():
    text = (
        task
        if isinstance(task, str)
        else json.dumps(task, ensure_ascii=False, indent=1)
    )
    (root / "tasks" / f"{name}.json").write_text(text, encoding="utf-8")
  for (track, split), names in splits.items():
    (root / "splits" / track).mkdir(parents=True, exist_ok=True)
    (root / "splits" / track / f"{split}_tasks.txt").write_text(
        "".join(n + "\n" for n in names), encoding="utf-8"
    )
  return root


def small_checkout(root, num_train=3, num_test=2, instances=30):
  """A checkout with a train and a test split of toy tasks; instance counts differ per task."""
  tasks, train, test = {}, [], []
  for i in range(num_train + num_test):
    name = f"task{100 + i:03d}_toy_{'train' if i < num_train else 'test'}"
    n = instances + 10 * i
    task = toy_task(name)
    task["Instances"] = task["Instances"][:n]
    tasks[name] = task
    (train if i < num_train else test).append(name)
  return write_checkout(
      root, tasks, {("default", "train"): train, ("default", "test"): test}
  )


def train_vocabulary(directory, ni_dir, vocab_size=600):
  """A throwaway SentencePiece vocabulary (T5 special ids) trained on an NI checkout's text."""
  import seqio
  import sentencepiece as spm
  from tkx.data import ni

  lines = [
      "Definition:",
      "Positive Example 1 -",
      "Negative Example 2 -",
      "Input:",
      "Output:",
      "Explanation:",
      "Now complete the following example -",
  ]
  for path in sorted((pathlib.Path(ni_dir) / "tasks").glob("*.json"))[:40]:
    task = ni.load_task(ni_dir, path.stem)
    lines.append(ni.task_definition(task))
    lines.extend(i["input"] for i in task["Instances"][:20])
    lines.extend(i["output"][0] for i in task["Instances"][:20])
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
      minloglevel=2,
      hard_vocab_limit=False,
  )
  path = pathlib.Path(directory) / "throwaway.model"
  path.write_bytes(model.getvalue())
  return seqio.SentencePieceVocabulary(str(path))


@pytest.fixture(scope="session")
def throwaway_vocab(tmp_path_factory, shared_ni_dir):
  return train_vocabulary(tmp_path_factory.mktemp("spm"), shared_ni_dir)


def test_toy_checkout_helpers_write_readable_files(tmp_path):
  root = small_checkout(tmp_path)
  assert (
      sorted(p.name for p in (root / "tasks").iterdir())[0]
      == "task100_toy_train.json"
  )
  assert (
      root / "splits" / "default" / "test_tasks.txt"
  ).read_text().split() == ["task103_toy_test", "task104_toy_test"]
