"""robustmix installs into a researcher's environment without breaking it (issue 26).

Offline: the installed distribution's metadata pins nothing old (no upper bound, no ``~=``)
and has torchattacks only as an extra; this test environment, which has timm and
huggingface_hub through the test extra, passes ``pip check``. What a fresh install would
downgrade needs PyPI, so CI checks it (.ci/run with .ci/no_downgrade.py, whose logic is
tested here on a report of the kind pip writes).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from robustmix.core import extras
from robustmix.core.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
UPPER = {"<", "<=", "~=", "==", "==="}   # operators that cap a version (or pin it)


def requirements() -> list[Requirement]:
    return [Requirement(text) for text in md.requires("robustmix") or []]


def extra_of(requirement: Requirement) -> str | None:
    """The extra a requirement belongs to (None: the core install)."""
    if requirement.marker is None:
        return None
    for extra in ("test", "slurm", "tensorboard", "timm", "torchattacks"):
        if requirement.marker.evaluate({"extra": extra}):
            return extra
    return "?"


def test_no_dependency_has_an_upper_bound_or_a_compatible_release_pin():
    capped = [str(r) for r in requirements() for spec in r.specifier if spec.operator in UPPER]
    assert capped == []


def test_torchattacks_is_only_an_extra_of_its_own():
    where = {(r.name, extra_of(r)) for r in requirements()}
    assert ("torchattacks", "torchattacks") in where
    assert [extra for name, extra in where if name == "torchattacks"] == ["torchattacks"]
    assert {"timm", "pytest"} <= {name for name, extra in where if extra == "test"}


def test_the_installed_metadata_is_the_pyprojects():
    """The tests above read the installed metadata: it must be this checkout's (after an
    edit of pyproject.toml, reinstall: pip install -e '.[test]')."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {(Requirement(t).name, str(Requirement(t).specifier), None)
                for t in project["dependencies"]}
    declared |= {(Requirement(t).name, str(Requirement(t).specifier), extra)
                 for extra, texts in project["optional-dependencies"].items() for t in texts}
    installed = {(r.name, str(r.specifier), extra_of(r)) for r in requirements()}
    assert installed == declared


@pytest.mark.slow
def test_pip_check_is_clean_beside_timm_and_huggingface_hub():
    """`pip check` in this environment (timm and huggingface_hub come with the test extra).

    Excused, by name: torchattacks' own requirement on requests. Installed the way the
    README and CI install it, `pip install --no-deps torchattacks`, it declares requests
    (its 3.5.1 pins requests~=2.25.1) but never imports it, so pip reports that requests is
    missing or of another version. Anything else, such as a requests 2.25 installed by that
    pin and broken by huggingface_hub's idna, fails."""
    md.version("timm"), md.version("huggingface_hub")   # the premise: both installed
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    own = f"torchattacks {md.version('torchattacks')} " \
        if importlib.util.find_spec("torchattacks") is not None else None
    rest = [line for line in lines
            if not (own and line.startswith(own) and " requests" in line)]
    if rest == lines:
        assert done.returncode == 0 and lines == ["No broken requirements found."], \
            done.stdout + done.stderr
    else:
        assert rest == [], done.stdout + done.stderr


# ---------------------------------------------------------------------------- CI's check


def no_downgrade():
    spec = importlib.util.spec_from_file_location("no_downgrade", ROOT / ".ci/no_downgrade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def item(name: str, version: str) -> dict:
    return {"metadata": {"name": name, "version": version}, "requested": False}


def test_the_ci_check_flags_exactly_the_downgrades():
    # what the core install with torchattacks did to an environment with huggingface_hub
    report = {"version": "1", "install": [
        item("requests", "2.25.1"), item("idna", "2.10"), item("urllib3", "1.26.20"),
        item("PyYAML", "6.0.4"), item("Torch", "2.14.1"), item("robustmix", "0.1.0")]}
    installed = {"idna": "3.21", "urllib3": "1.26.20", "pyyaml": "6.0.1", "torch": "2.14.1"}
    found = no_downgrade().changes(report, installed)
    assert found == {"downgrade": ["idna 3.21 -> 2.10"],
                     "upgrade": ["PyYAML 6.0.1 -> 6.0.4"],
                     "new": ["requests 2.25.1", "robustmix 0.1.0"]}


def test_the_ci_check_fails_on_a_downgrade_and_passes_without(tmp_path):
    module = no_downgrade()
    installed = module.installed_versions()
    name, version = next(iter(sorted(installed.items())))
    path = tmp_path / "report.json"
    path.write_text('{"install": [{"metadata": {"name": "%s", "version": "%s"}}]}'
                    % (name, version))
    assert module.main([str(path)]) == 0
    path.write_text('{"install": [{"metadata": {"name": "%s", "version": "0.0.0a0"}}]}' % name)
    assert module.main([str(path)]) == (0 if version == "0.0.0a0" else 1)


# ---------------------------------------------------------------------------- extras


def test_a_missing_extra_names_the_pip_install_that_brings_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)   # import torchattacks fails
    with pytest.raises(UsageError) as caught:
        extras.require("torchattacks", "torchattacks", needed_by="attack torchattacks:CW")
    line = str(caught.value)
    assert line == ("attack torchattacks:CW needs the torchattacks package, an optional "
                    "extra: pip install 'robustmix[torchattacks]' (or, leaving requests and "
                    "idna as they are: pip install --no-deps torchattacks)")
    assert extras.require("json", "none", needed_by="x") is sys.modules["json"]



def test_one_top_level_import_name():
    """What setuptools installs, found as pyproject.toml says: every package under
    robustmix, the attacks and evaluations folders among them (through their links), and
    nothing else at the top level; the old names do not import from an installed robustmix."""
    import tomllib

    from setuptools import find_packages

    root = Path(__file__).resolve().parent.parent
    find = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    packages = find_packages(str(root), include=find["include"])
    assert {p.split(".")[0] for p in packages} == {"robustmix"}
    assert {"robustmix.attacks", "robustmix.evaluations"} <= set(packages)
    for name in ("attacks", "evaluations"):
        assert (root / "robustmix" / name).resolve() == (root / name).resolve()
    outside = subprocess.run([sys.executable, "-c", "import attacks"], cwd="/",
                             capture_output=True, text=True)
    assert "No module named 'attacks'" in outside.stderr
