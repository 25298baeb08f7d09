"""README.md's and the docs/ pages' shell commands, run as a user runs them (in fast forms).

Every command in the ```bash blocks of README.md and of every docs/*.md page is
read from the document itself ("README" below means any of them), turned into
its fast form by the table `FAST_FORMS` below, and run as a subprocess (`bash -c`,
the installed `tkx` console script, `python bench/x.py`) from a scratch checkout
layout: `<work>/checkout/` holds links to the repository's `tasks/`,
`gin_configs/` and `bench/` (relative paths in README resolve, relative outputs
land in the scratch dir), and `<work>/shared/natural-instructions` links to the
shared NI sample, so `../shared/natural-instructions` means what README says.
A README command that is renamed, loses a flag or crashes fails its test; a
README command without a table entry fails `test_every_readme_command_has_a_fast_form`.

How a README command becomes its fast form:

1. README text -> command: continuation lines are joined, whitespace collapsed,
   `# comments` dropped (a trailing `# needs network` marks a command that needs
   the network), `a && b` are two commands, a `for ... done; wait` loop is one.
2. The entry's `sub` pairs replace README text (each must occur, so a stale entry
   fails) and `add` is appended: fewer steps, smaller caps, a tiny model, a local
   stand-in for a Hub name.
3. `PLACEHOLDERS` then map README's placeholders everywhere: NI checkouts
   (`/path/to/natural-instructions`, `DIR`, ...) -> the shared sample, `CKPT` ->
   the tiny model the quick start trained, `/tmp/` -> the scratch dir.
4. Commands run in table order (a later command reads what an earlier one wrote);
   `before` prepares inputs, `check` asserts on the result beyond exit status 0.
   Identical fast forms run once.

To add a README command: write it in a ```bash block in README, then add one entry
`"<the command as step 1 prints it>": FastForm(...)` to `FAST_FORMS`, after the
entries that produce its inputs. The failure message of
`test_every_readme_command_has_a_fast_form` prints the exact key. A command that
cannot run here gets `FastForm(skip="why")`. Keep fast forms fast: the whole
module should stay within a few minutes on a 2-core CPU.

Contract (the names other modules rely on; change one only together with its users):
- Reads every command of README's ```bash blocks (every fenced block must name a language), maps each
  through `FAST_FORMS` (one entry per README command: `sub`, `add`, `skip`, `network`, `before`,
  `check`) and `PLACEHOLDERS`, and runs it with `bash -c` from a scratch checkout layout beside a link to
  the shared NI sample. A README command without an entry, an entry without a README command, or a
  network command not marked `# needs network` fails. How to add a command: the module docstring.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Tuple

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
SHARED_NI_DIR = REPO_ROOT.parent / "shared" / "natural-instructions"
NETWORK_MARK = "needs network"
SHELL_LANGUAGES = ("bash", "sh", "shell")

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------
# README -> commands
# ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ReadmeCommand:
  text: str  # normalized command
  line: int  # line of its document where it starts
  network: bool  # marked `# needs network`
  document: str = "README.md"  # or docs/<page>.md


def fenced_blocks(text: str) -> List[Tuple[str, int, List[str]]]:
  """(language, first line number, lines) of every ``` fenced block."""
  blocks, language, start, lines = [], None, 0, []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.startswith("```"):
      if language is not None:
        lines.append(line)
      continue
    if language is None:
      language, start, lines = line[3:].strip(), number + 1, []
    else:
      blocks.append((language, start, lines))
      language = None
  return blocks


def _split_comment(line: str) -> Tuple[str, str]:
  """(code, comment) of a shell line; `#` inside quotes is code."""
  quote = None
  for i, char in enumerate(line):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char == "#" and (i == 0 or line[i - 1].isspace()):
      return line[:i].rstrip(), line[i + 1 :].strip()
  return line.rstrip(), ""


def _split_and(command: str) -> List[str]:
  """`a && b` -> [a, b] (outside quotes)."""
  parts, quote, start, i = [], None, 0, 0
  while i < len(command):
    char = command[i]
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif command.startswith("&&", i):
      parts.append(command[start:i].strip())
      start = i = i + 2
      continue
    i += 1
  parts.append(command[start:].strip())
  return [p for p in parts if p]


def shell_commands(lines: List[str], first_line: int) -> List[ReadmeCommand]:
  """The commands of one shell block (see the module docstring, step 1)."""
  commands, pieces, start, network, in_loop = [], [], 0, False, False
  for offset, raw in enumerate(lines):
    code, comment = _split_comment(raw)
    if not pieces:
      start, network = first_line + offset, False
    network = network or NETWORK_MARK in comment
    if not code.strip():
      continue
    continued = code.endswith("\\")
    pieces.append(code[:-1] if continued else code)
    if code.lstrip().startswith("for "):
      in_loop = True
    if in_loop and re.search(r"\bdone\b", code):
      in_loop = False
    if continued or in_loop:
      continue
    joined = " ".join(" ".join(pieces).split())
    pieces = []
    if joined.startswith("for "):
      parts = [joined]
    else:
      parts = _split_and(joined)
    commands += [ReadmeCommand(p, start, network) for p in parts]
  assert (
      not pieces
  ), f"README line {start}: unfinished command {' '.join(pieces)!r}"
  return commands


def documents() -> List[pathlib.Path]:
  """README.md and the docs/ pages: every ```bash block in them is a command a user runs."""
  return [README] + sorted((REPO_ROOT / "docs").glob("*.md"))


def readme_commands(text: Optional[str] = None) -> List[ReadmeCommand]:
  """The commands of `text`, or of README.md and every docs/ page (each naming its document)."""
  if text is not None:
    return _commands_of(text, "README.md")
  commands = []
  for path in documents():
    name = str(path.relative_to(REPO_ROOT))
    commands += _commands_of(path.read_text(encoding="utf-8"), name)
  return commands


