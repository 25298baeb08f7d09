"""Conversion between the per-layer and the scanned (`T5Config.scan_layers`) parameter layouts.

Per layer (t5x's default):  encoder/layers_0/attention/query/kernel [embed, joined_kv], ...
Scanned:                    encoder/layers/attention/query/kernel   [layers, embed, joined_kv]

The scanned layout stacks layers_0 .. layers_{n-1} of each stack (`encoder`,
`decoder`) along a new leading axis (logical name "layers"); everything else
(embeddings, relative-position tables, final norms, logits) is unchanged. The
layout is read from the tree itself, so checkpoints of either kind convert to
whatever a model expects. Works on numpy or jax arrays (and on any leaves
`np.stack`/indexing accept), nested dicts or FrozenDicts, with or without a
top-level "params" key. Pure and eager: the caller decides where the arrays live.
"""

import re
from typing import Any, Mapping

import numpy as np

from tkx import errors

PyTree = Any

STACKS = ("encoder", "decoder")
SCANNED_KEY = "layers"
_LAYER_KEY = re.compile(r"^layers_(\d+)$")


def _as_dict(tree: Mapping) -> dict:
  return {
      k: _as_dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()
  }


def _stack_fn(leaves):
  first = leaves[0]
  if type(first).__module__.startswith("jax"):
    import jax.numpy as jnp

    return jnp.stack(leaves)
  return np.stack([np.asarray(x) for x in leaves])


def _tree_map(fn, *trees):
  head = trees[0]
  if isinstance(head, Mapping):
    return {k: _tree_map(fn, *(t[k] for t in trees)) for k in head}
  return fn(*trees)


def _unwrap(params: Mapping):
  """(the params level, a function putting a converted params level back in place)."""
  params = _as_dict(params)
  if set(params) == {"params"}:
    return params["params"], lambda p: {"params": p}
  return params, lambda p: p


def _layer_indices(stack: Mapping) -> list:
  return sorted(int(m.group(1)) for k in stack if (m := _LAYER_KEY.match(k)))


def is_scanned(params: Mapping) -> bool:
  """True when the tree has the scanned layout (an `encoder/layers` or `decoder/layers` subtree)."""
  params, _ = _unwrap(params)
  return any(SCANNED_KEY in params.get(s, {}) for s in STACKS)


def scan_params(params: Mapping) -> PyTree:
  """Per-layer -> scanned layout (unchanged when already scanned)."""
  params, wrap = _unwrap(params)
  if is_scanned(params):
    return wrap(params)
  out = dict(params)
  for name in STACKS:
    if name not in params:
      continue
    stack = dict(params[name])
    indices = _layer_indices(stack)
    if not indices:
      continue
    if indices != list(range(len(indices))):
      raise errors.UserError(
          f"{name}: layers {indices} are not numbered 0..{len(indices) - 1}"
      )
    layers = [stack.pop(f"layers_{i}") for i in indices]
    try:
      stack[SCANNED_KEY] = _tree_map(lambda *xs: _stack_fn(xs), *layers)
    except KeyError as e:
      raise errors.UserError(
          f"{name}: the layers do not all have the same parameters ({e} differs)"
      ) from None
    out[name] = stack
  return wrap(out)


def unscan_params(params: Mapping) -> PyTree:
  """Scanned -> per-layer layout (unchanged when already per-layer)."""
  params, wrap = _unwrap(params)
  if not is_scanned(params):
    return wrap(params)
  out = dict(params)
  for name in STACKS:
    if name not in params or SCANNED_KEY not in params[name]:
      continue
    stack = dict(params[name])
    stacked = stack.pop(SCANNED_KEY)
    sizes = set()
    _tree_map(lambda x: sizes.add(int(np.shape(x)[0])), stacked)
    if len(sizes) != 1:
      raise errors.UserError(
          f"{name}/{SCANNED_KEY}: stacked parameters disagree on the number of layers {sorted(sizes)}"
      )
    for i in range(sizes.pop()):
      stack[f"layers_{i}"] = _tree_map(lambda x, i=i: x[i], stacked)
    out[name] = stack
  return wrap(out)


def to_layout(params: Mapping, scanned: bool) -> PyTree:
  """`params` in the scanned (True) or per-layer (False) layout, whichever it had."""
  return scan_params(params) if scanned else unscan_params(params)
