"""'auto' packed layouts: FLOP counts of batches, the choice under the run's constraints, the record."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from tkx.data import packing, packing_plan
from tkx.models import config as config_lib
from tkx.models import model_info

# T5 1.1 XL's widths (FLOPs are arithmetic: nothing is built but parameter shapes).
CONFIG = config_lib.T5Config(
    vocab_size=32128,
    emb_dim=2048,
    num_heads=32,
    head_dim=64,
    mlp_dim=5120,
    num_encoder_layers=2,
    num_decoder_layers=2,
    mlp_activations=("gelu", "linear"),
)
CAPS = {"inputs": 1024, "targets": 128}


def _lengths(n, seed=0):
  """NI-like lengths: inputs ~ 500 of 1024, targets ~ 22 of 128 (a few at the caps)."""
  rng = np.random.RandomState(seed)
  inputs = np.clip(rng.gamma(4.0, 125.0, n).astype(int), 20, 1024)
  targets = np.clip(rng.gamma(1.5, 15.0, n).astype(int), 2, 128)
  return inputs, targets


def _example(n_in, n_tgt):
  return {
      "inputs": np.arange(2, n_in + 2, dtype=np.int32),
      "targets": np.arange(2, n_tgt + 2, dtype=np.int32),
  }


def test_flop_counts_of_packed_and_padded_batches():
  layout = packing.RowLayout(32, 16, encoder_blocks=2)
  rows = [
      [[_example(10, 3), _example(20, 4)], [_example(30, 5)]],
      [[_example(7, 2)], []],
      [],
  ]
  batch = packing.build_rows(rows, layout)
  useful, computed = packing.flop_counts(batch, CONFIG)
  expected = packing_plan.example_flops(CONFIG, [10, 20, 30, 7], [3, 4, 5, 2])
  assert float(useful) == pytest.approx(expected, rel=1e-6)
  assert computed == pytest.approx(
      model_info.train_step_flops(CONFIG, 3, 32, 16, encoder_blocks=2)[
          "train_step"
      ]
  )
  # The same in jax (what the train step computes), float32.
  useful_jax, _ = packing.flop_counts(
      {k: jnp.asarray(v) for k, v in batch.items()}, CONFIG
  )
  assert float(useful_jax) == pytest.approx(expected, rel=1e-5)
  # Unpacked rows: each row one example at its real lengths.
  padded = {
      "encoder_input_tokens": np.array([[5, 6, 1, 0], [5, 1, 0, 0]]),
      "decoder_target_tokens": np.array([[7, 1, 0], [1, 0, 0]]),
      "decoder_loss_weights": np.array([[1, 1, 0], [1, 0, 0]]),
  }
  useful, computed = packing.flop_counts(padded, CONFIG)
  assert float(useful) == pytest.approx(
      packing_plan.example_flops(CONFIG, [3, 2], [2, 1])
  )
  assert computed == pytest.approx(
      model_info.train_step_flops(CONFIG, 2, 4, 3)["train_step"]
  )
  assert float(useful) < computed


def test_measure_counts_what_the_rows_hold():
  inputs, targets = _lengths(300)
  layout = packing.RowLayout(1024, 200, encoder_blocks=4)
  stats = packing_plan.measure(
      layout, inputs, targets, window=100, config=CONFIG, rows_per_step=3
  )
  rows = packing.count_packed_rows(inputs, targets, layout, 100)
  assert stats.rows == -(-rows // 3) * 3  # whole steps
  assert stats.encoder_fill == pytest.approx(
      inputs.sum() / (stats.rows * 4 * 1024)
  )
  assert stats.decoder_fill == pytest.approx(targets.sum() / (stats.rows * 200))
  assert stats.flop_efficiency == pytest.approx(
      packing_plan.example_flops(CONFIG, inputs, targets)
      / (stats.rows * packing_plan.row_flops(CONFIG, layout))
  )
  assert 0 < stats.flop_efficiency < stats.token_efficiency < 1


@pytest.mark.parametrize("devices", [1, 8])
def test_auto_layout_is_the_most_efficient_near_the_batch_size(devices):
  inputs, targets = _lengths(600)
  ranked = packing_plan.plan(
      inputs,
      targets,
      feature_lengths=CAPS,
      examples_per_step=16,
      row_multiple=devices,
      window=300,
      config=CONFIG,
  )
  best = ranked[0]
  assert all(s.rows_per_step % devices == 0 for s in ranked)
  assert all(
      s.layout.targets >= 128 and s.layout.inputs == 1024 for s in ranked
  )
  near = [s for s in ranked if abs(s.examples_per_step - 16) <= 4]
  assert best in near
  assert best.flop_efficiency == max(s.flop_efficiency for s in near)
  if devices == 1:
    # Several blocks share a decoder row sized to what their inputs bring.
    assert best.layout.encoder_blocks > 1 and best.layout.targets > 128
    assert best.decoder_fill > 0.85 and best.flop_efficiency > 0.85
  else:
    # 8 rows of one block are ~16 examples: the bound on 8 devices.
    assert (best.layout.encoder_blocks, best.rows_per_step) == (1, 8)
    assert best.decoder_fill < 0.5


def test_explicit_settings_constrain_the_choice():
  inputs, targets = _lengths(300)
  ranked = packing_plan.plan(
      inputs,
      targets,
      feature_lengths=CAPS,
      examples_per_step=16,
      window=300,
      config=CONFIG,
      encoder_blocks=2,
      rows_per_step=4,
  )
  assert {(s.layout.encoder_blocks, s.rows_per_step) for s in ranked} == {
      (2, 4)
  }
  with pytest.raises(ValueError, match="PACKED_BATCH_SIZE=3 must be divisible"):
    packing_plan.plan(
        inputs,
        targets,
        feature_lengths=CAPS,
        examples_per_step=16,
        row_multiple=2,
        rows_per_step=3,
    )


def _resolve(model_dir, resuming, examples_per_step, **settings):
  from tkx.data import vocab as vocab_lib

  kwargs = dict(
      encoder_blocks="auto", targets_length="auto", rows_per_step="auto"
  )
  kwargs.update(settings)
  return packing_plan.resolve_layout(
      model_dir=str(model_dir),
      resuming=resuming,
      mixture_or_task_name="ni_default_train_def_pos2",
      ni_dir=None,
      vocabulary=vocab_lib.get_vocabulary(),
      feature_lengths={"inputs": 128, "targets": 16},
      config=CONFIG,
      examples_per_step=examples_per_step,
      row_multiple=1,
      window=64,
      seed=0,
      **kwargs,
  )


def test_the_layout_is_recorded_and_a_resumed_run_keeps_it(tmp_path, caplog):
  caplog.set_level("INFO", logger="tkx.data.packing_plan")
  small = _resolve(tmp_path / "a", False, 4)
  large = _resolve(tmp_path / "b", False, 32)
  assert small != large  # the batch size changes the choice...
  record = json.loads((tmp_path / "a" / packing_plan.RECORD_FILE).read_text())
  assert (
      record["encoder_blocks"],
      record["targets"],
      record["rows_per_step"],
  ) == (
      small[0].encoder_blocks,
      small[0].targets,
      small[1],
  )
  # ...but not a resumed run's: it reads the record, even against explicit settings.
  caplog.clear()
  assert _resolve(tmp_path / "a", True, 32, encoder_blocks=3) == small
  assert "resuming with the recorded layout" in caplog.text
  assert "PACK auto" not in caplog.text
  # Checkpoints without a record (a run from before 'auto'): chosen again, with a warning;
  # the same data and settings give the same layout.
  caplog.clear()
  assert _resolve(tmp_path / "e", True, 4) == small
  assert f"but no {packing_plan.RECORD_FILE}" in caplog.text
  # A fresh run with every setting given keeps them (and records them).
  given = _resolve(
      tmp_path / "c",
      False,
      16,
      encoder_blocks=3,
      targets_length=40,
      rows_per_step=2,
  )
  assert given == (packing.RowLayout(128, 40, 3), 2)
  (tmp_path / "a" / packing_plan.RECORD_FILE).write_text("{}")
  with pytest.raises(ValueError, match="not a packed layout record"):
    _resolve(tmp_path / "a", True, 32)
  with pytest.raises(ValueError, match="PACKED_ENCODER_BLOCKS must be"):
    _resolve(tmp_path / "d", False, 16, encoder_blocks="four")


def test_plan_packing_command_lists_the_choice_first(capsys):
  from tkx import cli

  argv = [
      "plan-packing",
      "--data_parallel",
      "2",
      "--window",
      "200",
      "--top",
      "3",
  ]
  assert cli.run(argv) == 0
  out = capsys.readouterr().out
  table = out.splitlines()
  assert (
      "ni_default_train_def_pos2 (embedded tasks/): 200 sampled examples"
      in table[0]
  )
  assert (
      table[1].split()
      == "layout rows ex/row ex/step enc real dec real tokens FLOPs".split()
  )
  chosen = table[2].split()
  assert chosen[0] == "*" and int(chosen[6]) % 2 == 0  # rows per step
  assert len([line for line in table if line.startswith(("* ", "  "))]) == 4
  assert cli.run(argv + ["--json"]) == 0
  rows = json.loads(capsys.readouterr().out)
  assert rows[0]["rows_per_step"] == int(chosen[6]) and len(rows) == 3
  assert 0 < rows[0]["flop_efficiency"] < rows[0]["token_efficiency"] <= 1


def test_step_logger_reports_flop_efficiency(tmp_path, caplog):
  import glob

  import tensorflow as tf

  from tkx.step_logger import StepLogger

  caplog.set_level("INFO", logger="tkx.step_logger")
  logger = StepLogger(
      model_dir=str(tmp_path),
      total_steps=2,
      start_step=0,
      tokens_per_batch=100,
      flops_per_step=1e9,
      peak_flops=None,
      log_every=2,
  )
  base = {"loss": 1.0, "learning_rate": 0.1, "grad_norm": 1.0}
  for step, useful in ((1, 2e8), (2, 6e8)):
    logger.step_done(
        step,
        dict(
            base,
            num_real_tokens=90.0,
            num_computed_tokens=100.0,
            num_useful_flops=useful,
            num_computed_flops=1e9,
        ),
    )
  logger.close()
  assert "token efficiency 90.0% FLOP efficiency 40.0%" in caplog.text
  values = [
      float(tf.make_ndarray(v.tensor))
      for path in glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
      for event in tf.compat.v1.train.summary_iterator(path)
      for v in event.summary.value
      if v.tag == "flop_efficiency"
  ]
  assert values == [pytest.approx(0.4)]
