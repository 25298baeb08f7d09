"""Contract (the names other modules rely on; change one only together with its users):
- `orbax_io.CheckpointManager(directory, save_every=N, keep=K)` — `save(step, train_state, data_state, force=False)`,
  `restore_latest(abstract_train_state) -> (train_state, data_state) | None` (the step of `agreed_step()`: the
  newest step every process can read, `unreadable_reason(step)` checked per process, all-gathered until the
  processes agree; skipped steps said once by the primary; a failed restore with several processes raises
  `orbax_io.CheckpointReadError`), `wait()`, `close()`. See docs/checkpoints.md.
- `orbax_io.save_params(directory, params, step=0)` writes a params-only checkpoint (use it in `import-checkpoint`);
  `orbax_io.load_params(path, abstract_params=None) -> params` reads only the params of a checkpoint dir or of one
  `checkpoint_<step>/` (numpy without `abstract_params`; else into their dtypes/shardings, each process reading
  only its slices); `orbax_io.params_metadata(path)` their shapes/dtypes (nothing read; None without params).
  Layout of one step: `checkpoint_<step>/state/` (orbax PyTree `{"params": ...}` plus, for training runs,
  `"step"`, `"opt_state"`, `"rng"`) and `checkpoint_<step>/data_state/` (JSON input position).
- `layout`: `STEP_PREFIX`, `MODEL_GIN`, `SPM_MODEL`, `step_dir_name(step)`, `step_of(path) -> int | None`,
  `list_steps(dir)`, `find_step_dir(path)` (the dir itself when it is a step, else its newest step),
  `root_of(path)` (the dir holding model.gin; FileNotFoundError naming the path otherwise). The only place that
  spells `checkpoint_<step>` (t5x uses the same names).
- `directory`: `config_to_gin(config, vocab_path=None, extra_ids=None, z_loss, label_smoothing,
  loss_normalizing_factor, comment) -> str` (a complete model gin file with every `T5Config` field, and gin's
  `lora.LoraConfig()` when the dense layer is "lora");
  `write_model_files(dir, config, spm_model=None, ...)` (model.gin, atomically, + spm.model copy);
  `write_model_files_for(model, dir)` (from a model: its class, config, loss settings, vocabulary; what the trainer writes, so model.gin
  describes the trained model); `write_checkpoint(config, params, dir, spm_model=None, step=0)` (import);
  `sentinel_ids_for(spm, vocab_size)` (T5's 100-sentinel rule); `read_config(root, bindings=(), clear=True)`;
  `load_vocabulary(root, config, vocab_path=None)`; `build_model(config, vocabulary)` (the default model of a
  config, for tests/benches); model.gin binds `MODEL` to the model's class (`gin_selector(cls)`: the name gin knows
  it by) and imports its module and a non-default dense layer's;
  `load(path, partitioner=None, vocab_path=None, gin_bindings=()) -> LoadedCheckpoint(path, step, config, model,
  params, vocabulary)` (infer/eval/generate/serve; the model is model.gin's `MODEL`, CheckpointError without one); `read(path, load_params=True) -> (config, numpy params, spm | None)`
  (export); `load_initial_params(path, abstract_params, shardings)` (train init; tkx or t5x checkpoint, checked
  names/shapes, cast; shard-wise: each process reads only its devices' slices, except a checkpoint in the other
  layer layout or an orbax-era t5x one, read whole). Errors: `directory.CheckpointError(errors.UserError)` naming file and field.
- `hf.import_hf(path_or_hub_name, dtype=float32) -> (T5Config, params, spm_model_path | None)`;
  `hf.export_hf(config, params, out_dir, spm_model=None, extra_ids=0)`;
  `hf.hf_to_params(state_dict, config)` / `hf.params_to_hf(params, config)`; `hf.hf_tokenizer(spm_path, extra_ids)`
  (HF `T5Tokenizer` equal to seqio's vocabulary); `hf.projection_modules(config)` ([(HF module, t5x module path)] of
  the attention/MLP projections). Errors: `hf.CheckpointFormatError` (names file and tensor/field).
- `peft_format`: Hugging Face peft LoRA adapter dirs: `export_peft(config, lora_config, params, out_dir,
  base_model_name_or_path=None)`, `read_peft(adapter_dir, config) -> (LoraConfig, {t5x module path: (lora_a,
  lora_b)})`, `with_adapters(params, adapters)`, `without_adapters(params)` (docs/adapters.md).
- `t5x_format.load_params(path, dtype=None) -> params` (numpy, t5x names) from a t5x checkpoint: its `checkpoint`
  msgpack file, a `checkpoint_<step>/` dir or a dir of them (newest); `t5x_format.save_params(dir, params, step)`
  writes the same layout; `t5x_format.open_params(path)` the params as arrays read by slice (`leaf[index]`:
  numpy for inline arrays, TensorStore readers; None for orbax-era checkpoints). Errors: `t5x_format.T5xCheckpointError`.
- A tkx checkpoint directory holds `checkpoint_<step>/` (orbax), `model.gin` (the model config; written by
  `directory.config_to_gin`, it names the vocabulary by absolute path) and `spm.model` when imported.
"""
