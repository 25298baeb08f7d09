"""The run plumbing: one CLI start-up, one-line user errors, TensorFlow on the CPU, module graph, step logger."""

import ast
import json
import logging
import os
import pathlib
import subprocess
import sys
import types

import pytest

from tkx import cli, io_utils
from tkx.models import models

REPO = pathlib.Path(__file__).resolve().parents[1]
TKX = REPO / "tkx"


# ------------------------------------------------------------------------------
# Module graph
# ------------------------------------------------------------------------------
def _module_name(path):
  rel = path.relative_to(REPO).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _tkx_imports():
  """{module: {tkx modules it imports anywhere in its body (lazy imports included)}}."""
  modules = {_module_name(p): p for p in TKX.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets = [node.module] + [
            f"{node.module}.{a.name}" for a in node.names
        ]
      for target in targets:
        if (
            target in modules
            and target != name
            and modules[target].name != ("__init__.py")
        ):
          edges.add(target)
    graph[name] = edges
  return graph


def test_no_import_cycles_inside_tkx():
  graph = _tkx_imports()
  state, stack = {}, []

  def visit(node):
    state[node] = "active"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "active":
        cycle = stack[stack.index(nxt) :] + [nxt]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)


def test_model_config_imports_nothing_from_tkx_but_its_errors():
  # tkx.errors imports nothing, so the config stays readable without the rest of tkx.
  assert _tkx_imports()["tkx.models.config"] == {"tkx.errors"}
  assert _tkx_imports()["tkx.errors"] == set()


def test_checkpoint_step_naming_lives_in_one_module():
  for path in TKX.rglob("*.py"):
    if path.name == "layout.py":
      continue
    code = ast.parse(path.read_text())
    for node in ast.walk(code):
      if isinstance(node, ast.JoinedStr):  # f"checkpoint_{step}"
        text = "".join(
            v.value for v in node.values if isinstance(v, ast.Constant)
        )
        assert not text.endswith("checkpoint_"), path
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        assert "checkpoint_(" not in node.value, path  # step regexes
        assert node.value != "checkpoint_", path


# ------------------------------------------------------------------------------
# CLI start-up: flags, TensorFlow on the CPU
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_keeps_tensorflow_on_cpu_before_it_runs(
    name, monkeypatch
):
  events = []
  fake = types.ModuleType("fake_command")
  fake.add_arguments = lambda parser: None
  fake.main = lambda args: events.append("main") or 0
  monkeypatch.setattr(cli.importlib, "import_module", lambda _: fake)
  monkeypatch.setattr(
      cli, "keep_tensorflow_on_cpu", lambda quiet: events.append("hide")
  )
  assert cli.run([name]) == 0
  assert events == ["hide", "main"]


