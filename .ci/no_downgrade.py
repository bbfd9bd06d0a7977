"""Fail when a pip install would downgrade a package that is already installed.

    pip install --dry-run --report REPORT.json -e '.[test]'
    python .ci/no_downgrade.py REPORT.json

CI (.ci/run) first installs what a researcher already has (the latest timm and
huggingface_hub), then asks pip what installing robustmix would change: an older version
of anything installed (as torchattacks' requests~=2.25.1 pin once did to idna) fails the
run with one line per downgrade. Upgrades and new packages are listed, not refused.
Run with the environment's own Python: it reads what is installed there.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
from typing import Mapping

from packaging.utils import canonicalize_name
from packaging.version import Version


def installed_versions() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions()}


def changes(report: dict, installed: Mapping[str, str]) -> dict[str, list[str]]:
    """What the report's install would do to ``installed`` (canonical name -> version):
    ``downgrade``, ``upgrade`` and ``new``, one 'name old -> new' line each."""
    found: dict[str, list[str]] = {"downgrade": [], "upgrade": [], "new": []}
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        before = installed.get(canonicalize_name(name))
        if before is None:
            found["new"].append(f"{name} {version}")
        elif Version(version) < Version(before):
            found["downgrade"].append(f"{name} {before} -> {version}")
        elif Version(version) > Version(before):
            found["upgrade"].append(f"{name} {before} -> {version}")
    return found


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as file:
        found = changes(json.load(file), installed_versions())
    for kind in ("upgrade", "new"):
        print(f"{kind}: {', '.join(found[kind]) or 'none'}")
    for line in found["downgrade"]:
        print(f"DOWNGRADE: {line}", file=sys.stderr)
    return 1 if found["downgrade"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