def _commands_of(text: str, document: str) -> List[ReadmeCommand]:
  commands = []
  for language, start, lines in fenced_blocks(text):
    if language in SHELL_LANGUAGES:
      commands += [
          dataclasses.replace(c, document=document)
          for c in shell_commands(lines, start)
      ]
  return commands


# ------------------------------------------------------------------------------
# The fast forms
# ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FastForm:
  """How to run one README command fast; see the module docstring."""

  sub: Tuple[Tuple[str, str], ...] = ()
  add: str = ""
  skip: str = ""
  network: bool = (
      False  # README marks it `# needs network`; `sub` gives a stand-in
  )
  before: Optional[Callable[["Work"], None]] = None
  check: Optional[Callable[["Work", subprocess.CompletedProcess], None]] = None


TINY_STEPS = 2
# A 2-step run of the tiny model on short sequences, for any training command.
TINY_TRAIN = (
    f"--gin.TRAIN_STEPS={TINY_STEPS} --gin.BATCH_SIZE=4 "
    "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 128, 'targets': 16}\""
)
# One NI task of a mixture, for commands that decode a whole registered mixture.
EMBEDDED_TRAIN_TASK = "ni_default_train_def_pos2_task9011_tkx_synonym_selection"
EMBEDDED_TEST_TASK = (
    "ni_default_test_def_pos2_task9104_tkx_movie_review_sentiment"
)
# Few instances, few output tokens, for eval / infer.
FEW = "--max_num_instances_per_task 2 --max_decode_length 8"


@dataclasses.dataclass
class Work:
  root: pathlib.Path
  checkout: pathlib.Path
  port: int
  port2: int

  @property
  def tiny(self) -> pathlib.Path:
    """The quick start's MODEL_DIR (README: /tmp/tkx_tiny)."""
    return self.root / "tmp" / "tkx_tiny"

  def fields(self) -> Dict[str, str]:
    return {
        "work": str(self.root),
        "tiny": str(self.tiny),
        "port": str(self.port),
        "port2": str(self.port2),
        "repo": str(REPO_ROOT),
    }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# --- before / check hooks


def _check_only_documented_lines(result, prefixes):
  """The command printed nothing (stdout or stderr) beyond the lines its docs show."""
  lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
  extra = [l for l in lines if not l.startswith(prefixes)]
  assert not extra, f"undocumented output at the default log level: {extra}"
  assert len(lines) == len(prefixes), lines


_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ([\w.]+): "
)


def _check_quiet(text: str) -> None:
  """At the default log level only tkx speaks, in its one format, and draws no bars into a pipe."""
  assert (
      "\r" not in text and "it/s]" not in text
  ), "a progress bar went to a pipe"
  foreign = [
      line
      for line in text.splitlines()
      if (m := _LOG_LINE.match(line)) and not m.group(1).startswith("tkx")
  ]
  assert not foreign, f"library log lines at the default level: {foreign}"


def _check_trained(work, result):
  _check_quiet(result.stderr)
  assert (work.tiny / f"checkpoint_{TINY_STEPS}").is_dir(), result.stderr[
      -3000:
  ]
  assert (work.tiny / "model.gin").is_file()
  metrics = work.tiny / "generation_eval" / f"step_{TINY_STEPS}"
  assert any(metrics.iterdir()), f"no generation eval in {metrics}"


def _check_resumes(work, result):
  assert "nothing to do" in result.stderr, result.stderr[-3000:]


def _write_jsonl(path: pathlib.Path, records) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
      encoding="utf-8",
  )


def _shared_tasks(track: str, split: str, count: int) -> List[Tuple[str, dict]]:
  """(name, task json) of the first `count` tasks of a shared-sample split."""
  split_file = SHARED_NI_DIR / "splits" / track / f"{split}_tasks.txt"
  names = split_file.read_text(encoding="utf-8").split()[:count]
  tasks = []
  for name in names:
    with open(SHARED_NI_DIR / "tasks" / f"{name}.json", encoding="utf-8") as f:
      tasks.append((name, json.load(f)))
  return tasks


def _predictions(tasks, with_categories: bool) -> List[dict]:
  """A Tk-Instruct predictions file: 2 instances per task, the first predicted right."""
  records = []
  for name, task in tasks:
    for i, instance in enumerate(task["Instances"][:2]):
      record = {
          "Task": name,
          "Instance": {"id": instance["id"], "output": instance["output"]},
          "prediction": instance["output"][0] if i == 0 else "no",
      }
      if with_categories:
        record["Categories"] = task["Categories"]
      records.append(record)
  return records


def _write_score_inputs(work):
  """The predictions files README's `tkx score` examples read."""
  default = _shared_tasks("default", "test", 3)
  _write_jsonl(
      work.checkout / "out" / "predicted_examples.jsonl",
      _predictions(default, with_categories=True),
  )
  # Without Categories: `--ni_dir` supplies them.
  _write_jsonl(
      work.checkout / "preds.jsonl",
      _predictions(default, with_categories=False),
  )
  _write_jsonl(
      work.checkout / "preds_fi.jsonl",
      _predictions(_shared_tasks("xlingual", "test", 2), with_categories=True),
  )


def _one_test_task_checkout(work):
  """A checkout of one shared-sample test task (its file linked, not copied)."""
  root = work.root / "ni_one_test_task"
  if root.exists():
    return
  (root / "tasks").mkdir(parents=True)
  (root / "splits" / "default").mkdir(parents=True)
  name = "task1342_amazon_us_reviews_title"
  (root / "tasks" / f"{name}.json").symlink_to(
      SHARED_NI_DIR / "tasks" / f"{name}.json"
  )
  (root / "splits" / "default" / "test_tasks.txt").write_text(name + "\n")


def _check_scored(work, result):
  assert (
      "exact_match" in result.stdout or "exact match" in result.stdout.lower()
  ), result.stdout[-2000:]


