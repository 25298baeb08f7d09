"""Test-wide settings.

Eight host CPU devices let the partitioning and multi-device tests build real
meshes; XLA reads the flag once, so it must be set before anything imports jax.

One persistent XLA compilation cache serves the whole run, both xdist workers
and every process a test starts: the resume and multi-host tests compile the
same tiny train step in each run they compare, and only the first compiles it.
A cached executable is the one XLA built (the key covers XLA_FLAGS, devices and
versions), so no result changes; eviction's file lock keeps concurrent readers
from seeing a half-written entry.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"tkx-tests-xla-cache-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EMBEDDED_NI_DIR = REPO_ROOT / "tasks"
SHARED_NI_DIR = REPO_ROOT.parent / "shared" / "natural-instructions"


@pytest.fixture(scope="session")
def embedded_ni_dir():
  return EMBEDDED_NI_DIR


@pytest.fixture(scope="session")
def shared_ni_dir():
  """The real NI sample beside the checkout; tests using it skip, saying why, when it is absent."""
  if not (SHARED_NI_DIR / "tasks").is_dir():
    pytest.skip(
        f"shared Natural Instructions sample not found at {SHARED_NI_DIR} "
        "(it lives beside the checkout in CI and on developer machines)"
    )
  return SHARED_NI_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """A tkx checkpoint dir (orbax params + model.gin) of a random tiny T5 1.1 on the embedded vocabulary.

  Saved at step 11 (tests check that number); tests only read it, so one serves the whole session.
  """
  import jax

  from tkx.checkpoints import directory, orbax_io
  from tkx.data import vocab as vocab_lib
  from tkx.models import config as config_lib

  cfg = config_lib.T5Config(
      vocab_size=1024,
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=2,
      num_decoder_layers=2,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )
  model = directory.build_model(cfg, vocab_lib.get_vocabulary())
  shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
  params = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
      jax.random.PRNGKey(1)
  )["params"]
  path = tmp_path_factory.mktemp("ckpt")
  orbax_io.save_params(str(path), params, step=11)
  (path / "model.gin").write_text(directory.config_to_gin(cfg))
  return str(path)


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Each test starts from an empty gin config.

  Model configs are gin-configurable (as t5x's `network.T5Config`), so bindings a previous
  test parsed (say `T5Config.dtype = 'bfloat16'` from a real-size model file) would otherwise
  fill in fields of configs built later in the same process.
  """
  import gin

  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(autouse=True)
def _data_warnings_unsaid():
  """Each test may see the NI data warnings `tkx.data.ni` logs once per process."""
  from tkx.data import ni

  ni._SAID.clear()  # pylint: disable=protected-access


# README commands that need nothing an earlier README command wrote (benchmarks, model-info,
# the cluster check): a second xdist group, so the two workers share README's long list.
_SELF_CONTAINED_README_COMMANDS = (
    "python bench/",
    "tkx model-info",
    "tkx plan-packing",
    "python -m tkx.multihost",
)


def _rough_seconds(item) -> int:
  """What a test costs, roughly, from its marks: enough to schedule the long ones first."""
  if item.get_closest_marker("multiprocess"):
    return 120
  return 45 if item.get_closest_marker("slow") else 1


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  """xdist groups for `--dist loadgroup`, the costliest group first.

  A test file is one group (its fixtures are made once); README's self-contained
  commands form a group of their own (`test_readme_bench`). The README's test
  command turns off xdist's own ordering (by number of tests) so a file of two
  long multi-process tests does not start last and leave one worker idle.
  """
  del config
  groups = {}
  for item in items:
    group = item.path.stem
    callspec = getattr(item, "callspec", None)
    if group == "test_readme" and callspec is not None:
      text = callspec.params.get("readme_text", "")
      if text.startswith(_SELF_CONTAINED_README_COMMANDS):
        group = "test_readme_bench"
    item.add_marker(pytest.mark.xdist_group(group))
    groups.setdefault(group, []).append(item)
  by_cost = sorted(
      groups.values(), key=lambda group: -sum(map(_rough_seconds, group))
  )
  items[:] = [item for group in by_cost for item in group]
