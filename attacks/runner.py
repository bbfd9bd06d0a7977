"""The ε-sweep: clean accuracy, then each attack over an ascending ε grid, never twice.

For each attack the sweep keeps the set of examples still standing. Misclassified clean
examples are never attacked; at each ε only the examples standing at the previous ε are
attacked, because the ε-balls nest: an example broken at a smaller ε is broken at every
larger one. For FGSM and PGD, whose randomness is per example, this is exact: the examples
counted robust at ε are those the same attack at ε alone leaves standing, minus those
already broken at a smaller ε. A ``worst-case`` row per ε counts the examples that every
attack left standing.

Every row also carries the model checks (:func:`model_checks`): a model whose outputs
differ between two passes on the same input (dropout left on), or that outputs
probabilities instead of logits, gets a note in the ``checks`` column of every row, for
every attack, so no number is read without it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attacks import worst_case
from attacks.autoattack import COMPONENTS, autoattack
from attacks.eps import NORMS, Eps, check_norm, parse_eps
from attacks.gradient import PassCounter, PGDSettings, fgsm, pgd
from robustmix.core import checks as guards
from robustmix.core import distributed, runs
from robustmix.core.config import TrainConfig
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data import load_dataset, recorded_skips
from robustmix.models.weights import load_model

ATTACKS = ("fgsm", "pgd", "autoattack", "autoattack-fast")
CSV_FIELDS = ["run", "attack", "settings", "norm", "eps", "eps_value", "n_examples",
              "n_attacked", "clean_acc", "robust_acc", "seconds", "forward_passes",
              "backward_passes", "checks"]


class AttackError(RuntimeError):
    """An attack broke a guard (left the ε-ball or [0, 1], raised accuracy): a bug, stop."""


@dataclass(frozen=True)
class AttackConfig:
    """What to run: attacks, the ε grid, the norm, and the attacks' settings."""

    attacks: tuple[str, ...] = ("fgsm", "pgd", "autoattack")
    eps: tuple[Eps, ...] = (Eps(8 / 255, "8/255"),)
    norm: str = "linf"
    pgd: PGDSettings = field(default_factory=PGDSettings)
    batch_size: int = 256
    seed: int = 0

    def validate(self) -> None:
        check_norm(self.norm)
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise ConfigError("attacks", f"has unknown attack '{','.join(unknown)}'; valid: "
                              f"{', '.join(ATTACKS)}")
        if self.norm == "l2" and "fgsm" in self.attacks:
            raise ConfigError("attacks", "fgsm is an L∞ attack; with norm l2 use pgd or autoattack")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.pgd.steps < 1 or self.pgd.restarts < 1:
            raise ConfigError("pgd.steps" if self.pgd.steps < 1 else "pgd.restarts", "must be >= 1")
        if self.pgd.step_size is not None and not self.pgd.step_size > 0:
            raise ConfigError("pgd.step_size", f"must be > 0, got {self.pgd.step_size}")
        if list(self.eps) != sorted(self.eps):
            raise ValueError("eps must be sorted ascending")

    def settings(self, attack: str, eps: float) -> str:
        if attack == "pgd":
            return self.pgd.describe(eps)
        if attack == "autoattack":
            return f"standard (apgd-ce,apgd-t,fab-t,square);seed={self.seed}"
        if attack == "autoattack-fast":
            return f"apgd-ce,apgd-t;seed={self.seed}"
        if attack == "worst-case":
            return "per-example worst of " + ",".join(self.attacks)
        return ""


@dataclass
class Row:
    attack: str
    eps: Eps
    settings: str
    n_examples: int
    n_attacked: int
    clean_acc: float
    robust_acc: float
    seconds: float
    forward_passes: int
    backward_passes: int
    checks: list[str]

    def as_csv(self, run: str, norm: str) -> dict:
        return {"run": run, "attack": self.attack, "settings": self.settings, "norm": norm,
                "eps": self.eps.text, "eps_value": f"{self.eps.value:.8g}",
                "n_examples": self.n_examples, "n_attacked": self.n_attacked,
                "clean_acc": f"{self.clean_acc:.6f}", "robust_acc": f"{self.robust_acc:.6f}",
                "seconds": f"{self.seconds:.3f}", "forward_passes": self.forward_passes,
                "backward_passes": self.backward_passes, "checks": ";".join(self.checks)}


