"""Size limits on the agent's source: no function longer than 80 lines, no module longer than
500 lines. A function counts from its first decorator to its last line, docstring and
comments included; nested functions count on their own (and inside their parent)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "agent"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def _functions(tree: ast.Module) -> Iterator[tuple[str, int]]:
    """(qualified name, lines) of every function and method."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    yield name, (child.end_lineno or child.lineno) - first + 1
                yield from walk(child, f"{name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _oversized() -> dict[str, int]:
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            found[rel] = lines
        for name, lines in _functions(ast.parse(text)):
            if lines > MAX_FUNCTION_LINES:
                found[f"{rel}::{name}"] = lines
    return found


def test_no_function_over_80_lines_and_no_module_over_500() -> None:
    over = _oversized()
    assert over == {}, "split them: a function is at most 80 lines, a module at most 500"


def test_the_counting() -> None:
    tree = ast.parse(
        "@dec\n"
        "def f():\n"
        "    def g():\n"
        "        pass\n"
        "class C:\n"
        "    async def m(self):\n"
        "        return 1\n"
    )
    assert dict(_functions(tree)) == {"f": 4, "f.g": 2, "C.m": 2}
