"""report.html: `tkx eval` writes it, `tkx eval --encodings` compares encodings, `tkx report` compares runs.

One module-scoped sweep (two encodings, two instances per task, tiny random model)
and the two separate evaluations it must equal serve every test here.
"""

import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import threading

import pytest

from tkx import cli, evaluate, infer, report
from tkx.checkpoints import directory
from tkx.metrics import baselines as baselines_lib
from tkx.metrics import ni_metrics

ENCODINGS = ("def", "pos2")
FAST = [
    "--max_decode_length",
    "4",
    "--max_input_length",
    "128",
    "--max_num_instances_per_task",
    "2",
    "--no_progress",
]
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def evals(tiny_checkpoint, tmp_path_factory):
  """{"sweep": dir of `--encodings def,pos2`, "def"/"pos2": dirs of separate evals, "calls": counts}."""
  root = tmp_path_factory.mktemp("report")
  calls = {"load_checkpoint": 0, "build_predict_fn": 0}
  load, build = directory.load, infer._build_predict_fn

  def counting_load(*args, **kwargs):
    calls["load_checkpoint"] += 1
    return load(*args, **kwargs)

  def counting_build(*args, **kwargs):
    calls["build_predict_fn"] += 1
    return build(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(directory, "load", counting_load)
    patch.setattr(infer, "_build_predict_fn", counting_build)
    cli.run(
        [
            "eval",
            "--checkpoint",
            tiny_checkpoint,
            "--encodings",
            ",".join(ENCODINGS),
            "--output_dir",
            str(root / "sweep"),
        ]
        + FAST
    )
  dirs = {"sweep": root / "sweep", "calls": calls}
  # The last encoding of the sweep alone, as a separate evaluation.
  for encoding in ENCODINGS[-1:]:
    cli.run(
        [
            "eval",
            "--checkpoint",
            tiny_checkpoint,
            "--encoding",
            encoding,
            "--output_dir",
            str(root / encoding),
        ]
        + FAST
    )
    dirs[encoding] = root / encoding
  return dirs


def _json(path):
  return json.loads(path.read_text(encoding="utf-8"))


class _Cells(html.parser.HTMLParser):
  """(data-run, data-source, data-key, text) of every tagged table cell."""

  def __init__(self):
    super().__init__()
    self.cells, self._open = [], None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "td" and "data-key" in attrs:
      self._open = [
          attrs["data-run"],
          attrs["data-source"],
          attrs["data-key"],
          "",
      ]

  def handle_data(self, data):
    if self._open is not None:
      self._open[3] += data

  def handle_endtag(self, tag):
    if tag == "td" and self._open is not None:
      self.cells.append(tuple(self._open))
      self._open = None


def _cells(path):
  parser = _Cells()
  parser.feed(path.read_text(encoding="utf-8"))
  return parser.cells


def _lookup(document, key):
  for part in key.split("/"):
    document = document[part]
  return document


def _check_cells_match_files(report_path, run_dirs, model_dirs=()):
  """Every number the report tags equals the JSON value it names, in the run's own files."""
  cells = _cells(report_path)
  for run, source, key, text in cells:
    if run.startswith("training-"):
      run_dir = model_dirs[int(run.split("-")[1])]
      expected = _lookup(_json(run_dir / source), key)
    elif source == evaluate.METRICS_FILE:
      run_dir = run_dirs[int(run)]
      expected = _lookup(_json(run_dir / evaluate.METRICS_FILE), key)
    else:
      run_dir = run_dirs[int(run)]
      file_name, baseline = source.split(":")
      assert file_name == report.BASELINES_FILE
      expected = _lookup(
          _json(run_dir / report.BASELINES_FILE)["baselines"][baseline], key
      )
    assert float(text) == expected, (source, key)
  return cells


@pytest.mark.slow  # the module's sweep fixture: ~35 s of CPU
def test_sweep_equals_separate_evaluations_and_shares_the_checkpoint(evals):
  assert evals["calls"] == {"load_checkpoint": 1, "build_predict_fn": 1}
  for encoding in ENCODINGS[-1:]:
    swept, alone = evals["sweep"] / encoding, evals[encoding]
    assert (swept / evaluate.PREDICTIONS_FILE).read_text() == (
        alone / evaluate.PREDICTIONS_FILE
    ).read_text()
    swept_metrics = _json(swept / evaluate.METRICS_FILE)
    alone_metrics = _json(alone / evaluate.METRICS_FILE)
    for key in ("overall", "per_category", "per_task", "seqio_task_metrics"):
      assert swept_metrics[key] == alone_metrics[key]
    # A plain `tkx eval` writes its report and baselines too, the same as the sweep's.
    assert _json(alone / report.BASELINES_FILE) == _json(
        swept / report.BASELINES_FILE
    )
    assert (alone / report.REPORT_FILE).is_file()
  for encoding in ENCODINGS:
    swept_metrics = _json(evals["sweep"] / encoding / evaluate.METRICS_FILE)
    assert swept_metrics["settings"]["encoding"] == encoding
    assert swept_metrics["settings"]["num_examples"] == 5 * 2
    for name in (report.BASELINES_FILE, report.REPORT_FILE):
      assert (evals["sweep"] / encoding / name).is_file()
  assert (evals["sweep"] / report.REPORT_FILE).is_file()


@pytest.mark.slow  # the module's sweep fixture: ~35 s of CPU
def test_baselines_are_scored_on_the_evaluated_instances(
    evals, embedded_ni_dir
):
  scored = _json(evals["sweep"] / "def" / report.BASELINES_FILE)
  assert scored["skipped"] == {}
  for kind in baselines_lib.BASELINES:
    # `tkx baseline` on the same split and cap selects the same instances.
    records = list(
        baselines_lib.baseline_records(
            embedded_ni_dir, kind, max_num_instances_per_task=2
        )
    )
    expected = ni_metrics.score_predictions(records)
    assert scored["baselines"][kind]["overall"] == expected["overall"]
    assert scored["baselines"][kind]["per_task"] == expected["per_task"]


def test_a_task_without_positive_examples_has_no_copy_demo(embedded_ni_dir):
  records = list(
      baselines_lib.baseline_records(
          embedded_ni_dir, "copy_input", max_num_instances_per_task=1
      )
  )
  records[1]["Positive Examples"] = []
  scored = report.score_baselines(records, xlingual=False)
  assert list(scored["baselines"]) == ["copy_input"]
  assert scored["skipped"] == {
      "copy_demo": f"task {records[1]['Task']} has no positive example to copy"
  }
  assert (
      scored["baselines"]["copy_input"]["overall"]
      == ni_metrics.score_predictions(records)["overall"]
  )


def test_training_dir_with_generation_metrics_only_as_scalars(tmp_path):
  import tensorflow as tf

  for name, tag, points in (
      ("train", "loss", ((1, 3.0), (2, 2.0))),
      ("eval", "generation/rougeL", ((2, 12.5),)),
  ):
    writer = tf.summary.create_file_writer(str(tmp_path / name))
    with writer.as_default():
      for step, value in points:
        tf.summary.write(tag, tf.constant(value), step=step)
    writer.close()
  eval_runs, training_runs = report.load_dirs([str(tmp_path)])
  assert eval_runs == [] and training_runs[0].scalars["eval"] == {
      "generation/rougeL": [(2, 12.5)]
  }
  page = report.render(eval_runs, training_runs)
  assert 'id="chart-loss-0"' in page and 'id="chart-generation-0"' in page
  assert "generation/rougeL" in page


@pytest.mark.slow  # the module's sweep fixture: ~35 s of CPU
def test_report_numbers_are_those_of_metrics_json(evals):
  single = evals["sweep"] / "def" / report.REPORT_FILE
  cells = _check_cells_match_files(single, [evals["sweep"] / "def"])
  metrics = _json(evals["sweep"] / "def" / evaluate.METRICS_FILE)
  shown = {(s, k) for _, s, k, _ in cells}
  for m in ni_metrics.METRICS:
    assert (evaluate.METRICS_FILE, f"overall/{m}") in shown
    for kind in baselines_lib.BASELINES:
      assert (f"{report.BASELINES_FILE}:{kind}", f"overall/{m}") in shown
  for task in metrics["per_task"]:
    assert (evaluate.METRICS_FILE, f"per_task/{task}/score") in shown
  for category in metrics["per_category"]:
    assert (evaluate.METRICS_FILE, f"per_category/{category}/rougeL") in shown
  text = single.read_text()
  assert "checkpoint_11" in text or ">11<" in text  # the checkpoint step
  assert "54.33" in text and "published" in text.lower()

  # The sweep's comparison: every encoding's numbers, tagged with its run.
  sweep_cells = _check_cells_match_files(
      evals["sweep"] / report.REPORT_FILE,
      [evals["sweep"] / e for e in ENCODINGS],
  )
  assert {run for run, _, _, _ in sweep_cells} == {"0", "1"}


@pytest.mark.slow  # the module's sweep fixture: ~35 s of CPU
def test_tkx_report_compares_eval_dirs_and_a_training_dir(evals, tmp_path):
  import tensorflow as tf

  model_dir = tmp_path / "model"
  writer = tf.summary.create_file_writer(str(model_dir / "train"))
  with writer.as_default():
    for step, loss in ((1, 5.0), (2, 4.0), (3, 3.5)):
      tf.summary.write("loss", tf.constant(loss), step=step)
  writer.close()
  for step in (10, 20):
    step_dir = model_dir / report.GENERATION_EVAL_DIR / f"step_{step}"
    step_dir.mkdir(parents=True)
    shutil.copy(evals["sweep"] / "def" / evaluate.METRICS_FILE, step_dir)

  out = tmp_path / "compare.html"
  assert (
      cli.run(
          [
              "report",
              str(evals["sweep"] / "def"),
              str(evals["pos2"]),
              str(model_dir),
              "--output",
              str(out),
          ]
      )
      == 0
  )
  cells = _check_cells_match_files(
      out, [evals["sweep"] / "def", evals["pos2"]], [model_dir]
  )
  assert {run for run, _, _, _ in cells} == {"0", "1", "training-0"}
  text = out.read_text()
  assert 'id="chart-loss-0"' in text and 'id="chart-generation-0"' in text
  runs, _ = report.load_dirs([str(evals["sweep"])])
  assert [r.label for r in runs] == [f"sweep/{e}" for e in sorted(ENCODINGS)]
  training = report.load_training_run(str(model_dir), "model")
  assert training.scalars["train"]["loss"] == [(1, 5.0), (2, 4.0), (3, 3.5)]
  assert [s for s, _ in training.generation] == [10, 20]

  with pytest.raises(report.ReportInputError, match="no such directory"):
    cli.run(["report", str(tmp_path / "missing")])
  (tmp_path / "empty").mkdir()
  with pytest.raises(
      report.ReportInputError, match="empty: not an eval output"
  ):
    cli.run(["report", str(tmp_path / "empty")])


def test_eval_encodings_flag_errors(tmp_path):
  # Each mistake is reported before the checkpoint is read (so none need be there).
  checkpoint = str(tmp_path / "checkpoint")
  base = ["eval", "--checkpoint", checkpoint, "--output_dir", str(tmp_path)]
  with pytest.raises(ValueError, match="Unknown part 'pos' in encoding"):
    cli.run(base + ["--encodings", "def,pos"])
  with pytest.raises(ValueError, match="names def twice"):
    cli.run(base + ["--encodings", "def,def"])
  with pytest.raises(ValueError, match="cannot be combined with --encoding"):
    cli.run(base + ["--encodings", "def", "--encoding", "def"])
  with pytest.raises(ValueError, match="give --output_dir"):
    cli.run(
        [
            "eval",
            "--checkpoint",
            checkpoint,
            "--encodings",
            "def,pos2",
            f"--gin.evaluate.evaluate.output_dir='{tmp_path / 'x'}'",
        ]
    )
  assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- browser
class _ProxyLog(http.server.BaseHTTPRequestHandler):
  """An HTTP proxy that records the host of every request sent through it and refuses it."""

  hosts = []

  def _refuse(self):
    target = self.path.split("://", 1)[-1].split("/", 1)[0]
    type(self).hosts.append(target.rsplit(":", 1)[0])
    self.send_error(403)

  do_GET = do_POST = do_HEAD = do_CONNECT = _refuse

  def log_message(self, *args):
    del args


# Chromium's own services (component updater, network time, accounts): the browser, not the page.
_BROWSER_HOSTS = re.compile(r"(^|\.)(google\.com|googleapis\.com|gvt1\.com)$")


def _page_requests(chromium_flags, page):
  """Hosts the page asked for while Chromium loaded it; also returns the rendered DOM."""
  _ProxyLog.hosts = []
  dom = subprocess.run(
      chromium_flags + ["--dump-dom", page.as_uri()],
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
  ).stdout
  return {h for h in _ProxyLog.hosts if not _BROWSER_HOSTS.search(h)}, dom


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium_without_requests(evals, tmp_path):
  from PIL import Image

  page = evals["sweep"] / report.REPORT_FILE
  text = page.read_text()
  # Nothing that could load: no URL but the SVG namespace names, no src, no script,
  # stylesheet link or import, no url()/href other than a fragment of the page itself.
  namespaces = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
  assert set(re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", text)) <= namespaces
  for pattern in (
      r"\bsrc=",
      r"<script",
      r"<link",
      r"@import",
      r"url\((?!#)",
      r"""href=["'](?!#)""",
  ):
    assert not re.search(pattern, text), pattern

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyLog)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  flags = [
      CHROMIUM,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--disable-background-networking",
      "--window-size=1200,1400",
      f"--user-data-dir={tmp_path / 'profile'}",
      # Every request to anywhere goes to the recording proxy, which refuses it.
      f"--proxy-server=http://127.0.0.1:{server.server_address[1]}",
      "--proxy-bypass-list=<-loopback>",
  ]
  try:
    # The proxy does see what a page asks for...
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<img src="http://images.example.org/a.png">')
    assert _page_requests(flags, leaky)[0] == {"images.example.org"}
    # ...and the report asks for nothing.
    hosts, dom = _page_requests(flags, page)
    assert hosts == set()
    shot = tmp_path / "shot.png"
    subprocess.run(
        flags + [f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
  finally:
    server.shutdown()

  # The charts are in the rendered DOM, each an SVG with drawn shapes.
  for chart in ("chart-overall", "chart-categories"):
    start = dom.index(f'<figure id="{chart}">')
    figure = dom[start : dom.index("</figure>", start)]
    assert "<svg" in figure and figure.count("<path") > 10, chart
  # ...and the browser paints them: the copy-demo bars' grey and the first run's blue
  # (its legend key; a random model scores 0) fill pixels of a screenshot.
  pixels = list(Image.open(shot).convert("RGB").get_flattened_data())
  assert pixels.count((0x7F, 0x7F, 0x7F)) > 1000  # copy demo
  assert pixels.count((0x1F, 0x77, 0xB4)) > 50  # the first run
