"""Many LoRA adapters on one served model (`tkx serve --adapter`), in-process on the tiny checkpoint.

Two adapters of the session's tiny base (random, non-zero `lora_b`: they change the answers):
ranks 2 and 4 (the smaller padded), different alphas (the second's scale folded into its
`lora_b`) and targets (each row zeros where its adapter adapts nothing). A mixed batch (base and every adapter) must give exactly the tokens of
each adapter's own checkpoint decoded alone by `tkx.infer` (its own LoRA model, its rank and
scale) and of the plain base model; the server's HTTP routes then name adapters in errors,
metrics, /healthz and the playground.
"""

import dataclasses
import threading
import types

import gin
import jax
import numpy as np
import pytest
from starlette import testclient

from tkx import errors, infer
from tkx.checkpoints import directory, orbax_io
from tkx.models import lora
from tkx.serve import adapters as adapters_lib
from tkx.serve import app as app_lib
from tkx.serve import metrics as metrics_lib

BATCH_SIZE = 8
BUCKETS = (16, 32)
GREEDY = infer.DecodeConfig(max_decode_length=5)
BEAMS = infer.DecodeConfig(
    decode_fn="beam_search", num_beams=2, max_decode_length=4
)
ADAPTERS = {  # name -> (LoraConfig, seed)
    "qv": (lora.LoraConfig(rank=2, alpha=4.0), 1),
    "mlp": (
        lora.LoraConfig(
            rank=4, alpha=2.0, targets=("wi", "wo"), stacks=("decoder",)
        ),
        2,
    ),
}
# Token ids of a few prompts (EOS last), each decoded with every adapter and the base.
PROMPTS = [[37, 5, 88, 120, 9, 1], [400, 23, 23, 61, 1], [7, 300, 1], [55, 1]]


def _with_adapters(base_params, config, seed):
  """The base tree plus random adapters on the projections `config` targets."""
  rng = np.random.default_rng(seed)
  out = jax.tree_util.tree_map(np.asarray, base_params)
  for path, kernel in jax.tree_util.tree_leaves_with_path(base_params):
    keys = tuple(k.key for k in path)
    if keys[-1] != "kernel" or not config.is_target(keys[:-1]):
      continue
    node = out
    for key in keys[:-1]:
      node = node[key]
    fan_in, fan_out = kernel.shape
    node["lora_a"] = rng.normal(size=(fan_in, config.rank)).astype(np.float32)
    node["lora_b"] = rng.normal(size=(config.rank, fan_out)).astype(np.float32)
  return out


def _lora_gin(config) -> str:
  return "".join(
      f"lora.LoraConfig.{field} = {value!r}\n"
      for field, value in (
          ("rank", config.rank),
          ("alpha", config.alpha),
          ("targets", tuple(config.targets)),
          ("stacks", tuple(config.stacks)),
      )
  )


@pytest.fixture(scope="module")
def adapter_dirs(tiny_checkpoint, tmp_path_factory):
  """name -> a tkx LoRA checkpoint dir (model.gin with dense_layer 'lora' + LoraConfig, full params)."""
  base_config = directory.read_config(tiny_checkpoint)
  base_params = orbax_io.load_params(tiny_checkpoint)
  lora_config = dataclasses.replace(base_config, dense_layer="lora")
  dirs = {}
  for name, (config, seed) in ADAPTERS.items():
    path = tmp_path_factory.mktemp(f"adapter_{name}")
    orbax_io.save_params(
        str(path), _with_adapters(base_params, config, seed), step=3
    )
    (path / "model.gin").write_text(
        directory.config_to_gin(lora_config) + _lora_gin(config)
    )
    dirs[name] = str(path)
  gin.clear_config()
  return dirs


def _alone(path, inputs, config):
  """What `tkx infer` decodes from a checkpoint: its own model (a LoRA one: its rank and scale)."""
  gin.clear_config()
  loaded = directory.load(path)
  predictor = infer.Predictor(
      loaded.model,
      loaded.params,
      batch_size=BATCH_SIZE,
      decode_config=config,
      input_buckets=BUCKETS,
  )
  out = predictor.predict_ids(inputs, progress=False, log_plan=False)
  gin.clear_config()
  return out


@pytest.fixture(scope="module")
def generator(tiny_checkpoint, adapter_dirs):
  gin.clear_config()
  loaded = directory.load(tiny_checkpoint)
  served = adapters_lib.Adapters(
      [adapters_lib.read(name, path) for name, path in adapter_dirs.items()],
      loaded.params,
  )
  from tkx import partitioning

  gen = app_lib.Generator(
      loaded,
      partitioner=partitioning.Partitioner(),
      batch_size=BATCH_SIZE,
      decode_config=GREEDY,
      input_buckets=BUCKETS,
      max_input_length=max(BUCKETS),
      # Long enough that the requests below, submitted together, share one batch.
      max_wait_s=0.3,
      metrics=metrics_lib.Metrics(),
      adapters=served,
  )
  yield gen
  gen.close()