@dataclass
class Result:
    rows: list[Row]
    clean: Tensor                              # (N,) bool: correctly classified
    robust: dict[tuple[str, float], Tensor]    # (attack, ε) -> (N,) bool standing


@contextmanager
def eval_mode_and_rng(model: nn.Module) -> Iterator[None]:
    """Eval mode during the attack, the former mode after; global RNG states untouched.

    torchattacks and AutoAttack reseed the global torch RNG inside their attacks.
    """
    was_training = model.training
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def check_adversarial(x_adv: Tensor, x: Tensor, eps: float, norm: str, attack: str) -> None:
    """Every adversarial example lies in the ε-ball around its input and in [0, 1]."""
    if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
        raise AttackError(f"{attack} returned a malformed batch")
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    if (size > eps * (1 + 1e-5) + 1e-6).any():
        raise AttackError(f"{attack} left the {norm} ball of ε = {eps:.6g} "
                          f"(max {size.max().item():.6g}): a bug, the run stops")
    if x_adv.min() < 0 or x_adv.max() > 1:
        raise AttackError(f"{attack} left the image range [0, 1]: a bug, the run stops")


# The fixed, seed-independent subset of the test set (sorted indices): the core's one rule,
# which ``robustmix evaluate`` uses too. The name is kept for callers.
select_examples = runs.test_subset


def _predict(model: nn.Module, x: Tensor, batch_size: int, device) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(chunk.to(device)).argmax(1).cpu()
                          for chunk in x.split(batch_size)]) if len(x) else torch.zeros(0)


def robustness(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, *,
               indices: Tensor | None = None, device="cpu", n_classes: int | None = None,
               state_dir: Path | None = None, state_tag: str = "",
               progress: bool = False) -> Result:
    """Clean and robust accuracy of ``model`` (any module taking [0, 1] inputs) on (x, y).

    ``indices`` identify the examples (their positions in the full test set; default
    0..N−1); PGD's random starts are drawn from them and the seed, so no result depends on
    the batch size, the order, or which other examples are attacked, up to float rounding
    (CPU and GPU kernels sum in an order that depends on the batch shape, which can flip an
    example whose margin is within rounding of zero). x and y may live on the CPU; batches
    move to ``device``.

    ``x`` is a 4-D (N, C, H, W) tensor, N >= 1: uint8 images in 0..255 (as
    ``load_dataset(name).tensors("test")`` gives them) are converted to float32 in [0, 1]
    (x.float() / 255); floating images must be finite and in [0, 1] already, and are cast
    to the dtype of the model's parameters. ``y`` is a 1-D integer tensor of N labels in
    [0, K), K the number of the model's outputs (``n_classes`` where given). Anything else
    raises :class:`~robustmix.core.errors.ConfigError` naming the argument (a TypeError
    for a non-tensor).
    """
    config.validate()
    # The input checks run once per call, not per batch: O(N) reductions over x and y
    # (one host synchronization each), at most the cost of one forward pass over x.
    x = _checked_images(model, x, device)
    if indices is None:
        indices = torch.arange(x.shape[0])
    n = x.shape[0]
    rows: list[Row] = []
    robust: dict[tuple[str, float], Tensor] = {}
    with eval_mode_and_rng(model):
        counter = PassCounter(model)
        y, n_classes = _checked_labels(counter, x, y, n_classes, device)
        clean = _predict(counter, x, config.batch_size, device) == y.cpu()
        clean_acc = clean.float().mean().item() if n else 0.0
        model_notes = model_checks(model, x[:config.batch_size], device)
        for attack in config.attacks:
            standing = clean.clone()
            for eps in config.eps:
                targets = standing.nonzero().squeeze(1)
                start = time.perf_counter()
                before = (counter.forwards, counter.backwards)
                bar = _bar(attack, eps, targets.numel(), progress)
                broken, checks, spent = _attack(counter, attack, x, y, indices, targets, eps,
                                                config, device, n_classes, state_dir,
                                                state_tag, bar.update)
                bar.close()
                standing[targets[broken]] = False
                robust[(attack, eps.value)] = standing.clone()
                if spent is None:
                    spent = (counter.forwards - before[0], counter.backwards - before[1])
                rows.append(Row(attack, eps, config.settings(attack, eps.value), n,
                                targets.numel(), clean_acc, standing.float().mean().item(),
                                time.perf_counter() - start, spent[0], spent[1],
                                model_notes + [c for c in checks if c not in model_notes]))
        _add_worst_case(rows, robust, clean, clean_acc, config, model_notes)
    _check_rows(rows)
    return Result(rows, clean, robust)


