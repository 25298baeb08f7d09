"""A toy decoding method, as a user adds one: this file plus one registration line.

`least_likely` picks the least likely real token (never padding) each step, until EOS or
the length limit: t5x's `temperature_sample` with a logit callback that turns the
ranking upside down. It reads no `DecodeConfig` setting, so registering it is
`decoding.register_method("least_likely", toy_decoding.least_likely)`.
"""

from tkx import decoding


def least_likely(
    inputs,
    cache,
    tokens_to_logits,
    eos_id,
    decode_rng=None,
    num_decodes=1,
    cache_offset=0,
    *,
    max_decode_len=None,
):
  def upside_down(logits, state):
    del state
    flipped = -logits
    return flipped.at[:, 0].set(decoding.NEG_INF)  # never padding

  return decoding.temperature_sample(
      inputs,
      cache,
      tokens_to_logits,
      eos_id,
      decode_rng,
      num_decodes,
      temperature=0.0,
      topk=decoding.TOPK_OFF,
      cache_offset=cache_offset,
      logit_callback_fn=upside_down,
      max_decode_len=max_decode_len,
  )
