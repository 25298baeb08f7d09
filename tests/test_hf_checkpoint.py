"""Hugging Face checkpoint import / export: file formats, the CLI commands, round trips, errors."""

import json
import os
import shutil

import numpy as np
import pytest

import tiny_models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tkx import cli, gin_utils  # noqa: E402
from tkx.checkpoints import directory, hf, orbax_io  # noqa: E402

SPM = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "tasks",
    "spm",
    "tkx_sample.model",
)
VOCAB = (
    1024  # the embedded sample vocabulary's 1,000 pieces fit without sentinels
)


def _hf_model(ff, tied, seed=0):
  return tiny_models.hf_t5(ff, tied, seed, vocab_size=VOCAB)


def _state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _logits(model, enc, dec):
  with torch.no_grad():
    return model(
        input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec)
    ).logits.numpy()


ENC = np.array([[5, 9, 23, 7, 1], [17, 4, 1, 0, 0]])
DEC = np.array([[0, 3, 8, 2], [0, 11, 5, 6]])


@pytest.mark.parametrize(
    "ff,tied", [("relu", True), ("gated-gelu", False)], ids=["t5_1_0", "t5_1_1"]
)
def test_cli_import_export_round_trip(tmp_path, ff, tied):
  model = _hf_model(ff, tied)
  hf_dir = tmp_path / "hf"
  model.save_pretrained(hf_dir)
  shutil.copyfile(SPM, hf_dir / "spiece.model")
  ckpt = tmp_path / "ckpt"
  assert (
      cli.main(
          ["import-checkpoint", "--hf", str(hf_dir), "--output", str(ckpt)]
      )
      == 0
  )
  assert (ckpt / "checkpoint_0").is_dir() and (ckpt / "spm.model").is_file()
  assert orbax_io.is_tkx_checkpoint(str(ckpt))

  # model.gin describes the HF config; the vocabulary it names is the copied spm.model.
  config = gin_utils.load_config_from_gin([str(ckpt / "model.gin")])
  assert config == hf.hf_config_to_t5config(model.config.to_dict())
  assert config.logits_via_embedding == tied
  gin_text = (ckpt / "model.gin").read_text()
  assert f"vocab.get_vocabulary.path = {str(ckpt / 'spm.model')!r}" in gin_text
  assert "vocab.get_vocabulary.extra_ids = 0" in gin_text

  # Params are the HF tensors, transposed where HF is [out, in].
  params = orbax_io.load_params(str(ckpt))
  state = _state(model)
  np.testing.assert_array_equal(
      params["token_embedder"]["embedding"], state["shared.weight"]
  )
  np.testing.assert_array_equal(
      params["encoder"]["layers_1"]["attention"]["query"]["kernel"],
      state["encoder.block.1.layer.0.SelfAttention.q.weight"].T,
  )
  np.testing.assert_array_equal(
      params["decoder"]["relpos_bias"]["rel_embedding"],
      state[
          "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
      ].T,
  )
  mlp = params["decoder"]["layers_0"]["mlp"]
  if tied:
    assert set(mlp) == {"wi", "wo"} and "logits_dense" not in params["decoder"]
  else:
    assert set(mlp) == {"wi_0", "wi_1", "wo"}
    np.testing.assert_array_equal(
        params["decoder"]["logits_dense"]["kernel"], state["lm_head.weight"].T
    )

  out = tmp_path / "exported"
  assert (
      cli.main(
          ["export-checkpoint", "--checkpoint", str(ckpt), "--hf", str(out)]
      )
      == 0
  )
  assert (out / "spiece.model").read_bytes() == (
      hf_dir / "spiece.model"
  ).read_bytes()
  from safetensors.numpy import load_file

  exported = load_file(str(out / "model.safetensors"))
  want = {
      k: v
      for k, v in state.items()
      if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
  }
  if tied:
    want.pop("lm_head.weight", None)
  assert sorted(exported) == sorted(want)
  for name, value in want.items():
    np.testing.assert_array_equal(
        exported[name], value, err_msg=name
    )  # bit-exact round trip
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      str(out)
  ).eval()
  np.testing.assert_array_equal(
      _logits(reloaded, ENC, DEC), _logits(model, ENC, DEC)
  )


