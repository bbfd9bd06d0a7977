"""docs/api.md cannot drift from the code: every exported name is on the page, every
signature on the page is the code's own, and the examples run, top to bottom, as one
notebook would."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path

import pytest

from helpers import one_thread

PAGE = Path(__file__).resolve().parent.parent / "docs" / "api.md"
# the packages whose __all__ is the public API; every name in it must be on the page
EXPORTING = ("robustmix", "robustmix.training", "robustmix.mixing", "robustmix.attacks",
             "robustmix.evaluations")
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def entries() -> dict[str, str]:
    """Each qualified name in a `###` heading, with the text of its entry."""
    found = {}
    for block in re.split(r"^### ", PAGE.read_text(), flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        for name in re.findall(r"`([\w.]+)`", heading):
            found[name] = body.split("\n## ")[0]
    return found


def resolve(qualified: str):
    """The object a qualified name names, attribute by attribute (a package's attribute wins
    over a submodule of the same name: ``robustmix.evaluations.calibration`` is the function)."""
    parts = qualified.split(".")
    obj = importlib.import_module(parts[0])
    for depth, part in enumerate(parts[1:], 2):
        if not hasattr(obj, part):
            importlib.import_module(".".join(parts[:depth]))
        obj = getattr(obj, part)
    return obj


def _annotation(annotation) -> str:
    if isinstance(annotation, typing.ForwardRef):   # a NamedTuple's string annotations
        return annotation.__forward_arg__
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def signature_text(name: str, obj) -> str:
    """``name(params) -> return`` as the page writes it: annotations as written in the
    source (the modules use ``from __future__ import annotations``), defaults by repr,
    ``/`` after positional-only parameters, ``*args`` and ``**kwargs`` as Python spells them."""
    signature = inspect.signature(obj)
    parts, keyword_only = [], False
    params = list(signature.parameters.values())
    for index, param in enumerate(params):
        if param.kind is param.KEYWORD_ONLY and not keyword_only:
            parts.append("*")
            keyword_only = True
        stars = {param.VAR_POSITIONAL: "*", param.VAR_KEYWORD: "**"}.get(param.kind, "")
        keyword_only = keyword_only or param.kind is param.VAR_POSITIONAL
        text = stars + param.name
        if param.annotation is not param.empty:
            text += ": " + _annotation(param.annotation)
        if param.default is not param.empty:
            text += (" = " if param.annotation is not param.empty else "=") + repr(param.default)
        parts.append(text)
        last_positional = index + 1 == len(params) or \
            params[index + 1].kind is not param.POSITIONAL_ONLY
        if param.kind is param.POSITIONAL_ONLY and last_positional:
            parts.append("/")
    text = f"{name}({', '.join(parts)})"
    if signature.return_annotation is not signature.empty and not inspect.isclass(obj):
        text += " -> " + _annotation(signature.return_annotation)
    return text


def normalized(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip())
    return text.replace("( ", "(").replace(" )", ")")


def has_signature(obj) -> bool:
    """Functions and concrete classes; not protocols, type aliases or exceptions."""
    if inspect.isfunction(obj):
        return True
    return inspect.isclass(obj) and not getattr(obj, "_is_protocol", False) \
        and not issubclass(obj, Exception) or obj.__name__ == "ConfigError"


def test_every_exported_name_is_on_the_page():
    on_page = set(entries())
    missing = [f"{module}.{name}" for module in EXPORTING
               for name in importlib.import_module(module).__all__
               if f"{module}.{name}" not in on_page]
    assert not missing, f"exported but not in docs/api.md: {missing}"


@pytest.mark.parametrize("qualified", sorted(entries()))
def test_each_signature_on_the_page_is_the_codes(qualified):
    obj = resolve(qualified)
    body = entries()[qualified]
    written = [code for lang, code in FENCE.findall(body) if lang == "text"]
    if not (callable(obj) and has_signature(obj)):
        assert not written, f"{qualified} has no signature to write down"
        return
    assert written, f"{qualified}: the page gives no signature"
    short = qualified.rsplit(".", 1)[1]
    assert normalized(written[0]) == normalized(signature_text(short, obj)), \
        f"write this in docs/api.md:\n{signature_text(short, obj)}"


@pytest.mark.slow
def test_the_examples_run_as_one_notebook(tmp_path, monkeypatch):
    """Every ```python block, in order, in one namespace, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "api_doc"}
    blocks = [code for lang, code in FENCE.findall(PAGE.read_text()) if lang == "python"]
    assert len(blocks) >= 20
    with one_thread():
        for number, code in enumerate(blocks, 1):
            try:
                exec(compile(code, f"docs/api.md, example {number}", "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"example {number} of docs/api.md failed: {err!r}\n"
                                     f"{code}") from err
    assert (tmp_path / "runs" / "cutmix" / "generalization.json").is_file()
    assert (tmp_path / "report" / "report.md").is_file()


def test_the_readme_shows_the_pages_end_to_end_snippet():
    readme = (PAGE.parent.parent / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    snippet = [code for lang, code in FENCE.findall(section) if lang == "python"]
    last = [code for lang, code in FENCE.findall(PAGE.read_text()) if lang == "python"][-1]
    assert snippet == [last]
