"""SeqIO tasks and mixtures over NI checkouts."""

import time

import numpy as np
import pytest
import seqio

from test_data_common import small_checkout, throwaway_vocab, tk_instruct_selection, toy_task, write_checkout  # noqa: F401
from tkx.data import encodings as enc
from tkx.data import ni
from tkx.data import tasks

LENGTHS = {"inputs": 256, "targets": 16}


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  return small_checkout(tmp_path_factory.mktemp("ni"))


def _examples(name, split):
  task = seqio.get_mixture_or_task(name)
  return list(
      task.get_dataset(LENGTHS, split=split, shuffle=False).as_numpy_iterator()
  )


def test_task_yields_tokenized_examples_with_string_features(toy_dir, throwaway_vocab):  # noqa: F811
  mixtures = tasks.register_ni(
      toy_dir,
      encodings=("def_pos2",),
      vocabulary=throwaway_vocab,
      prefix="toy",
      max_source_length=256,
  )
  assert mixtures == ["toy_default_train_def_pos2", "toy_default_test_def_pos2"]
  examples = _examples("toy_default_test_def_pos2_task103_toy_test", "test")
  assert len(examples) == 60  # test: the first 100, the task has 60
  task = ni.load_task(toy_dir, "task103_toy_test")
  token_count, truncate = enc.vocabulary_token_fns(throwaway_vocab)
  for instance, ex in zip(
      task["Instances"], examples
  ):  # test split keeps file order
    source = enc.encode_source(
        task,
        instance,
        "def_pos2",
        max_source_length=256,
        token_count=token_count,
        truncate=truncate,
    )
    assert ex["inputs_pretokenized"].decode() == source
    np.testing.assert_array_equal(
        ex["inputs"], throwaway_vocab.encode(source)[:255] + [1]
    )
    assert ex["targets_pretokenized"].decode() == instance["output"][0]
    assert ex["targets"][-1] == 1
    assert ex["id"].decode() == instance["id"]
    assert ex["task"].decode() == "task103_toy_test"
    assert ex["category"].decode() == "Question Answering"
    assert [r.decode() for r in ex["references"]] == instance["output"]
  assert (
      examples[0]["inputs_pretokenized"]
      .decode()
      .startswith("Definition: Answer the question.\n\n Positive Example 1 -")
  )


def test_train_split_selection_targets_and_budget(toy_dir, throwaway_vocab):  # noqa: F811
  tasks.register_ni(
      toy_dir,
      encodings=("def_pos2_neg2_expl", "tk_instruct"),
      vocabulary=throwaway_vocab,
      prefix="toyb",
      splits=("train",),
      max_num_instances_per_task=25,
      seed=5,
      max_source_length=48,
  )
  a = _examples(
      "toyb_default_train_def_pos2_neg2_expl_task101_toy_train", "train"
  )
  assert len(a) == 25
  # Tk-Instruct's selection: one random stream over the split (task101 comes first).
  assert [e["id"].decode() for e in a] == tk_instruct_selection(
      toy_dir, "default", "train", 25, seed=5
  )["task101_toy_train"]
  for ex in a:
    assert len(ex["inputs"]) <= 48 and ex["inputs"][-1] == 1
    refs = [r.decode() for r in ex["references"]]
    assert ex["targets_pretokenized"].decode() in refs and len(refs) == 2
  # The budget dropped the examples: 48 tokens cannot hold the definition and two examples.
  assert all(
      "Positive Example 2" not in e["inputs_pretokenized"].decode() for e in a
  )
  # Seeded reference choice: across instances both the first and the second reference occur.
  assert {e["targets_pretokenized"] == e["references"][0] for e in a} == {
      True,
      False,
  }
  chosen = [
      enc.select_target(
          {
              "id": e["id"].decode(),
              "output": [r.decode() for r in e["references"]],
          },
          5,
      )
      for e in a
  ]
  assert chosen == [e["targets_pretokenized"].decode() for e in a]
  tk = _examples("toyb_default_train_tk_instruct_task101_toy_train", "train")
  assert (
      len({e["inputs_pretokenized"].decode()[:12] for e in tk}) > 1
  )  # several encodings used


