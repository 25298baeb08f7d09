"""The NI metrics as SeqIO metric functions: `metric_fn(targets, predictions) -> dict`.

`targets` are the postprocessed targets of a SeqIO task: for NI each is the list
of all reference outputs of an example (a bare string counts as one reference).
Use in a `seqio.Task(metric_fns=[ni_metrics])`; the x-lingual track's tasks use
`ni_metrics_xlingual`.
"""

from tkx.metrics import ni_metrics as _ni


def _as_reference_lists(targets):
  return [[t] if isinstance(t, str) else list(t) for t in targets]


def _decode(text):
  return text.decode("utf-8") if isinstance(text, bytes) else text


def ni_metrics(targets, predictions, xlingual=False):
  """{"exact_match", "rouge1", "rougeL"} over examples (max over each example's references), x100."""
  references = [
      [_decode(r) for r in refs] for refs in _as_reference_lists(targets)
  ]
  return _ni.compute_metrics(
      [_decode(p) for p in predictions], references, xlingual=xlingual
  )


def ni_metrics_xlingual(targets, predictions):
  """`ni_metrics` with the x-lingual track's GPT-2 byte-level BPE ROUGE tokenisation."""
  return ni_metrics(targets, predictions, xlingual=True)
