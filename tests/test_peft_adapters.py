"""LoRA checkpoints in and out: merged HF/t5x exports, peft adapter export and import, exact logits.

Tiny random T5s built in transformers (nothing downloaded), T5 1.0 (ReLU `wi`, tied
scaled logits) and T5 1.1 (gated `wi_0`/`wi_1`, own LM head), float32. Tolerance:
the logits of two float32 computations of the same function in different orders
(merged kernel vs low-rank update; torch vs XLA): atol 1e-4 on logits of size up to ~10
(measured differences up to ~3e-5).
"""

import json

import gin
import jax
import numpy as np
import pytest

import tiny_models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from tkx import cli, errors, gin_utils  # noqa: E402
from tkx.checkpoints import (  # noqa: E402
    directory,
    hf,
    layout,
    orbax_io,
    peft_format,
    t5x_format,
)
from tkx.models import lora  # noqa: E402

VOCAB = 1024  # the embedded sample vocabulary (what model.gin names) fits
ATOL = 1e-4  # as tests/test_hf_parity.py: two float32 orders of the same sums
ENC = np.array([[5, 9, 23, 7, 1], [17, 4, 1, 0, 0]])
DEC = np.array([[0, 3, 8, 2], [0, 11, 5, 6]])
TARGETS = np.array(
    [[3, 8, 2, 1], [11, 5, 6, 1]]
)  # non-zero: every decoder position is real
T5_VERSIONS = [("relu", True), ("gated-gelu", False)]
IDS = ["t5_1_0", "t5_1_1"]


def _hf_model(ff, tied, seed=0):
  return tiny_models.hf_t5(ff, tied, seed, vocab_size=VOCAB)


def _hf_logits(model):
  with torch.no_grad():
    return (
        model(
            input_ids=torch.tensor(ENC),
            attention_mask=torch.tensor(ENC > 0),
            decoder_input_ids=torch.tensor(DEC),
        )
        .logits.float()
        .numpy()
    )


def _tkx_logits(ckpt):
  """Logits of the model a checkpoint's model.gin builds (its `MODEL`), with its params."""
  directory.read_config(str(ckpt))
  model = gin_utils.model_from_gin()
  params = orbax_io.load_params(layout.find_step_dir(str(ckpt)))
  apply = jax.jit(
      lambda p: model.module.apply(
          {"params": p}, ENC, DEC, TARGETS, enable_dropout=False
      )
  )
  return np.asarray(apply(params))


def _export(*argv):
  assert cli.main(["export-checkpoint", *map(str, argv)]) == 0


def _tkx_lora_checkpoint(path, ff, tied, lora_config, scan_layers):
  """A tkx LoRA checkpoint: a random HF T5's params plus random adapters, model.gin as a LoRA run's."""
  base = _hf_model(ff, tied, seed=3)
  config = hf.hf_config_to_t5config(base.config.to_dict())
  state = {k: v.detach().numpy().copy() for k, v in base.state_dict().items()}
  params = hf.hf_to_params(state, config)
  rng = np.random.default_rng(0)
  adapters = {}
  for _, module_path in hf.projection_modules(config):
    if lora_config.is_target(module_path):
      fan_in, fan_out = hf.expected_shapes(config)[module_path + ("kernel",)]
      adapters[module_path] = (
          rng.normal(size=(fan_in, lora_config.rank)).astype(np.float32) * 0.3,
          rng.normal(size=(lora_config.rank, fan_out)).astype(np.float32) * 0.3,
      )
  config = config.replace(dense_layer="lora", scan_layers=scan_layers)
  params = peft_format.with_adapters(hf.hf_to_params(state, config), adapters)
  gin.parse_config(lora.gin_bindings(lora_config))  # what model.gin records
  directory.write_checkpoint(config, params, str(path), step=7)
  return config, params