@pytest.mark.slow  # a fresh TensorFlow import: ~10 s idle, ~45 s on a loaded 2-core CI machine
def test_tensorflow_imported_after_start_up_sees_no_accelerator():
  script = (
      "import sys\n"
      "from tkx import cli\n"
      "cli.keep_tensorflow_on_cpu(quiet=True)\n"
      "assert 'tensorflow' not in sys.modules\n"
      "import tensorflow as tf\n"
      "assert cli.tensorflow_kept_on_cpu()\n"
      "assert tf.config.get_visible_devices('GPU') == []\n"
      "print('ok', [d.device_type for d in tf.config.get_visible_devices()])\n"
  )
  env = dict(os.environ, TKX_SRC=str(REPO))
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  out = subprocess.run(
      [sys.executable, "-c", script],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "ok ['CPU']"
  # Quiet start-up: none of TensorFlow's C++ banners (oneDNN, CUDA probing).
  assert out.stderr == ""


def test_every_flag_is_documented_and_train_help_explains_gin(capsys):
  for name in cli.COMMANDS:
    module = cli.importlib.import_module(cli.COMMANDS[name].module)
    parser = cli.command_parser(name, module)
    for action in parser._actions:
      assert action.help, f"tkx {name} {action.option_strings or action.dest}"
  with pytest.raises(SystemExit):
    cli.run(["train", "--help"])
  text = capsys.readouterr().out
  for needle in (
      "--gin_file",
      "--gin.NAME=VALUE",
      "--gin.MODEL_DIR=\"'",
      "--log_level",
      "MIXTURE_OR_TASK_NAME",
  ):
    assert needle in text


def test_command_flags_become_gin_bindings_that_win_over_gin(monkeypatch):
  """eval's flags bind evaluate.evaluate / DecodeConfig once at start-up; flags left out bind nothing."""
  import gin

  from tkx import gin_utils
  from tkx.commands import evaluate as eval_command

  seen = {}

  def main(args):
    for name in (
        "evaluate.evaluate.track",
        "evaluate.evaluate.input_buckets",
        "infer.decode_flags.num_beams",
        "evaluate.evaluate.split",
    ):
      seen[name] = gin_utils.query(name)
    return 0

  monkeypatch.setattr(eval_command, "main", main)
  argv = ["eval", "--checkpoint", "c", "--gin.evaluate.evaluate.track='x'"]
  argv += ["--track", "xlingual", "--num_beams", "4", "--input_buckets", "9,3"]
  assert cli.run(argv) == 0
  assert seen == {
      "evaluate.evaluate.track": "xlingual",
      "evaluate.evaluate.input_buckets": (9, 3),
      "infer.decode_flags.num_beams": 4,
      "evaluate.evaluate.split": (
          None
      ),  # not given: evaluate.evaluate's default applies
  }
  gin.clear_config()


# ------------------------------------------------------------------------------
# User errors: one line on stderr, exit 2; traceback only with --log_level debug
# ------------------------------------------------------------------------------
def _error_line(capsys, argv):
  code = cli.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2, err
  assert err and err[-1].startswith("tkx "), err
  assert "Traceback" not in "\n".join(err)
  return err[-1]


def test_score_malformed_line(tmp_path, capsys):
  path = tmp_path / "p.jsonl"
  path.write_text('{"Task": "t"\n')
  line = _error_line(capsys, ["score", "--predictions", str(path)])
  assert str(path) in line and "line 1" in line and "malformed JSON" in line


def test_score_missing_file(tmp_path, capsys):
  line = _error_line(
      capsys, ["score", "--predictions", str(tmp_path / "nope.jsonl")]
  )
  assert "nope.jsonl" in line


def test_eval_missing_checkpoint(tmp_path, capsys):
  line = _error_line(capsys, ["eval", "--checkpoint", str(tmp_path / "none")])
  assert str(tmp_path / "none") in line and "does not exist" in line


def test_infer_not_a_checkpoint(tmp_path, capsys):
  line = _error_line(
      capsys,
      [
          "infer",
          "--checkpoint",
          str(tmp_path),
          "--input_file",
          __file__,
          "--output_file",
          str(tmp_path / "o.jsonl"),
      ],
  )
  assert "no model.gin" in line


def test_infer_malformed_input_line(tiny_checkpoint, tmp_path, capsys):
  bad = tmp_path / "in.jsonl"
  bad.write_text('{"id": 1, "inputs": "x"}\n{"id": 2}\n')
  line = _error_line(
      capsys,
      [
          "infer",
          "--checkpoint",
          tiny_checkpoint,
          "--input_file",
          str(bad),
          "--output_file",
          str(tmp_path / "o.jsonl"),
          "--no_progress",
      ],
  )
  assert str(bad) in line and "line 2" in line and "'inputs'" in line
  assert not (tmp_path / "o.jsonl").exists()


def test_infer_unknown_mixture(tiny_checkpoint, tmp_path, capsys):
  line = _error_line(
      capsys,
      [
          "infer",
          "--checkpoint",
          tiny_checkpoint,
          "--mixture",
          "ni_default_tset_def_pos2",
          "--output_file",
          str(tmp_path / "o.jsonl"),
      ],
  )
  assert "ni_default_tset_def_pos2" in line and "did you mean" in line


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_unknown_mixture_is_refused_before_the_checkpoint_is_read(
    command, tmp_path, capsys, monkeypatch
):
  from tkx.checkpoints import directory

  def must_not_load(*args, **kwargs):
    raise AssertionError("the checkpoint was read before the name was checked")

  monkeypatch.setattr(directory, "load", must_not_load)
  argv = [command, "--checkpoint", str(tmp_path), "--mixture"]
  argv += [
      "ni_default_tset_def_pos2",
      "--output_file" if command == "infer" else "--output_dir",
      str(tmp_path / "o"),
  ]
  line = _error_line(capsys, argv)
  assert "--mixture unknown mixture or task 'ni_default_tset_def_pos2'" in line
  assert "ni_default_test_def_pos2" in line


def test_export_wrong_checkpoint(tmp_path, capsys):
  line = _error_line(
      capsys,
      ["export-checkpoint", "--checkpoint", str(tmp_path), "--hf", "x"],
  )
  assert "no model.gin" in line


def test_model_info_missing_gin_file(capsys):
  line = _error_line(
      capsys, ["model-info", "--gin_file", "gin_configs/models/nope.gin"]
  )
  assert "gin file not found: gin_configs/models/nope.gin" in line


def test_train_without_model_dir(capsys):
  line = _error_line(
      capsys,
      [
          "train",
          "--gin_file=gin_configs/runs/finetune.gin",
          "--gin_file=gin_configs/models/t5_1_1/tiny.gin",
          "--gin.MIXTURE_OR_TASK_NAME='ni_default_train_def_pos2'",
      ],
  )
  assert "MODEL_DIR" in line


def test_gin_string_without_inner_quotes(capsys):
  line = _error_line(
      capsys,
      [
          "train",
          "--gin_file=gin_configs/experiments/embedded_tiny.gin",
          "--gin.MODEL_DIR=/tmp/x",
      ],
  )
  assert "--gin.MODEL_DIR=/tmp/x" in line
  assert "--gin.MODEL_DIR=\"'/tmp/x'\"" in line


def test_gin_unknown_name(capsys):
  line = _error_line(
      capsys,
      [
          "model-info",
          "--gin_file=gin_configs/models/t5_1_1/tiny.gin",
          "--gin.network.T5Config.emb_dimm=8",
      ],
  )
  assert "--gin.network.T5Config.emb_dimm=8" in line


def test_gin_macro_that_nothing_reads_stops_train_before_work(
    tmp_path, capsys, monkeypatch
):
  """A misspelled macro (TRAIN_STEP for TRAIN_STEPS) is refused at start-up, not trained past."""
  monkeypatch.chdir(
      REPO
  )  # in process, as the other refusals here: no interpreter start-up
  line = _error_line(
      capsys,
      ["train", "--gin_file=gin_configs/experiments/embedded_tiny.gin"]
      + [f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEP=10"],
  )
  assert line.startswith("tkx train: error: --gin.TRAIN_STEP=10: "), line
  assert "did you mean TRAIN_STEPS" in line
  assert not (tmp_path / "run").exists()  # refused before any work


def test_gin_macro_of_another_command_is_refused(capsys):
  """eval's run file reads no TRAIN_STEPS: the flag names a setting eval does not have."""
  line = _error_line(
      capsys,
      [
          "eval",
          "--gin_file=gin_configs/runs/eval.gin",
          "--gin.CHECKPOINT_PATH='/nonexistent'",
          "--gin.EVAL_OUTPUT_DIR='/nonexistent'",
          "--gin.TRAIN_STEPS=10",
      ],
  )
  assert "TRAIN_STEPS" in line and "nothing reads it" in line


def test_gin_macro_in_a_file_that_nothing_reads(tmp_path, capsys):
  typo = tmp_path / "typo.gin"
  typo.write_text(
      "include 'gin_configs/models/t5_1_1/tiny.gin'\nDROPOUT_RAT = 0.1\n"
  )
  line = _error_line(capsys, ["model-info", f"--gin_file={typo}"])
  assert f"gin file {typo}" in line and "DROPOUT_RAT" in line
  assert "did you mean DROPOUT_RATE" in line


def test_gin_bad_value(capsys):
  line = _error_line(
      capsys,
      [
          "model-info",
          "--gin_file=gin_configs/models/t5_1_1/tiny.gin",
          "--gin.network.T5Config.remat_policy='sometimes'",
      ],
  )
  assert "remat_policy" in line and "sometimes" in line


def test_convert_missing_ni_dir(tmp_path, capsys):
  code = cli.main(
      [
          "convert",
          "--ni_dir",
          str(tmp_path / "no_ni"),
          "--output",
          str(tmp_path / "o.jsonl"),
      ]
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "no_ni" in err[0]


def test_debug_log_level_shows_the_traceback(tmp_path):
  with pytest.raises(FileNotFoundError):
    cli.main(
        [
            "score",
            "--predictions",
            str(tmp_path / "nope.jsonl"),
            "--log_level",
            "debug",
        ]
    )


@pytest.mark.parametrize("bug", [ValueError("boom"), KeyError("boom")])
def test_an_unexpected_value_or_key_error_keeps_its_traceback(bug, monkeypatch):
  """Only tkx.errors.UserError (and missing paths) are one-line errors; a bug is not bad input."""
  from tkx.commands import score

  def main(args):
    raise bug

  monkeypatch.setattr(score, "main", main)
  with pytest.raises(type(bug), match="boom"):
    cli.main(["score", "--predictions", "p.jsonl"])


def test_a_user_error_raised_anywhere_is_one_line(monkeypatch, capsys):
  from tkx import errors
  from tkx.commands import score

  def main(args):
    raise errors.ConfigError("--predictions: say which file\nsecond line")

  monkeypatch.setattr(score, "main", main)
  line = _error_line(capsys, ["score", "--predictions", "p.jsonl"])
  assert line == "tkx score: error: --predictions: say which file second line"


def test_gin_bindings_refused_by_commands_without_gin(capsys):
  line = _error_line(capsys, ["score", "--gin.X=1"])
  assert "takes no gin bindings" in line


# ------------------------------------------------------------------------------
# Helpers and the step logger
# ------------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / "out.json"
  path.write_text("old")
  with pytest.raises(RuntimeError):
    with io_utils.atomic_write(str(path)) as f:
      f.write("new, half")
      raise RuntimeError("boom")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["out.json"]


def test_step_logger_counts_real_tokens_and_writes_token_efficiency(
    tmp_path, caplog
):
  from tkx.step_logger import StepLogger

  logger = StepLogger(
      model_dir=str(tmp_path),
      total_steps=4,
      start_step=0,
      tokens_per_batch=1000,
      flops_per_step=1e9,
      peak_flops=None,
      log_every=2,
  )
  metrics = {
      "loss": 2.0,
      "learning_rate": 1e-3,
      "grad_norm": 1.0,
      "num_real_tokens": 600.0,
      "num_computed_tokens": 1000.0,
  }
  with caplog.at_level(logging.INFO, logger="tkx.step_logger"):
    logger.step_done(1, metrics)
    logger.step_done(2, metrics)
  logger.close()
  [line] = [r.getMessage() for r in caplog.records]
  assert "token efficiency 60.0%" in line and "MFU" not in line
  import tensorflow as tf

  [event_file] = list((tmp_path / "train").iterdir())
  tags = {
      v.tag: tf.make_ndarray(v.tensor)
      for e in tf.compat.v1.train.summary_iterator(str(event_file))
      for v in e.summary.value
  }
  assert tags["token_efficiency"] == pytest.approx(0.6)


def test_loss_normalizing_factor_takes_the_enum_and_refuses_unknown_names():
  factor = models.LossNormalizingFactor.NUM_REAL_TARGET_TOKENS
  assert models.loss_normalizer(factor) is None
  assert models.loss_normalizer("num_target_tokens") is None
  assert models.loss_normalizer(256) == 256.0
  with pytest.raises(ValueError, match="loss_normalizing_factor.*'per_batch'"):
    models.loss_normalizer("per_batch")
  with pytest.raises(ValueError, match="positive"):
    models.loss_normalizer(0)


def test_jsonl_write_then_read_round_trip(tmp_path):
  from tkx import jsonl

  path = tmp_path / "x.jsonl"
  assert jsonl.write_jsonl(str(path), [{"a": "é"}, {"b": 2}]) == 2
  assert [r for _, r in jsonl.iter_json_objects(str(path))] == [
      {"a": "é"},
      {"b": 2},
  ]
  assert json.loads(path.read_text().splitlines()[0]) == {"a": "é"}


def test_gin_value_of_the_wrong_kind_names_the_macro(capsys):
  line = _error_line(
      capsys,
      [
          "train",
          "--gin_file=gin_configs/experiments/embedded_tiny.gin",
          "--gin.MODEL_DIR='/tmp/tkx_never_written'",
          "--gin.BATCH_SIZE='eight'",
      ],
  )
  assert "BATCH_SIZE must be a positive integer, got 'eight'" in line
  assert not os.path.exists("/tmp/tkx_never_written")


def test_generate_unknown_task(tiny_checkpoint, capsys):
  line = _error_line(
      capsys,
      [
          "generate",
          "--checkpoint",
          tiny_checkpoint,
          "--ni_task",
          "task9004_tkx_country_capitol_answering",
          "--input",
          "France",
      ],
  )
  assert "unknown NI task 'task9004_tkx_country_capitol_answering'" in line
  assert "did you mean task9004_tkx_country_capital_answering" in line