def _check_scores_json(work, result):
  scores = json.loads((work.checkout / "scores.json").read_text())
  assert "flat" in scores and "exact_match" in scores["flat"], scores.keys()


def _write_infer_input(work):
  _write_jsonl(
      work.checkout / "in.jsonl",
      [
          {"id": "a", "inputs": "Definition: say yes. Input: ok. Output:"},
          {"id": "b", "inputs": "Definition: say no. Input: fine. Output:"},
      ],
  )


def _check_infer_output(work, result):
  lines = (work.checkout / "out.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r["id"] for r in records] == ["a", "b"]
  assert all(isinstance(r["prediction"], str) for r in records)


def _link_run1(work):
  """README's `ckpts/run1`: the tiny model the quick start trained."""
  (work.checkout / "ckpts").mkdir(exist_ok=True)
  link = work.checkout / "ckpts" / "run1"
  if not link.exists():
    link.symlink_to(work.tiny, target_is_directory=True)


def _check_exported(work, result):
  _check_quiet(result.stdout + result.stderr)
  exported = work.checkout / "exported" / "run1"
  assert (exported / "config.json").is_file()
  assert (exported / "model.safetensors").is_file()
  assert (exported / "spiece.model").is_file()  # and the tokenizer files


def _write_t5x_checkpoint(work):
  """A t5x checkpoint of the tiny model, written in t5x's layout by tkx's writer."""
  from tkx.checkpoints import directory, t5x_format

  _, params, _ = directory.read(str(work.tiny))
  t5x_format.save_params(str(work.root / "t5x_model_dir"), params, step=1100000)


def _check_imported(path):
  def check(work, result):
    assert (work.checkout / path / "model.gin").is_file(), result.stderr[-2000:]
    assert (work.checkout / path / "checkpoint_0").is_dir()

  return check


def _write_lora_checkpoint(work):
  """docs/adapters.md's `ckpts/lora1`: the tiny model with random rank-4 adapters on q and v, as a LoRA run writes it."""
  import gin
  import numpy as np

  from tkx.checkpoints import directory, hf, peft_format
  from tkx.models import lora

  out = work.checkout / "ckpts" / "lora1"
  if out.exists():
    return
  config, params, spm = directory.read(str(work.tiny))
  lora_config = lora.LoraConfig(rank=4, alpha=8.0)
  rng = np.random.default_rng(0)
  plain = config.replace(dense_layer="dense")
  adapters = {
      path: (
          rng.normal(
              size=(hf.expected_shapes(plain)[path + ("kernel",)][0], 4)
          ),
          rng.normal(
              size=(4, hf.expected_shapes(plain)[path + ("kernel",)][1])
          ),
      )
      for _, path in hf.projection_modules(plain)
      if lora_config.is_target(path)
  }
  gin.parse_config(
      lora.gin_bindings(lora_config)
  )  # model.gin records gin's LoraConfig
  directory.write_checkpoint(
      config.replace(dense_layer="lora"),
      peft_format.with_adapters(params, adapters),
      str(out),
      spm_model=spm,
  )


def _check_peft_adapter(work, result):
  adapter = work.checkout / "exported" / "lora1_adapter"
  config = json.loads((adapter / "adapter_config.json").read_text())
  assert (config["peft_type"], config["r"], config["target_modules"]) == (
      "LORA",
      4,
      ["q", "v"],
  )
  assert config["base_model_name_or_path"] == str(
      work.checkout / "exported" / "lora1_base"
  )


def _copy_eval_runs(work):
  """README's `tkx report` inputs: two runs' eval dirs (copies of the tiny model's eval)."""
  evaluated = work.tiny / "eval_default_test_def_pos2"
  for run in ("run_a", "run_b"):
    target = work.root / "tmp" / run / "eval_default_test_def_pos2"
    if not target.exists():
      shutil.copytree(evaluated, target)


def _check_report(name):
  def check(work, result):
    path = work.checkout / name
    text = path.read_text(encoding="utf-8")
    assert "<svg" in text and "http://" not in text.replace(
        "http://www.w3.org", ""
    ), path

  return check


def _check_sweep(work, result):
  for encoding in ("def", "pos2"):
    assert (work.root / "tmp" / "sweep" / encoding / "metrics.json").is_file()
  assert (work.root / "tmp" / "sweep" / "report.html").is_file()


def _check_answer(work, result):
  answer = json.loads(result.stdout)
  assert isinstance(answer["prediction"], str) and answer["input_tokens"] > 0


def _stop_server(work):
  pid_file = work.root / "serve.pid"
  if pid_file.exists():
    try:
      os.kill(int(pid_file.read_text()), signal.SIGTERM)
    except (ProcessLookupError, ValueError):
      pass


def _tfds_checkout(work):
  """prepare-tfds reads a copy of the embedded sample (fast: 19 + 5 tasks)."""
  copy = work.root / "ni_for_tfds"
  if not copy.exists():
    shutil.copytree(REPO_ROOT / "tasks" / "tasks", copy / "tasks")
    shutil.copytree(REPO_ROOT / "tasks" / "splits", copy / "splits")


def _remove_task_files(work):
  """Training on the prepared records must not need the task files any more."""
  for path in (work.root / "ni_for_tfds" / "tasks").glob("*.json"):
    path.unlink()


def _check_tfds_train(work, result):
  assert (
      work.root / "tmp" / "tk_small_tfds" / f"checkpoint_{TINY_STEPS}"
  ).is_dir(), result.stderr[-3000:]


PLACEHOLDERS = (
    # NI checkouts README names -> the shared sample (relative to the scratch checkout).
    (
        r"(?<![\w.])/?path/to/natural-instructions",
        "../shared/natural-instructions",
    ),
    (r"/data/natural-instructions", "../shared/natural-instructions"),
    (r"\bDIR\b", "../shared/natural-instructions"),
    (r"\bCKPT\b", "{tiny}"),
    (r"(?<![\w.])/tmp/", "{work}/tmp/"),
    (r"(?<![\w.])/ckpt/", "{work}/ckpt/"),
    (r"(?<![\w.])/data/tensorflow_datasets", "{work}/tensorflow_datasets"),
)

# README command (as `readme_commands` normalizes it) -> fast form, in run order.
FAST_FORMS: Dict[str, FastForm] = {
    # --- install and the test suite
    'pip install -e ".[test,hf]"': FastForm(
        skip="installs tkx; this test runs in the installed environment"
    ),
    "python3 -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder tests": (
        FastForm(skip="the test suite itself")
    ),
    (
        "python -m pytest -q tests/test_partitioning_rules.py tests/test_partitioning_t5.py "
        "tests/test_multihost_init.py tests/test_multihost_training.py"
    ): FastForm(skip="tests of this suite (CI runs them)"),
    # --- the embedded sample
    "python tasks/build_sample.py": FastForm(add="--out_dir {work}/sample"),
    "python -m tkx.data.vocab --train_sample": FastForm(
        add="--ni_dir {work}/sample"
    ),
    # --- quick start (also README's main job)
    (
        "tkx train --gin_file=gin_configs/experiments/embedded_tiny.gin "
        "--gin.MODEL_DIR=\"'/tmp/tkx_tiny'\""
    ): FastForm(
        # The generation eval at the end decodes one test task instead of all five.
        add=(
            f"--gin.TRAIN_STEPS={TINY_STEPS} --gin.EVAL_BATCHES=1 "
            "--gin.evaluate.generation_eval.mixture_or_task_name="
            f"\"'{EMBEDDED_TEST_TASK}'\""
        ),
        check=_check_trained,
    ),
    "tkx eval --checkpoint /tmp/tkx_tiny --mixture ni_default_train_def_pos2": (
        # One task of the mixture (a registered mixture takes no instance cap).
        FastForm(
            sub=(("ni_default_train_def_pos2", EMBEDDED_TRAIN_TASK),),
            add="--max_decode_length 8",
            check=lambda work, result: _check_quiet(result.stderr),
        )
    ),
    "tkx baseline --kind copy_input --split train --output /tmp/copy_input.jsonl": (
        FastForm()
    ),
    "tkx score --predictions /tmp/copy_input.jsonl": FastForm(
        check=_check_scored
    ),
    # --- scoring and baselines
    "tkx score --predictions out/predicted_examples.jsonl": FastForm(
        before=_write_score_inputs, check=_check_scored
    ),
    (
        "tkx score --predictions preds.jsonl --ni_dir path/to/natural-instructions "
        "--json scores.json"
    ): FastForm(check=_check_scores_json),
    "tkx score --predictions preds_fi.jsonl --track xlingual": FastForm(
        check=_check_scored
    ),
    "tkx baseline --kind copy_demo --output out/copy_demo.jsonl": FastForm(),
    (
        "tkx baseline --ni_dir path/to/natural-instructions --kind copy_input "
        "--output out/copy_input.jsonl"
    ): FastForm(),
    "tkx score --predictions out/copy_input.jsonl": FastForm(
        check=_check_scored
    ),
    (
        "tkx baseline --ni_dir path/to/natural-instructions --kind copy_input --track "
        "xlingual --output out/copy_input_xl.jsonl"
    ): FastForm(),
    "tkx score --predictions out/copy_input_xl.jsonl --track xlingual": (
        FastForm(check=_check_scored)
    ),
    # --- convert
    (
        "tkx convert --ni_dir ../shared/natural-instructions --track default --split "
        "test --encoding def_pos2 --output /tmp/ni_test_def_pos2.jsonl"
    ): FastForm(),
    (
        "tkx convert --ni_dir DIR --split train --encoding tk_instruct --output "
        "train.jsonl --max_num_instances_per_task 100 --seed 42 --max_source_length "
        "1024 --vocab tasks/spm/tkx_sample.model"
    ): FastForm(
        sub=(
            (
                "--max_num_instances_per_task 100",
                "--max_num_instances_per_task 2",
            ),
        )
    ),
    (
        "tkx convert --ni_dir DIR --split official_test --output test.jsonl "
        "--skip_missing"
    ): FastForm(),
    # --- model-info (shapes only: fast at any size)
    "tkx model-info --gin_file gin_configs/models/t5_1_1/base.gin": FastForm(),
    (
        "tkx model-info --gin_file gin_configs/models/t5_1_1/xxl.gin --data 8 --model 2 "
        "--shard_params_over_data --optimizer adamw"
    ): FastForm(),
    (
        "tkx model-info --gin_file gin_configs/models/mt5/xl.gin --batch_size 32 "
        "--inputs_length 1024 --targets_length 128 --json"
    ): FastForm(),
    # --- infer / eval / generate on the quick start's model
    (
        "tkx infer --checkpoint /tmp/tkx_tiny --mixture ni_default_test_def_pos2 "
        "--output_file /tmp/predicted_examples.jsonl"
    ): FastForm(add="--max_decode_length 8 --batch_size 32"),
    (
        "tkx infer --checkpoint CKPT --mixture ni_default_test_def_pos2 --ni_dir "
        "/path/to/natural-instructions --output_file preds.jsonl --num_beams 4"
    ): FastForm(
        # Beam search over one shared-sample test task (100 instances), not all 17.
        sub=(("/path/to/natural-instructions", "{work}/ni_one_test_task"),),
        add="--max_decode_length 4 --max_input_length 128 --batch_size 32",
        before=_one_test_task_checkout,
    ),
    "tkx infer --checkpoint CKPT --input_file in.jsonl --output_file out.jsonl": FastForm(
        add="--max_decode_length 8",
        before=_write_infer_input,
        check=_check_infer_output,
    ),
    "tkx eval --checkpoint /tmp/tkx_tiny": FastForm(add=FEW),
    (
        "tkx eval --checkpoint CKPT --ni_dir /path/to/natural-instructions --track "
        "default --encoding def_pos2 --split test"
    ): FastForm(add=FEW + " --max_input_length 128"),
    "tkx eval --checkpoint CKPT --ni_dir DIR --track xlingual --encoding def": (
        FastForm(add=FEW + " --max_input_length 128")
    ),
    (
        "tkx eval --gin_file=gin_configs/runs/eval.gin "
        "--gin.CHECKPOINT_PATH=\"'/tmp/tkx_tiny'\" "
        "--gin.EVAL_OUTPUT_DIR=\"'/tmp/tkx_tiny/eval'\""
    ): FastForm(
        add=(
            "--gin.evaluate.evaluate.max_num_instances_per_task=2 "
            "--gin.MAX_DECODE_LENGTH=8"
        )
    ),
    (
        'tkx generate --checkpoint CKPT "Definition: return the currency of the given '
        'country. Now complete the following example - Input: India. Output:"'
    ): FastForm(add="--max_decode_length 8"),
    (
        "tkx generate --checkpoint CKPT --ni_task task9004_tkx_country_capital_answering "
        '--input "France" --encoding def_pos2 --show_prompt'
    ): FastForm(add="--max_decode_length 8"),
    # --- checkpoints: export the quick start's model, import it back
    "tkx export-checkpoint --checkpoint ckpts/run1 --hf exported/run1": (
        FastForm(before=_link_run1, check=_check_exported)
    ),
    (
        "tkx export-checkpoint --checkpoint ckpts/run1/checkpoint_2000 --hf "
        "exported/run1_2000"
    ): FastForm(sub=(("checkpoint_2000", f"checkpoint_{TINY_STEPS}"),)),
    "tkx import-checkpoint --hf /path/to/hf_t5_dir --output ckpts/mine": (
        FastForm(
            sub=(("/path/to/hf_t5_dir", "exported/run1"),),
            check=_check_imported("ckpts/mine"),
        )
    ),
    (
        "tkx import-checkpoint --hf allenai/tk-instruct-base-def-pos --output "
        "ckpts/tk-base --dtype bfloat16"
    ): FastForm(
        network=True,
        sub=(("allenai/tk-instruct-base-def-pos", "exported/run1"),),
        check=_check_imported("ckpts/tk-base"),
    ),
    (
        "tkx import-checkpoint --t5x /path/to/t5x_model_dir/checkpoint_1100000 "
        "--gin_file gin_configs/models/t5_1_1/xl.gin --output ckpts/t5x_xl"
    ): FastForm(
        sub=(
            ("/path/to/t5x_model_dir", "{work}/t5x_model_dir"),
            ("t5_1_1/xl.gin", "t5_1_1/tiny.gin"),
        ),
        before=_write_t5x_checkpoint,
        check=_check_imported("ckpts/t5x_xl"),
    ),
    # --- docs/adapters.md: a LoRA checkpoint (the tiny model + random adapters) out and back in
    (
        "tkx export-checkpoint --checkpoint ckpts/lora1 --hf exported/lora1_merged "
        "--t5x exported/lora1_t5x"
    ): FastForm(before=_write_lora_checkpoint),
    (
        "tkx export-checkpoint --checkpoint ckpts/lora1 --peft exported/lora1_adapter "
        "--hf exported/lora1_base --lora_weights base"
    ): FastForm(before=_write_lora_checkpoint, check=_check_peft_adapter),
    (
        "tkx import-checkpoint --peft exported/lora1_adapter --hf exported/lora1_base "
        "--output ckpts/lora1_again"
    ): FastForm(check=_check_imported("ckpts/lora1_again")),
    # --- training: the published recipe (tiny stand-in model), finetune.gin, TFDS, multi-host
    "tkx import-checkpoint --hf google/t5-xl-lm-adapt --output /ckpt/t5-xl-lm-adapt": FastForm(
        network=True, sub=(("google/t5-xl-lm-adapt", "exported/run1"),)
    ),
    (
        "tkx train --gin_file=gin_configs/experiments/tk_instruct_3b_def_pos.gin "
        "--gin.NI_DIR=\"'/data/natural-instructions'\" "
        "--gin.INITIAL_CHECKPOINT_PATH=\"'/ckpt/t5-xl-lm-adapt'\" "
        "--gin.MODEL_DIR=\"'/ckpt/tk-instruct-3b-def-pos'\""
    ): FastForm(
        # The recipe's gin with the tiny model the stand-in checkpoint holds, on the
        # embedded sample (the shared one's 166 training tasks take minutes to set up).
        sub=(("/data/natural-instructions", "{repo}/tasks"),),
        add="--gin_file=gin_configs/models/t5_1_1/tiny.gin " + TINY_TRAIN,
    ),
    (
        "tkx eval --checkpoint /ckpt/tk-instruct-3b-def-pos --ni_dir "
        "/data/natural-instructions --split test"
    ): FastForm(sub=(("/data/natural-instructions", "{repo}/tasks"),), add=FEW),
    (
        "tkx train --gin_file=gin_configs/runs/finetune.gin "
        "--gin_file=gin_configs/models/t5_1_1/small.gin "
        "--gin.MIXTURE_OR_TASK_NAME=\"'ni_default_train_def_pos2'\" "
        "--gin.NI_DIR=\"'/data/natural-instructions'\" "
        "--gin.MODEL_DIR=\"'/tmp/tk_small'\" --gin.TRAIN_STEPS=2000 --gin.PACKED_BATCH_SIZE=4"
    ): FastForm(
        sub=(
            ("/data/natural-instructions", "{repo}/tasks"),
            ("t5_1_1/small.gin", "t5_1_1/tiny.gin"),
            ("--gin.TRAIN_STEPS=2000 --gin.PACKED_BATCH_SIZE=4", TINY_TRAIN),
        )
    ),
    (
        "tkx prepare-tfds --ni_dir /path/to/natural-instructions --data_dir "
        "/data/tensorflow_datasets --config default"
    ): FastForm(
        sub=(("/path/to/natural-instructions", "{work}/ni_for_tfds"),),
        before=_tfds_checkout,
    ),
    (
        "tkx train --gin_file=gin_configs/runs/finetune.gin "
        "--gin_file=gin_configs/models/t5_1_1/small.gin "
        "--gin.MIXTURE_OR_TASK_NAME=\"'ni_default_train_def_pos2'\" "
        "--gin.NI_DIR=\"'/path/to/natural-instructions'\" "
        "--gin.register_ni.source=\"'tfds'\" "
        "--gin.register_ni.tfds_data_dir=\"'/data/tensorflow_datasets'\" "
        "--gin.MODEL_DIR=\"'/tmp/tk_small_tfds'\""
    ): FastForm(
        sub=(
            ("/path/to/natural-instructions", "{work}/ni_for_tfds"),
            ("t5_1_1/small.gin", "t5_1_1/tiny.gin"),
        ),
        add=TINY_TRAIN,
        before=_remove_task_files,
        check=_check_tfds_train,
    ),
    (
        "for i in 0 1; do XLA_FLAGS=--xla_force_host_platform_device_count=4 "
        "JAX_PLATFORMS=cpu python -m tkx.multihost --coordinator_address "
        "127.0.0.1:12355 --num_processes 2 --process_id $i --num_partitions 2 & "
        "done; wait"
    ): FastForm(
        sub=(
            ("127.0.0.1:12355", "127.0.0.1:{port}"),
            # `wait` alone reports success; the check needs each process's status.
            (
                "done; wait",
                "done; for p in $(jobs -p); do wait $p || exit 1; done",
            ),
        )
    ),
    (
        "for i in 0 1; do XLA_FLAGS=--xla_force_host_platform_device_count=4 "
        "TKX_COORDINATOR_ADDRESS=127.0.0.1:12355 TKX_NUM_PROCESSES=2 "
        "TKX_PROCESS_ID=$i tkx train "
        "--gin_file=gin_configs/experiments/embedded_tiny.gin "
        "--gin.MODEL_DIR=\"'/tmp/tkx_mh'\" "
        "--gin.partitioning.Partitioner.num_partitions=2 & done; wait"
    ): FastForm(
        sub=(
            ("127.0.0.1:12355", "127.0.0.1:{port2}"),
            (
                "--gin.partitioning.Partitioner.num_partitions=2 &",
                "--gin.partitioning.Partitioner.num_partitions=2 "
                f"{TINY_TRAIN} --gin.EVAL_EVERY=None &",
            ),
            (
                "done; wait",
                "done; for p in $(jobs -p); do wait $p || exit 1; done",
            ),
        )
    ),
    # --- accelerators: install lines and benchmarks
    'pip install -e ".[test,hf,cuda12]"': FastForm(
        skip="installs JAX's CUDA wheels, for GPU hosts"
    ),
    'pip install -e ".[test,tpu]"': FastForm(
        skip="installs libtpu, for TPU hosts"
    ),
    # The default-settings line runs as its `--quick` line (one run: identical fast forms).
    "python bench/compile_time.py": FastForm(
        add="--quick --size tiny --batch_size 8 --inputs_length 64 --targets_length 16"
    ),
    "python bench/compile_time.py --quick": FastForm(
        add="--size tiny --batch_size 8 --inputs_length 64 --targets_length 16"
    ),
    "python bench/accelerator.py --output accel.json": FastForm(
        skip="needs a GPU; its --quick CPU form runs next"
    ),
    "python bench/accelerator.py --quick --output q.json": FastForm(
        skip="run by tests/test_bench_accelerator.py (the same --quick command, "
        "with seqio, TensorFlow and gin hidden as on the GPU machine)"
    ),
    # --- NI at full size: the benchmark's --quick form (60 tasks)
    "python bench/ni_scale.py --num_tasks 1616 --ni_dir ../shared/natural-instructions": FastForm(
        sub=(("--num_tasks 1616 --ni_dir ../shared/natural-instructions", ""),),
        add="--quick",
    ),
    "python bench/ni_scale.py --quick": FastForm(),
    # --- reports: the tiny model on the shared sample's test split
    "tkx eval --checkpoint CKPT --ni_dir DIR": FastForm(
        add=FEW,
        check=lambda work, result: _check_report(
            str(work.tiny / "eval_default_test_def_pos2" / "report.html")
        )(work, result),
    ),
    (
        "tkx eval --checkpoint CKPT --ni_dir DIR --encodings "
        "def,pos2,def_pos2,def_pos2_neg2_expl --output_dir /tmp/sweep"
    ): FastForm(
        sub=(("def,pos2,def_pos2,def_pos2_neg2_expl", "def,pos2"),),
        add=FEW,
        check=_check_sweep,
    ),
    (
        "tkx report /tmp/run_a/eval_default_test_def_pos2 "
        "/tmp/run_b/eval_default_test_def_pos2 /tmp/sweep MODEL_DIR --output compare.html"
    ): FastForm(
        sub=(("MODEL_DIR", "{tiny}"),),
        before=_copy_eval_runs,
        check=_check_report("compare.html"),
    ),
    # --- serving: the server runs in the background for the two requests after it
    "tkx serve --checkpoint CKPT --host 127.0.0.1 --port 8000 --batch_size 8 --max_wait_ms 10": FastForm(
        sub=(
            ("tkx serve", "(timeout 600 tkx serve"),
            ("--port 8000", "--port {port}"),
        ),
        add=(
            "> {work}/serve.log 2>&1 & echo $! > {work}/serve.pid); "
            "for i in $(seq 300); do "
            "curl -sf localhost:{port}/healthz >/dev/null && exit 0; sleep 1; done; "
            "cat {work}/serve.log; exit 1"
        ),
    ),
    (
        'curl -s localhost:8000/v1/generate -d \'{"inputs": "Definition: return the '
        "currency of the given country. Now complete the following example - Input: "
        "India. Output:\"}'"
    ): FastForm(
        sub=(("curl -s localhost:8000", "curl -sf localhost:{port}"),),
        check=_check_answer,
    ),
    (
        'curl -s localhost:8000/v1/generate -d \'{"definition": "Return the currency '
        'of the given country.", "positive_examples": [{"input": "Japan", '
        '"output": "Yen"}], "negative_examples": [], "input": "India", '
        '"encoding": "def_pos2", "max_decode_length": 16}\''
    ): FastForm(
        sub=(("curl -s localhost:8000", "curl -sf localhost:{port}"),),
        check=lambda work, result: (
            _check_answer(work, result),
            _stop_server(work),
            _check_quiet((work.root / "serve.log").read_text()),
        ),
    ),
    "python bench/serve.py": FastForm(
        add="--models tiny --max_decode_length 4 --requests_per_client 1 --peer_requests 2"
    ),
    "python bench/serve.py --models tiny --max_decode_length 16": FastForm(
        sub=(("--max_decode_length 16", "--max_decode_length 4"),),
        add="--requests_per_client 1 --peer_requests 2",
    ),
    "python bench/serve.py --adapters 4 --models tiny --max_decode_length 8": (
        FastForm(add="--smoke")
    ),
    # --- packed training: the tiny model on 16 examples (one HF batch)
    "python bench/train_throughput.py --ni_dir ../shared/natural-instructions --model small": FastForm(
        sub=(("--model small", "--model tiny"),), add="--examples 16"
    ),
    "python bench/train_throughput.py --quick": FastForm(
        sub=(("--quick", "--model tiny --examples 16"),)
    ),
    # --- docs/clusters.md
    "python -m tkx.multihost --num_partitions 1": FastForm(
        check=lambda work, result: _check_only_documented_lines(
            result, ("environment: ", "mesh: ", "  host 0: ", "process 0/1: ")
        )
    ),
    # --- docs/packing.md
    "tkx plan-packing --data_parallel 8 --top 4": FastForm(
        add="--window 64 --gin_file=gin_configs/models/t5_1_1/tiny.gin"
    ),
    "python bench/packing_layouts.py --smoke": FastForm(),
    # --- benchmarks: `--smoke` shrinks a run to seconds (its figures mean nothing). A
    # default-settings line adds `--quick --smoke`, the same run as its `--quick` line.
    "python bench/quick_start.py": FastForm(add="--quick --smoke"),
    "python bench/quick_start.py --quick": FastForm(add="--smoke"),
    "python bench/data_pipeline.py --quick": FastForm(add="--smoke"),
    (
        "python bench/data_pipeline.py --ni_dir ../shared/natural-instructions "
        "--encoding def_pos2 --max_tasks 50"
    ): FastForm(add="--smoke"),
    "python bench/model_step.py": FastForm(add="--quick --smoke"),
    "python bench/model_step.py --quick": FastForm(add="--smoke"),
    "python bench/train_step.py": FastForm(add="--quick --smoke"),
    "python bench/train_step.py --quick": FastForm(add="--smoke"),
    "python bench/decode.py": FastForm(add="--quick --smoke"),
    "python bench/decode.py --quick": FastForm(add="--smoke"),
    (
        "python bench/decode.py --num_examples 16 --batch_size 8 --ni_dir "
        "/path/to/natural-instructions"
    ): FastForm(add="--smoke"),
    # --- docs/quantization.md (the decode smoke is the one above, run once)
    "python bench/int8_quality.py --smoke": FastForm(),
    "python bench/decode.py --smoke": FastForm(
        sub=(("--smoke", "--quick --smoke"),)
    ),
}


def fast_form(command: str, form: FastForm, work: Work) -> str:
  """Steps 2 and 3 of the module docstring."""
  for old, new in form.sub:
    assert (
        old in command
    ), f"FAST_FORMS entry for {command!r}: {old!r} no longer occurs; update the entry"
    command = command.replace(old, new)
  if form.add:
    command = f"{command} {form.add}"
  command = re.sub(
      " {2,}", " ", command
  )  # a removed flag leaves no gap: identical forms run once
  for pattern, replacement in PLACEHOLDERS:
    command = re.sub(pattern, replacement, command)
  # Last, so that README placeholders (`/tmp/`) never match inside the scratch paths.
  for name, value in work.fields().items():
    command = command.replace("{" + name + "}", value)
  return command


# ------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("document", documents(), ids=lambda p: p.name)
def test_readme_blocks_name_their_language(document):
  """Untagged blocks would escape the harness: shell ones must say bash, others text."""
  untagged = [
      start - 1
      for language, start, _ in fenced_blocks(
          document.read_text(encoding="utf-8")
      )
      if not language
  ]
  assert not untagged, (
      f"{document.name}: fenced blocks at lines {untagged} name no language; use ```bash for "
      "commands (they are then run by tests/test_readme.py) and ```text otherwise"
  )


def test_every_readme_command_has_a_fast_form():
  commands = readme_commands()
  bracketed = [c for c in commands if re.search(r"\s\[-", c.text)]
  assert not bracketed, "\n".join(
      f"{c.document} line {c.line}: {c.text!r}: optional arguments in [brackets] do not run; "
      "write the command as a user types it (one line per variant)"
      for c in bracketed
  )
  missing = [c for c in commands if c.text not in FAST_FORMS]
  assert not missing, "\n".join(
      f"{c.document} line {c.line}: no fast form for this command; add an entry to "
      f"FAST_FORMS in tests/test_readme.py:\n    {c.text!r}: FastForm(...),"
      for c in missing
  )
  present = {c.text for c in commands}
  stale = [text for text in FAST_FORMS if text not in present]
  assert not stale, (
      "FAST_FORMS entries for commands README no longer has (remove or update them):\n"
      + "\n".join(f"    {t!r}" for t in stale)
  )
  for c in commands:
    form = FAST_FORMS[c.text]
    assert (
        c.network == form.network
    ), f"{c.document} line {c.line}: {c.text!r} " + (
        f"is marked `# {NETWORK_MARK}` but its FAST_FORMS entry has no local stand-in"
        if c.network
        else f"needs the network: mark it `# {NETWORK_MARK}` in README"
    )


def test_command_extraction():
  text = "\n".join(
      [
          "```bash",
          "tkx a --x 1 \\",
          "    --y 'q # not a comment' && tkx b   # note",
          "# a comment line",
          "tkx c --hub name   # needs network",
          "for i in 0 1; do",
          "  run $i &",
          "done; wait",
          "```",
          "```text",
          "not a command",
          "```",
      ]
  )
  assert readme_commands(text) == [
      ReadmeCommand("tkx a --x 1 --y 'q # not a comment'", 2, False),
      ReadmeCommand("tkx b", 2, False),
      ReadmeCommand("tkx c --hub name", 5, True),
      ReadmeCommand("for i in 0 1; do run $i & done; wait", 6, False),
  ]


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_ni_dir):
  root = tmp_path_factory.mktemp("readme")
  checkout = root / "checkout"
  checkout.mkdir()
  for name in ("tasks", "gin_configs", "bench"):
    (checkout / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
  (root / "shared").mkdir()
  (root / "shared" / "natural-instructions").symlink_to(
      shared_ni_dir, target_is_directory=True
  )
  (root / "tmp").mkdir()
  (root / "ckpt").mkdir()
  work = Work(
      root=root, checkout=checkout, port=_free_port(), port2=_free_port()
  )
  yield work
  _stop_server(
      work
  )  # README's `tkx serve`, if a test failed before its last request


def _subprocess_env() -> Dict[str, str]:
  env = dict(os.environ)
  # conftest's 8 forced CPU devices are for in-process tests; a user's shell has none.
  env.pop("XLA_FLAGS", None)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["TKX_SRC"] = os.environ.get("TKX_SRC", str(REPO_ROOT))
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
  return env


_RAN: Dict[str, subprocess.CompletedProcess] = {}


@pytest.mark.parametrize(
    "readme_text", list(FAST_FORMS), ids=[t[:60] for t in FAST_FORMS]
)
def test_readme_command(readme_text, work):
  form = FAST_FORMS[readme_text]
  if form.skip:
    pytest.skip(form.skip)
  assert readme_text in {
      c.text for c in readme_commands()
  }, f"README.md no longer has {readme_text!r}; update FAST_FORMS"
  command = fast_form(readme_text, form, work)
  if form.before:
    form.before(work)
  result = _RAN.get(command)
  if result is None:
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=work.checkout,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    _RAN[command] = result
  assert result.returncode == 0, (
      f"README command failed (exit {result.returncode}):\n  {readme_text}\n"
      f"fast form:\n  {command}\nstderr (end):\n{result.stderr[-4000:]}\n"
      f"stdout (end):\n{result.stdout[-2000:]}"
  )
  if form.check:
    form.check(work, result)


def test_rerunning_the_quick_start_resumes(work):
  """README: run the same `tkx train` again and it resumes (here: nothing left to do)."""
  text = next(
      t for t in FAST_FORMS if "embedded_tiny.gin" in t and "tkx_tiny" in t
  )
  if not (work.tiny / f"checkpoint_{TINY_STEPS}").is_dir():
    pytest.skip("the quick start's training did not run")
  command = fast_form(text, FAST_FORMS[text], work)
  result = subprocess.run(
      ["bash", "-c", command],
      cwd=work.checkout,
      env=_subprocess_env(),
      capture_output=True,
      text=True,
      timeout=900,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  _check_resumes(work, result)


def test_prepare_tfds_rejects_a_folder_that_is_no_checkout(tmp_path, capsys):
  from tkx import cli

  status = cli.main(
      [
          "prepare-tfds",
          "--ni_dir",
          str(tmp_path),
          "--data_dir",
          str(tmp_path / "d"),
      ]
  )
  assert status == 2
  assert f"--ni_dir {tmp_path}: no tasks/ folder" in capsys.readouterr().err
  assert not (tmp_path / "d").exists()


def test_quick_start_bench_checks_a_band_not_a_point(capsys):
  """bench/quick_start.py fails a full run whose scores leave README's bands (they vary with the CPU)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
      "quick_start", REPO_ROOT / "bench" / "quick_start.py"
  )
  quick_start = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(quick_start)
  assert quick_start._check_bands({"exact_match": 29.98, "rougeL": 39.65}) == 0
  assert quick_start._check_bands({"exact_match": 31.5, "rougeL": 40.9}) == 0
  assert quick_start._check_bands({"exact_match": 12.0, "rougeL": 39.0}) == 1
  assert "exact match 12.0 outside" in capsys.readouterr().err


def _anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve():
  """Every relative link of README.md, ARCHITECTURE.md and docs/ names a file (and heading) that exists."""
  broken = []
  for document in documents() + [REPO_ROOT / "ARCHITECTURE.md"]:
    text = document.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
        continue
      path, _, anchor = target.partition("#")
      linked = (document.parent / path).resolve() if path else document
      if not linked.exists():
        broken.append(f"{document.name}: {target} (no such file)")
      elif anchor and linked.suffix == ".md":
        headings = re.findall(
            r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M
        )
        if anchor not in {_anchor(h) for h in headings}:
          broken.append(f"{document.name}: {target} (no such heading)")
  assert not broken, "\n".join(broken)
