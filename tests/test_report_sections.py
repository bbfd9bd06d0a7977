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


def test_the_q_settings_note_compares_every_methods_options_where_every_file_has_them():
    """Two runs whose Q met FMix masks of different decay power did not meet the same
    masks: the note warns, though the built-in settings agree; files of before the options
    dict are compared on the settings they hold."""
    from types import SimpleNamespace

    from robustmix.evaluations.report_mechanism import _q_settings_note

    def record(name, **q):
        base = {"alpha": 1.0, "hmix_r": 0.5, "switch_prob": 0.5, "draws": 64, "seed": 0}
        return SimpleNamespace(name=name, generalization={"regularizer": {**base, **q}})

    same = [record("a", options={"fmix": {"decay": 3.0}}),
            record("b", options={"fmix": {"decay": 3.0}})]
    assert _q_settings_note(same)[0].startswith("All runs share the mask settings and draws "
                                                "(alpha = 1.0, hmix_r = 0.5, switch_prob = "
                                                "0.5, draws = 64, seed = 0)")
    other = [same[0], record("b", options={"fmix": {"decay": 2.0}})]
    warning = _q_settings_note(other)[0]
    assert warning.startswith("Warning: Q was computed with different mask settings")
    assert "fmix.decay=3.0" in warning and "fmix.decay=2.0" in warning
    old = [record("a"), record("b", options={"fmix": {"decay": 2.0}})]
    assert _q_settings_note(old)[0].startswith("All runs share")
    assert _q_settings_note([record("a"), record("b", draws=32)])[0].startswith("Warning")
