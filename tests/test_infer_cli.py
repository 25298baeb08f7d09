"""`tkx infer` and `tkx generate` end to end on a tiny random checkpoint."""

import json
import logging
import os

import pytest

from tkx import cli, infer
from tkx.checkpoints import directory

MIXTURE = "ni_default_test_def_pos2"
FAST = [
    "--max_decode_length",
    "6",
    "--max_input_length",
    "256",
    "--no_progress",
]


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_infer_mixture_writes_tk_instruct_predictions_that_score(
    tiny_checkpoint, tmp_path, embedded_ni_dir, capsys
):
  out = tmp_path / "predicted_examples.jsonl"
  assert (
      cli.main(
          [
              "infer",
              "--checkpoint",
              tiny_checkpoint,
              "--mixture",
              MIXTURE,
              "--output_file",
              str(out),
          ]
          + FAST
      )
      == 0
  )
  records = _read_jsonl(out)
  test_tasks = (
      (embedded_ni_dir / "splits" / "default" / "test_tasks.txt")
      .read_text()
      .split()
  )
  assert sorted({r["Task"] for r in records}) == sorted(test_tasks)
  from tkx.data import ni

  expected_ids = [
      i["id"]
      for t in test_tasks
      for i in ni.select_instances(
          ni.load_task(embedded_ni_dir, t), "test", None, 42
      )
  ]
  assert sorted(r["Instance"]["id"] for r in records) == sorted(expected_ids)
  first = records[0]
  task = ni.load_task(embedded_ni_dir, first["Task"])
  for field in (
      "Definition",
      "Positive Examples",
      "Negative Examples",
      "Categories",
  ):
    assert first[field] == task[field]
  instance = next(
      i for i in task["Instances"] if i["id"] == first["Instance"]["id"]
  )
  assert first["Instance"] == {
      "id": instance["id"],
      "input": instance["input"],
      "output": instance["output"],
  }
  assert all(isinstance(r["prediction"], str) for r in records)

  # The file scores with `tkx score` (the Tk-Instruct format reader).
  scores = tmp_path / "scores.json"
  assert (
      cli.main(["score", "--predictions", str(out), "--json", str(scores)]) == 0
  )
  table = json.loads(scores.read_text())
  assert table["overall"]["num_examples"] == len(records)
  assert set(table["per_task"]) == set(test_tasks)


def test_infer_input_file_adds_predictions_cuts_long_and_empties_empty(
    tiny_checkpoint, tmp_path, caplog
):
  inp = tmp_path / "in.jsonl"
  lines = [
      {"id": "a", "inputs": "Input: India. Output:", "extra": 1},
      {"id": "b", "inputs": ""},
      {"id": "c", "inputs": "word " * 400},
  ]
  inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
  out = tmp_path / "out.jsonl"
  with caplog.at_level(logging.WARNING):
    assert (
        cli.main(
            [
                "infer",
                "--checkpoint",
                tiny_checkpoint,
                "--input_file",
                str(inp),
                "--output_file",
                str(out),
                "--max_decode_length",
                "5",
                "--max_input_length",
                "64",
                "--no_progress",
            ]
        )
        == 0
    )
  got = _read_jsonl(out)
  assert [g["id"] for g in got] == ["a", "b", "c"]
  assert got[0]["extra"] == 1 and got[0]["inputs"] == lines[0]["inputs"]
  assert got[1]["prediction"] == ""
  assert all("prediction" in g for g in got)
  assert (
      "1 input(s) longer than 64 tokens were cut" in caplog.text
      and "c" in caplog.text
  )
  assert "1 empty input(s) get an empty prediction: b" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a"}\n', "line 1, field 'inputs': missing"),
        (
            '{"id": "a", "inputs": 3}\n',
            "line 1, field 'inputs': must be a string",
        ),
        ('{"inputs": "x"}\n', "line 1, field 'id': missing"),
        (
            '{"id": "a", "inputs": "x"}\n{"id": "a", "inputs": "y"}\n',
            "line 2, field 'id': repeats 'a'",
        ),
        (
            '{"id": "a", "inputs": "x"}\nnot json\n',
            "line 2, field '<json>': malformed JSON",
        ),
        ("", "no input lines"),
    ],
)
def test_bad_input_file_lines_name_file_line_and_field(
    tmp_path, content, message
):
  path = tmp_path / "bad.jsonl"
  path.write_text(content)
  with pytest.raises(ValueError, match=message) as e:
    infer.read_input_file(str(path))
  assert str(path) in str(e.value)


def test_unknown_mixture_lists_close_matches(tiny_checkpoint, tmp_path):
  with pytest.raises(
      ValueError,
      match="unknown mixture or task 'ni_default_tset_def_pos2'.*ni_default_test_def_pos2",
  ):
    cli.run(
        [
            "infer",
            "--checkpoint",
            tiny_checkpoint,
            "--mixture",
            "ni_default_tset_def_pos2",
            "--output_file",
            str(tmp_path / "o.jsonl"),
        ]
        + FAST
    )


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(
      FileNotFoundError, match="not a tkx checkpoint: no model.gin"
  ):
    cli.run(
        [
            "infer",
            "--checkpoint",
            str(tmp_path),
            "--mixture",
            MIXTURE,
            "--output_file",
            str(tmp_path / "o.jsonl"),
        ]
    )


