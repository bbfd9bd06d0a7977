"""`robustmix attack` on a run directory: the sweep, the worst case, the diagnostics, the files.

:func:`attack_run` loads a finished run's model and the fixed test subset, runs the
ε-sweep (:mod:`robustmix.attacks.sweep`) over it (sharded under torchrun), records every example's
outcome (:mod:`robustmix.attacks.worst_case`), recomputes the worst case over every attack ever run
on those examples, runs the attack-failure diagnostics (:mod:`robustmix.attacks.diagnostics`) and
writes robustness.csv, robustness_examples.csv and diagnostics.csv, each read once and
written once. :func:`transfer_run` adds the one check that needs a second model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from robustmix.attacks import diagnostics as diag
from robustmix.attacks.diagnostics import Check, DiagnosticSettings
from robustmix.attacks import memory, table, worst_case
from robustmix.attacks.worst_case import WORST
from robustmix.attacks.eps import Eps
from robustmix.attacks.registry import get
from robustmix.attacks.sweep import AttackConfig, ByEps, Result, Row, robustness, worst_label
from robustmix.core import distributed, runs
from robustmix.core.config import TrainConfig
from robustmix.core.errors import UsageError
from robustmix.data import load_dataset, recorded_skips
from robustmix.models.weights import load_model

@dataclass
class Subset:
    """A run's model and its fixed test subset, as every attack command sees them."""

    run: runs.RunDir
    model: torch.nn.Module
    x: Tensor            # (n, C, H, W) float in [0, 1], on the CPU
    y: Tensor
    indices: Tensor      # positions in the test set
    n_classes: int


def load_subset(run_dir, device, n_examples: int | None, data_dir: str | None,
                skip_bad_images: bool, echo=print) -> Subset:
    """The run's model on ``device`` and its test subset (:func:`runs.test_subset`)."""
    run = runs.RunDir(run_dir)
    if not run.path.is_dir():
        raise UsageError(f"{run.path}: no such run directory")
    model = load_model(run.path).to(device)
    saved = run.read_config()
    train_config = TrainConfig.from_dict(saved["train"], source=str(run.config_path))
    data = load_dataset(train_config.dataset, data_dir=data_dir or train_config.data_dir,
                        image_size=train_config.image_size, skip_bad_images=skip_bad_images,
                        skipped=recorded_skips(saved, str(run.config_path)), echo=echo)
    x_all, y_all = data.tensors("test")
    chosen = torch.from_numpy(runs.test_subset(x_all.shape[0], n_examples))
    return Subset(run, model, x_all[chosen].float().div_(255), y_all[chosen], chosen,
                  data.num_classes)


def attack_run(run_dir: str | Path, config: AttackConfig, *, device="cpu",
               n_examples: int | None = None, data_dir: str | None = None,
               progress: bool = False, skip_bad_images: bool = False,
               diagnostics: bool | DiagnosticSettings = True) -> list[Row]:
    """Attack a finished run's model on its test split; merge the rows into robustness.csv.

    Rows of an earlier call with the same attack, settings, norm, ε and examples are
    replaced; the others are kept. An existing robustness.csv is checked before any
    attack runs, so a damaged one costs no time. An image folder leaves out the files the
    run left out, and with ``skip_bad_images`` those that cannot be decoded now. With
    ``diagnostics`` (True, or the DiagnosticSettings to use) the attack-failure checks run
    after the sweep and write diagnostics.csv. An attack whose estimated peak memory does
    not fit ``device`` is refused first (:mod:`robustmix.attacks.memory`).
    """
    checks = _settings(diagnostics)
    place = distributed.current()
    run = runs.RunDir(run_dir)
    old = table.read_rows(run.robustness_path) if run.robustness_path.exists() else []
    subset = load_subset(run_dir, device, n_examples, data_dir, skip_bad_images,
                         echo=print if place.is_main else None)
    memory.check(subset.model, subset.x, config, device)  # before anything is written
    if subset.indices.numel() < place.world:  # every rank knows both: they refuse together
        raise distributed.shared_error(
            f"{subset.indices.numel()} test example(s) cannot be shared among {place.world} "
            f"processes: attack at least {place.world} examples or start fewer processes")
    # Under torchrun, rank r attacks every world-th example from the r-th on; the results
    # are put back in order on every rank and rank 0 writes them.
    mine = slice(place.rank, None, place.world)
    state_dir = run.attack_state_dir
    runs.remove_stale_temporaries(state_dir)  # a live writer's temporaries are kept
    result = robustness(subset.model, subset.x[mine], subset.y[mine], config,
                        indices=subset.indices[mine], device=device,
                        n_classes=subset.n_classes, state_dir=state_dir,
                        state_tag=f"-rank{place.rank}of{place.world}" if place.active else "",
                        progress=progress and place.is_main)
    if place.active:
        result = merge_results(distributed.all_gather(result))
    final = {"rows": result.rows}

    def write() -> None:
        probe = diag.Probe(subset.model, subset.x, subset.y, subset.indices, config,
                           subset.n_classes, device) if checks is not None else None
        rows, merged, found = _store(run.path, config, result, old, probe, checks)
        final["rows"] = _escalate(run.path, probe, checks, found, rows, merged,
                                  echo=print if progress else None)
        runs.remove_stale_temporaries(state_dir)
        if state_dir.is_dir() and not any(state_dir.iterdir()):
            state_dir.rmdir()

    distributed.on_main(write)
    return final["rows"]


