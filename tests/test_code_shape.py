"""The shape of tkx's code: no function over ~80 lines without saying why in its docstring."""

import ast
import pathlib

MAX_LINES = 80
REASON = "Long because"
TKX = pathlib.Path(__file__).resolve().parents[1] / "tkx"


def _code_lines(function) -> int:
  """Lines of a function's body after its docstring."""
  body = function.body
  has_docstring = (
      isinstance(body[0], ast.Expr)
      and isinstance(body[0].value, ast.Constant)
      and isinstance(body[0].value.value, str)
  )
  first = body[1] if has_docstring and len(body) > 1 else body[0]
  return function.end_lineno - first.lineno + 1


def test_long_functions_say_why():
  unexplained = []
  for path in sorted(TKX.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      lines = _code_lines(node)
      if lines > MAX_LINES and REASON not in (ast.get_docstring(node) or ""):
        unexplained.append(
            f"{path.relative_to(TKX.parent)}:{node.lineno} {node.name}: {lines} lines"
        )
  assert not unexplained, (
      f"functions over {MAX_LINES} lines of code: split them, or say in the docstring "
      f"'{REASON} ...':\n" + "\n".join(unexplained)
  )
