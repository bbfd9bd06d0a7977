"""Rules on the source text that CI checks beside the import layers (lint-imports); they are
reviewers' rules, not behaviour, so they live here rather than in the test suite:

- no function of the library (robustmix/, attacks/, evaluations/) over 60 lines;
- no module of attacks/ or evaluations/ spells a run directory's file name: it uses the
  names of robustmix.core.runs (plots.py names its PNG files after them and is left out).

Run from the repository root: ``python .ci/source_rules.py``; exits 1 naming each breach.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("robustmix", "attacks", "evaluations")
MAX_FUNCTION_LINES = 60
RUN_FILE_NAMES = ("CONFIG", "METRICS", "CHECKPOINT", "WEIGHTS", "ROBUSTNESS",
                  "ROBUSTNESS_EXAMPLES", "ATTACK_STATE", "GENERALIZATION", "PROFILE_CSV",
                  "REGULARIZER_CSV", "CORRUPTIONS")


def library_modules():
    """Every library module once (robustmix/attacks and robustmix/evaluations are links to
    the top-level folders, which are read instead)."""
    for folder in LIBRARY:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if folder == "robustmix" and relative.parts[1] in ("attacks", "evaluations"):
                continue
            yield relative, ast.parse(path.read_text(encoding="utf-8"))


def long_functions(relative: Path, tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                yield f"{relative}:{node.lineno}: {node.name} has {lines} lines " \
                      f"(at most {MAX_FUNCTION_LINES})"


def _string_constants(tree: ast.Module):
    """Every string constant of a module but its docstrings (f-string parts included)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def spelled_run_files(relative: Path, tree: ast.Module, names: list[str]):
    if relative.parts[0] not in ("attacks", "evaluations") or relative.name == "plots.py":
        return
    for line, value in _string_constants(tree):
        if any(name in value for name in names):
            yield f"{relative}:{line}: {value!r} spells a run file name: use " \
                  "robustmix.core.runs' names"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from robustmix.core import runs

    names = [getattr(runs, name) for name in RUN_FILE_NAMES]
    breaches, read = [], 0
    for relative, tree in library_modules():
        read += relative.parts[0] in ("attacks", "evaluations")
        breaches += long_functions(relative, tree)
        breaches += spelled_run_files(relative, tree, names)
    if read < 10:
        breaches.append(f"only {read} modules found under attacks/ and evaluations/")
    for breach in breaches:
        print(breach)
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