def _checked_labels(model: nn.Module, x: Tensor, y: Tensor, n_classes: int | None,
                    device) -> tuple[Tensor, int]:
    """``y`` checked against K classes; K from one forward on the first example if not given."""
    if n_classes is None:
        with torch.no_grad():  # the model is in eval mode here
            n_classes = model(x[:1].to(device)).shape[1]
    return guards.class_labels("y", y, x.shape[0], n_classes), n_classes


def _bar(attack: str, eps: Eps, n_targets: int, progress: bool):
    """The progress bar of one attack at one ε (one tick per example and component)."""
    parts = _components(attack)
    return tqdm(total=n_targets * parts, leave=False, disable=not progress, unit="ex",
                desc=f"{attack} ε={eps.text}" + (f" ({parts} attacks in turn)"
                                                   if parts > 1 else ""))


def _add_worst_case(rows: list[Row], robust: dict[tuple[str, float], Tensor], clean: Tensor,
                    clean_acc: float, config: AttackConfig, model_notes: list[str]) -> None:
    """Per ε, the examples that stood against every attack: a row and a verdict each."""
    for eps in config.eps:
        worst = clean.clone()
        for attack in config.attacks:
            worst &= robust[(attack, eps.value)]
        robust[("worst-case", eps.value)] = worst
        rows.append(Row("worst-case", eps, config.settings("worst-case", eps.value),
                        clean.numel(), int(clean.sum()), clean_acc,
                        worst.float().mean().item(), 0.0, 0, 0,
                        model_notes + sorted({c for r in rows if r.eps == eps
                                              for c in r.checks} - set(model_notes))))


def _checked_images(model: nn.Module, x, device) -> Tensor:
    """``x`` checked (see :func:`robustness`) and as float images of the model's dtype; the
    model must already be on ``device`` (x moves there batch by batch)."""
    x = guards.images("x", x)
    param = next(model.parameters(), None)
    if param is not None:
        if param.device.type != torch.device(device).type:
            raise ConfigError("device", f"must be where the model is ({param.device}), "
                                        f"got {device}: move the model with model.to(device)")
        if param.dtype.is_floating_point and x.dtype != param.dtype:
            x = x.to(param.dtype)
    return x


def _components(attack: str) -> int:
    """How many attacks run in turn over the examples (AutoAttack's components)."""
    if attack == "autoattack":
        return len(COMPONENTS["standard"])
    return len(COMPONENTS["fast"]) if attack == "autoattack-fast" else 1


def _attack(model, attack, x, y, indices, targets, eps: Eps, config: AttackConfig, device,
            n_classes, state_dir, state_tag, advance) -> tuple[Tensor, list[str], tuple[int, int] | None]:
    """Attack the examples ``targets``; returns which of them broke, the checks raised, and
    the (forward, backward) passes spent where they differ from what this process counts
    (an AutoAttack resumed from its state adds those of the interrupted process)."""
    broken = torch.zeros(targets.numel(), dtype=torch.bool)
    if targets.numel() == 0:
        return broken, [], None
    if attack.startswith("autoattack"):
        x_t, y_t = x[targets].to(device), y[targets].to(device)
        state = None
        if state_dir is not None:
            key = (f"{attack}-{config.norm}-{eps.value:.8g}-seed{config.seed}-n{x.shape[0]}"
                   f"{state_tag}")
            state = Path(state_dir) / f"{key.replace('/', '_')}.json"
        x_adv, hit, checks, spent = autoattack(
            model, x_t, y_t, eps.value, config.norm, seed=config.seed,
            version="fast" if attack == "autoattack-fast" else "standard",
            batch_size=config.batch_size, n_classes=n_classes, state_path=state,
            on_batch=advance, passes=lambda: (model.forwards, model.backwards))
        # Each break was confirmed by a forward pass when it was found (possibly in an
        # earlier, interrupted process whose adversarial examples are not kept).
        check_adversarial(x_adv, x_t, eps.value, config.norm, attack)
        return hit.cpu(), checks, spent
    for chunk in torch.arange(targets.numel()).split(config.batch_size):
        batch = targets[chunk]
        xb, yb = x[batch].to(device), y[batch].to(device)
        if attack == "fgsm":
            x_adv = fgsm(model, xb, yb, eps.value, config.norm)
        else:
            x_adv, _ = pgd(model, xb, yb, indices[batch], eps.value, config.norm, config.pgd,
                           config.seed)
        check_adversarial(x_adv, xb, eps.value, config.norm, attack)
        with torch.no_grad():
            broken[chunk] = (model(x_adv).argmax(1) != yb).cpu()
        advance(batch.numel())
    return broken, [], None


