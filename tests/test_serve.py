"""`tkx serve` end to end: one real server (a subprocess on a free loopback port, tiny random checkpoint).

The server is started once for the module; the last test sends it SIGTERM. Requests are bounded
in number and go to 127.0.0.1 only. `tkx infer` runs in-process with the same devices
(conftest's host devices are inherited by the server) and the same flags, so both compile the
same programs.
"""

import concurrent.futures
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tkx import cli

# Starting the server (JAX, TensorFlow, the checkpoint) and its compilations take over 30 s together.
pytestmark = pytest.mark.slow

MAX_DECODE_LENGTH = 6
MAX_INPUT_LENGTH = 256
MAX_REQUEST_BYTES = 8192
SERVER_FLAGS = [
    "--max_decode_length",
    str(MAX_DECODE_LENGTH),
    "--max_input_length",
    str(MAX_INPUT_LENGTH),
    "--max_request_bytes",
    str(MAX_REQUEST_BYTES),
    # Long enough that concurrent requests meet in one batch even on a busy machine.
    "--max_wait_ms",
    "300",
]
PROMPTS = [
    "Definition: Return the currency of the given country. Now complete the following example -"
    " Input: India. Output:",
    "Input: Japan. Output:",
    "Translate to French: good morning",
    "Is this sentence positive or negative? I loved the film.",
    "word " * 400,  # over the 256-token budget: cut, first tokens kept
]
PLAYGROUND_REQUEST = (
    {  # what the playground page sends with its defaults and input "Germany"
        "definition": "Given a country, return its currency.",
        "positive_examples": [
            {"input": "India", "output": "Rupee"},
            {"input": "Japan", "output": "Yen"},
        ],
        "negative_examples": [],
        "input": "Germany",
        "encoding": "def_pos2",
    }
)


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


class _Server:

  def __init__(self, checkpoint, log_path):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.log_path = log_path
    self._log = open(log_path, "w")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "tkx.cli", "serve", "--checkpoint", checkpoint]
        + ["--port", str(self.port)]
        + SERVER_FLAGS,
        stdout=self._log,
        stderr=subprocess.STDOUT,
    )
    self.client = httpx.Client(base_url=self.url, timeout=120)

  def log(self):
    with open(self.log_path) as f:
      return f.read()

  def wait_ready(self, timeout_s=240):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
      if self.proc.poll() is not None:
        raise AssertionError(f"tkx serve exited early:\n{self.log()}")
      try:
        if self.client.get("/healthz").status_code == 200:
          return
      except httpx.TransportError:
        pass
      time.sleep(0.5)
    raise AssertionError(f"tkx serve not ready in {timeout_s}s:\n{self.log()}")

  def generate(self, body):
    return self.client.post("/v1/generate", json=body)

  def close(self):
    self.client.close()
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self._log.close()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
  srv = _Server(
      tiny_checkpoint, tmp_path_factory.mktemp("serve") / "server.log"
  )
  try:
    srv.wait_ready()
    yield srv
  finally:
    srv.close()


def _infer(checkpoint, tmp_path, prompts, *flags):
  """`tkx infer --input_file` predictions for `prompts` with the server's decoding flags + `flags`."""
  inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  inp.write_text(
      "".join(
          json.dumps({"id": i, "inputs": p}) + "\n"
          for i, p in enumerate(prompts)
      )
  )
  argv = ["infer", "--checkpoint", checkpoint, "--input_file", str(inp)]
  argv += ["--output_file", str(out), "--no_progress"]
  argv += SERVER_FLAGS[:4] + list(flags)
  assert cli.main(argv) == 0
  return [
      json.loads(line)["prediction"] for line in out.read_text().splitlines()
  ]


def _post_all(server, bodies):
  """Posts the bodies at once (one thread each, one shared connection pool); responses in order."""
  with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
    return list(pool.map(server.generate, bodies))


def _batch_sizes(server):
  """(number of batches, number of batches of more than one request) from /metrics."""
  text = server.client.get("/metrics").text
  count = float(re.search(r"^tkx_serve_batch_size_count (\S+)$", text, re.M)[1])
  ones = float(
      re.search(
          r'^tkx_serve_batch_size_bucket\{le="1\.0"\} (\S+)$', text, re.M
      )[1]
  )
  return count, count - ones