def test_mixture_is_one_task_over_the_split_source(toy_dir, throwaway_vocab):  # noqa: F811
  tasks.register_ni(
      toy_dir, encodings=("def",), vocabulary=throwaway_vocab, prefix="toyc"
  )
  train = seqio.get_mixture_or_task("toyc_default_train_def")
  # One SeqIO task holds every selected instance of the split; per-task tasks are its rows.
  assert [t.name for t in train.tasks] == ["toyc_default_train_def_all_tasks"]
  assert train.get_rate(train.tasks[0]) == 120.0
  rates = {
      n: tasks.instance_count_rate(
          seqio.get_mixture_or_task(f"toyc_default_train_def_{n}")
      )
      for n in ("task100_toy_train", "task101_toy_train", "task102_toy_train")
  }
  assert rates == {
      "task100_toy_train": 30.0,
      "task101_toy_train": 40.0,
      "task102_toy_train": 50.0,
  }
  test = seqio.get_mixture_or_task("toyc_default_test_def")
  examples = _examples("toyc_default_test_def_all_tasks", "test")
  assert [e["task"].decode() for e in examples] == ["task103_toy_test"] * 60 + [
      "task104_toy_test"
  ] * 70
  assert test.get_rate(test.tasks[0]) == 130.0
  tasks.register_ni(
      toy_dir,
      encodings=("def",),
      vocabulary=throwaway_vocab,
      prefix="toyc",
      max_num_instances_per_task=45,
  )
  train = seqio.get_mixture_or_task("toyc_default_train_def")
  assert [train.get_rate(t) for t in train.tasks] == [30.0 + 40.0 + 45.0]
  assert train.total_rate == 115.0
  # The mixture samples from its tasks and keeps the model features.
  batch = list(
      train.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1)
      .take(5)
      .as_numpy_iterator()
  )
  assert len(batch) == 5 and set(batch[0]) >= {"inputs", "targets"}


def test_registration_is_lazy_fast_and_idempotent(shared_ni_dir, throwaway_vocab, monkeypatch):  # noqa: F811
  opened = []
  monkeypatch.setattr(
      ni,
      "load_task",
      lambda *a, **k: opened.append(a) or pytest.fail("JSON read"),
  )
  start = time.perf_counter()
  names = tasks.register_ni(
      shared_ni_dir,
      tracks=("default", "xlingual"),
      encodings=("def", "def_pos2", "tk_instruct"),
      vocabulary=throwaway_vocab,
      prefix="sharedfast",
  )
  elapsed = time.perf_counter() - start
  assert elapsed < 3.0, elapsed
  assert not opened
  assert len(names) == 12
  n_tasks = len(
      [n for n in seqio.TaskRegistry.names() if n.startswith("sharedfast_")]
  )
  again = tasks.register_ni(
      shared_ni_dir,
      tracks=("default", "xlingual"),
      encodings=("def", "def_pos2", "tk_instruct"),
      vocabulary=throwaway_vocab,
      prefix="sharedfast",
  )
  assert again == names
  assert (
      len(
          [n for n in seqio.TaskRegistry.names() if n.startswith("sharedfast_")]
      )
      == n_tasks
  )
  train = seqio.get_mixture_or_task("sharedfast_default_train_def_pos2")
  assert len(train.tasks) == 1
  assert n_tasks == 3 * sum(
      1 + len(ni.read_split(shared_ni_dir, track, split))
      for track in ("default", "xlingual")
      for split in ("train", "test")
  )