def _batches(gen):
  return gen.metrics.batch_size.collect()[0].samples


def _batch_count(gen):
  return next(s.value for s in _batches(gen) if s.name.endswith("_count"))


def _decode_together(gen, requests, config):
  """Submits (adapter name, ids) requests at once; their outputs, and how many batches ran."""
  before = _batch_count(gen)
  futures = [
      gen.batcher.submit(ids, config, gen.adapter_row(name))
      for name, ids in requests
  ]
  outputs = [f.result(timeout=600) for f in futures]
  return outputs, _batch_count(gen) - before


@pytest.mark.parametrize(
    "config", [GREEDY, BEAMS], ids=["greedy", "beam_search"]
)
def test_a_mixed_batch_answers_as_each_adapter_alone(
    generator, tiny_checkpoint, adapter_dirs, config
):
  names = [None] + list(ADAPTERS)
  # Every (adapter, prompt) pair, adapters interleaved: two mixed batches (8 + 4 rows).
  requests = [(names[i % 3], PROMPTS[i % 4]) for i in range(12)]
  mixed, batches = _decode_together(generator, requests, config)
  assert batches == 2, "the requests did not share batches"
  expected = {
      name: _alone(
          adapter_dirs[name] if name else tiny_checkpoint, PROMPTS, config
      )
      for name in names
  }
  for (name, ids), output in zip(requests, mixed):
    assert output == expected[name][PROMPTS.index(ids)], (name, ids)
  # The adapters matter: each answers some prompt differently from the base model.
  for name in ADAPTERS:
    assert expected[name] != expected[None], name
  # Alone in the server (a batch of one) gives the same tokens as in the mixed batch.
  for (name, ids), output in list(zip(requests, mixed))[:6]:
    [alone], _ = _decode_together(generator, [(name, ids)], config)
    assert alone == output


def test_stacking_pads_ranks_and_folds_scales(generator, adapter_dirs):
  served = generator.adapters
  assert served.config.rank == 4 and served.config.scale == 2.0  # qv's 4/2
  assert served.config.targets == ("query", "value", "wi", "wo")
  query = ("encoder", "layers_0", "attention", "query")
  a, b = served.stacked[query]
  qv = served.adapters[0].weights[query]
  assert a.shape[:1] == (3,) and not a[0].any() and not b[0].any()
  np.testing.assert_array_equal(a[1, :, :2], qv[0])
  np.testing.assert_array_equal(a[1, :, 2:], 0)
  np.testing.assert_array_equal(
      b[1, :2], qv[1]
  )  # the served scale is qv's: unchanged
  wo = ("decoder", "layers_1", "mlp", "wo")
  mlp_b = served.adapters[1].weights[wo][1]
  np.testing.assert_allclose(served.stacked[wo][1][2], mlp_b * (0.5 / 2.0))
  assert not served.stacked[query][1][
      2
  ].any()  # mlp does not adapt the encoder's query


def test_http_routes_name_adapters(generator):
  client = testclient.TestClient(app_lib.create_app(generator))
  answer = client.post(
      "/v1/generate", json={"inputs": "Input: Japan. Output:", "adapter": "qv"}
  )
  assert answer.status_code == 200
  base = client.post(
      "/v1/generate", json={"inputs": "Input: Japan. Output:", "adapter": None}
  )
  assert base.status_code == 200
  unknown = client.post(
      "/v1/generate", json={"inputs": "Input: Japan. Output:", "adapter": "fr"}
  )
  assert unknown.status_code == 400
  assert unknown.json()["error"] == (
      "adapter: unknown adapter 'fr' (served: qv, mlp)"
  )
  wrong_type = client.post("/v1/generate", json={"inputs": "x", "adapter": 3})
  assert wrong_type.status_code == 400
  assert wrong_type.json()["error"].startswith("adapter: must be a string")
  assert client.get("/healthz").json()["adapters"] == ["qv", "mlp"]
  metrics = client.get("/metrics").text
  for line in (
      'tkx_serve_adapter_requests_total{adapter="qv",status="200"} 1.0',
      'tkx_serve_adapter_requests_total{adapter="base",status="200"} 1.0',
      'tkx_serve_adapter_request_latency_seconds_count{adapter="qv"} 1.0',
      f'tkx_serve_adapter_output_tokens_total{{adapter="qv"}} {answer.json()["output_tokens"]:.1f}',
  ):
    assert line in metrics
  assert 'adapter="fr"' not in metrics  # unknown names do not become series
  page = client.get("/").text
  assert '<option value="mlp">mlp</option>' in page