@pytest.mark.parametrize("ff,tied", T5_VERSIONS, ids=IDS)
def test_lora_checkpoint_exports_merged_models_and_a_peft_adapter(
    tmp_path, ff, tied
):
  # Decoder only (peft gets a regex) on T5 1.0; both stacks, scanned layers on T5 1.1.
  lora_config = (
      lora.LoraConfig(
          rank=3,
          alpha=6.0,
          targets=("key", "out", "wi", "wo"),
          stacks=("decoder",),
      )
      if tied
      else lora.LoraConfig(
          rank=4, alpha=4.0, targets=("query", "value", "wi", "wo")
      )
  )
  ckpt = tmp_path / "lora"
  config, params = _tkx_lora_checkpoint(
      ckpt, ff, tied, lora_config, scan_layers=not tied
  )
  want = _tkx_logits(ckpt)

  # (a) merged (the default): HF and t5x compute what the LoRA model computes.
  _export(
      "--checkpoint",
      ckpt,
      "--hf",
      tmp_path / "merged",
      "--t5x",
      tmp_path / "t5x",
  )
  merged = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path / "merged")
  ).eval()
  np.testing.assert_allclose(_hf_logits(merged), want, atol=ATOL)
  # The t5x export holds the same merged tensors as the HF one.
  t5x_params = t5x_format.load_params(str(tmp_path / "t5x" / "checkpoint_7"))
  hf_merged = hf.hf_to_params(
      {k: v.detach().numpy() for k, v in merged.state_dict().items()},
      config.replace(scan_layers=False),
  )
  jax.tree.map(np.testing.assert_array_equal, t5x_params, hf_merged)

  # (b) the base without adapters + the peft adapter: peft computes the LoRA model.
  _export(
      "--checkpoint",
      ckpt,
      "--peft",
      tmp_path / "adapter",
      "--hf",
      tmp_path / "base",
      "--lora_weights",
      "base",
  )
  adapter_cfg = json.loads(
      (tmp_path / "adapter" / "adapter_config.json").read_text()
  )
  assert adapter_cfg["base_model_name_or_path"] == str(tmp_path / "base")
  assert (adapter_cfg["r"], adapter_cfg["lora_alpha"]) == (
      lora_config.rank,
      lora_config.alpha,
  )
  base = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path / "base")
  ).eval()
  base_only = _hf_logits(base)
  assert np.abs(base_only - want).max() > 0.1  # the adapters matter
  adapted = peft.PeftModel.from_pretrained(
      base, str(tmp_path / "adapter")
  ).eval()
  np.testing.assert_allclose(_hf_logits(adapted), want, atol=ATOL)
  # peft adapted exactly the modules tkx adapts (and no others).
  adapted_modules = {
      name.removeprefix("base_model.model.")
      for name, m in adapted.named_modules()
      if isinstance(m, peft.tuners.lora.LoraLayer)
  }
  assert adapted_modules == {
      module
      for module, path in hf.projection_modules(config)
      if lora_config.is_target(path)
  }


def _peft_adapter(tmp_path, ff, tied, target_modules):
  """A base HF dir and a peft adapter made by peft's get_peft_model with random non-zero A and B."""
  base = _hf_model(ff, tied, seed=5)
  base.save_pretrained(tmp_path / "base")
  model = peft.get_peft_model(
      base,
      peft.LoraConfig(
          r=4,
          lora_alpha=8,
          lora_dropout=0.1,  # training only: neither side applies it in evaluation
          target_modules=target_modules,
          task_type="SEQ_2_SEQ_LM",
      ),
  ).eval()
  torch.manual_seed(6)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "lora_" in name:
        param.normal_(std=0.3)
  model.save_pretrained(tmp_path / "adapter")
  return model