def test_shared_sample_task_dataset(shared_ni_dir, throwaway_vocab):  # noqa: F811
  tasks.register_ni(
      shared_ni_dir,
      tracks=("xlingual",),
      encodings=("def_pos2",),
      splits=("test",),
      vocabulary=throwaway_vocab,
      prefix="sharedx",
  )
  name = "sharedx_xlingual_test_def_pos2_task596_mocha_question_generation_fi"
  examples = _examples(name, "test")
  assert len(examples) == 100
  assert all(
      len(e["references"]) >= 1 and e["inputs"][-1] == 1 for e in examples
  )
  spec = tasks.task_spec(name)
  assert (spec.track, spec.split, spec.ni_task) == (
      "xlingual",
      "test",
      "task596_mocha_question_generation_fi",
  )


def test_postprocessor_gives_metrics_reference_lists(toy_dir, throwaway_vocab):  # noqa: F811
  seen = {}

  def capture_metric(targets, predictions):
    seen["targets"], seen["predictions"] = targets, predictions
    return {"n": len(targets)}

  tasks.register_ni(
      toy_dir,
      encodings=("def",),
      vocabulary=throwaway_vocab,
      prefix="toye",
      splits=("test",),
      metric_fns=[capture_metric],
  )
  evaluator = seqio.Evaluator(
      mixture_or_task_name="toye_default_test_def",
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="test",
      sequence_length=LENGTHS,
      use_memory_cache=False,
  )

  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    return [
        (i, throwaway_vocab.encode("six"))
        for i, _ in enumerate(dataset.as_numpy_iterator())
    ]

  metrics, _ = evaluator.evaluate(
      compute_metrics=True, predict_fn=predict_fn, score_fn=None
  )
  metrics = metrics.result()
  # The mixture is one task: its metrics cover both NI tasks' 60 + 70 instances.
  assert {m["n"] for m in metrics.values()} == {130}
  targets = seen["targets"]
  assert all(
      isinstance(t, list) and len(t) == 2 and all(isinstance(r, str) for r in t)
      for t in targets
  )
  assert all(t[1] == "n" + t[0] for t in targets)
  assert set(seen["predictions"]) == {
      throwaway_vocab.decode(throwaway_vocab.encode("six"))
  }
  assert tasks.references_postprocessor(
      "x", example={"references": [b"a", b"b"]}, is_target=True
  ) == ["a", "b"]
  assert (
      tasks.references_postprocessor("pred", example={"references": [b"a"]})
      == "pred"
  )


def test_names_are_sanitised_and_bad_input_is_reported(tmp_path, throwaway_vocab):  # noqa: F811
  root = write_checkout(
      tmp_path,
      {"task1_odd-man-out": toy_task("task1_odd-man-out")},
      {
          ("default", "train"): ["task1_odd-man-out"],
          ("default", "test"): ["task1_odd-man-out", "task404_gone"],
      },
  )
  with pytest.raises(ni.NIDataError, match="task404_gone"):
    tasks.register_ni(root, vocabulary=throwaway_vocab, prefix="odd")
  tasks.register_ni(
      root, vocabulary=throwaway_vocab, prefix="odd", skip_missing=True
  )
  assert (
      "odd_default_train_def_pos2_task1_odd_man_out"
      in seqio.TaskRegistry.names()
  )
  with pytest.raises(ValueError, match="pos<k>"):
    tasks.register_ni(
        root,
        encodings=("definition",),
        vocabulary=throwaway_vocab,
        prefix="odd",
    )


def test_embedded_sample_is_registered_on_import(embedded_ni_dir):
  if not (embedded_ni_dir / "spm" / "tkx_sample.model").exists():
    pytest.skip("embedded vocabulary tasks/spm/tkx_sample.model not built")
  for track in ("default", "xlingual"):
    for split in ni.list_splits(embedded_ni_dir, track):
      for encoding in tasks.EMBEDDED_ENCODINGS:
        mixture = seqio.get_mixture_or_task(
            tasks.mixture_name(track, split, encoding)
        )
        assert len(mixture.tasks) == 1
        for ni_task in ni.read_split(embedded_ni_dir, track, split):
          seqio.get_mixture_or_task(
              tasks.task_name(track, split, encoding, ni_task)
          )
  name = seqio.get_mixture_or_task("ni_default_test_def_pos2").tasks[0].name
  example = next(
      seqio.get_mixture_or_task(name)
      .get_dataset(LENGTHS, split="test", shuffle=False)
      .as_numpy_iterator()
  )
  assert example["inputs"][-1] == 1 and example["references"].shape[0] >= 1


