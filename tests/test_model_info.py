"""`tkx model-info`: published parameter counts, bytes per device, FLOPs against XLA's count."""

import json

import gin
import jax
import jax.numpy as jnp
import pytest

from tkx import cli, gin_utils
from tkx.models import config as config_lib
from tkx.models import model_info


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def gin_config(family, size):
  return gin_utils.load_config_from_gin(
      [f"gin_configs/models/{family}/{size}.gin"]
  )


# Published sizes (T5 1.1 / t5x checkpoints, T5 paper, mT5 paper), 3 significant digits.
PUBLISHED = {
    ("t5_1_1", "small"): 77.0e6,
    ("t5_1_1", "base"): 248e6,
    ("t5_1_1", "large"): 783e6,
    ("t5_1_1", "xl"): 2.85e9,
    ("t5_1_1", "xxl"): 11.1e9,
    # T5 1.0 "11B" is the published 11.3B; its "3B" has 2.85B parameters.
    ("t5_1_0", "small"): 60.5e6,
    ("t5_1_0", "xl"): 2.85e9,
    ("t5_1_0", "xxl"): 11.3e9,
    ("mt5", "small"): 300e6,
    ("mt5", "xxl"): 12.9e9,
}


@pytest.mark.parametrize("family,size", sorted(PUBLISHED))
def test_parameter_counts_match_published_sizes(family, size):
  counts = model_info.count_params(gin_config(family, size))
  assert float(f"{counts['total']:.3g}") == PUBLISHED[family, size]
  assert counts["total"] == sum(counts[m] for m in model_info.MODULES)
  if family == "t5_1_0":
    assert counts["logits"] == 0  # tied to the embedding
  else:
    assert counts["logits"] == counts["token_embedder"]


def test_t5_1_1_base_exact_breakdown():
  counts = model_info.count_params(gin_config("t5_1_1", "base"))
  e, m, v, layers = 768, 2048, 32128, 12
  attention, mlp = 4 * e * e, 3 * e * m
  assert counts["token_embedder"] == v * e
  assert counts["encoder"] == layers * (attention + mlp + 2 * e) + e + 12 * 32
  assert (
      counts["decoder"] == layers * (2 * attention + mlp + 3 * e) + e + 12 * 32
  )
  assert counts["total"] == 247_577_856


