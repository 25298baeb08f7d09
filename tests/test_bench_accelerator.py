"""bench/accelerator.py --quick runs where seqio, TensorFlow and gin are not installed.

The GPU machine it is written for has jax, flax, optax, orbax, torch and
transformers only. Here the interpreter runs with -S (no site-packages) and
PYTHONPATH pointing at a view of site-packages without gin, seqio and
TensorFlow, so those are absent exactly as there (not importable, no metadata).
"""

import json
import os
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ABSENT = ("gin", "seqio", "tensorflow", "tf_keras")


def _site_packages_without_absent(tmp_path):
  view = tmp_path / "site"
  view.mkdir()
  site = sysconfig.get_paths()["purelib"]
  for name in os.listdir(site):
    key = name.lower().replace("-", "_")
    if key.startswith(_ABSENT) or name.endswith(".pth"):
      continue
    os.symlink(os.path.join(site, name), view / name)
  return view


@pytest.mark.slow
def test_quick_run_without_seqio_tensorflow_gin(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  view = _site_packages_without_absent(tmp_path)
  env = dict(os.environ, PYTHONPATH=str(view), JAX_PLATFORMS="cpu")
  probe = subprocess.run(
      [sys.executable, "-S", "-c", "import gin"], env=env, capture_output=True
  )
  assert probe.returncode != 0  # the set-up really hides gin
  out = tmp_path / "quick.json"
  proc = subprocess.run(
      [
          sys.executable,
          "-S",
          os.path.join(REPO, "bench", "accelerator.py"),
          "--quick",
          "--output",
          str(out),
      ],
      env=env,
      cwd=str(tmp_path),
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  results = json.loads(out.read_text())["results"]
  failed = [(r["spec"], r.get("error")) for r in results if not r["ok"]]
  assert not failed, failed
  kinds = {r["spec"]["kind"] for r in results}
  assert kinds == {"tkx_train", "hf_train", "decode"}
  for r in results:
    if r["spec"]["kind"] == "decode":
      assert r["tkx_examples_per_s"] > 0 and r["hf_examples_per_s"] > 0
      # Same weights, same greedy rule: the outputs agree token for token.
      assert r["identical_outputs"] == r["examples"]
    else:
      assert r["step_s"] > 0 and r["tokens_per_s"] > 0
      assert r["loss"] == pytest.approx(r["loss"]) and r["loss"] > 0
  tkx = [r for r in results if r["spec"]["kind"] == "tkx_train"]
  assert [(r["spec"]["scan_layers"], r["spec"]["attention"]) for r in tkx] == [
      (True, "cudnn")
  ]
  assert all(r["flops_per_step"] > 0 for r in tkx)
  assert "tiny: tkx" in proc.stdout  # the ratio line against HF
