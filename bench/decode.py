"""Greedy decoding throughput: tkx float32 / int8 against HF transformers and CTranslate2 float32 / int8.

All decode the same inputs with the same weights in the same run:
  * inputs: test instances of the shared NI sample, encoded `def_pos2` with the
    1024-token budget (the embedded SentencePiece vocabulary counts tokens), up
    to 128 output tokens;
  * weights: a random T5 1.1 `small` (8+8 layers, d_model 512, vocab 32,128) built
    in transformers with a fixed seed and converted with `tkx.checkpoints.hf`;
    saved as a tkx checkpoint and exported with `tkx export-checkpoint` (the peer,
    HF transformers `generate`, loads that export), which CTranslate2's
    `TransformersConverter` converts to float32 and to int8 (its int8 also
    quantizes activations, per token, at run time); tkx int8 is `--quantize int8`'s
    conversion (weight-only, per output channel);
  * batches: the same examples per batch for all (`infer.plan_batches`:
    shortest first, so batches hold neighbours in length). tkx pads each batch
    to its length bucket (`infer.DEFAULT_INPUT_BUCKETS`) and fills the last one
    with dummy rows; PyTorch and CTranslate2 pad each batch to its longest input.
Compilation (tkx) and a warm-up call (the others) are excluded from the timings.
Each system's examples/s is printed with its ratio to the peer's, and its outputs
compared with the peer's token for token (trimmed at EOS). CTranslate2 rows need
`pip install -e ".[bench]"` (skipped, saying so, without it).

    python bench/decode.py [--quick] [--num_examples N] [--batch_size B] [--ni_dir DIR]
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

SMALL = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=1024,
    num_layers=8,
    num_decoder_layers=8,
    num_heads=6,
)
TINY = dict(
    vocab_size=32128,
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
)
EOS = 1


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  parser.add_argument(
      "--ni_dir",
      default=os.path.join(
          os.path.dirname(repo), "shared", "natural-instructions"
      ),
      help="NI checkout whose default/test split is decoded (default: the shared sample)",
  )
  parser.add_argument(
      "--num_examples",
      type=int,
      default=None,
      help="examples to decode (default 48; quick 8)",
  )
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--max_decode_length", type=int, default=128)
  parser.add_argument("--max_input_length", type=int, default=1024)
  parser.add_argument(
      "--model",
      choices=["small", "tiny"],
      default="small",
      help="T5 1.1 size (tiny: a quick smoke run)",
  )
  parser.add_argument(
      "--quick",
      action="store_true",
      help="few examples, short outputs: a smoke run",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--smoke",
      action="store_true",
      help="a few seconds' run to check the script works (tests); its figures mean nothing",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    args.model, args.num_examples, args.batch_size = "tiny", 2, 2
    args.max_decode_length, args.max_input_length = 4, 128
  if args.num_examples is None:
    args.num_examples = 8 if args.quick else 48
  if args.quick:
    args.max_decode_length = min(args.max_decode_length, 32)
  return args


def load_inputs(ni_dir, num_examples, max_input_length, vocabulary, seed):
  """Encoded test inputs, a few per task from a seeded task order, as token ids ending in EOS."""
  from tkx.data import encodings, ni

  token_count, truncate = encodings.vocabulary_token_fns(vocabulary)
  names = ni.split_tasks(ni_dir, "default", "test", skip_missing=True)
  random.Random(seed).shuffle(names)
  per_task = max(1, -(-num_examples // max(1, len(names))))
  texts = []
  for name in names:
    task = ni.load_task(ni_dir, name)
    for instance in ni.select_instances(task, "test", None, seed)[:per_task]:
      texts.append(
          encodings.encode_source(
              task,
              instance,
              "def_pos2",
              max_source_length=max_input_length,
              token_count=token_count,
              truncate=truncate,
          )
      )
    if len(texts) >= num_examples:
      break
  texts = texts[:num_examples]
  return [
      list(vocabulary.encode(t))[: max_input_length - 1] + [EOS] for t in texts
  ]


def build_models(size, seed):
  import torch
  import transformers
  from tkx.checkpoints import hf
  from tkx.data import vocab as vocab_lib
  from tkx.models import models, network

  hf_config = transformers.T5Config(
      **size,
      feed_forward_proj="gated-gelu",
      tie_word_embeddings=False,
      dropout_rate=0.0,
      decoder_start_token_id=0,
      pad_token_id=0,
      eos_token_id=EOS,
  )
  torch.manual_seed(seed)
  hf_model = transformers.T5ForConditionalGeneration(hf_config).eval()
  with torch.no_grad():  # an LM head of its own, as T5 1.1 (transformers 5 builds it tied to `shared`)
    hf_model.lm_head.weight = torch.nn.Parameter(
        torch.randn(size["vocab_size"], size["d_model"]) * 0.05
    )
  config = hf.hf_config_to_t5config(hf_model.config.to_dict())
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  params = hf.hf_to_params(state, config)
  vocabulary = vocab_lib.get_vocabulary()
  return (
      hf_model,
      models.EncoderDecoderModel(
          network.Transformer(config), vocabulary, vocabulary
      ),
      params,
      vocabulary,
  )


def trim(row):
  row = [int(t) for t in row]
  return row[: row.index(EOS)] if EOS in row else [t for t in row if t != 0]


def run_hf(hf_model, inputs, plan, max_decode_length):
  import torch

  outputs = [None] * len(inputs)
  with torch.no_grad():
    for _, indices in plan:
      width = max(len(inputs[i]) for i in indices)
      ids = np.zeros((len(indices), width), np.int64)
      for row, i in enumerate(indices):
        ids[row, : len(inputs[i])] = inputs[i]
      out = hf_model.generate(
          input_ids=torch.tensor(ids),
          attention_mask=torch.tensor(ids > 0),
          max_new_tokens=max_decode_length,
          do_sample=False,
          num_beams=1,
      )
      for row, i in enumerate(indices):
        outputs[i] = trim(out[row, 1:].numpy())  # drop the decoder start token
  return outputs


def export_models(model, params, work_dir):
  """The tkx weights as a tkx checkpoint -> `tkx export-checkpoint` (HF) -> CTranslate2 float32 and int8.

  Returns {"hf": dir, "float32": dir, "int8": dir}; CTranslate2 dirs only when it is installed.
  """
  from tkx import cli
  from tkx.checkpoints import directory, orbax_io

  checkpoint = os.path.join(work_dir, "tkx")
  orbax_io.save_params(checkpoint, params, step=0)
  with open(os.path.join(checkpoint, "model.gin"), "w", encoding="utf-8") as f:
    f.write(directory.config_to_gin(model.config))
  dirs = {"hf": os.path.join(work_dir, "hf")}
  cli.run(["export-checkpoint", "--checkpoint", checkpoint, "--hf", dirs["hf"]])
  if ctranslate2_module() is not None:
    from ctranslate2 import converters

    for quantization in ("float32", "int8"):
      dirs[quantization] = os.path.join(work_dir, f"ct2_{quantization}")
      converters.TransformersConverter(dirs["hf"]).convert(
          dirs[quantization], quantization=quantization, force=True
      )
  return dirs


def ctranslate2_module():
  try:
    import ctranslate2

    return ctranslate2
  except ImportError:
    return None


def run_ctranslate2(model_dir, compute_type, inputs, plan, max_decode_length):
  """CTranslate2's greedy `translate_batch` on the same batches; (outputs, seconds, warm-up excluded)."""
  import json

  import ctranslate2

  translator = ctranslate2.Translator(
      model_dir,
      device="cpu",
      compute_type=compute_type,
      intra_threads=os.cpu_count() or 1,
  )
  with open(
      os.path.join(model_dir, "shared_vocabulary.json"), encoding="utf-8"
  ) as f:
    pieces = json.load(
        f
    )  # index = token id (HF's vocabulary, padded to vocab_size)
  ids = {piece: i for i, piece in enumerate(pieces)}

  def translate(indices, length):
    batch = [[pieces[t] for t in inputs[i]] for i in indices]
    results = translator.translate_batch(
        batch, beam_size=1, max_decoding_length=length, max_input_length=0
    )
    return [trim([ids[p] for p in r.hypotheses[0]]) for r in results]

  translate([0], 4)  # warm-up
  outputs = [None] * len(inputs)
  start = time.perf_counter()
  for _, indices in plan:
    for i, out in zip(indices, translate(indices, max_decode_length)):
      outputs[i] = out
  return outputs, time.perf_counter() - start