def test_default_ni_metrics_score_reference_lists(toy_dir, throwaway_vocab):  # noqa: F811
  tasks.register_ni(
      toy_dir,
      encodings=("def",),
      vocabulary=throwaway_vocab,
      prefix="toym",
      splits=("test",),
  )
  name = "toym_default_test_def_task103_toy_test"
  assert seqio.get_mixture_or_task(name).metric_fns == [tasks.ni_metrics]
  evaluator = seqio.Evaluator(
      mixture_or_task_name=name,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="test",
      sequence_length=LENGTHS,
      use_memory_cache=False,
  )

  # Instance i of the toy test task has references ["<2i>", "n<2i>"]; predict the *second* one:
  # only a metric that sees every reference scores 100.
  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    # Fixed-length rows (EOS then padding), as a model's decoder returns them.
    return [
        (i, (throwaway_vocab.encode(f"n{2 * i}") + [1] + [0] * 16)[:16])
        for i, _ in enumerate(dataset.as_numpy_iterator())
    ]

  metrics, _ = evaluator.evaluate(
      compute_metrics=True, predict_fn=predict_fn, score_fn=None
  )
  result = metrics.result()[name]
  assert result["exact_match"] == pytest.approx(100.0)
  assert tasks.default_metric_fns("xlingual") == [tasks.ni_metrics_xlingual]


def test_registering_a_1600_task_checkout_takes_seconds(tmp_path, throwaway_vocab):  # noqa: F811
  names = [f"task{i:04d}_synthetic-name" for i in range(1600)]
  (tmp_path / "tasks").mkdir()
  for name in names:
    (tmp_path / "tasks" / f"{name}.json").write_text(
        "not even JSON: registration must not read it"
    )
  write_checkout(
      tmp_path,
      {},
      {("default", "train"): names[:1500], ("default", "test"): names[1500:]},
  )
  start = time.perf_counter()
  mixtures = tasks.register_ni(
      tmp_path,
      encodings=("def_pos2", "tk_instruct"),
      vocabulary=throwaway_vocab,
      prefix="big",
  )
  elapsed = time.perf_counter() - start
  assert len(mixtures) == 4 and elapsed < 10.0, elapsed
  assert (
      len(seqio.get_mixture_or_task("big_default_train_tk_instruct").tasks) == 1
  )
  assert "big_default_train_tk_instruct_task1499_synthetic_name" in (
      seqio.TaskRegistry.names()
  )
  # The JSON is opened only when a dataset is built, and a bad file is reported then.
  with pytest.raises(ni.NIDataError, match="malformed JSON"):
    seqio.get_mixture_or_task(
        "big_default_test_def_pos2_task1500_synthetic_name"
    ).get_dataset(LENGTHS, split="test")


def test_register_ni_is_gin_configurable(toy_dir, throwaway_vocab):  # noqa: F811
  import gin

  with gin.unlock_config():
    gin.parse_config(
        [
            f"register_ni.ni_dir = '{toy_dir}'",
            "register_ni.encodings = ['pos1', 'name_def']",
            "register_ni.prefix = 'gintoy'",
            "register_ni.splits = ['test']",
        ]
    )
  try:
    assert tasks.register_ni(vocabulary=throwaway_vocab) == [
        "gintoy_default_test_pos1",
        "gintoy_default_test_name_def",
    ]
  finally:
    gin.clear_config()