def test_generate_prints_the_prediction_of_a_prompt(tiny_checkpoint, capsys):
  prompt = (
      "Definition: return the currency of the given country. "
      "Now complete the following example - Input: India. Output:"
  )
  assert (
      cli.main(
          [
              "generate",
              "--checkpoint",
              tiny_checkpoint,
              prompt,
              "--max_decode_length",
              "6",
          ]
      )
      == 0
  )
  printed = capsys.readouterr().out.strip().splitlines()
  # The same prompt through the library gives the same answer.
  loaded = directory.load(tiny_checkpoint)
  predictor = infer.Predictor(
      loaded.model,
      loaded.params,
      batch_size=8,
      decode_config=infer.DecodeConfig(max_decode_length=6),
  )
  [expected] = infer.predict_texts(
      predictor, loaded.vocabulary, [prompt], progress=False
  )
  assert printed == [expected] if expected else printed in ([], [""])


def test_generate_builds_the_prompt_from_an_ni_task(
    tiny_checkpoint, embedded_ni_dir, capsys
):
  from tkx.data import encodings, ni, vocab

  name = "task9004_tkx_country_capital_answering"
  assert (
      cli.main(
          [
              "generate",
              "--checkpoint",
              tiny_checkpoint,
              "--ni_task",
              name,
              "--input",
              "France",
              "--show_prompt",
              "--max_decode_length",
              "4",
          ]
      )
      == 0
  )
  captured = capsys.readouterr()
  token_count, truncate = encodings.vocabulary_token_fns(vocab.get_vocabulary())
  expected = encodings.encode_source(
      ni.load_task(embedded_ni_dir, name),
      {"id": "x", "input": "France"},
      "def_pos2",
      token_count=token_count,
      truncate=truncate,
  )
  assert (
      expected.startswith("Definition: ") and "Positive Example 1 -" in expected
  )
  assert captured.err.find(expected) >= 0
  # also by path
  path = os.path.join(embedded_ni_dir, "tasks", name + ".json")
  assert (
      cli.main(
          [
              "generate",
              "--checkpoint",
              tiny_checkpoint,
              "--ni_task",
              path,
              "--input",
              "France",
              "--max_decode_length",
              "4",
          ]
      )
      == 0
  )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [
                "--ni_task",
                "task9004_tkx_country_capitl_answering",
                "--input",
                "x",
            ],
            "unknown NI task 'task9004_tkx_country_capitl_answering'.*did you mean task9004_tkx_country_capital_answering",
        ),
        (["   "], "empty instruction"),
        (
            [
                "--ni_task",
                "task9004_tkx_country_capital_answering",
                "--input",
                "",
            ],
            "needs a non-empty --input",
        ),
        (["--input", "x"], "--input needs --ni_task"),
        (
            ["x", "--num_beams", "2", "--beam_procedure", "gnmt"],
            "beam procedure",
        ),
        (
            ["x", "--top_k", "2", "--top_p", "0.5", "--temperature", "1"],
            "not both",
        ),
    ],
)
def test_generate_errors(tiny_checkpoint, argv, message):
  with pytest.raises(ValueError, match=message):
    cli.run(["generate", "--checkpoint", tiny_checkpoint] + argv)


def test_generate_with_t5x_beam_procedure(tiny_checkpoint, capsys):
  prompt = "Definition: repeat the input. Input: a b c. Output:"
  argv = ["generate", "--checkpoint", tiny_checkpoint, prompt]
  argv += [
      "--max_decode_length",
      "6",
      "--num_beams",
      "2",
      "--beam_procedure",
      "t5x",
  ]
  assert cli.run(argv) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  loaded = directory.load(tiny_checkpoint)
  config = infer.DecodeConfig(
      decode_fn="beam_search", max_decode_length=6, num_beams=2
  )
  predictor = infer.Predictor(
      loaded.model, loaded.params, batch_size=8, decode_config=config
  )
  [expected] = infer.predict_texts(
      predictor, loaded.vocabulary, [prompt], progress=False
  )
  assert printed == [expected] if expected else printed in ([], [""])


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_infer_and_eval_take_the_same_single_task_name_of_an_ni_dir(
    command, tiny_checkpoint, embedded_ni_dir, tmp_path, monkeypatch
):
  """One task of a split that only --ni_dir has: both commands register it the same way."""
  task = "task9102_tkx_plural_word_analogy"
  ni_dir = tmp_path / "ni"
  (ni_dir / "tasks").mkdir(parents=True)
  (ni_dir / "splits" / "default").mkdir(parents=True)
  data = json.loads((embedded_ni_dir / "tasks" / f"{task}.json").read_text())
  data["Instances"] = data["Instances"][:3]
  (ni_dir / "tasks" / f"{task}.json").write_text(json.dumps(data))
  (ni_dir / "splits" / "default" / "heldout_tasks.txt").write_text(task + "\n")
  # Decoding is not what is checked: every input gets an empty answer (EOS).
  monkeypatch.setattr(
      infer.Predictor,
      "predict_ids",
      lambda self, inputs, **kw: [[1] for _ in inputs],
  )
  name = f"ni_default_heldout_def_pos2_{task}"
  out = tmp_path / "out"
  argv = [command, "--checkpoint", tiny_checkpoint, "--mixture", name]
  argv += ["--ni_dir", str(ni_dir), "--no_progress"]
  argv += ["--output_file", str(out)] if command == "infer" else []
  argv += ["--output_dir", str(out)] if command == "eval" else []
  assert cli.main(argv) == 0
  records = _read_jsonl(
      out if command == "infer" else out / "predicted_examples.jsonl"
  )
  assert {r["Task"] for r in records} == {task} and len(records) == 3