def _settings(diagnostics) -> DiagnosticSettings | None:
    """True: the default checks; False or None: none; else the settings given."""
    if diagnostics is True:
        return DiagnosticSettings()
    if diagnostics is False or diagnostics is None:
        return None
    if not isinstance(diagnostics, DiagnosticSettings):
        raise TypeError(f"diagnostics must be a bool or DiagnosticSettings, got "
                        f"{type(diagnostics).__name__}")
    return diagnostics


def store(run_dir: Path, config: AttackConfig, result: Result, old: list[dict],
          probe: diag.Probe | None = None,
          settings: DiagnosticSettings | None = None) -> list[Row]:
    """Record the per-example outcomes, recompute the worst cases, diagnose, write.

    The worst-case rows are recomputed from every attack ever run on this run at the same
    norm and on the same examples (:mod:`robustmix.attacks.worst_case`), so an attack run in a
    separate command is part of them; returns this call's rows with those worst cases
    and their diagnostics.
    """
    return _store(run_dir, config, result, old, probe, settings)[0]


def _store(run_dir: Path, config: AttackConfig, result: Result, old: list[dict],
           probe: diag.Probe | None, settings: DiagnosticSettings | None
           ) -> tuple[list[Row], list[dict], list[Check]]:
    """:func:`store`, the rows of robustness.csv as written, and the checks made."""
    run, norm, n = runs.RunDir(run_dir), config.norm, result.clean.numel()
    attacked = [row for row in result.rows if row.attack != WORST]
    examples = worst_case.record(
        run.robustness_examples_path, norm, result.clean,
        [(r.attack, r.settings, r.eps, result.robust[(r.attack, r.eps)]) for r in attacked])
    checks: list[Check] = []
    if probe is not None:
        outcomes = diag.Outcomes.from_rows(examples, norm, n)
        checks = diag.diagnose(probe, outcomes, settings, _messages(old, attacked, norm, n))
        examples = _record_found(run, norm, outcomes, settings)
        _write_diagnostics(run, norm, n, checks, keep=("transfer",))
    rows = attacked + _worst_rows(examples, norm, n, old, attacked)
    csv_rows = [table.as_csv(row, str(run_dir), norm) for row in rows]
    merged = table.merge(old, csv_rows, drop=lambda row: row["attack"] == WORST and
                         row["norm"] == norm and row["n_examples"] == str(n))
    merged = _with_diagnostics(run, merged, norm, n)
    table.write(run.robustness_path, merged)
    return _refreshed(rows, merged, str(run_dir), norm), merged, checks


def _record_found(run: runs.RunDir, norm: str, outcomes: diag.Outcomes,
                  settings: DiagnosticSettings) -> list[dict]:
    """Put the checks' own attacks' outcomes (restart, noise, transfer) into the examples
    file, each as one row per ε whose unattacked examples stand; returns every row."""
    found = outcomes.found()
    return worst_case.record(run.robustness_examples_path, norm, outcomes.clean,
                             [(name, _CHECK_SETTINGS[name](settings), eps, standing)
                              for name, eps, standing in found])