def test_per_adapter_batching_keeps_adapters_apart():
  """--adapter_batches per_adapter: a batch holds one adapter's requests (the bench's peer)."""
  from tkx.serve import batcher as batcher_lib

  seen, gate = [], threading.Event()

  class Recording:

    def predict_ids(self, inputs, progress, log_plan, batch_params=None):
      del progress, log_plan
      gate.wait()
      seen.append(batch_params(list(range(len(inputs)))))
      return [[0]] * len(inputs)

  for mixed, expected in ((True, [[1, 2, 1, 0]]), (False, [[1, 1], [2], [0]])):
    seen.clear()
    gate.clear()
    batcher = batcher_lib.Batcher(
        lambda config: Recording(),
        batch_size=4,
        max_wait_s=0.5,
        params_for_rows=list,
        mixed_adapters=mixed,
    )
    futures = [batcher.submit([5, 1], GREEDY, row) for row in (1, 2, 1, 0)]
    gate.set()
    for future in futures:
      future.result(timeout=10)
    batcher.close()
    assert seen == expected


def test_bad_adapters_are_one_line_errors_naming_the_flag(
    tiny_checkpoint, adapter_dirs
):
  for text, message in (
      ("qv", "expected NAME=PATH"),
      ("base=/x", "'base' names the base model"),
      ("a b=/x", "adapter name 'a b'"),
  ):
    with pytest.raises(
        errors.ConfigError, match=f"--adapter {text}: .*{message}"
    ):
      adapters_lib.parse_flag(text)
  with pytest.raises(errors.ConfigError, match="dense_layer = 'lora'"):
    adapters_lib.read("plain", tiny_checkpoint)
  with pytest.raises(errors.ConfigError, match="--adapter gone=/nonexistent"):
    adapters_lib.read("gone", "/nonexistent")
  adapter = adapters_lib.read("qv", adapter_dirs["qv"])
  query = ("encoder", "layers_0", "attention", "query")
  a, b = adapter.weights[query]
  adapter.weights[query] = (np.zeros((a.shape[0] + 1, 2), a.dtype), b)
  base = orbax_io.load_params(tiny_checkpoint)
  with pytest.raises(
      errors.ConfigError,
      match=r"--adapter qv=.*: encoder/layers_0/attention/query: adapts a \[33, 32\] kernel "
      r"but the base's is \[32, 32\]",
  ):
    adapters_lib.Adapters([adapter], base)
  base_config = directory.read_config(tiny_checkpoint)
  for changed, message in (
      (dict(scan_layers=True), "scans its layers"),
      (dict(dense_layer="lora"), "serve adapters on a plain base"),
  ):
    model = types.SimpleNamespace(
        module=None, config=dataclasses.replace(base_config, **changed)
    )
    with pytest.raises(errors.ConfigError, match=f"--adapter: .*{message}"):
      adapters_lib.check_base(model)
  twice = adapters_lib.read("qv", adapter_dirs["qv"])
  with pytest.raises(errors.ConfigError, match="'qv' is given more than once"):
    adapters_lib.Adapters([twice, twice], base)


def test_tkx_serve_flags_fail_in_one_line_and_log_the_adapters_once(
    tiny_checkpoint, adapter_dirs, capsys, caplog
):
  from tkx import cli
  from tkx.commands import serve as serve_command

  for adapter, message in (
      ("qv", "--adapter qv: expected NAME=PATH"),
      ("gone=/nonexistent", "--adapter gone=/nonexistent: checkpoint"),
  ):
    argv = ["serve", "--checkpoint", tiny_checkpoint, "--port", "0"]
    assert cli.main(argv + ["--adapter", adapter]) == 2
    err = [
        line for line in capsys.readouterr().err.splitlines() if "error" in line
    ]
    assert len(err) == 1, err
    assert err[0].startswith(f"tkx serve: error: {message}"), err
  loaded = directory.load(tiny_checkpoint)
  flags = [("qv", adapter_dirs["qv"]), ("mlp", adapter_dirs["mlp"])]
  with caplog.at_level("INFO"):
    served = serve_command._load_adapters(flags, loaded)
  lines = [
      r.getMessage() for r in caplog.records if "LoRA adapter" in r.getMessage()
  ]
  assert served.names == ("qv", "mlp") and len(lines) == 1
  assert "qv (rank 2, alpha 4, query+value)" in lines[0]
  assert "mlp (rank 4, alpha 2, wi+wo)" in lines[0]
