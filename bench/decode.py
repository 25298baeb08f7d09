"""Greedy decoding throughput: tkx (JAX, length buckets) against Hugging Face PyTorch `generate`.

Both decode the same inputs with the same weights in the same run:
  * inputs: test instances of the shared NI sample, encoded `def_pos2` with the
    1024-token budget (the embedded SentencePiece vocabulary counts tokens), up
    to 128 output tokens;
  * weights: a random T5 1.1 `small` (8+8 layers, d_model 512, vocab 32,128) built
    in transformers with a fixed seed, converted with `tkx.checkpoints.hf`;
  * batches: the same examples per batch for both (`infer.plan_batches`:
    shortest first, so batches hold neighbours in length). tkx pads each batch
    to its length bucket (`infer.DEFAULT_INPUT_BUCKETS`) and fills the last one
    with dummy rows; PyTorch pads each batch to its longest input.
Compilation (tkx) and a warm-up call (PyTorch) are excluded from the timings.
Outputs are compared token for token (trimmed at EOS) and the agreement printed.

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


def main(argv=None):
  args = parse_args(argv)
  import jax
  import torch
  from tkx import infer, partitioning

  if not os.path.isdir(os.path.join(args.ni_dir, "tasks")):
    raise SystemExit(f"NI checkout not found at {args.ni_dir} (pass --ni_dir)")
  size = TINY if args.model == "tiny" else SMALL
  print(
      f"devices: {jax.devices()}; torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}"
  )
  hf_model, model, params, vocabulary = build_models(size, args.seed)
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
  predictor = infer.Predictor(
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
  # Compile every bucket used (one example each) and warm PyTorch up, outside the timings.
  t = time.time()
  predictor.predict_ids(
      [inputs[indices[0]] for _, indices in {b: i for b, i in plan}.items()],
      progress=False,
  )
  compile_s = time.time() - t
  run_hf(hf_model, [inputs[0]], [(0, [0])], 4)

  t = time.time()
  ours = predictor.predict_ids(inputs, progress=False)
  ours_s = time.time() - t
  t = time.time()
  theirs = run_hf(hf_model, inputs, plan, args.max_decode_length)
  theirs_s = time.time() - t

  same = sum(a == b for a, b in zip(ours, theirs))
  positions = sum(max(len(a), len(b)) for a, b in zip(ours, theirs))
  agree = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(ours, theirs))
  out_tokens = sum(len(o) for o in ours)
  print(f"\n{'':28s}{'examples/s':>12s}{'seconds':>10s}")
  print(
      f"{'tkx (JAX, length buckets)':28s}{len(inputs) / ours_s:12.3f}{ours_s:10.2f}"
      f"   (+{compile_s:.1f}s compiling {len(predictor.compiled_shapes)} programs)"
  )
  print(
      f"{'HF transformers generate':28s}{len(inputs) / theirs_s:12.3f}{theirs_s:10.2f}"
  )
  print(
      f"speed-up: {theirs_s / ours_s:.2f}x   ({out_tokens} output tokens, "
      f"{out_tokens / len(inputs):.1f} per example)"
  )
  print(
      f"identical outputs: {same}/{len(inputs)}; token agreement {agree}/{positions} "
      f"({100.0 * agree / max(positions, 1):.2f}%)"
  )
  if same < len(inputs):
    first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    split = next(
        (
            k
            for k, (x, y) in enumerate(zip(ours[first], theirs[first]))
            if x != y
        ),
        min(len(ours[first]), len(theirs[first])),
    )
    print(
        f"first difference: example {first} at output token {split} (float32 near-ties between XLA and "
        f"PyTorch kernels on a random model)"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