# The settings column of the checks' attacks' rows: fixed per settings, so that a check
# made again replaces its row (whose flags include the earlier breaks: Outcomes.add).
_CHECK_SETTINGS = {
    "restart": lambda s: (f"the strongest attack from seed + {s.restart_seed} (and + "
                          f"{s.confirm_seed}) on sampled standing examples"),
    "noise": lambda s: f"{s.noise_draws} random vertices of the eps-ball per example",
    "transfer": lambda s: f"PGD-{s.transfer_steps} on a model of another recipe",
}


def _escalate(run_dir: Path, probe: diag.Probe | None, settings: DiagnosticSettings | None,
              checks: list[Check], rows: list[Row], merged: list[dict], echo=None
              ) -> list[Row]:
    """Square where any check flagged (and Square has not run there); the rows with the
    worst cases that include it."""
    if probe is None or not settings.square or \
            {"square", "autoattack"} & set(probe.config.attacks):
        return rows
    norm, n = probe.config.norm, str(probe.indices.numel())
    done = {Eps(r["eps"]) for r in worst_case.read(runs.RunDir(run_dir).robustness_examples_path)
            if r["attack"] == "square" and r["norm"] == norm and r["n_examples"] == n}
    flagged = [eps for eps in diag.flagged_eps(checks) if eps not in done]
    if not flagged:
        return rows
    # robustness.csv already holds the diagnosed rows: the marker says, to a study that
    # reads them after a crash, that the attack is not complete until Square has run
    pending = runs.RunDir(run_dir).square_pending_path
    runs.write_json(pending, {"eps": [eps.text for eps in flagged]})
    extra, merged = square_where_flagged(run_dir, probe, flagged, settings, merged, echo=echo)
    pending.unlink()
    return _refreshed([r for r in rows if r.attack != WORST], merged) + extra


def _refreshed(rows: list[Row], merged: list[dict], run: str = "", norm: str = "") -> list[Row]:
    """``rows`` with the diagnostics column as robustness.csv (``merged``) now holds it."""
    by_key = {table.row_key(r): r["diagnostics"] for r in merged}
    norm = norm or (merged[0]["norm"] if merged else "linf")
    return [dataclasses.replace(row, diagnostics=by_key.get(
        table.row_key(table.as_csv(row, run, norm)), row.diagnostics)) for row in rows]


def square_where_flagged(run_dir: Path, probe: diag.Probe, grid: list[Eps],
                         settings: DiagnosticSettings, old: list[dict], echo=None
                         ) -> tuple[list[Row], list[dict]]:
    """Square, the gradient-free attack, at each ε of ``grid`` on the examples every other
    attack left standing there; its rows join the worst case and the diagnostics run
    again. Returns its rows with the new worst cases, and robustness.csv's rows."""
    run = runs.RunDir(run_dir)
    n = probe.indices.numel()
    examples = worst_case.read(run.robustness_examples_path)
    outcomes = diag.Outcomes.from_rows(examples, probe.config.norm, n)
    config = dataclasses.replace(probe.config, attacks=("square",), options={})
    rows, robust = [], {}
    for eps in grid:
        chosen = outcomes.worst(eps)
        if echo is not None:
            echo(f"{run.path}: a diagnostic flagged ε = {eps.text}: Square (gradient-free) "
                 f"on the {int(chosen.sum())} examples still standing")
        standing = probe.attack("square", eps, chosen)
        flags = torch.zeros(n, dtype=torch.bool)
        flags[chosen.nonzero().squeeze(1)] = standing
        robust[("square", eps)] = flags
        rows.append(Row("square", eps, config.settings("square", eps) + ";on the examples "
                        "every other attack left standing", n, int(chosen.sum()),
                        outcomes.clean.float().mean().item(), flags.float().mean().item(),
                        0.0, 0, 0, [], get("square").label))
    result = Result(rows, outcomes.clean, ByEps(robust))
    return _store(run.path, config, result, old, probe, settings)[:2]