def tkx_predictor(model, params, args, buckets):
  import jax
  from tkx import infer, partitioning

  return infer.Predictor(
      model,
      params,
      partitioner=partitioning.Partitioner(
          num_partitions=1, devices=jax.devices()[:1]
      ),
      batch_size=args.batch_size,
      decode_config=infer.DecodeConfig(
          max_decode_length=args.max_decode_length
      ),
      input_buckets=buckets,
  )


def run_tkx(predictor, inputs, plan):
  """(outputs, seconds, compile seconds): every bucket used compiled first, outside the timing."""
  start = time.perf_counter()
  predictor.predict_ids(
      [inputs[indices[0]] for _, indices in {b: i for b, i in plan}.items()],
      progress=False,
  )
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  outputs = predictor.predict_ids(inputs, progress=False)
  return outputs, time.perf_counter() - start, compile_s


def main(argv=None):
  args = parse_args(argv)
  import tempfile

  import jax
  import torch
  import transformers
  from tkx import infer
  from tkx.models import quantize

  if not os.path.isdir(os.path.join(args.ni_dir, "tasks")):
    raise SystemExit(f"NI checkout not found at {args.ni_dir} (pass --ni_dir)")
  size = TINY if args.model == "tiny" else SMALL
  print(
      f"devices: {jax.devices()}; torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}"
  )
  _, model, params, vocabulary = build_models(size, args.seed)
  inputs = load_inputs(
      args.ni_dir,
      args.num_examples,
      args.max_input_length,
      vocabulary,
      args.seed,
  )
  lengths = [len(x) for x in inputs]
  print(
      f"{len(inputs)} inputs from {args.ni_dir} (def_pos2): length min {min(lengths)} mean "
      f"{np.mean(lengths):.0f} max {max(lengths)}; T5 1.1 {args.model}; greedy, "
      f"{args.max_decode_length} output tokens max; batch {args.batch_size}"
  )
  buckets = infer.buckets_up_to(args.max_input_length)
  plan = infer.plan_batches(lengths, args.batch_size, buckets)
  quantized = quantize.quantize_model(model)
  qparams = quantize.quantize_params(params, quantized)

  rows = {}  # name -> (outputs, seconds, note)
  with tempfile.TemporaryDirectory() as work_dir:
    dirs = export_models(model, params, work_dir)
    # The peer: the exported HF model in transformers (as CTranslate2 converts it).
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(
        dirs["hf"]
    ).eval()
    run_hf(hf_model, [inputs[0]], [(0, [0])], 4)  # warm-up
    start = time.perf_counter()
    outputs = run_hf(hf_model, inputs, plan, args.max_decode_length)
    rows[PEER] = (outputs, time.perf_counter() - start, "")
    for compute_type in ("float32", "int8"):
      name = f"CTranslate2 {compute_type}"
      if compute_type not in dirs:
        print(
            f"{name}: skipped, ctranslate2 is not installed (pip install -e '.[bench]')"
        )
        continue
      rows[name] = run_ctranslate2(
          dirs[compute_type], compute_type, inputs, plan, args.max_decode_length
      ) + ("",)
  for name, (m, p) in {
      "tkx float32": (model, params),
      "tkx int8": (quantized, qparams),
  }.items():
    predictor = tkx_predictor(m, p, args, buckets)
    outputs, seconds, compile_s = run_tkx(predictor, inputs, plan)
    note = (
        f"+{compile_s:.1f}s compiling {len(predictor.compiled_shapes)} programs"
    )
    rows[name] = (outputs, seconds, note)
  print_table(rows, inputs)
  return 0


