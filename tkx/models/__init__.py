"""Contract (the names other modules rely on; change one only together with its users):
- `config.T5Config` dataclass: vocab_size, emb_dim, num_heads, head_dim, mlp_dim, num_encoder_layers,
  num_decoder_layers, mlp_activations (("relu",) for 1.0, ("gelu", "linear") for 1.1/mT5),
  logits_via_embedding, dropout_rate, dtype (activations), param_dtype,
  relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
  remat_policy="none" ("minimal" | "full": rematerialise each layer in the backward pass; names unchanged).
  scan_layers=False (True: each stack's layers run under `nn.scan`; params/cache get a leading `layers` axis),
  attention_impl=`config.AttentionImpl.XLA` ("xla" | "cudnn": `network.fused_attention` = `jax.nn.dot_product_attention`
  with scale 1, T5's bias and boolean mask; cuDNN on an NVIDIA GPU, JAX's XLA implementation elsewhere, logged once;
  not used by cached decoding nor with attention dropout), dense_layer="dense" (the module of every attention and
  MLP projection, a name registered with `network.register_dense_layer`; docs/models.md).
- Scanned layout (`scan_layers=True`): `encoder/layers/<layer params>` and `decoder/layers/<layer params>`, every leaf
  stacked on a leading axis of size num_layers with logical name `layers` (rule `("layers", None)`); embeddings,
  relpos tables, final norms and logits unchanged. Decoding cache leaves are `[layers, batch, ...]` (`cache_index`
  `[layers]`), so `predict_batch_with_aux` passes `cache_offset=1` to the decode function (t5x's convention).
  Dropout draws a separate key per layer (split rngs), so with dropout on the two layouts are not bit-equal.
- `tkx.models.scan`: `is_scanned(params)`, `scan_params(params)` (per-layer -> scanned), `unscan_params(params)`,
  `to_layout(params, scanned: bool)`; layout read from the tree (either input works, no-op when already there;
  numpy or jax leaves; a top-level "params" key kept). Callers: `hf.hf_to_params` (returns `config.scan_layers`'s
  layout), `hf.params_to_hf` / `hf.check_params` (accept either), `t5x_format.save_params` (always writes per layer),
  `trainer.load_initial_params` (converts to the model's layout), `tkx import-checkpoint --t5x`.
  `hf.config_to_gin` writes `scan_layers` / `attention_impl` only when not default.
- Dense layer seam: `network.register_dense_layer(name)` (class decorator), `network.dense_layer(name)`,
  `network.DENSE_LAYERS`; `MultiHeadDotProductAttention.dense_cls` / `MlpBlock.dense_cls` (from
  `T5Config.dense_layer`) build q/k/v/out and wi/wo with keywords `features, kernel_axes, kernel_init, dtype,
  param_dtype, name`; `logits_dense` stays `Dense`. The default is `Dense` itself (tree and numbers unchanged).
  `quantize.Int8Dense` is registered as "int8" (int8 `kernel` + `kernel_scale [out]`); `quantize.quantize_checkpoint`
  (gin mode, `--quantize`) turns a loaded float checkpoint into it (docs/quantization.md).
- `base.BaseModel` (abstract; t5x's): `loss_fn`, `score_batch`, `predict_batch_with_aux`, `get_initial_variables`,
  `variables_logical_axes` abstract; `eval_fn`, `predict_batch`, `params_logical_axes`, `params_shapes`, `eos_id`
  given; attributes `input_vocabulary`, `output_vocabulary`, `loss_normalizing_factor` (None: per token), `config`
  (None: no FLOP counts). `base.param_shardings(model, partitioner)`, `base.abstract_params(model, partitioner)`:
  the one computation of parameter shardings (train state, checkpoint reader, Predictor, server).
  `base.init_input_shapes(...)` (also `models.init_input_shapes`).
- `network.Transformer(config)` — Flax module, t5x param tree:
  `token_embedder/embedding [vocab, embed]`, `encoder/relpos_bias/rel_embedding [heads, relpos_buckets]`,
  `encoder/layers_i/{pre_attention_layer_norm, attention/{query,key,value,out}, pre_mlp_layer_norm, mlp/{wi | wi_0,wi_1, wo}}`,
  `encoder/encoder_norm/scale`, `decoder/relpos_bias/rel_embedding`,
  `decoder/layers_i/{pre_self_attention_layer_norm, self_attention, pre_cross_attention_layer_norm,
  encoder_decoder_attention, pre_mlp_layer_norm, mlp}`, `decoder/decoder_norm/scale`,
  `decoder/logits_dense/kernel [embed, vocab]` (1.1 only). Kernels are 2-D as in t5x:
  q/k/v `[embed, joined_kv]`, out `[joined_kv, embed]`, wi `[embed, mlp]`, wo `[mlp, embed]`.
  Params are created with `nn.with_logical_partitioning` (`nn.LogicallyPartitioned` boxes in `init`'s output,
  so `nn.get_partition_spec` reads them), and activations use `nn.with_logical_constraint` on logical names.
  Packed batches: attention is masked by segment ids; `*_positions` are accepted, but the relative-position
  bias uses row indices, which give the same distances inside each (contiguously numbered) segment.
  Methods: `__call__(encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, *, encoder_segment_ids=None,
  decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, enable_dropout=True, decode=False, max_decode_length=None)`,
  `encode(...)`, `decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, ..., decode=True, ...)`
  — as t5x's `network.Transformer`.
- `models.EncoderDecoderModel(module, input_vocabulary, output_vocabulary, z_loss=1e-4, label_smoothing=0.0, loss_normalizing_factor=None)`
  implements `base.BaseModel`; owns its jitted initialisers (one per input shapes/types);
  `with_module(module)`: the same model over another module (own initialisers; `quantize.quantize_model` uses it)
  - `get_initial_variables(rng, input_shapes) -> variables`
  - `loss_fn(params, batch, dropout_rng) -> (loss, metrics)`; batch keys are SeqIO's `EncDecFeatureConverter`
    output (`encoder_input_tokens`, `decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`,
    plus `*_segment_ids`/`*_positions` when packed). Loss is normalised by the number of target tokens.
  - `score_batch(params, batch) -> [batch]` sum of target log-likelihoods.
  - `predict_batch(params, batch, *, decode_fn=decoding.greedy / beam_search / hf_beam_search / temperature_sample, max_decode_length=None (= decoder_input_tokens length, else 128), num_decodes=1, **decode_kwargs) -> tokens [batch, len]`; the decode_fn gets t5x's keyword arguments (`inputs` zeros [batch, max_decode_length], `cache`, `tokens_to_logits`, `eos_id`, `num_decodes`, decode_kwargs), so t5x's own decoding functions plug in too.
    `rng` (3rd positional arg) is passed to decode_fn as `decode_rng`. `predict_batch_with_aux(...) -> (tokens, {"scores"})`;
    `return_all_decodes=True` gives `[batch, num_decodes, len]` (best last).
  - Decoding interface (t5x's): `decode_fn(inputs, cache, tokens_to_logits, eos_id, ..., num_decodes, **decode_kwargs)
    -> (sequences [b, n, L], scores [b, n])`, ascending (best last). `inputs [b, L]` int32: 0 (start), an optional
    decoder prompt (non-zero tokens, teacher-forced: kept in the output, scored 0), zeros; L output positions.
    `cache` comes at batch b (`model.initial_cache(params, encoded, encoder_input_tokens, max_decode_len)`); decode_fn
    repeats every cache array along axis `cache_offset` (`flat_batch_beam_expand`: rows `b * n + j`) except leaves
    named `cache_index` (unless `initial_index` is given: then it is a [b] vector and is expanded), `cached_bias`,
    `position_embedder_index`; beam reordering also skips the per-example leaves `encoded_key`/`encoded_value`.
    `tokens_to_logits(DecodingState(cur_index, sequences, cur_token [b*n, 1], cache))` returns
    `(logits [b*n, vocab], new_cache)` (decided in float32); the encoder outputs it closes over are already repeated
    n times (example-major). Cache leaves per decoder self-attention:
    `cached_key`/`cached_value [batch, heads, max_decode_len, head_dim]` (zeros at first; activation dtype), `cache_index`
    int32 scalar; per cross-attention: `encoded_key`/`encoded_value [batch, heads, encoder_len, head_dim]`, the encoder
    outputs projected once by `initial_cache` (steps never recompute them). Heads-first so each step's matmuls read the
    cache in place.
  - `tkx.decoding` (t5x's signatures, parameter order, defaults, semantics; docs/decoding.md):
    `temperature_sample(inputs, cache, tokens_to_logits, eos_id, decode_rng=None, num_decodes=1, temperature=1.0, topk=1,
    topp=0.0, cache_offset=0, initial_index=None, max_decode_steps=None, max_decode_steps_hard_limit=None,
    rescale_log_probs=True, state_callback_fn=None, logit_callback_fn=None, *, max_decode_len=None)`;
    `beam_search(inputs, cache, tokens_to_logits, eos_id, num_decodes=4, alpha=0.6, max_decode_len=None, decode_rng=None,
    cache_offset=0, initial_index=None, min_log_prob=None)` (t5x's procedure, brevity penalty);
    `hf_beam_search(..., alpha=1.0, ..., *, early_stopping=EarlyStopping, length_penalty=LengthPenalty)` (HF `generate`
    step for step); `greedy(...)` (argmax, model log-likelihood); `top_k_two_stage(x, k)` (= `lax.top_k`). The two beam
    searches share their set-up and step helpers; only the finished-list and stopping rules differ. Modes are enums,
    parsed in one place each: `BeamProcedure.T5X/HF` (`.decode_fn`; the `--beam_procedure` flag), `LengthPenalty.HF/BREVITY`,
    `EarlyStopping.WHEN_FULL/HEURISTIC/NEVER` (HF's True/False/"never"). "Off" for the sampling filters is 0
    (`TOPK_OFF`, `TOPP_OFF`), also in `infer.DecodeConfig`. `NEG_INF = -1e7`; masks `topk_mask`/`topp_mask` keep ties.
    `alpha`, `topp`, `temperature` may be traced (one compile for several values).
  - Decoding methods: `decoding.METHODS` name -> `DecodingMethod(name, fn, settings, uses_rng)`; `settings` maps the
    `DecodeConfig` settings it reads (`decoding.SETTINGS`: num_beams, alpha, temperature, top_k, top_p) to its keywords.
    `register_method(name, fn, *, settings, uses_rng)` adds one (the only line a new method needs besides its file);
    `get_method(name | fn)` (gin's configurable wrappers unwrap). Built in: greedy, temperature_sample, beam_search,
    hf_beam_search, also gin-configurable as `decoding.<name>`.
  - `infer.DecodeConfig(decode_fn='greedy', num_beams=1, alpha=None, temperature=0.0, top_k=0, top_p=0.0,
    max_decode_length=127, seed=0)`: `decode_fn` a registered name or function (gin `@decoding.beam_search`), kept as the
    name; a setting the method does not read must keep its default (ValueError naming it). `decode_fn_and_kwargs()` ->
    (the function through gin, so its own bindings apply; the settings it reads, None ones left out: alpha None = the
    function's default). `with_settings(**flags)` is how command flags (bound as `infer.decode_flags`, applied by `infer.run_decode_config`) and
    server requests choose the method (num_beams > 1: beam search, the config's if it reads num_beams, else
    `beam_procedure`'s (HF default); temperature > 0: sampling; else greedy; `decode_fn` given: that one). 127 =
    Tk-Instruct's `generate(max_length=128)` less the start token (`infer.TK_INSTRUCT_MAX_DECODE_LENGTH`; eval.gin/infer.gin too).
  - Logical axes: `model.params_logical_axes(input_shapes)` -> pytree (same structure as params) of `PartitionSpec`s of
    logical names, via `jax.eval_shape` (no allocation); `model.variables_logical_axes(input_shapes)` for the whole
    variables dict; `models.get_logical_axes(boxed_variables)` for a tree from `get_initial_variables(..., unbox=False)`
    (`nn.LogicallyPartitioned` boxes). `get_initial_variables` returns plain arrays by default. `model.params_shapes(input_shapes)`
    gives ShapeDtypeStructs. Param axes: `embed`, `vocab`, `joined_kv`, `mlp`, `heads`, `relpos_buckets`; activations
    are constrained on `batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `joined_kv`, `vocab`.
- Gin names (t5x's): `network.T5Config`, `network.Transformer`, `models.EncoderDecoderModel`. Model gin files are
  `gin_configs/models/{t5_1_0,t5_1_1,mt5}/{tiny,small,base,large,xl,xxl}.gin` and bind `MODEL`, `VOCABULARY` and the
  macros `DROPOUT_RATE`, `Z_LOSS`, `LABEL_SMOOTHING`, `LOSS_NORMALIZING_FACTOR`.
  `gin_utils.load_config_from_gin(gin_files, bindings) -> T5Config` (clears and parses gin; loads no vocabulary);
  `gin_utils.get_model_from_gin(gin_files, bindings) -> BaseModel` (builds `%MODEL`; loads the vocabulary;
  GinConfigError without MODEL); `gin_utils.model_from_gin()` builds the parsed config's `MODEL`.
  `models.LossNormalizingFactor` (gin: `%models.LossNormalizingFactor.NUM_REAL_TARGET_TOKENS`) and
  `models.loss_normalizer(value) -> float | None` (None, a positive number, the enum or its name; else ValueError).
  `models.init_input_shapes(batch_size=1, inputs_length=1, targets_length=1)`: the `input_shapes` used to build
  parameters (T5's shapes do not depend on them).
"""