def test_bytes_per_device_follow_the_logical_axis_rules():
  # Dimensions >= 128 so that Adafactor factors its second moments.
  cfg = config_lib.T5Config(
      vocab_size=256,
      emb_dim=128,
      num_heads=4,
      head_dim=32,
      mlp_dim=256,
      num_encoder_layers=1,
      num_decoder_layers=1,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
  )
  total_params = model_info.count_params(cfg)["total"]
  single = model_info.memory_per_device(cfg, optimizer="adamw")
  assert (
      single.param_bytes_total
      == single.param_bytes_per_device
      == 4 * total_params
  )
  # AdamW keeps mu and nu (float32) per parameter plus scalar counts.
  assert (
      8 * total_params <= single.optimizer_bytes_total < 8 * total_params + 64
  )
  # model=2 splits every kernel (vocab/joined_kv/mlp axes) and relpos heads; layer norms are replicated.
  norms = 128 * (2 + 3 + 2)  # encoder: 2 + final; decoder: 3 + final
  relpos = 2 * 4 * 32
  sharded = total_params - norms
  mp = model_info.memory_per_device(cfg, model=2, optimizer="adamw")
  assert mp.param_bytes_per_device == 4 * (sharded // 2 + norms)
  assert relpos < sharded
  # Data parallelism alone replicates parameters; FSDP also splits embed over data.
  dp = model_info.memory_per_device(cfg, data=4)
  assert dp.param_bytes_per_device == dp.param_bytes_total
  fsdp = model_info.memory_per_device(
      cfg, data=4, model=2, shard_params_over_data=True
  )
  assert fsdp.param_bytes_per_device == 4 * (
      (sharded - relpos) // 8 + relpos // 2 + norms // 4
  )
  # Adafactor's factored statistics are far smaller than AdamW's moments.
  ada = model_info.memory_per_device(cfg, optimizer="adafactor")
  assert ada.optimizer_bytes_total < single.optimizer_bytes_total / 2
  with pytest.raises(ValueError, match="optimizer"):
    model_info.memory_per_device(cfg, optimizer="sgd")


def test_train_step_flops_match_xla_cost_analysis():
  cfg = config_lib.T5Config(
      vocab_size=512,
      emb_dim=128,
      num_heads=4,
      head_dim=32,
      mlp_dim=512,
      num_encoder_layers=2,
      num_decoder_layers=2,
      mlp_activations=("gelu", "linear"),
      logits_via_embedding=False,
      dropout_rate=0.0,
  )
  model = model_info.build_model(cfg)
  b, li, lt = 2, 64, 32
  params = model.params_shapes(
      {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
  )
  batch = {
      "encoder_input_tokens": jax.ShapeDtypeStruct((b, li), jnp.int32),
      "decoder_input_tokens": jax.ShapeDtypeStruct((b, lt), jnp.int32),
      "decoder_target_tokens": jax.ShapeDtypeStruct((b, lt), jnp.int32),
  }
  forward = (
      jax.jit(lambda p, x: model._compute_logits(p, x))
      .lower(params, batch)
      .compile()
  )
  cost = forward.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = model_info.train_step_flops(cfg, b, li, lt)
  # XLA also counts elementwise work (norms, softmax, activations) that the formula leaves out.
  assert 0.8 < ours["forward"] / cost["flops"] <= 1.0, (
      ours["forward"],
      cost["flops"],
  )
  assert ours["train_step"] == 3 * ours["forward"]
  assert ours["per_token"] == pytest.approx(
      ours["train_step"] / (b * (li + lt))
  )


def test_cli_prints_counts_memory_and_flops(capsys):
  rc = cli.main(
      [
          "model-info",
          "--gin_file",
          "gin_configs/models/t5_1_1/xxl.gin",
          "--data",
          "8",
          "--model",
          "2",
          "--shard_params_over_data",
          "--optimizer",
          "adamw",
      ]
  )
  out = capsys.readouterr().out
  assert rc == 0
  assert (
      "11,135,332,352" in out
      and "mesh data=8 x model=2 (16 devices)" in out
      and "adamw state" in out
  )
  rc = cli.main(
      [
          "model-info",
          "--gin_file",
          "gin_configs/models/t5_1_1/small.gin",
          "--json",
          "--gin.network.T5Config.num_decoder_layers=4",
      ]
  )
  info = json.loads(capsys.readouterr().out)
  assert info["config"]["num_decoder_layers"] == 4
  assert info["params"]["total"] < 76_961_152
  assert info["memory"]["param_bytes_per_device"] == 4 * info["params"]["total"]


# The formula's train-step bytes per device against XLA's own analysis of the compiled step
# (no remat): docs/memory.md states this margin.
FORMULA_OVER_XLA = (0.6, 1.15)


@pytest.mark.parametrize(
    "data,model,optimizer,microbatches",
    [(8, 1, "adafactor", 1), (4, 2, "adamw", 2)],
)
def test_training_memory_formula_within_margin_of_xla_analysis(
    data, model, optimizer, microbatches
):
  from tkx.models import xla_memory

  cfg = gin_config("t5_1_1", "tiny")
  recipe = xla_memory.Recipe(
      data=data,
      model=model,
      optimizer=optimizer,
      batch_rows=64,
      inputs_length=256,
      targets_length=32,
      num_microbatches=microbatches,
  )
  xla = xla_memory.analyse(cfg, recipe)[
      "train_step"
  ]  # conftest's 8 CPU devices
  formula = model_info.training_memory_per_device(
      cfg,
      data=data,
      model=model,
      optimizer=optimizer,
      batch_rows=64,
      inputs_length=256,
      targets_length=32,
      num_microbatches=microbatches,
  )
  # The state is an argument donated to the output: XLA counts it once.
  assert xla["aliased"] == pytest.approx(xla["outputs"], rel=0.01)
  state = formula.params + formula.optimizer_state
  assert xla["arguments"] == pytest.approx(state, rel=0.05)
  low, high = FORMULA_OVER_XLA
  assert low <= formula.total / xla["peak"] <= high


def test_verdict_names_changes_that_fit():
  cfg = gin_config("t5_1_1", "xl")
  info = model_info.report(
      cfg, data=8, optimizer="adamw", batch_size=64, inputs_length=1024
  )
  v = model_info.verdict(cfg, info, device_memory=70 * 2**30)
  assert not v["fits"] and v["source"] == "formula"
  changes = {c["change"]: c for c in v["changes"]}
  assert "network.T5Config.remat_policy = 'full'" in changes
  assert any("shard_params_over_data" in c for c in changes)
  assert any(c["fits"] for c in v["changes"])
  assert model_info.verdict(cfg, info, device_memory=2**40)["fits"]


def test_cli_reads_the_recipe_and_judges_a_target(capsys):
  from tkx.commands import model_info as command

  assert command.parse_bytes("80GiB") == 80 * 2**30
  assert command.parse_bytes("80 GB") == 80 * 10**9
  with pytest.raises(ValueError, match="--device_memory"):
    command.parse_bytes("eighty")
  recipe_file = "gin_configs/experiments/tk_instruct_11b_def_pos.gin"
  rc = cli.main(
      [
          "model-info",
          "--gin_file",
          recipe_file,
          "--target",
          "gpu-8x80gb",
          "--json",
      ]
  )
  assert rc == 0
  info = json.loads(capsys.readouterr().out)
  recipe = info["recipe"]
  # The 11B recipe: 8-way model axis, FSDP, AdamW, 2 micro-batches, packed rows 'auto': the
  # layout tkx train would choose (here on the embedded sample) with rows a multiple of 1 x 2.
  assert (recipe["data"], recipe["model"]) == (1, 8)
  assert recipe["shard_params_over_data"] and recipe["optimizer"] == "adamw"
  assert recipe["packed"] and recipe["num_microbatches"] == 2
  assert recipe["batch_rows"] % 2 == 0 and recipe["encoder_blocks"] >= 1
  assert recipe["targets_length"] >= 128 and recipe["inputs_length"] == 1024
  assert info["verdict"]["device_memory"] == 80 * 2**30
  # On a v4-32 the mesh is 2 x 8: 2 rows cannot make 2 micro-batches on each of 2 data shards.
  with pytest.raises(ValueError, match="divisible"):
    cli.run(
        ["model-info", "--gin_file", recipe_file, "--target", "tpu-v4-32"]
        + ["--batch_size", "2"]
    )


def test_flops_of_traced_lengths_for_an_11b_model():
  """The train step counts FLOPs of traced lengths: an 11B model's per-token counts exceed int32."""
  cfg = config_lib.T5Config(
      vocab_size=32128,
      emb_dim=4096,
      num_heads=64,
      head_dim=64,
      mlp_dim=10240,
      num_encoder_layers=24,
      num_decoder_layers=24,
      mlp_activations=("gelu", "linear"),
  )
  traced = jax.jit(lambda i, t: model_info.forward_flops(cfg, i, t))
  dense, attention = traced(jnp.float32([2048.0]), jnp.float32([128.0]))
  want_dense, want_attention = model_info.forward_flops(cfg, 2048, 128)
  assert float(dense[0]) == pytest.approx(want_dense, rel=1e-6)
  assert float(attention[0]) == pytest.approx(want_attention, rel=1e-6)