@pytest.mark.parametrize(
    "ff,tied,targets",
    [
        ("relu", True, ["q", "v", "wi"]),
        ("gated-gelu", False, ["k", "o", "wi_0", "wi_1", "wo"]),
    ],
    ids=IDS,
)
def test_peft_adapter_imports_with_the_same_logits_and_exports_back(
    tmp_path, ff, tied, targets
):
  model = _peft_adapter(tmp_path, ff, tied, targets)
  want = _hf_logits(model)
  ckpt = tmp_path / "ckpt"
  argv = [
      "--peft",
      tmp_path / "adapter",
      "--hf",
      tmp_path / "base",
      "--output",
      ckpt,
  ]
  assert cli.main(["import-checkpoint", *map(str, argv)]) == 0

  # model.gin rebuilds the LoRA model: dense layer "lora", the adapter's LoraConfig.
  gin_text = (ckpt / "model.gin").read_text()
  assert (
      "dense_layer = 'lora'" in gin_text
      and "import tkx.models.lora" in gin_text
  )
  got = _tkx_logits(ckpt)
  assert lora.LoraConfig() == lora.LoraConfig(
      rank=4,
      alpha=8,
      dropout_rate=0.1,
      targets=("query", "value", "wi") if tied else ("key", "out", "wi", "wo"),
  )
  np.testing.assert_allclose(got, want, atol=ATOL)

  # Exported back: the same tensors, bit for bit, which peft loads onto the base export.
  _export("--checkpoint", ckpt, "--peft", tmp_path / "again")
  from safetensors.numpy import load_file

  original = load_file(
      str(tmp_path / "adapter" / peft_format.ADAPTER_WEIGHTS_FILE)
  )
  again = load_file(str(tmp_path / "again" / peft_format.ADAPTER_WEIGHTS_FILE))
  assert sorted(again) == sorted(original)
  for name, value in original.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)
  assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())[
      "target_modules"
  ] == sorted(targets)


def test_refusals_and_a_checkpoint_of_adapters_only_merged_over_its_base(
    tmp_path,
):
  model = _peft_adapter(tmp_path, "relu", True, ["q", "v"])
  adapter = tmp_path / "adapter"
  config_file = adapter / peft_format.ADAPTER_CONFIG_FILE
  good = json.loads(config_file.read_text())

  def import_with(match, base=("--hf", str(tmp_path / "base")), **fields):
    config_file.write_text(json.dumps({**good, **fields}))
    out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}"
    with pytest.raises(errors.UserError, match=match):
      cli.run(
          [
              "import-checkpoint",
              "--peft",
              str(adapter),
              *base,
              "--output",
              str(out),
          ]
      )
    assert not (out / "model.gin").exists()  # nothing written

  import_with("field 'use_rslora'", use_rslora=True)
  import_with("field 'use_dora'", use_dora=True)
  import_with("field 'peft_type' is 'IA3'", peft_type="IA3")
  import_with(
      "names no base_model_name_or_path", base=(), base_model_name_or_path=None
  )
  # Only some layers adapted: not a LoraConfig (tkx adapts every layer of a stack).
  config_file.write_text(json.dumps(good))
  from safetensors.numpy import load_file, save_file

  weights = adapter / peft_format.ADAPTER_WEIGHTS_FILE
  tensors = load_file(str(weights))
  save_file(
      {k: v for k, v in tensors.items() if ".block.1." not in k}, str(weights)
  )
  with pytest.raises(errors.UserError, match="in every layer of a stack"):
    cli.run(
        [
            "import-checkpoint",
            "--peft",
            str(adapter),
            "--hf",
            str(tmp_path / "base"),
            "--output",
            str(tmp_path / "partial"),
        ]
    )
  del model
  save_file(tensors, str(weights))

  # A LoRA checkpoint without its base's kernels cannot be merged: said, not a KeyError.
  config, params, _ = hf.import_hf(str(tmp_path / "base"))
  lora_config, adapters = peft_format.read_peft(str(adapter), config)
  only = tmp_path / "adapters_only"
  gin.parse_config(lora.gin_bindings(lora_config))
  directory.write_checkpoint(
      config.replace(dense_layer="lora"),
      lora.adapter_params(peft_format.with_adapters(params, adapters)),
      str(only),
  )
  with pytest.raises(errors.UserError, match="missing .*kernel.*--base"):
    cli.run(
        [
            "export-checkpoint",
            "--checkpoint",
            str(only),
            "--hf",
            str(tmp_path / "y"),
        ]
    )
  # With its base: the merged model of the whole LoRA checkpoint, bit for bit.
  whole = tmp_path / "whole"
  cli.run(
      [
          "import-checkpoint",
          "--peft",
          str(adapter),
          "--hf",
          str(tmp_path / "base"),
          "--output",
          str(whole),
      ]
  )
  for ckpt, base in ((whole, []), (only, ["--base", str(tmp_path / "base")])):
    cli.run(
        [
            "export-checkpoint",
            "--checkpoint",
            str(ckpt),
            "--hf",
            str(ckpt / "hf"),
            *base,
        ]
    )
  merged = [
      load_file(str(c / "hf" / "model.safetensors")) for c in (whole, only)
  ]
  assert sorted(merged[0]) == sorted(merged[1])
  for name, value in merged[0].items():
    np.testing.assert_array_equal(merged[1][name], value, err_msg=name)

  # --peft needs a LoRA checkpoint; an export needs an output.
  plain = tmp_path / "plain"
  cli.run(
      [
          "import-checkpoint",
          "--hf",
          str(tmp_path / "base"),
          "--output",
          str(plain),
      ]
  )
  with pytest.raises(
      errors.UserError, match="--peft: .* holds no LoRA adapters"
  ):
    cli.run(
        [
            "export-checkpoint",
            "--checkpoint",
            str(plain),
            "--peft",
            str(tmp_path / "x"),
        ]
    )
  with pytest.raises(
      errors.UserError, match="at least one of --hf, --t5x, --peft"
  ):
    cli.run(["export-checkpoint", "--checkpoint", str(plain)])