def model_checks(model: nn.Module, x: Tensor, device) -> list[str]:
    """The ways a model makes robust accuracy lie, checked on a batch of clean inputs.

    Two forward passes on the same inputs must agree (else the model is randomized, e.g.
    dropout left on, and every accuracy is a draw), outputs must be finite, and they must
    be logits: rows in [0, 1] that sum to 1 are probabilities, whose gradients vanish
    where the model is confident, so gradient attacks find less than they should. The
    model runs in whatever mode the caller set (eval, in :func:`robustness`).
    """
    if x.shape[0] == 0:
        return []
    xb = x.to(device)
    with torch.no_grad():
        first, second = model(xb).float(), model(xb).float()
    notes = []
    if not torch.isfinite(first).all():
        notes.append("model: non-finite outputs (NaN or inf) on clean inputs")
    elif not torch.allclose(first, second, rtol=1e-4, atol=1e-5):
        notes.append("model: two passes on the same inputs give different outputs "
                     "(randomness in eval mode, e.g. dropout left on); accuracies are draws")
    if first.dim() == 2 and first.shape[1] > 1 and bool((first >= 0).all()) and \
            bool((first <= 1).all()) and torch.allclose(first.sum(1), torch.ones_like(
                first[:, 0]), atol=1e-4):
        notes.append("model: outputs are probabilities (rows in [0, 1] summing to 1), not "
                     "logits; gradient attacks on them underestimate robustness")
    return notes


def _check_rows(rows: Sequence[Row]) -> None:
    """Robust ≤ clean, and robust accuracy never rises with ε: anything else is a bug."""
    by_attack: dict[str, list[Row]] = {}
    for row in rows:
        if row.robust_acc > row.clean_acc + 1e-12:
            raise AttackError(f"{row.attack} at ε = {row.eps.text} reports robust accuracy "
                              f"{row.robust_acc:.4f} above clean {row.clean_acc:.4f}: a bug")
        by_attack.setdefault(row.attack, []).append(row)
    for attack, series in by_attack.items():
        for smaller, larger in zip(series, series[1:]):
            if larger.robust_acc > smaller.robust_acc + 1e-12:
                raise AttackError(f"{attack}: robust accuracy rises from ε = {smaller.eps.text} "
                                  f"to {larger.eps.text}: a bug")


# The names of the files in the run directory, from the core (aliases kept for callers).
ROBUSTNESS = runs.ROBUSTNESS
STATE_DIR = runs.ATTACK_STATE


def _eps_text(text: str) -> str:
    try:
        values = parse_eps(text)
    except UsageError:
        raise ValueError(f"is {text!r}, not a budget like 8/255 or 0.031") from None
    if len(values) != 1:
        raise ValueError(f"is {text!r}, not one budget")
    return text


ROBUSTNESS_COLUMNS = {
    "run": runs.text, "attack": runs.choice(ATTACKS + ("worst-case",)), "settings": runs.text,
    "norm": runs.choice(NORMS), "eps": _eps_text, "eps_value": runs.number(0, above=True),
    "n_examples": runs.number(0, integer=True), "n_attacked": runs.number(0, integer=True),
    "clean_acc": runs.number(0, 1), "robust_acc": runs.number(0, 1), "seconds": runs.number(0),
    "forward_passes": runs.number(0, integer=True),
    "backward_passes": runs.number(0, integer=True), "checks": runs.text}
assert list(ROBUSTNESS_COLUMNS) == CSV_FIELDS


