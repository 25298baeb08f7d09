"""tkx.checkpoints.orbax_io: keep-K, atomic steps, fallback past a damaged step, params-only loads."""

import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tkx.checkpoints import layout, orbax_io


@flax.struct.dataclass
class _State:
  step: jnp.ndarray
  params: dict
  opt_state: optax.OptState
  rng: jnp.ndarray


def _state(step, scale=1.0):
  params = {
      "dense": {"kernel": jnp.full((4, 3), scale), "scale": jnp.arange(3.0)}
  }
  opt = optax.adamw(1e-3)
  return _State(
      step=jnp.asarray(step, jnp.int32),
      params=params,
      opt_state=opt.init(params),
      rng=jax.random.PRNGKey(step),
  )


def _abstract(state):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state,
  )


def test_save_every_keep_k_and_exact_restore(tmp_path):
  manager = orbax_io.CheckpointManager(str(tmp_path), save_every=2, keep=2)
  for step in range(1, 8):
    manager.save(
        step, _state(step, scale=float(step)), {"consumed_batches": step}
    )
  manager.save(
      7, _state(7, scale=7.0), {"consumed_batches": 7}, force=True
  )  # the final step
  manager.wait()
  assert manager.all_steps() == [6, 7]
  assert sorted(os.listdir(tmp_path)) == ["checkpoint_6", "checkpoint_7"]
  state, data_state = manager.restore_latest(_abstract(_state(0)))
  manager.close()
  assert data_state == {"consumed_batches": 7}
  expected = _state(7, scale=7.0)
  assert int(state.step) == 7
  np.testing.assert_array_equal(state.rng, expected.rng)
  for a, b in zip(
      jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(expected)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert type(state.opt_state) is type(expected.opt_state)


def test_restore_latest_none_when_empty(tmp_path):
  manager = orbax_io.CheckpointManager(str(tmp_path / "empty"), save_every=1)
  assert manager.restore_latest(_abstract(_state(0))) is None
  manager.close()


def test_incomplete_and_damaged_steps_are_ignored(tmp_path):
  manager = orbax_io.CheckpointManager(
      str(tmp_path), save_every=1, async_save=False
  )
  manager.save(3, _state(3, scale=3.0), {"consumed_batches": 3})
  manager.close()
  # What a SIGKILL during orbax's write leaves behind: the step in its tmp dir, never renamed.
  os.makedirs(
      tmp_path / "checkpoint_9.orbax-checkpoint-tmp-1700000000" / "state"
  )
  # And a step directory whose state was damaged (e.g. copied half-way).
  os.makedirs(tmp_path / "checkpoint_5" / "state")
  (tmp_path / "checkpoint_5" / "state" / "garbage").write_text("x")
  manager = orbax_io.CheckpointManager(str(tmp_path), save_every=1)
  assert 9 not in manager.all_steps()
  assert not (
      tmp_path / "checkpoint_9.orbax-checkpoint-tmp-1700000000"
  ).exists()  # cleaned up
  state, data_state = manager.restore_latest(_abstract(_state(0)))
  manager.close()
  assert int(state.step) == 3 and data_state == {"consumed_batches": 3}


def test_orbax_writes_through_a_tmp_dir_then_renames(tmp_path, monkeypatch):
  """Verifies the atomicity we rely on: nothing named checkpoint_<step> exists until the write is complete."""
  seen = []
  real_rename = os.rename

  def spy_rename(src, dst, *a, **k):
    seen.append((os.fspath(src), os.fspath(dst)))
    return real_rename(src, dst, *a, **k)

  monkeypatch.setattr(os, "rename", spy_rename)
  import pathlib

  real_path_rename = pathlib.Path.rename

  def spy_path_rename(self, target):
    seen.append((os.fspath(self), os.fspath(target)))
    return real_path_rename(self, target)

  monkeypatch.setattr(pathlib.Path, "rename", spy_path_rename)
  manager = orbax_io.CheckpointManager(
      str(tmp_path), save_every=1, async_save=False
  )
  manager.save(4, _state(4), {})
  manager.close()
  renames = [(s, d) for s, d in seen if os.path.basename(d) == "checkpoint_4"]
  assert renames, f"expected a rename onto checkpoint_4, saw {seen}"
  assert "tmp" in os.path.basename(renames[0][0])
  assert (tmp_path / "checkpoint_4" / "commit_success.txt").exists()


def test_params_only_checkpoint_and_load_params(tmp_path):
  params = {
      "encoder": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
      "b": np.ones(2, np.float32),
  }
  step_dir = orbax_io.save_params(str(tmp_path / "imported"), params)
  assert step_dir.endswith("checkpoint_0") and orbax_io.is_tkx_checkpoint(
      str(tmp_path / "imported")
  )
  loaded = orbax_io.load_params(str(tmp_path / "imported"))
  np.testing.assert_array_equal(loaded["encoder"]["w"], params["encoder"]["w"])
  # From a full training checkpoint, only params are read, into the requested dtype.
  manager = orbax_io.CheckpointManager(
      str(tmp_path / "run"), save_every=1, async_save=False
  )
  manager.save(2, _state(2, scale=2.0), {})
  manager.close()
  abstract = {
      "dense": {
          "kernel": jax.ShapeDtypeStruct((4, 3), jnp.bfloat16),
          "scale": jax.ShapeDtypeStruct((3,), jnp.float32),
      }
  }
  loaded = orbax_io.load_params(
      str(tmp_path / "run" / "checkpoint_2"), abstract
  )
  assert loaded["dense"]["kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(loaded["dense"]["kernel"], np.float32), np.full((4, 3), 2.0)
  )
  with pytest.raises(FileNotFoundError, match="no checkpoint_<step>"):
    layout.find_step_dir(str(tmp_path))


def _three_steps(tmp_path):
  manager = orbax_io.CheckpointManager(
      str(tmp_path), save_every=1, async_save=False
  )
  for step in (2, 4, 6):
    manager.save(step, _state(step, scale=float(step)), {"at": step})
  manager.close()


def test_damaged_newest_metadata_is_skipped_before_any_restore(
    tmp_path, caplog
):
  _three_steps(tmp_path)
  (tmp_path / "checkpoint_6" / "state" / "_METADATA").write_text('{"tree_me')
  manager = orbax_io.CheckpointManager(str(tmp_path), save_every=1)
  assert "_METADATA: JSONDecodeError" in manager.unreadable_reason(6)
  with caplog.at_level("WARNING"):
    state, data_state = manager.restore_latest(_abstract(_state(0)))
  manager.close()
  assert int(state.step) == 4 and data_state == {"at": 4}
  said = [
      r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()
  ]
  assert said == [
      f"Skipping checkpoint(s) 6 of {tmp_path}: not readable on every process; "
      "all processes restore checkpoint_4"
  ]


def test_processes_agree_on_the_newest_step_all_can_read(tmp_path, monkeypatch):
  # Another process (simulated: the same rounds, over its own view) cannot read
  # steps 6 and 4: both restore step 2, the newest every process reads.
  _three_steps(tmp_path)
  other_readable, other = {2}, {"bound": None, "rounds": 0}

  def all_processes(mine):
    bound = other["bound"]
    theirs = max(
        (s for s in other_readable if bound is None or s <= bound), default=-1
    )
    other["bound"], other["rounds"] = min(mine, theirs), other["rounds"] + 1
    return [mine, theirs]

  monkeypatch.setattr(orbax_io, "_all_processes", all_processes)
  manager = orbax_io.CheckpointManager(str(tmp_path), save_every=1)
  assert manager.agreed_step() == 2 and other["rounds"] == 2
  other_readable.clear()
  assert (
      manager.agreed_step() is None
  )  # nothing every process reads: start afresh
  manager.close()