def test_concurrent_answers_equal_tkx_infer_and_share_batches(
    server, tiny_checkpoint, tmp_path
):
  expected = _infer(tiny_checkpoint, tmp_path, PROMPTS)
  batches_before, multi_before = _batch_sizes(server)
  responses = _post_all(server, [{"inputs": p} for p in PROMPTS])
  assert [r.status_code for r in responses] == [200] * len(PROMPTS)
  answers = [r.json() for r in responses]
  assert [a["prediction"] for a in answers] == expected
  assert all(0 <= a["output_tokens"] <= MAX_DECODE_LENGTH for a in answers)
  # The over-long prompt was cut to the budget as `tkx infer` cuts it, and the answer says so.
  assert (
      answers[-1]["truncated"]
      and answers[-1]["input_tokens"] == MAX_INPUT_LENGTH
  )
  assert not any(a["truncated"] for a in answers[:-1])
  batches, multi = _batch_sizes(server)
  assert batches > batches_before
  assert multi > multi_before, "concurrent requests were never decoded together"
  assert batches - batches_before < len(PROMPTS)
  # Alone, a short prompt is padded to a smaller bucket than in `tkx infer`'s batch: same answer.
  alone = server.generate({"inputs": PROMPTS[1]}).json()
  assert alone["prediction"] == expected[1]
  assert alone["input_tokens"] == answers[1]["input_tokens"] < 128


def test_per_request_settings_equal_tkx_infer(
    server, tiny_checkpoint, tmp_path
):
  beams = _infer(
      tiny_checkpoint,
      tmp_path,
      PROMPTS[:2],
      "--num_beams",
      "2",
      "--max_decode_length",
      "4",
  )
  responses = _post_all(
      server,
      [
          {"inputs": p, "num_beams": 2, "max_decode_length": 4}
          for p in PROMPTS[:2]
      ],
  )
  assert [r.json()["prediction"] for r in responses] == beams
  # A sampled answer is that of `tkx infer --seed S` on a one-line file, and is reproducible.
  sampled = _infer(
      tiny_checkpoint,
      tmp_path,
      PROMPTS[1:2],
      "--temperature",
      "0.9",
      "--seed",
      "5",
  )
  body = {"inputs": PROMPTS[1], "temperature": 0.9, "seed": 5}
  assert [
      server.generate(body).json()["prediction"] for _ in range(2)
  ] == sampled * 2


def test_structured_request_uses_the_tk_instruct_encoding(server):
  from tkx.commands import generate
  from tkx.data import vocab

  task = {
      "Task": "request",
      "Definition": [PLAYGROUND_REQUEST["definition"]],
      "Positive Examples": PLAYGROUND_REQUEST["positive_examples"],
      "Negative Examples": [],
  }
  prompt = generate.build_prompt(
      task, "Germany", "def_pos2", vocab.get_vocabulary(), MAX_INPUT_LENGTH
  )
  assert "Positive Example 2 -\nInput: Japan." in prompt
  structured = server.generate(PLAYGROUND_REQUEST)
  ready = server.generate({"inputs": prompt})
  assert structured.status_code == ready.status_code == 200
  assert structured.json() == ready.json()


BAD_REQUESTS = [
    # (what, raw body or JSON value, status, field named in the error)
    ("malformed JSON", b'{"inputs": "x"', 400, "body"),
    ("not an object", b'["x"]', 400, "body"),
    ("not UTF-8", b'{"inputs": "\xff"}', 400, "body"),
    ("missing inputs", {}, 400, "inputs"),
    ("empty inputs", {"inputs": "  "}, 400, "inputs"),
    ("non-string inputs", {"inputs": 7}, 400, "inputs"),
    ("null inputs", {"inputs": None}, 400, "inputs"),
    ("unknown field", {"inputs": "x", "prompt": "y"}, 400, "prompt"),
    (
        "unknown encoding",
        {"input": "x", "definition": "d", "encoding": "def_pos2x"},
        400,
        "encoding",
    ),
    ("missing definition", {"input": "x"}, 400, "definition"),
    (
        "bad example",
        {"input": "x", "encoding": "pos1", "positive_examples": [{"input": 1}]},
        400,
        "positive_examples[0].input",
    ),
    ("both forms", {"inputs": "x", "input": "y"}, 400, "inputs"),
    (
        "too long output",
        {"inputs": "x", "max_decode_length": 10**6},
        400,
        "max_decode_length",
    ),
    ("bool beams", {"inputs": "x", "num_beams": True}, 400, "num_beams"),
    (
        "beams and sampling",
        {"inputs": "x", "num_beams": 2, "temperature": 1.0},
        400,
        "num_beams",
    ),
    (
        "negative temperature",
        {"inputs": "x", "temperature": -1},
        400,
        "temperature",
    ),
    (
        "body over --max_request_bytes",
        {"inputs": "x" * MAX_REQUEST_BYTES},
        413,
        "body",
    ),
]


