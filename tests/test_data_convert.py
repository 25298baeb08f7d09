"""`tkx convert` end to end, through the CLI dispatcher."""

import json
import os
import subprocess
import sys

import pytest

from test_data_common import small_checkout, throwaway_vocab, tk_instruct_selection, toy_task, write_checkout  # noqa: F401
from tkx import cli
from tkx.data import encodings as enc
from tkx.data import ni

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_convert_shared_test_split(shared_ni_dir, tmp_path, capsys):
  out = tmp_path / "sub" / "test.jsonl"
  assert (
      cli.main(
          [
              "convert",
              "--ni_dir",
              str(shared_ni_dir),
              "--track",
              "default",
              "--split",
              "test",
              "--encoding",
              "def_pos2",
              "--output",
              str(out),
          ]
      )
      == 0
  )
  rows = _read(out)
  names = ni.read_split(shared_ni_dir, "default", "test")
  assert len(rows) == sum(
      min(100, len(ni.load_task(shared_ni_dir, n)["Instances"])) for n in names
  )
  assert set(rows[0]) == {"id", "task", "category", "inputs", "targets"}
  task = ni.load_task(shared_ni_dir, rows[0]["task"])
  assert rows[0]["id"] == task["Instances"][0]["id"]
  assert rows[0]["inputs"] == enc.encode_source(
      task, task["Instances"][0], "def_pos2"
  )
  assert rows[0]["targets"] == task["Instances"][0]["output"]
  assert all(isinstance(r["targets"], list) for r in rows)
  assert "wrote" in capsys.readouterr().err


def test_convert_cap_seed_budget_and_tk_instruct(tmp_path, throwaway_vocab):  # noqa: F811
  root = small_checkout(tmp_path / "ni")
  spm_path = throwaway_vocab.sentencepiece_model_file
  args = [
      "convert",
      "--ni_dir",
      str(root),
      "--split",
      "train",
      "--encoding",
      "tk_instruct",
      "--max_num_instances_per_task",
      "7",
      "--seed",
      "3",
      "--max_source_length",
      "40",
      "--vocab",
      spm_path,
  ]
  assert cli.main(args + ["--output", str(tmp_path / "a.jsonl")]) == 0
  assert cli.main(args + ["--output", str(tmp_path / "b.jsonl")]) == 0
  a, b = _read(tmp_path / "a.jsonl"), _read(tmp_path / "b.jsonl")
  assert a == b and len(a) == 21
  # Tk-Instruct's selection (one random stream over the split) unless --selection per_task.
  assert [r["id"] for r in a[:7]] == tk_instruct_selection(
      root, "default", "train", 7, seed=3
  )["task100_toy_train"]
  assert all(len(throwaway_vocab.encode(r["inputs"])) + 1 <= 42 for r in a)
  assert (
      len({r["inputs"][:10] for r in a}) > 1
  )  # tk_instruct draws several encodings
  c_args = [x if x != "3" else "4" for x in args]
  assert cli.main(c_args + ["--output", str(tmp_path / "c.jsonl")]) == 0
  assert [r["id"] for r in _read(tmp_path / "c.jsonl")] != [r["id"] for r in a]


def test_failed_convert_leaves_old_file_untouched(tmp_path, capsys):
  root = write_checkout(
      tmp_path / "ni",
      {
          "task001_a": toy_task("task001_a"),
          "task002_bad": toy_task("task002_bad", Instances=[]),
      },
      {("default", "test"): ["task001_a", "task002_bad"]},
  )
  out = tmp_path / "out.jsonl"
  out.write_text("old\n")
  assert (
      cli.main(
          [
              "convert",
              "--ni_dir",
              str(root),
              "--split",
              "test",
              "--output",
              str(out),
          ]
      )
      == 2
  )
  err = capsys.readouterr().err
  assert (
      "task002_bad" in err and "Instances" in err and "task002_bad.json" in err
  )
  assert out.read_text() == "old\n"
  assert sorted(os.listdir(tmp_path)) == [
      "ni",
      "out.jsonl",
  ]  # no temp file left behind
  assert (
      cli.main(
          [
              "convert",
              "--ni_dir",
              str(root),
              "--split",
              "test",
              "--encoding",
              "defn",
              "--output",
              str(out),
          ]
      )
      == 2
  )
  assert "pos<k>" in capsys.readouterr().err


def test_convert_skip_missing_as_a_subprocess(tmp_path):
  root = write_checkout(
      tmp_path / "ni",
      {"task001_a": toy_task("task001_a")},
      {("default", "test"): ["task001_a", "task404_gone"]},
  )
  out = tmp_path / "out.jsonl"
  cmd = [
      sys.executable,
      "-m",
      "tkx.cli",
      "convert",
      "--ni_dir",
      str(root),
      "--split",
      "test",
      "--encoding",
      "pos1",
      "--output",
      str(out),
  ]
  env = dict(os.environ, PYTHONPATH=REPO)
  failed = subprocess.run(
      cmd, capture_output=True, text=True, env=env, cwd=REPO
  )
  assert (
      failed.returncode == 2
      and "task404_gone" in failed.stderr
      and not out.exists()
  )
  done = subprocess.run(
      cmd + ["--skip_missing"],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
  )
  assert done.returncode == 0, done.stderr
  assert "task404_gone" in done.stderr  # the one warning
  assert "tasks" in done.stderr  # the progress bar
  rows = _read(out)
  assert len(rows) == 100 and rows[0]["inputs"].startswith(
      " Positive Example 1 -\nInput: What is 2+2?"
  )


def test_convert_requires_its_arguments(tmp_path):
  with pytest.raises(SystemExit):
    cli.run(["convert", "--output", str(tmp_path / "x"), "--ni_dir"])
  with pytest.raises(SystemExit):
    cli.run(["convert"])


def test_convert_defaults_to_the_embedded_sample(tmp_path):
  out = tmp_path / "embedded.jsonl"
  assert cli.run(["convert", "--split", "train", "--output", str(out)]) == 0
  rows = _read(out)
  assert rows and all(r["task"].startswith("task9") for r in rows)
