"""The report is one short function per section, AutoAttack's loop a few short helpers:
no function over 50 lines, no class over 150 (the architecture's one-job rule)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("evaluations/report.py", "evaluations/report_calibration.py",
           "evaluations/report_attacks.py", "evaluations/report_mechanism.py",
           "attacks/autoattack.py")


def _definitions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("module", MODULES)
def test_functions_and_classes_stay_short(module):
    long = [f"{node.name}: {lines} lines" for node, lines in _definitions(ROOT / module)
            if lines > (150 if isinstance(node, ast.ClassDef) else 50)]
    assert not long, f"{module}: {long}"


def test_the_report_has_one_function_per_section():
    from robustmix.evaluations import report

    for name in ("runs_section", "predictions_section", "robustness_section",
                 "generalization_section", "profile_section", "q_section", "gallery_section"):
        assert callable(getattr(report, name)), name