@pytest.mark.parametrize(
    "what,body,status,field", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_gets_4xx_naming_the_field_and_server_keeps_answering(
    server, what, body, status, field
):
  content = body if isinstance(body, bytes) else json.dumps(body).encode()
  response = server.client.post(
      "/v1/generate",
      content=content,
      headers={"content-type": "application/json"},
  )
  assert response.status_code == status, (what, response.text)
  error = response.json()["error"]
  assert error.startswith(field + ":"), (what, error)
  assert server.generate({"inputs": "Input: Peru. Output:"}).status_code == 200


def test_body_over_limit_without_content_length_is_refused(server):
  def chunks():  # chunked transfer: the size is only known while reading
    for _ in range(4):
      yield b" " * (MAX_REQUEST_BYTES // 2)

  response = server.client.post("/v1/generate", content=chunks())
  assert response.status_code == 413
  assert response.json()["error"].startswith("body:")


def test_other_routes(server):
  health = server.client.get("/healthz")
  assert health.status_code == 200 and health.json()["status"] == "ok"
  assert health.json()["max_input_length"] == MAX_INPUT_LENGTH
  assert server.client.get("/v1/generate").status_code == 405
  missing = server.client.get("/nope")
  assert missing.status_code == 404 and "error" in missing.json()
  metrics = server.client.get("/metrics").text
  for name in (
      'tkx_serve_requests_total{status="200"}',
      'tkx_serve_requests_total{status="400"}',
      "tkx_serve_queue_seconds_count",
      "tkx_serve_request_latency_seconds_count",
      "tkx_serve_decode_seconds_count",
  ):
    assert name in metrics
  page = server.client.get("/")
  assert page.status_code == 200 and "text/html" in page.headers["content-type"]
  # Self-contained: nothing loaded from elsewhere.
  assert not re.search(r'(src|href)="(https?:)?//', page.text)


# ----------------------------------------------------------------------------- playground in Chromium
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class _DevTools:
  """A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe` (fds 3 and 4)."""

  def __init__(self, profile_dir):
    to_browser_r, self._write = os.pipe()
    self._read, from_browser_w = os.pipe()
    # The browser reads commands on fd 3 and writes replies on fd 4; the shell moves the pipe
    # ends there (no preexec_fn: forking a multithreaded JAX process to run Python is unsafe).
    self.proc = subprocess.Popen(
        [
            "bash",  # dash's redirections take one-digit fds only
            "-c",
            f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}',
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile_dir}",
            "about:blank",
        ],
        pass_fds=(to_browser_r, from_browser_w),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    self._buffer, self._next_id = b"", 0

  def call(self, method, params=None, session=None, timeout_s=90):
    self._next_id += 1
    message = {"id": self._next_id, "method": method, "params": params or {}}
    if session:
      message["sessionId"] = session
    os.write(self._write, json.dumps(message).encode() + b"\0")
    deadline = time.time() + timeout_s
    while True:
      while b"\0" not in self._buffer:
        ready, _, _ = select.select(
            [self._read], [], [], max(0, deadline - time.time())
        )
        if not ready:
          raise TimeoutError(f"no reply to {method} in {timeout_s}s")
        chunk = os.read(self._read, 1 << 16)
        if not chunk:
          raise EOFError("chromium closed the DevTools pipe")
        self._buffer += chunk
      raw, self._buffer = self._buffer.split(b"\0", 1)
      reply = json.loads(raw)
      if reply.get("id") == self._next_id:  # skip events
        if "error" in reply:
          raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

  def close(self):
    try:
      self.call("Browser.close", timeout_s=10)
    except (OSError, EOFError, TimeoutError, RuntimeError):
      pass
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    os.close(self._write)
    os.close(self._read)


FILL_AND_SUBMIT = """(async () => {
  const until = async (check, ms) => {
    const end = Date.now() + ms;
    while (Date.now() < end) { const v = check(); if (v) return v; await new Promise(r => setTimeout(r, 50)); }
    return null;
  };
  const $ = (id) => document.getElementById(id);
  await until(() => document.readyState === "complete" && $("submit"), 20000);
  $("input").value = "Germany";
  $("submit").click();
  await until(() => /output tokens/.test($("details").textContent) || $("error").textContent, 60000);
  return {answer: $("answer").textContent, details: $("details").textContent, error: $("error").textContent};
})()"""


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="chromium not installed (Debian package `chromium`; .ci/run installs it)",
)
def test_playground_page_in_headless_chromium_submits_and_shows_the_answer(
    server, tmp_path
):
  browser = _DevTools(tmp_path / "profile")
  try:
    target = browser.call("Target.createTarget", {"url": server.url + "/"})
    session = browser.call(
        "Target.attachToTarget",
        {"targetId": target["targetId"], "flatten": True},
    )["sessionId"]
    page = server.url + "/"
    deadline = time.time() + 60
    while (
        time.time() < deadline
    ):  # until the navigation to the page has finished
      try:
        state = browser.call(
            "Runtime.evaluate",
            {"expression": "location.href + ' ' + document.readyState"},
            session=session,
        )["result"].get("value")
      except RuntimeError:  # the context is replaced while navigating
        state = None
      if state == page + " complete":
        break
      time.sleep(0.1)
    result = browser.call(
        "Runtime.evaluate",
        {
            "expression": FILL_AND_SUBMIT,
            "awaitPromise": True,
            "returnByValue": True,
        },
        session=session,
    )
  finally:
    browser.close()
  shown = result["result"]["value"]
  assert shown["error"] == ""
  expected = server.generate(PLAYGROUND_REQUEST).json()
  assert shown["answer"] == expected["prediction"]
  assert shown["details"].startswith(
      f"{expected['input_tokens']} prompt tokens"
  )


