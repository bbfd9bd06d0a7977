"""The README's findings, generated from a study folder: every number and verdict sentence
of its section "What the default study finds" comes from the study's report tables, so a
claim cannot outlive the data behind it.

    python -m robustmix.evaluations.findings docs/study                    # print it
    python -m robustmix.evaluations.findings docs/study --write README.md  # replace it

The section (between ``START`` and ``END`` in the README): the results table (clean test
accuracy, runs converged, the primary statistic, robust / robust ÷ clean accuracy at the
cells of ``CELLS``); the primary verdicts with their effect, interval (labelled with what
it covers, from predictions.csv), adjusted p and verdict; how much the weaker attacks
overstate; which attack-failure checks failed; one sentence per secondary family; the
verdict counts; and, where ``robustmix study --confirm`` has run, whether each primary
replicated on fresh seeds (confirmation.csv). Each secondary sentence states the simulated chance that a study with no
secondary effect carries at least one false secondary verdict: ``false_secondary`` where
given, else the ``RATE_COLUMN`` of predictions.csv where the report wrote one, else "not
computed". Tables are written by the report's own table writer.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections import Counter
from pathlib import Path

from robustmix.attacks.worst_case import WORST
from robustmix.core.errors import UsageError
from robustmix.core.files import read_csv
from robustmix.evaluations import confirmation
from robustmix.evaluations.markdown import md

START, END = "<!-- findings:start -->", "<!-- findings:end -->"
CELLS = (("fgsm", "20/255"), ("pgd", "20/255"), (WORST, "20/255"), ("pgd", "26/255"),
         (WORST, "26/255"), (WORST, "32/255"))
OVERSTATED = (("pgd", "26/255"), ("pgd", "32/255"), ("fgsm", "32/255"))
RATE_COLUMN = "false_secondary_rate"
NOT_COMPUTED = "not computed"
FILES = ("predictions.csv", "generalization_by_method.csv", "robustness_by_method.csv",
         "runs.csv")


def render(study: str | Path, false_secondary: str | None = None) -> str:
    """The findings section of ``study`` (a folder with the report's CSVs), without its
    markers; ``false_secondary``: the per-study chance of a false secondary verdict."""
    study = Path(study)
    absent = [name for name in FILES if not (study / name).is_file()]
    if absent:
        raise UsageError(f"{study} has no {', '.join(absent)}: give a study folder with its "
                         "report's tables (robustmix study, or robustmix report)")
    rows = read_csv(study / "predictions.csv")
    false_secondary = false_secondary or _false_secondary(study)
    lines = ["### Results by method", ""] + results_table(study) + primary_lines(rows)
    lines += overstatement_lines(study)
    lines += diagnostics_lines(study) + secondary_lines(rows, false_secondary)
    lines += ["Verdict counts:", ""] + verdict_lines(rows) + [""]
    lines += confirmation_lines(study)
    return "\n".join(lines).rstrip("\n") + "\n"


def confirmation_lines(study: Path) -> list[str]:
    """Whether the primaries replicated on fresh seeds (``robustmix study --confirm``'s
    confirmation.csv, judged by the rule study.toml declares); nothing where it has not
    run."""
    path = study / confirmation.CSV
    if not path.is_file():
        return []
    declared = study / "study.toml"
    verdicts = tomllib.loads(declared.read_text(encoding="utf-8")).get("verdicts", {}) \
        if declared.is_file() else {}
    rule = verdicts.get("replication", "same-verdict-beyond-bound")
    body = confirmation.markdown(read_csv(path), rule, "confirmation")[2:]
    return ["### On fresh seeds: does each primary replicate?", ""] + body + [""]


def _false_secondary(study: Path) -> str | None:
    """The report's simulated chance of a false secondary verdict in a study of this shape
    (error_rates.csv's "any" row), with its interval; None where the report wrote none."""
    path = study / "error_rates.csv"
    if not path.is_file():
        return None
    row = next((r for r in read_csv(path) if r["family"].startswith("any")), None)
    if row is None:
        return None
    return (f"{float(row['rate']):.1%} [{float(row['ci_low']):.1%}, "
            f"{float(row['ci_high']):.1%}] of {row['studies']} simulated studies")


def _pm(mean: str, std: str) -> str:
    return f"{100 * float(mean):.1f} ± {100 * float(std):.1f}" if std else \
        f"{100 * float(mean):.1f}"


def results_table(study: Path) -> list[str]:
    """Per method: test accuracy, runs converged, the primary statistic and the cells."""
    general = {r["method"]: r for r in read_csv(study / "generalization_by_method.csv")}
    robust = {(r["group"], r["attack"], r["eps"]): r
              for r in read_csv(study / "robustness_by_method.csv")}
    runs = read_csv(study / "runs.csv")
    total = Counter(r["group"] for r in runs)
    converged = Counter(r["group"] for r in runs if r["converged"] == "True")
    # runs without held-out data (holdout = 0) are not judged, not unconverged
    unjudged = Counter(r["group"] for r in runs if r["converged"] == "")
    primary = _primary_statistic(read_csv(study / "predictions.csv"))
    header = ["method", "test acc", "converged", "primary"] + [f"{a} {e}" for a, e in CELLS]
    table = []
    for method, row in general.items():
        cells = [method, _pm(row["test_acc_mean"], row["test_acc_std"]),
                 f"{converged[method]} of {total[method]}"
                 + (f" ({unjudged[method]} not judged)" if unjudged[method] else ""),
                 primary.get(method, "-")]
        for attack, eps in CELLS:
            found = robust.get((method, attack, eps))
            cells.append(f"{100 * float(found['robust_acc_mean']):.1f} / "
                         f"{100 * float(found['conditional_mean']):.1f}" if found else "-")
        table.append(cells)
    return md(header, table)


def _primary_statistic(rows: list[dict[str, str]]) -> dict[str, str]:
    """Per method, "mean ± std" of the primary statistic, read from the primary rows'
    ``measured`` text ("hmix 53.3 ± 2.2 (n=5) vs vanilla 40.9 ± 2.2 (n=10)")."""
    found = {}
    for r in rows:
        if r["role"] == "primary" and " vs " in r["measured"]:
            for side in r["measured"].split(" vs "):
                name, _, value = side.partition(" ")
                found[name] = value.split(" (n=")[0]
    return found


def _p(text: str) -> str:
    if not text:
        return "–"
    p = float(text)
    return f"{p:.1e}" if 0 < p < 0.001 else f"{p:.2g}"


def _interval(r: dict[str, str], digits: str = ".3g") -> str:
    if not r["ci_low"]:
        return "–"
    return f"[{float(r['ci_low']):{digits}}, {float(r['ci_high']):{digits}}]"


def primary_lines(rows: list[dict[str, str]]) -> list[str]:
    """The primary verdicts: a table and one sentence per verdict."""
    primary = [r for r in rows if r["role"] == "primary"]
    if not primary:
        return ["### Primary verdicts", "", "None: no primary comparison in this study.", ""]
    labels = list(dict.fromkeys(r["ci_level"] for r in primary if r["ci_level"]))
    table = [[r["comparison"], f"{float(r['effect']):+.1f}" if r["effect"] else "–",
              _interval(r, "+.1f"), _p(r["p_adjusted"]), _bold(r["verdict"])]
             for r in primary]
    header = ["MSDA − vanilla (points)", "effect", "interval", "adjusted p", "verdict"]
    if len(labels) > 1:
        header.insert(3, "interval covers")
        for cells, r in zip(table, primary):
            cells.insert(3, r["ci_level"])
    lines = [f"### Primary verdicts: {primary[0]['prediction']}", "",
             f"{primary[0]['statistic']}; {primary[0]['test']}; {primary[0]['correction']}."
             + (f" Intervals: {labels[0]}." if len(labels) == 1 else ""), ""]
    return lines + md(header, table) + [_by_verdict(primary, "points"), ""]


def _bold(verdict: str) -> str:
    return f"**{verdict}**" if verdict in ("holds", "does not hold") else verdict


def _by_verdict(rows: list[dict[str, str]], unit: str = "") -> str:
    """"holds for a (+1.0), b (+2.0); inconclusive for c (+0.1)." (effect in ``unit``)."""
    parts = []
    for verdict in dict.fromkeys(r["verdict"] for r in rows):
        names = [f"{r['comparison'].split(' vs ')[0]} ({float(r['effect']):+.3g})"
                 if r["effect"] else r["comparison"].split(" vs ")[0]
                 for r in rows if r["verdict"] == verdict]
        parts.append(f"{_bold(verdict)} for {', '.join(names)}")
    effect = f" (effect in {unit})" if unit else ""
    return f"Prediction (b){effect}: " + "; ".join(parts) + "."


def secondary_lines(rows: list[dict[str, str]], false_secondary: str | None = None) -> list[str]:
    """One sentence per secondary family (per statistic where it has several): each
    comparison's verdict, effect and interval, and the per-study chance of a false
    secondary verdict."""
    secondary = [r for r in rows if r["role"] == "secondary"]
    lines = ["### Secondary predictions, one family each", ""]
    for family in dict.fromkeys(r["family"] for r in secondary):
        mine = [r for r in secondary if r["family"] == family]
        rate = false_secondary or next((r[RATE_COLUMN] for r in mine
                                        if r.get(RATE_COLUMN)), NOT_COMPUTED)
        tested = next((r["correction"] for r in mine if r["correction"].startswith("Holm")),
                      "nothing tested")
        kinds = ", ".join(dict.fromkeys(r["ci_level"].split(" (")[0].split(",")[0]
                                        for r in mine if r["ci_level"]))
        statistics = list(dict.fromkeys(r["statistic"] for r in mine if r["statistic"]))
        # a comparison judged on several statistics ((a): accuracy and loss gap): by statistic
        split = len({r["comparison"] for r in mine}) < len(mine)
        short = all(r["comparison"].endswith(" vs vanilla") for r in mine)
        parts = []
        for statistic in statistics if split else [None]:
            part = [r for r in mine if statistic is None or r["statistic"] in ("", statistic)]
            parts.append((f"{statistic}: " if statistic else "") + "; ".join(
                f"{_bold(v)} for " + ", ".join(_item(r, short) for r in part
                                                if r["verdict"] == v)
                for v in dict.fromkeys(r["verdict"] for r in part)))
        lines.append(f"- **{family}**: {mine[0]['prediction']}. " + ". ".join(parts)
                     + f". ({tested}; intervals: {kinds or 'none'}; the chance that a study "
                     f"with no secondary effect carries a false secondary verdict: {rate}.)")
    return lines + [""]


def _item(r: dict[str, str], short: bool) -> str:
    name = r["comparison"].removesuffix(" vs vanilla") if short else r["comparison"]
    if not r["effect"]:
        return name
    return f"{name} {float(r['effect']):+.3g} {_interval(r)}"


def overstatement_lines(study: Path) -> list[str]:
    """Per method, the mean over its runs of an attack's robust accuracy minus the worst
    case's on the same examples (points), at the cells of ``OVERSTATED``."""
    path = study / "overstatement.csv"
    if not path.is_file():
        return []
    rows = read_csv(path)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    table = []
    for attack, eps in OVERSTATED:
        at = [r for r in rows if (r["attack"], r["eps"]) == (attack, eps)]
        if not at:
            continue
        means = [[float(r["overstates_pp"]) for r in at if r["group"] == g] for g in groups]
        table.append([f"{attack}, {eps}"] + [f"{sum(v) / len(v):+.1f}" if v else "–"
                                              for v in means])
    return ["### How much the weaker attacks overstate", "",
            "Robust accuracy minus the worst case on the same examples, mean over a method's "
            "runs, in points (the report's table has every attack and ε):", ""] \
        + md(["attack, ε", *groups], table)


def diagnostics_lines(study: Path) -> list[str]:
    """The attack-failure checks that failed, by check and attack."""
    path = study / "diagnostics_by_run.csv"
    if not path.is_file():
        return []
    rows = read_csv(path)
    failed = Counter((r["check"], r["attack"]) for r in rows if r["passed"] != "yes")
    cells = Counter((r["check"], r["attack"]) for r in rows)
    text = (f"{len(rows)} checks (run × attack × ε), {len(rows) - sum(failed.values())} "
            "passed" + ("." if not failed else "; failed: " + ", ".join(
                f"{check} on {attack} in {n} of {cells[check, attack]} run × ε cells"
                for (check, attack), n in failed.most_common()) + "."))
    return ["### Attack-failure diagnostics", "", text, ""]


def verdict_lines(rows: list[dict[str, str]]) -> list[str]:
    """The verdict counts: the primaries, then each secondary family (exploratory rows
    carry no verdict)."""
    groups: dict[str, Counter] = {}
    for r in rows:
        if r["role"] == "exploratory":
            continue
        name = "Primary" if r["role"] == "primary" else r["family"]
        groups.setdefault(name, Counter())[r["verdict"]] += 1
    return [f"- {name} ({sum(c.values())} comparisons): "
            + ", ".join(f"{k} {v}" for k, v in c.most_common()) + "."
            for name, c in groups.items()]


def replace_section(text: str, section: str, where: str = "the README") -> str:
    """``text`` with what lies between its markers replaced by ``section``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise UsageError(f"{where} needs one {START} line followed by one {END} line")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{section}{END}{tail}"


def section_of(text: str) -> str:
    """What lies between the markers of ``text`` (without them)."""
    return text.split(START, 1)[1].split(END, 1)[0].lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustmix.evaluations.findings",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a study folder with its report's tables")
    parser.add_argument("--write", metavar="README", default="",
                        help=f"replace the section between {START} and {END} in this file")
    parser.add_argument("--false-secondary", default=None,
                        help="the per-study chance of a false secondary verdict, as text")
    args = parser.parse_args(argv)
    try:
        section = render(args.study, args.false_secondary)
        if args.write:
            path = Path(args.write)
            if not path.is_file():
                raise UsageError(f"{path} is not a file: --write takes the README to update")
            path.write_text(replace_section(path.read_text(encoding="utf-8"), section,
                                            str(path)), encoding="utf-8")
    except UsageError as err:
        print(f"python -m robustmix.evaluations.findings: {err}", file=sys.stderr)
        return 2
    if not args.write:
        print(section, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
