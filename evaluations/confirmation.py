"""Did a study's primaries replicate? Its declared study again on fresh seeds, compared
primary by primary.

The original and the confirmation are judged alike (the same declaration: test, family,
correction and level), each on its own runs; a primary replicated when the declared rule
(:data:`robustmix.evaluations.declaration.REPLICATION`) says so:

- ``same-verdict``: the original decided ("holds" or "does not hold") and the confirmation
  decides the same at the same family-wise level;
- ``same-verdict-beyond-bound``: that, and the confirmation's effect lies beyond the
  original interval's end nearer zero (above its lower end for "holds", below its upper
  end for "does not hold"), so the effect is not smaller than the original could claim.

An original that decided nothing has nothing to replicate ("no", with why); a
confirmation that decides where the original did not is a new finding on fresh seeds,
said so, not a replication.
"""

from __future__ import annotations

from pathlib import Path

from robustmix.evaluations import statistics as st
from robustmix.evaluations.markdown import md
from robustmix.core import runs

PREDICTIONS = "predictions.csv"
CSV, MARKDOWN = "confirmation.csv", "confirmation.md"
FIELDS = ["comparison", "original_effect", "original_ci_low", "original_ci_high",
          "original_verdict", "confirmation_effect", "confirmation_ci_low",
          "confirmation_ci_high", "confirmation_verdict", "replicated", "why"]


def replicated(original: dict[str, str], again: dict[str, str], rule: str) -> tuple[bool, str]:
    """Whether one primary replicated under ``rule``, and why (or why not)."""
    verdict, now = original["verdict"], again["verdict"]
    if verdict not in (st.HOLDS, st.FAILS):
        new = f"; on fresh seeds it {now}: a new finding, not a replication" \
            if now in (st.HOLDS, st.FAILS) else ""
        return False, f"the original decided nothing to replicate ({verdict}){new}"
    if now != verdict:
        return False, f"the original {verdict}; on fresh seeds: {now}"
    if rule == "same-verdict":
        return True, f"{verdict} again at the same level"
    effect = float(again["effect"])
    bound = float(original["ci_low"] if verdict == st.HOLDS else original["ci_high"])
    beyond = effect >= bound if verdict == st.HOLDS else effect <= bound
    where = "above the original's lower" if verdict == st.HOLDS else \
        "below the original's upper"
    if beyond:
        return True, f"{verdict} again; effect {effect:g} {where} end {bound:g}"
    return False, f"{verdict} again, but the effect {effect:g} is not {where} end {bound:g}"


def compare(original: list[dict[str, str]], again: list[dict[str, str]], rule: str
            ) -> list[dict[str, str]]:
    """One row (``FIELDS``) per primary of the original, matched by its comparison."""
    theirs = {r["comparison"]: r for r in again if r["role"] == "primary"}
    out = []
    for r in (r for r in original if r["role"] == "primary"):
        other = theirs.get(r["comparison"])
        row = {"comparison": r["comparison"], "original_effect": r["effect"],
               "original_ci_low": r["ci_low"], "original_ci_high": r["ci_high"],
               "original_verdict": r["verdict"]}
        if other is None:
            row.update(replicated="no", why="not in the confirmation")
        else:
            ok, why = replicated(r, other, rule)
            row.update(confirmation_effect=other["effect"], confirmation_ci_low=other["ci_low"],
                       confirmation_ci_high=other["ci_high"],
                       confirmation_verdict=other["verdict"], replicated="yes" if ok else "no",
                       why=why)
        out.append({k: row.get(k, "") for k in FIELDS})
    return out


def write(original_dir: Path, confirmation_dir: Path, rule: str) -> Path:
    """``original_dir/confirmation.csv`` and ``confirmation.md`` from the two studies'
    predictions.csv; returns the Markdown's path."""
    original_dir, confirmation_dir = Path(original_dir), Path(confirmation_dir)
    rows = compare(runs.read_csv(original_dir / PREDICTIONS),
                   runs.read_csv(confirmation_dir / PREDICTIONS), rule)
    runs.write_csv(original_dir / CSV, rows, FIELDS)
    path = original_dir / MARKDOWN
    runs.atomic_write_text(path, "\n".join(markdown(rows, rule, confirmation_dir.name)) + "\n")
    return path


def markdown(rows: list[dict[str, str]], rule: str, folder: str) -> list[str]:
    decided = [r for r in rows if r["original_verdict"] in (st.HOLDS, st.FAILS)]
    held = sum(r["replicated"] == "yes" for r in rows)
    head = ["comparison", "original", "interval", "verdict", "on fresh seeds", "interval",
            "verdict", "replicated"]
    table = [[r["comparison"], r["original_effect"],
              f"{r['original_ci_low']} to {r['original_ci_high']}", r["original_verdict"],
              r["confirmation_effect"],
              f"{r['confirmation_ci_low']} to {r['confirmation_ci_high']}",
              r["confirmation_verdict"], f"{r['replicated']}: {r['why']}"] for r in rows]
    return ["# Confirmation on fresh seeds", "",
            f"The declared study again on seeds no earlier run of its folder used "
            f"(`{folder}/`), judged by the same declaration. Replicated, by the declared "
            f"rule `{rule}`: {held} of the {len(decided)} primaries the original decided "
            f"({len(rows)} primaries in all). Effects in points of the primary statistic; "
            "intervals as each study's predictions.csv labels them.", "",
            *md(head, table)]