def _worst_rows(examples: list[dict], norm: str, n: int, old: list[dict],
                attacked: list[Row]) -> list[Row]:
    """One worst-case row per ε from every attack on record at this norm and subset."""
    rows = []
    for eps, attacks, clean, standing in worst_case.worst_cases(examples, norm, n):
        checks = {c for r in old if r["norm"] == norm and r["n_examples"] == str(n)
                  and r["attack"] != WORST and Eps(r["eps"]) == eps
                  for c in r["checks"].split(";") if c}
        checks |= {c for r in attacked if r.eps == eps for c in r.checks}
        rows.append(Row(WORST, eps, worst_case.describe(attacks), n, int(clean.sum()),
                        clean.float().mean().item() if n else 0.0,
                        standing.float().mean().item() if n else 0.0, 0.0, 0, 0,
                        sorted(checks), _label(attacks)))
    return rows


def _label(names: list[str]) -> str:
    known = []
    for name in names:
        if name in diag.CHECK_ATTACKS:  # a check's own attack: named last
            known.append(dataclasses.replace(get("pgd"), name=name, evaluation=name,
                                             strength=0))
            continue
        try:
            known.append(get(name))
        except Exception:  # a plugin that is gone: its name stands for itself
            known.append(dataclasses.replace(get("pgd"), name=name, evaluation=name))
    return worst_label(known)


def _messages(old: list[dict], attacked: list[Row], norm: str, n: int
              ) -> dict[tuple[str, Eps], list[str]]:
    """The model's and AutoAttack's messages per (attack, ε): this call's, else on file."""
    messages = {(r.attack, r.eps): list(r.checks) for r in attacked}
    for r in old:
        if r["norm"] == norm and r["n_examples"] == str(n) and r["attack"] != WORST:
            messages.setdefault((r["attack"], Eps(r["eps"])),
                                [c for c in r["checks"].split(";") if c])
    return messages


def _write_diagnostics(run: runs.RunDir, norm: str, n: int, checks: list[Check],
                       keep: tuple[str, ...]) -> None:
    """Put ``checks`` into diagnostics.csv in place of this norm's and subset's earlier
    ones, except the earlier checks named in ``keep`` (unless ``checks`` has them too)."""
    new = {c.check for c in checks}
    rows = [r for r in diag.read(run.diagnostics_path)
            if not (r["norm"] == norm and r["n_examples"] == str(n)
                    and (r["check"] in new or r["check"] not in keep))]
    runs.write_csv(run.diagnostics_path, rows + [c.as_csv(norm, n) for c in checks],
                   diag.FIELDS)


def _with_diagnostics(run: runs.RunDir, rows: list[dict], norm: str, n: int) -> list[dict]:
    """robustness.csv's rows with the diagnostics column from diagnostics.csv."""
    on_file = diag.read(run.diagnostics_path)
    if not on_file:
        return rows
    failed = diag.failures(on_file, norm, n)
    diagnosed = {Eps(r["eps"]) for r in on_file if r["norm"] == norm
                 and int(r["n_examples"]) == n}
    out = []
    for row in rows:
        if row["norm"] == norm and row["n_examples"] == str(n) and Eps(row["eps"]) in diagnosed:
            row = {**row, "diagnostics": diag.column(failed.get((row["attack"],
                                                                 Eps(row["eps"])), []))}
        out.append(row)
    return out