def _check_row(row: dict[str, str]) -> None:
    """What one robustness row must satisfy beyond its columns' ranges."""
    eps = parse_eps(row["eps"])[0].value
    if not math.isclose(eps, float(row["eps_value"]), rel_tol=1e-6):
        raise ValueError(f"eps {row['eps']} is {eps:.8g}, but eps_value is {row['eps_value']}")
    if float(row["robust_acc"]) > float(row["clean_acc"]) + 1e-6:
        raise ValueError(f"robust_acc {row['robust_acc']} is above clean_acc "
                         f"{row['clean_acc']}")


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """A ``robustness.csv``, checked: its columns, names, ranges, and robust <= clean.

    A file edited by hand into something this program never writes (a missing column, a
    non-numeric or out-of-range accuracy, robust above clean) is a one-line UsageError
    naming the file, the line and the problem.
    """
    return runs.read_table(path, ROBUSTNESS_COLUMNS, row_check=_check_row)


def attack_run(run_dir: str | Path, config: AttackConfig, *, device="cpu",
               n_examples: int | None = None, data_dir: str | None = None,
               progress: bool = False, skip_bad_images: bool = False) -> list[Row]:
    """Attack a finished run's model on its test split; merge the rows into robustness.csv.

    Rows of an earlier call with the same attack, settings, norm, ε and examples are
    replaced; the others are kept. An existing robustness.csv is checked before any
    attack runs, so a damaged one costs no time. An image folder leaves out the files the
    run left out, and with ``skip_bad_images`` those that cannot be decoded now.
    """
    place = distributed.current()
    run = runs.RunDir(run_dir)
    if not run.path.is_dir():
        raise UsageError(f"{run.path}: no such run directory")
    model = load_model(run.path).to(device)
    saved = run.read_config()
    train_config = TrainConfig.from_dict(saved["train"], source=str(run.config_path))
    if run.robustness_path.exists():
        read_rows(run.robustness_path)
    data = load_dataset(train_config.dataset, data_dir=data_dir or train_config.data_dir,
                        image_size=train_config.image_size, skip_bad_images=skip_bad_images,
                        skipped=recorded_skips(saved, str(run.config_path)),
                        echo=print if place.is_main else None)
    x_all, y_all = data.tensors("test")
    chosen = torch.from_numpy(runs.test_subset(x_all.shape[0], n_examples))
    if chosen.numel() < place.world:  # every rank knows both numbers: they refuse together
        raise distributed.shared_error(
            f"{chosen.numel()} test example(s) cannot be shared among {place.world} "
            f"processes: attack at least {place.world} examples or start fewer processes")
    # Under torchrun, rank r attacks every world-th example from the r-th on; the results
    # are put back in order on every rank and rank 0 writes them.
    mine = slice(place.rank, None, place.world)
    x = x_all[chosen[mine]].float().div_(255)
    y = y_all[chosen[mine]]
    state_dir = run.attack_state_dir
    runs.remove_stale_temporaries(state_dir)  # a live writer's temporaries are kept
    result = robustness(model, x, y, config, indices=chosen[mine], device=device,
                        n_classes=data.num_classes, state_dir=state_dir,
                        state_tag=f"-rank{place.rank}of{place.world}" if place.active else "",
                        progress=progress and place.is_main)
    if place.active:
        result = merge_results(distributed.all_gather(result))

    final = {"rows": result.rows}

    def write() -> None:
        final["rows"] = store(run.path, config.norm, result)
        runs.remove_stale_temporaries(state_dir)
        if state_dir.is_dir() and not any(state_dir.iterdir()):
            state_dir.rmdir()

    distributed.on_main(write)
    return final["rows"]