def test_export_carries_a_tokenizer_that_tokenizes_as_the_vocabulary(
    tiny_checkpoint, tmp_path, caplog
):
  """A checkpoint on the embedded SentencePiece vocabulary exports with a tokenizer AutoTokenizer loads."""
  from tkx.data import vocab as vocab_lib

  out = tmp_path / "hf"
  assert (
      cli.main(
          [
              "export-checkpoint",
              "--checkpoint",
              tiny_checkpoint,
              "--hf",
              str(out),
          ]
      )
      == 0
  )
  assert (out / "spiece.model").read_bytes() == open(
      vocab_lib.EMBEDDED_SPM_PATH, "rb"
  ).read()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  text = "Definition: Answer with the capital city. Input: Finland"
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  assert ids == list(vocab_lib.get_vocabulary().encode(text))
  caplog.clear()
  with caplog.at_level("WARNING"):
    transformers.T5ForConditionalGeneration.from_pretrained(str(out))
  # transformers 5 forces tie_word_embeddings=True on every T5 config and says so for
  # any T5 1.1 / mT5 checkpoint (Google's own included); nothing else may warn.
  others = [
      r.getMessage()
      for r in caplog.records
      if r.levelname == "WARNING"
      and "tie_word_embeddings" not in r.getMessage()
  ]
  assert not others, others


def test_bin_sharded_and_safetensors_give_the_same_params(tmp_path):
  model = _hf_model("gated-gelu", False, seed=3)
  state = _state(model)
  single = tmp_path / "single"
  model.save_pretrained(single)
  sharded = tmp_path / "sharded"
  model.save_pretrained(sharded, max_shard_size="20KB")
  assert (sharded / "model.safetensors.index.json").is_file()
  binary = tmp_path / "bin"
  binary.mkdir()
  shutil.copyfile(single / "config.json", binary / "config.json")
  torch.save(model.state_dict(), binary / "pytorch_model.bin")
  sharded_bin = tmp_path / "sharded_bin"
  sharded_bin.mkdir()
  shutil.copyfile(single / "config.json", sharded_bin / "config.json")
  names = sorted(state)
  halves = {
      "pytorch_model-00001-of-00002.bin": names[::2],
      "pytorch_model-00002-of-00002.bin": names[1::2],
  }
  for shard, keys in halves.items():
    torch.save({k: model.state_dict()[k] for k in keys}, sharded_bin / shard)
  (sharded_bin / "pytorch_model.bin.index.json").write_text(
      json.dumps(
          {
              "metadata": {},
              "weight_map": {
                  k: shard for shard, keys in halves.items() for k in keys
              },
          }
      )
  )

  reference_config, reference, spm = hf.import_hf(str(single))
  assert spm is None
  for path in (sharded, binary, sharded_bin):
    config, params, _ = hf.import_hf(str(path))
    assert config == reference_config
    flat_a, flat_b = _flatten(reference), _flatten(params)
    assert sorted(flat_a) == sorted(flat_b)
    for k in flat_a:
      np.testing.assert_array_equal(
          flat_a[k], flat_b[k], err_msg=f"{path.name}: {k}"
      )


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


def test_bfloat16_import_and_param_dtype(tmp_path):
  import jax.numpy as jnp

  model = _hf_model("relu", True)
  model.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
  config, params, _ = hf.import_hf(str(tmp_path / "hf"), dtype=jnp.bfloat16)
  assert config.param_dtype == "bfloat16"
  emb = params["token_embedder"]["embedding"]
  assert emb.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      emb.astype(np.float32), model.shared.weight.float().detach().numpy()
  )


def test_hf_5x_tied_unscaled_model_imports_as_untied(tmp_path):
  """transformers 5 builds a T5 1.1 from config with lm_head tied to `shared` and saves only `shared`."""
  config_hf = transformers.T5Config(
      vocab_size=VOCAB,
      d_model=16,
      d_kv=4,
      d_ff=24,
      num_layers=1,
      num_heads=2,
      feed_forward_proj="gated-gelu",
      tie_word_embeddings=False,
  )
  model = transformers.T5ForConditionalGeneration(config_hf).eval()
  model.save_pretrained(tmp_path)
  saved = json.loads((tmp_path / "config.json").read_text())
  config, params, _ = hf.import_hf(str(tmp_path))
  assert not config.logits_via_embedding, saved
  np.testing.assert_array_equal(
      params["decoder"]["logits_dense"]["kernel"],
      params["token_embedder"]["embedding"].T,
  )