def transfer_run(run_dir: str | Path, source_dir: str | Path, config: AttackConfig, *,
                 device="cpu", n_examples: int | None = None, data_dir: str | None = None,
                 settings: DiagnosticSettings | None = None) -> list[Check]:
    """The transfer check of ``run_dir`` with PGD run on ``source_dir``'s model, on the
    examples every attack on record left standing; merged into diagnostics.csv. The
    examples it breaks join the worst case (robustness.csv's worst-case rows are
    recomputed), and Square attacks where it flagged."""
    settings = settings or DiagnosticSettings()
    target = load_subset(run_dir, device, n_examples, data_dir, False, echo=None)
    source = load_model(source_dir).to(device).eval()
    run, n, norm = target.run, target.indices.numel(), config.norm
    examples = worst_case.read(run.robustness_examples_path)
    outcomes = diag.Outcomes.from_rows(examples, norm, n)
    if not outcomes.by_eps:
        raise UsageError(f"{run.path}: no attack on {n} examples at norm {norm} "
                         "to check by transfer; run robustmix attack first")
    target.model.eval()
    checks = diag.transfer(target.model, source, Path(source_dir).name, target.x, target.y,
                           target.indices, outcomes, config, device, settings)
    examples = _record_found(run, norm, outcomes, settings)
    _write_diagnostics(run, norm, n, checks, keep=tuple(diag.CHECKS))
    old = table.read_rows(run.robustness_path) if run.robustness_path.exists() else []
    worst = [table.as_csv(row, str(run.path), norm)
             for row in _worst_rows(examples, norm, n, old, [])]
    mine = lambda row: row["attack"] == WORST and row["norm"] == norm and \
        row["n_examples"] == str(n)  # noqa: E731
    merged = _with_diagnostics(run, table.merge(old, worst, drop=mine), norm, n)
    table.write(run.robustness_path, merged)
    probe = diag.Probe(target.model, target.x, target.y, target.indices, config,
                       target.n_classes, device)
    _escalate(run.path, probe, settings, checks, [], merged)
    return checks


def merge_results(parts: Sequence[Result]) -> Result:
    """One Result from those of ranks that each took every ``len(parts)``-th example.

    Accuracies are recounted from the examples put back in order, so they are those of
    one process attacking them all (FGSM's and PGD's randomness is per example); passes
    add up, seconds are the slowest rank's, and checks are the union.
    """
    from robustmix.attacks.guards import check_rows

    world = len(parts)
    n = sum(part.clean.numel() for part in parts)

    def in_order(pieces: Sequence[Tensor]) -> Tensor:
        whole = torch.zeros(n, dtype=torch.bool)
        for rank, piece in enumerate(pieces):
            whole[rank::world] = piece
        return whole

    clean = in_order([part.clean for part in parts])
    robust = ByEps({key: in_order([part.robust[key] for part in parts])
                    for key in parts[0].robust})
    clean_acc = clean.float().mean().item() if n else 0.0
    rows = []
    for number, row in enumerate(parts[0].rows):
        same = [part.rows[number] for part in parts]
        rows.append(dataclasses.replace(
            row, n_examples=n, n_attacked=sum(r.n_attacked for r in same), clean_acc=clean_acc,
            robust_acc=robust[(row.attack, row.eps)].float().mean().item() if n else 0.0,
            seconds=max(r.seconds for r in same),
            forward_passes=sum(r.forward_passes for r in same),
            backward_passes=sum(r.backward_passes for r in same),
            checks=list(dict.fromkeys(c for r in same for c in r.checks))))
    check_rows(rows)
    return Result(rows, clean, robust)


def write_rows(path: Path, new_rows: list[dict], drop=lambda row: False) -> None:
    """Merge rows into a robustness CSV (checked first), replacing those with the same key
    and removing the old rows for which ``drop(row)`` is true."""
    old = table.read_rows(path) if path.exists() else []
    table.write(path, table.merge(old, new_rows, drop))


def format_table(run: str, rows: Sequence[Row]) -> str:
    """The printed table: one line per attack and ε, with what stands behind each number."""
    lines = [f"{run}: clean accuracy {rows[0].clean_acc:.2%} on {rows[0].n_examples} test "
             "examples" if rows else run,
             f"  {'attack':<16}{'eps':>10}{'robust':>9}{'attacked':>10}{'seconds':>9}"
             f"{'fwd+bwd passes':>16}  diagnostics; checks"]
    for row in rows:
        passes = f"{row.forward_passes}+{row.backward_passes}" if row.attack != WORST \
            else "-"
        lines.append(f"  {row.attack:<16}{row.eps.text:>10}{row.robust_acc:>9.2%}"
                     f"{row.n_attacked:>10}{row.seconds:>9.1f}{passes:>16}  "
                     f"{row.diagnostics or '-'}; {'; '.join(row.checks) or '-'}")
    return "\n".join(lines)