def store(run_dir: Path, norm: str, result: Result) -> list[Row]:
    """Record the per-example outcomes and write robustness.csv with true worst cases.

    The worst-case rows are recomputed from every attack ever run on this run at the same
    norm and on the same examples (:mod:`attacks.worst_case`), so AutoAttack run in a
    separate command is part of them; returns this call's rows with those worst cases.
    """
    run = runs.RunDir(run_dir)
    n = result.clean.numel()
    attacked = [row for row in result.rows if row.attack != worst_case.WORST]
    examples = worst_case.record(
        run.robustness_examples_path, norm, result.clean,
        [(r.attack, r.settings, r.eps, result.robust[(r.attack, r.eps.value)]) for r in attacked])
    old = read_rows(run.robustness_path) if run.robustness_path.exists() else []
    rows = list(attacked)
    for eps, attacks, clean, standing in worst_case.worst_cases(examples, norm, n):
        checks = {c for r in old if r["norm"] == norm and r["n_examples"] == str(n)
                  and r["attack"] != worst_case.WORST
                  and math.isclose(float(r["eps_value"]), eps.value, rel_tol=1e-6)
                  for c in r["checks"].split(";") if c}
        checks |= {c for r in attacked if r.eps.value == eps.value for c in r.checks}
        rows.append(Row(worst_case.WORST, eps, worst_case.describe(attacks), n,
                        int(clean.sum()), clean.float().mean().item() if n else 0.0,
                        standing.float().mean().item() if n else 0.0, 0.0, 0, 0,
                        sorted(checks)))
    write_rows(run.robustness_path, [row.as_csv(str(run_dir), norm) for row in rows],
               drop=lambda row: row["attack"] == worst_case.WORST and row["norm"] == norm
               and row["n_examples"] == str(n))
    return rows


def merge_results(parts: Sequence[Result]) -> Result:
    """One Result from those of ranks that each took every ``len(parts)``-th example.

    Accuracies are recounted from the examples put back in order, so they are those of
    one process attacking them all (FGSM's and PGD's randomness is per example); passes
    add up, seconds are the slowest rank's, and checks are the union.
    """
    world = len(parts)
    n = sum(part.clean.numel() for part in parts)

    def in_order(pieces: Sequence[Tensor]) -> Tensor:
        whole = torch.zeros(n, dtype=torch.bool)
        for rank, piece in enumerate(pieces):
            whole[rank::world] = piece
        return whole

    clean = in_order([part.clean for part in parts])
    robust = {key: in_order([part.robust[key] for part in parts]) for key in parts[0].robust}
    clean_acc = clean.float().mean().item() if n else 0.0
    rows = []
    for number, row in enumerate(parts[0].rows):
        same = [part.rows[number] for part in parts]
        rows.append(dataclasses.replace(
            row, n_examples=n, n_attacked=sum(r.n_attacked for r in same), clean_acc=clean_acc,
            robust_acc=robust[(row.attack, row.eps.value)].float().mean().item() if n else 0.0,
            seconds=max(r.seconds for r in same),
            forward_passes=sum(r.forward_passes for r in same),
            backward_passes=sum(r.backward_passes for r in same),
            checks=list(dict.fromkeys(c for r in same for c in r.checks))))
    _check_rows(rows)
    return Result(rows, clean, robust)


def write_rows(path: Path, new_rows: list[dict], drop=lambda row: False) -> None:
    """Merge rows into a robustness CSV (checked first), replacing those with the same key
    and removing the old rows for which ``drop(row)`` is true."""
    def key(row: dict) -> tuple:
        return (row["attack"], row["settings"], row["norm"], f"{float(row['eps_value']):.8g}",
                str(row["n_examples"]))

    old = read_rows(path) if path.exists() else []
    replaced = {key(row) for row in new_rows}
    merged = [row for row in old if key(row) not in replaced and not drop(row)] + new_rows
    runs.write_csv(path, merged, CSV_FIELDS)


def format_table(run: str, rows: Sequence[Row]) -> str:
    """The printed table: one line per attack and ε."""
    lines = [f"{run}: clean accuracy {rows[0].clean_acc:.2%} on {rows[0].n_examples} test "
             "examples" if rows else run,
             f"  {'attack':<16}{'eps':>10}{'robust':>9}{'attacked':>10}{'seconds':>9}"
             f"{'fwd+bwd passes':>16}  checks"]
    for row in rows:
        passes = f"{row.forward_passes}+{row.backward_passes}" if row.attack != "worst-case" \
            else "-"
        lines.append(f"  {row.attack:<16}{row.eps.text:>10}{row.robust_acc:>9.2%}"
                     f"{row.n_attacked:>10}{row.seconds:>9.1f}{passes:>16}  "
                     f"{'; '.join(row.checks) or '-'}")
    return "\n".join(lines)