# ----------------------------------------------------------------------------- last: shutdown
def test_sigterm_finishes_requests_in_flight_then_exits(server):
  """Runs last in the module: it stops the shared server."""
  # A setting not decoded before: its compilation keeps the requests in flight for a while.
  bodies = [{"inputs": p, "max_decode_length": 5} for p in PROMPTS[:3]]
  results = {}
  sender = threading.Thread(
      target=lambda: results.update(r=_post_all(server, bodies))
  )
  sender.start()
  # Signal once the server has received all of them (a connection whose request is not yet
  # read is idle to uvicorn, and closed at shutdown).
  deadline = time.time() + 60
  while not re.search(
      rf"^tkx_serve_requests_in_flight {len(bodies)}\.0$",
      server.client.get("/metrics").text,
      re.M,
  ):
    assert time.time() < deadline, "the requests never were in flight together"
    time.sleep(0.02)
  server.proc.send_signal(signal.SIGTERM)
  sender.join(120)
  assert [r.status_code for r in results["r"]] == [200] * len(bodies)
  # Uvicorn re-raises the signal once its graceful shutdown is done (exit by SIGTERM, as is usual).
  assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
  # tkx's shutdown (uvicorn's own lines show only at --log_level debug).
  assert "shut down" in server.log().rsplit("stopping the decoder", 1)[-1]
  with pytest.raises(httpx.TransportError):
    httpx.get(server.url + "/healthz", timeout=5)


def test_batch_shape_flags_are_gin_bindings_with_infers_defaults():
  import argparse

  import gin

  from tkx import cli
  from tkx.commands import serve as serve_command

  parser = argparse.ArgumentParser()
  serve_command.add_arguments(parser)
  args = parser.parse_args(
      ["--checkpoint", "x", "--batch_size", "3", "--input_buckets", "16,32"]
  )
  bindings = cli.flag_bindings(args, serve_command.GIN_FLAGS)
  assert "serve.batch_shape.batch_size = 3" in bindings
  gin.parse_config(bindings)
  assert serve_command.batch_shape() == dict(
      batch_size=3, max_input_length=None, input_buckets=(16, 32)
  )
