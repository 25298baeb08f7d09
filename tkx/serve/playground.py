"""The playground page served at `/`: a form (definition, examples, input, settings) that calls
`/v1/generate` and shows the answer. Self-contained: no external scripts, styles or fonts.

`page(adapters)`: the page with the served LoRA adapters in its "Adapter" select box (first
option: the base model); `PAGE` is the page of a server without adapters.
"""

import html
from typing import Sequence

_ADAPTER_OPTIONS = "<!--adapter options-->"

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tkx playground</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 1.5rem auto; padding: 0 1rem;
         color: #1d2330; background: #fafbfc; }
  h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
  p.lead { margin-top: 0; color: #586174; }
  label { display: block; font-weight: 600; margin: 0.8rem 0 0.25rem; }
  textarea, input[type=text], input[type=number], select {
    width: 100%; box-sizing: border-box; font: inherit; padding: 0.4rem; border: 1px solid #c5cad3;
    border-radius: 4px; background: #fff; }
  textarea { min-height: 3.5rem; resize: vertical; }
  fieldset { border: 1px solid #dde1e7; border-radius: 6px; margin: 0.8rem 0; padding: 0.4rem 0.8rem 0.8rem; }
  legend { font-weight: 600; }
  .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 0.6rem; }
  .settings { display: grid; grid-template-columns: repeat(4, 1fr); gap: 0.6rem; }
  button { margin-top: 1rem; font: inherit; font-weight: 600; padding: 0.5rem 1.4rem; border: 0;
           border-radius: 4px; background: #2456c9; color: #fff; cursor: pointer; }
  button:disabled { background: #8aa2d8; cursor: wait; }
  #answer { white-space: pre-wrap; min-height: 1.5rem; padding: 0.6rem; border-radius: 4px;
            background: #eef2fb; border: 1px solid #cfd9f2; }
  #details { color: #586174; font-size: 0.9rem; margin-top: 0.3rem; }
  #error { color: #a4161a; font-weight: 600; }
</style>
</head>
<body>
<h1>tkx playground</h1>
<p class="lead">Give an instruction, a few examples and an input; the model answers.</p>
<form id="form">
  <label for="definition">Definition</label>
  <textarea id="definition" name="definition">Given a country, return its currency.</textarea>
  <fieldset>
    <legend>Positive examples</legend>
    <div class="pair">
      <div><label for="pos1_input">Input 1</label><input type="text" id="pos1_input" value="India"></div>
      <div><label for="pos1_output">Output 1</label><input type="text" id="pos1_output" value="Rupee"></div>
      <div><label for="pos2_input">Input 2</label><input type="text" id="pos2_input" value="Japan"></div>
      <div><label for="pos2_output">Output 2</label><input type="text" id="pos2_output" value="Yen"></div>
    </div>
  </fieldset>
  <fieldset>
    <legend>Negative example (used by encodings with neg1 or more)</legend>
    <div class="pair">
      <div><label for="neg1_input">Input</label><input type="text" id="neg1_input" value=""></div>
      <div><label for="neg1_output">Output</label><input type="text" id="neg1_output" value=""></div>
    </div>
  </fieldset>
  <label for="adapter">Adapter</label>
  <select id="adapter">
    <option value="" selected>(base model)</option>
    <!--adapter options-->
  </select>
  <label for="input">Input</label>
  <textarea id="input" name="input">France</textarea>
  <div class="settings">
    <div><label for="encoding">Encoding</label>
      <select id="encoding">
        <option value="def_pos2" selected>def_pos2</option>
        <option value="def">def</option>
        <option value="pos2">pos2</option>
        <option value="def_pos2_neg2">def_pos2_neg2</option>
        <option value="none">none</option>
      </select></div>
    <div><label for="max_decode_length">Max output tokens</label>
      <input type="number" id="max_decode_length" min="1" placeholder="server default"></div>
    <div><label for="num_beams">Beams</label>
      <input type="number" id="num_beams" min="1" placeholder="1"></div>
    <div><label for="temperature">Temperature</label>
      <input type="number" id="temperature" min="0" step="0.1" placeholder="0 (greedy)"></div>
  </div>
  <button type="submit" id="submit">Generate</button>
</form>
<label>Answer</label>
<div id="answer" aria-live="polite"></div>
<div id="details"></div>
<div id="error" role="alert"></div>
<script>
(function () {
  const $ = (id) => document.getElementById(id);
  function examples(prefix, count) {
    const out = [];
    for (let i = 1; i <= count; i++) {
      const input = $(prefix + i + "_input").value, output = $(prefix + i + "_output").value;
      if (input.trim() || output.trim()) out.push({input: input, output: output});
    }
    return out;
  }
  function request() {
    const body = {
      definition: $("definition").value,
      positive_examples: examples("pos", 2),
      negative_examples: examples("neg", 1),
      input: $("input").value,
      encoding: $("encoding").value,
    };
    for (const [field, parse] of [["max_decode_length", parseInt], ["num_beams", parseInt],
                                  ["temperature", parseFloat]]) {
      const text = $(field).value.trim();
      if (text) body[field] = parse(text);
    }
    if (!body.encoding.includes("def")) delete body.definition;
    if ($("adapter").value) body.adapter = $("adapter").value;
    return body;
  }
  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("submit").disabled = true;
    $("error").textContent = "";
    $("details").textContent = "generating...";
    $("answer").textContent = "";
    try {
      const response = await fetch("/v1/generate", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(request())});
      const data = await response.json();
      if (!response.ok) {
        $("details").textContent = "";
        $("error").textContent = "HTTP " + response.status + ": " + data.error;
        return;
      }
      $("answer").textContent = data.prediction;
      $("details").textContent = data.input_tokens + " prompt tokens, " + data.output_tokens +
          " output tokens" + (data.truncated ? " (the prompt was cut to the token budget)" : "");
    } catch (e) {
      $("details").textContent = "";
      $("error").textContent = "request failed: " + e;
    } finally {
      $("submit").disabled = false;
    }
  });
})();
</script>
</body>
</html>
"""


def page(adapters: Sequence[str] = ()) -> str:
  """The playground with `adapters` (served adapter names) to choose from."""
  options = "\n    ".join(
      f'<option value="{html.escape(name)}">{html.escape(name)}</option>'
      for name in adapters
  )
  return _TEMPLATE.replace(_ADAPTER_OPTIONS, options)


PAGE = page()