def test_errors_name_file_and_field(tmp_path, monkeypatch):
  model = _hf_model("relu", True)
  good = tmp_path / "good"
  model.save_pretrained(good)

  bad_field = tmp_path / "bad_field"
  shutil.copytree(good, bad_field)
  cfg = json.loads((bad_field / "config.json").read_text())
  del cfg["d_kv"]
  (bad_field / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(hf.CheckpointFormatError, match=r"config\.json.*'d_kv'"):
    hf.import_hf(str(bad_field))

  bad_ff = tmp_path / "bad_ff"
  shutil.copytree(good, bad_ff)
  cfg = json.loads((bad_ff / "config.json").read_text())
  cfg["feed_forward_proj"] = "gated-tanh"
  (bad_ff / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(hf.CheckpointFormatError, match="feed_forward_proj"):
    hf.import_hf(str(bad_ff))

  state = _state(model)
  missing = dict(state)
  del missing["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
  config = hf.hf_config_to_t5config(model.config.to_dict())
  with pytest.raises(
      hf.CheckpointFormatError,
      match=r"decoder\.block\.1\.layer\.2\.DenseReluDense\.wo\.weight",
  ):
    hf.hf_to_params(missing, config, source="somewhere")
  untied_head = dict(state, **{"lm_head.weight": state["shared.weight"] + 1})
  with pytest.raises(hf.CheckpointFormatError, match="lm_head.weight"):
    hf.hf_to_params(untied_head, config)
  # The same check when the dir is read by slice (an INITIAL_CHECKPOINT_PATH).
  from safetensors.numpy import save_file

  untied_dir = tmp_path / "untied_head"
  shutil.copytree(good, untied_dir)
  for stale in untied_dir.glob("*.safetensors*"):
    stale.unlink()
  save_file(
      {k: np.ascontiguousarray(v) for k, v in untied_head.items()},
      str(untied_dir / "model.safetensors"),
  )
  with pytest.raises(hf.CheckpointFormatError, match="lm_head.weight"):
    hf.open_params(str(untied_dir))
  extra = dict(
      state,
      **{"encoder.block.9.layer.0.layer_norm.weight": np.ones(16, np.float32)},
  )
  with pytest.raises(hf.CheckpointFormatError, match="unexpected tensors"):
    hf.hf_to_params(extra, config)
  wrong_shape = dict(
      state, **{"encoder.final_layer_norm.weight": np.ones(15, np.float32)}
  )
  with pytest.raises(
      hf.CheckpointFormatError, match="encoder/encoder_norm/scale"
  ):
    hf.hf_to_params(wrong_shape, config)

  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text((good / "config.json").read_text())
  with pytest.raises(hf.CheckpointFormatError, match="no weights found"):
    hf.import_hf(str(empty))

  # A Hub name that cannot be downloaded (no network in tests: the download is stubbed).
  import huggingface_hub

  def offline(*args, **kwargs):
    raise OSError("no network")

  monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
  with pytest.raises(FileNotFoundError, match="Offline"):
    hf.import_hf("allenai/tk-instruct-base-def-pos")

  with pytest.raises(hf.CheckpointFormatError, match=r"'d_kv'"):
    cli.run(
        [
            "import-checkpoint",
            "--hf",
            str(bad_field),
            "--output",
            str(tmp_path / "never"),
        ]
    )
  with pytest.raises(FileNotFoundError, match="no model.gin"):
    cli.run(
        [
            "export-checkpoint",
            "--checkpoint",
            str(good),
            "--hf",
            str(tmp_path / "never2"),
        ]
    )

  # Refuses to write over an existing checkpoint.
  ckpt = tmp_path / "ckpt"
  assert (
      cli.main(["import-checkpoint", "--hf", str(good), "--output", str(ckpt)])
      == 0
  )
  with pytest.raises(FileExistsError, match="already holds"):
    cli.run(["import-checkpoint", "--hf", str(good), "--output", str(ckpt)])


def test_import_t5x_checkpoint_via_cli(tmp_path):
  from tkx.checkpoints import t5x_format

  model = _hf_model("gated-gelu", False, seed=5)
  t5x_cfg = hf.hf_config_to_t5config(model.config.to_dict())
  params = hf.hf_to_params(_state(model), t5x_cfg)
  gin_file = tmp_path / "model.gin"
  gin_file.write_text(directory.config_to_gin(t5x_cfg))
  t5x_format.save_params(str(tmp_path / "t5x"), params, step=500)
  ckpt = tmp_path / "ckpt"
  assert (
      cli.main(
          [
              "import-checkpoint",
              "--t5x",
              str(tmp_path / "t5x"),
              "--gin_file",
              str(gin_file),
              "--output",
              str(ckpt),
          ]
      )
      == 0
  )
  assert gin_utils.load_config_from_gin([str(ckpt / "model.gin")]) == t5x_cfg
  out = tmp_path / "exported"
  assert (
      cli.main(
          [
              "export-checkpoint",
              "--checkpoint",
              str(ckpt / "checkpoint_0"),
              "--hf",
              str(out),
          ]
      )
      == 0
  )
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      str(out)
  ).eval()
  np.testing.assert_array_equal(
      _logits(reloaded, ENC, DEC), _logits(model, ENC, DEC)
  )
  # A t5x checkpoint whose tree does not fit the gin config is refused, naming the parameter.
  other = tmp_path / "other.gin"
  other.write_text(
      directory.config_to_gin(t5x_cfg.replace(num_decoder_layers=3))
  )
  with pytest.raises(ValueError, match="layers_2"):
    cli.run(
        [
            "import-checkpoint",
            "--t5x",
            str(tmp_path / "t5x"),
            "--gin_file",
            str(other),
            "--output",
            str(tmp_path / "ckpt2"),
        ]
    )