PEER = "HF transformers"


def print_table(rows, inputs):
  """examples/s, seconds, the ratio to the peer and outputs identical to the peer's, per system."""
  peer_outputs, peer_s, _ = rows[PEER]
  print(
      f"\n{'':20s}{'examples/s':>11s}{'seconds':>9s}{'vs ' + PEER:>20s}"
      f"{'same as HF':>12s}{'token agreement':>17s}"
  )
  for name, (outputs, seconds, note) in rows.items():
    same = sum(a == b for a, b in zip(outputs, peer_outputs))
    positions = sum(max(len(a), len(b)) for a, b in zip(outputs, peer_outputs))
    agree = sum(
        sum(x == y for x, y in zip(a, b)) for a, b in zip(outputs, peer_outputs)
    )
    print(
        f"{name:20s}{len(inputs) / seconds:11.3f}{seconds:9.2f}{peer_s / seconds:19.2f}x"
        f"{same:>7d}/{len(inputs):<4d}{100.0 * agree / max(positions, 1):16.2f}%  {note}"
    )
  out_tokens = sum(len(o) for o in peer_outputs)
  print(
      f"({out_tokens} output tokens from {PEER}, {out_tokens / len(inputs):.1f} per example; "
      "differences are float near-ties between kernels on a random model, or int8 rounding)"
  )


if __name__ == "__main__":
  sys.exit(main())
