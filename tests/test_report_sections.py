"""The report's note on the settings Q was computed with: it warns when runs met different
masks. (The rule that functions stay short is checked by .ci/source_rules.py.)"""

from __future__ import annotations


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