def test_peft_on_a_t5x_base_or_the_adapters_named_base_gives_the_same_checkpoint(
    tmp_path,
):
  _peft_adapter(tmp_path, "gated-gelu", False, ["q", "wo"])
  adapter = tmp_path / "adapter"
  config_file = adapter / peft_format.ADAPTER_CONFIG_FILE
  # The base named by the adapter (no --hf).
  config_file.write_text(
      json.dumps(
          {
              **json.loads(config_file.read_text()),
              "base_model_name_or_path": str(tmp_path / "base"),
          }
      )
  )
  cli.run(
      [
          "import-checkpoint",
          "--peft",
          str(adapter),
          "--output",
          str(tmp_path / "a"),
      ]
  )
  # The same base as a t5x checkpoint (+ its model gin file).
  config, params, _ = hf.import_hf(str(tmp_path / "base"))
  t5x_format.save_params(str(tmp_path / "t5x"), params, step=3)
  (tmp_path / "base.gin").write_text(directory.config_to_gin(config))
  cli.run(
      [
          "import-checkpoint",
          "--peft",
          str(adapter),
          "--t5x",
          str(tmp_path / "t5x"),
          "--gin_file",
          str(tmp_path / "base.gin"),
          "--output",
          str(tmp_path / "b"),
      ]
  )
  a = orbax_io.load_params(str(tmp_path / "a"))
  b = orbax_io.load_params(str(tmp_path / "b"))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert lora.adapter_params(a)["decoder"]["layers_1"]["mlp"]["wo"][
      "lora_b"
  ].shape == (4, 16)
  gin_a, gin_b = ((tmp_path / d / "model.gin").read_text() for d in "ab")
  assert (
      lora.gin_bindings(
          lora.LoraConfig(
              rank=4, alpha=8, dropout_rate=0.1, targets=("query", "wo")
          )
      )
      in gin_a
  )
  assert (
      gin_a.split("lora.LoraConfig", 1)[1]
      == gin_b.split("lora.LoraConfig", 1)[1]
  )
