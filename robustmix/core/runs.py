"""Run directories: config, metrics, weights and checkpoints, written atomically, read safely.

A run directory holds

    config.json          every setting, package versions, git commit
    metrics.csv          one row per finished epoch
    checkpoint.pt        resumable state (model, optimizer, step, RNG states, epoch)
    model.safetensors    final weights + the model spec in the header; its presence
                         alone marks the run complete

and, once measured, what ``robustmix attack`` and ``robustmix evaluate`` add to it:

    robustness.csv           one row per attack, norm, ε and example subset
    robustness_examples.csv  per-example outcomes behind the worst-case rows
    .attack-state/           AutoAttack's progress while it runs (removed when done)
    generalization.json      the generalization measurements
    gradient_profile.csv     their gradient-distance profiles
    regularizer.csv          their Q per mask distribution

Every name is one constant here, and :class:`RunDir` owns them: a path per file, the
checked readers, and :func:`test_subset`, the one rule that picks the test examples an
attack or evaluation with ``n_examples`` looks at.

Every file is written to a temporary name in the same directory and renamed into place,
so a crash leaves either the old file or the new one, never half of one; a write that
fails (a full disk) leaves the old file and raises :class:`WriteError`, one line. A
process killed mid-write leaves its temporary file behind; the next write into that
directory removes it. Weights are read with safetensors and checkpoints with
``torch.load(weights_only=True)``: loading never executes code from the file.

Files read back are checked before use: :func:`read_config` (types, unknown keys),
:func:`read_metrics` and :func:`read_table` (columns, numbers, ranges) turn anything
malformed into a one-line :class:`UsageError` that names the file and the problem.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import socket
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from safetensors.torch import save

from robustmix.core.errors import ConfigError, UsageError

CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, WEIGHTS)  # what training writes
ROBUSTNESS = "robustness.csv"
ROBUSTNESS_EXAMPLES = "robustness_examples.csv"
ATTACK_STATE = ".attack-state"
GENERALIZATION = "generalization.json"
PROFILE_CSV = "gradient_profile.csv"
REGULARIZER_CSV = "regularizer.csv"
CORRUPTIONS = "corruptions.csv"
# The sections of config.json, as robustmix train writes them.
CONFIG_SECTIONS = {"train": dict, "model": dict, "dataset": dict,
                   "augment": (dict, type(None)),   # None: imported, not trained here
                   "versions": dict, "git_commit": (str, type(None)), "device": str,
                   "world_size": int, "threads": int,
                   "imported": dict}                # robustmix import: the weights' origin
METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds",
                 "images_per_s"]
HOLDOUT_FIELDS = ["holdout_loss", "holdout_acc"]   # runs with a held-out slice only


def metric_fields(holdout: bool) -> list[str]:
    """metrics.csv's columns: with a held-out slice, its loss and accuracy at the end."""
    return METRIC_FIELDS + HOLDOUT_FIELDS if holdout else list(METRIC_FIELDS)


class WriteError(UsageError, OSError):
    """A file could not be written (a full disk, no permission); the old file is intact.

    An ``OSError`` (with ``errno``) that the command line reports as its one-line error.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def _file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give (mkstemp's is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


# .<name>.<pid>@<host>.<random>.tmp: who wrote a temporary file, so that a later writer can
# tell one left by a killed process from one that is being written right now.
_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)@(?P<host>[0-9a-f]{8})\.[^./]+\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers on this host left in ``directory``."""
    directory = Path(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    host = _host_tag()
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match is None or match["host"] != host or _alive(int(match["pid"])):
            continue
        try:
            (directory / name).unlink()
            removed.append(directory / name)
        except OSError:
            pass
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; some file systems cannot fsync a directory, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory + rename.

    On failure the old file (if any) is untouched, the temporary file is removed, and
    :class:`WriteError` names the file and the reason.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp",
                                   prefix=f".{path.name}.{os.getpid()}@{_host_tag()}.")
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _file_mode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
        raise WriteError(err.errno, f"could not write {path} ({reason}); {kept}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
              fieldnames: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err})") from None
    except OSError as err:
        raise UsageError(f"{path} could not be read ({err.strerror or err})") from None


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV as strings, unchecked: for files this program did not write.

    Files of a run directory are read with :func:`read_table` or :func:`read_metrics`.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``config.json``: a JSON object with the sections robustmix train writes.

    Unknown sections and sections of the wrong type are refused; the training settings
    themselves are checked by ``TrainConfig.from_dict`` (see :func:`check_fields`).
    """
    path = Path(run_dir) / CONFIG
    config = read_json(path)
    if not isinstance(config, dict):
        raise UsageError(f"{path} holds a JSON {type(config).__name__}, not an object with "
                         f"the sections {', '.join(CONFIG_SECTIONS)}")
    unknown = sorted(set(config) - set(CONFIG_SECTIONS))
    if unknown:
        raise UsageError(f"{path} has unknown keys {', '.join(map(repr, unknown))}; a "
                         f"robustmix config holds {', '.join(CONFIG_SECTIONS)}")
    if "train" not in config:
        raise UsageError(f"{path} lacks the 'train' section; it was not written by "
                         "robustmix train")
    for key, kind in CONFIG_SECTIONS.items():
        if key in config and not isinstance(config[key], kind):
            raise UsageError(f"{path}: '{key}' must be {_kind_name(kind)}, got "
                             f"{_short(config[key])}")
    return config


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "an object", str: "a string", type(None): "null", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) \
        else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fields(values: Mapping[str, Any], cls: type, source: str, *,
                 what: str = "settings", prefix: str = "") -> None:
    """Check JSON ``values`` against the typed fields of dataclass ``cls``.

    Unknown keys and values of the wrong type (``"3"`` or ``3.5`` for an int, ``true``
    for a number, a list of the wrong length for a pair) raise a one-line
    :class:`UsageError` naming ``source`` and the key (``what`` names the kind of
    settings). Nested dataclasses are checked recursively; missing keys are allowed
    (the defaults apply).
    """
    if not isinstance(values, Mapping):
        raise UsageError(f"{source}: malformed {what}: {prefix.rstrip('.') or 'they'} must be "
                         f"an object, got {_short(values)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise UsageError(f"{source}: unknown {what} "
                         f"{', '.join(prefix + str(k) for k in unknown)}")
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            check_fields(value, hint, source, what=what, prefix=f"{prefix}{key}.")
        elif not _matches(value, hint):
            raise UsageError(f"{source}: malformed {what}: {prefix}{key} must be "
                             f"{_describe(hint)}, got {_short(value)}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # a type this checker does not know: the constructor checks it


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} numbers" if all(a in (int, float) for a in args) \
            else f"a list of {len(args)} values"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


# ---------------------------------------------------------------------------- checked CSVs


def number(lo: float = -math.inf, hi: float = math.inf, *, integer: bool = False,
           above: bool = False) -> Callable[[str], float]:
    """A column check: a finite number (an integer with ``integer``) in [lo, hi].

    With ``above`` the value must be strictly greater than ``lo``.
    """
    def check(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except (TypeError, ValueError):
            raise ValueError(f"is {text!r}, not {'an integer' if integer else 'a number'}") \
                from None
        if not math.isfinite(value):
            raise ValueError(f"is {text!r}, not a finite number")
        if value < lo or value > hi or (above and value == lo):
            left = "(" if above else "["
            raise ValueError(f"is {text}, outside {left}{lo:g}, {hi:g}]")
        return value
    return check


def choice(options: Iterable[str]) -> Callable[[str], str]:
    """A column check: one of ``options``."""
    options = tuple(options)

    def check(text: str) -> str:
        if text not in options:
            raise ValueError(f"is {text!r}, not one of {', '.join(options)}")
        return text
    return check


def text(value: str) -> str:
    """A column check that accepts any text."""
    return value


def read_table(path: str | os.PathLike, columns: Mapping[str, Callable[[str], Any]], *,
               row_check: Callable[[dict[str, str]], None] | None = None,
               optional: Iterable[str] = ()) -> list[dict[str, str]]:
    """Read a CSV that this program wrote, checking it before use.

    The header must hold exactly ``columns`` (in any order), every line as many values,
    each value must pass its column's check, and each row ``row_check`` (checks raise
    ``ValueError`` naming the problem). Anything else is a one-line :class:`UsageError`
    naming the file, the line and the problem. Columns named in ``optional`` may be absent
    (all of them together, as a file written before they existed). Returns the rows as
    strings, so rewriting them changes nothing.
    """
    path = Path(path)
    optional = tuple(optional)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            if not header:
                raise UsageError(f"{path} is empty: it has no header line")
            duplicated = sorted({c for c in header if header.count(c) > 1})
            if optional and not set(optional) & set(header):
                columns = {k: v for k, v in columns.items() if k not in optional}
            missing = [c for c in columns if c not in header]
            unknown = [c for c in header if c not in columns]
            for problem, names in (("repeats the", duplicated), ("lacks the", missing),
                                   ("has the unknown", unknown)):
                if names:
                    raise UsageError(f"{path} {problem} column"
                                     f"{'s' if len(names) > 1 else ''} "
                                     f"{', '.join(map(repr, names))}; expected "
                                     f"{','.join(columns)}")
            rows = []
            for row in reader:
                extra = row.pop(None, None) or []
                short = sum(value is None for value in row.values())
                if extra or short:
                    raise UsageError(f"{path}, line {reader.line_num}: "
                                     f"{len(header) + len(extra) - short} values, but the "
                                     f"header has {len(header)} columns")
                for column, check in columns.items():
                    try:
                        check(row[column])
                    except ValueError as err:
                        raise UsageError(f"{path}, line {reader.line_num}: {column} "
                                         f"{err}") from None
                if row_check is not None:
                    try:
                        row_check(row)
                    except ValueError as err:
                        raise UsageError(f"{path}, line {reader.line_num}: {err}") from None
                rows.append(row)
            return rows
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    except csv.Error as err:
        raise UsageError(f"{path} is not a readable CSV ({err})") from None
    except OSError as err:
        raise UsageError(f"{path} could not be read ({err.strerror or err})") from None


METRIC_COLUMNS: dict[str, Callable[[str], Any]] = {
    "epoch": number(1, integer=True), "train_loss": number(0), "train_acc": number(0, 1),
    "test_loss": number(0), "test_acc": number(0, 1), "lr": number(0), "seconds": number(0),
    "images_per_s": number(0)}
assert list(METRIC_COLUMNS) == METRIC_FIELDS
HOLDOUT_COLUMNS: dict[str, Callable[[str], Any]] = {"holdout_loss": number(0),
                                                   "holdout_acc": number(0, 1)}


def read_metrics(path: str | os.PathLike, *, epochs: int | None = None) -> list[dict[str, str]]:
    """A run's ``metrics.csv``, checked: its columns, numbers, and epochs 1, 2, 3, ...

    With ``epochs`` (the epoch of the checkpoint being resumed) the file must hold at
    least that many rows, and only those are returned.
    """
    rows = read_table(path, {**METRIC_COLUMNS, **HOLDOUT_COLUMNS}, optional=HOLDOUT_FIELDS)
    for number_, row in enumerate(rows, start=1):
        if int(row["epoch"]) != number_:
            raise UsageError(f"{path}, line {number_ + 1}: epoch is {row['epoch']}, expected "
                             f"{number_} (one row per epoch, in order)")
    if epochs is not None:
        if len(rows) < epochs:
            raise UsageError(f"{path} holds {len(rows)} epochs, but {CHECKPOINT} was saved "
                             f"after epoch {epochs}")
        rows = rows[:epochs]
    return rows


def is_complete(run_dir: str | os.PathLike) -> bool:
    """A run is complete exactly when its weights file exists."""
    return (Path(run_dir) / WEIGHTS).is_file()


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether a directory already holds (part of) a run."""
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def save_weights(path: str | os.PathLike, model: torch.nn.Module, spec: Mapping[str, Any]) -> None:
    """Save a model's state dict as safetensors, with the spec to rebuild it in the header."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"robustmix_model": json.dumps(dict(spec))}))


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Save resumable training state; it must hold tensors, numbers, strings, lists, dicts only."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: tensors and plain data, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except Exception as err:  # a pickle that asks for code, or a truncated file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path} is not a readable robustmix checkpoint ({first})") from None


# ---------------------------------------------------------------------------- the directory


def test_subset(n_total: int, n_examples: int | None) -> np.ndarray:
    """The test examples an attack or evaluation with ``n_examples`` looks at (sorted indices).

    All of 0..n_total−1 when ``n_examples`` is None or at least ``n_total``; otherwise the
    sorted first ``n_examples`` of ``default_rng(0).permutation(n_total)``: fixed, the same
    for every model and seed, so ``robustmix attack`` and ``robustmix evaluate`` with one
    --n-examples look at the same test images.
    """
    if n_examples is None or n_examples >= n_total:
        return np.arange(n_total)
    if n_examples < 1:
        raise ConfigError("n_examples", f"must be >= 1, got {n_examples}")
    return np.sort(np.random.default_rng(0).permutation(n_total)[:n_examples])


test_subset.__test__ = False  # a rule, not a test: pytest must not collect it where imported


# What identifies a data set: two runs are comparable only when all of these agree.
DATA_KEYS = ("name", "channels", "height", "width", "n_train", "n_test", "num_classes")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """One run directory: where each of its files lies, and their checked readers.

    ``RunDir(path)`` touches nothing on disk; :meth:`open` checks that it holds a finished
    run and reads its config (a :class:`FinishedRun`).
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ---- the files (the module-level functions of the same names do the reading)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def robustness_path(self) -> Path:
        return self.path / ROBUSTNESS

    @property
    def robustness_examples_path(self) -> Path:
        return self.path / ROBUSTNESS_EXAMPLES

    @property
    def attack_state_dir(self) -> Path:
        return self.path / ATTACK_STATE

    @property
    def generalization_path(self) -> Path:
        return self.path / GENERALIZATION

    @property
    def profile_path(self) -> Path:
        return self.path / PROFILE_CSV

    @property
    def regularizer_path(self) -> Path:
        return self.path / REGULARIZER_CSV

    @property
    def corruptions_path(self) -> Path:
        return self.path / CORRUPTIONS

    # ---- what they hold

    def read_config(self) -> dict[str, Any]:
        """``config.json``, checked (:func:`read_config`)."""
        return read_config(self.path)

    def read_metrics(self, *, epochs: int | None = None) -> list[dict[str, str]]:
        """``metrics.csv``, checked (:func:`read_metrics`)."""
        return read_metrics(self.metrics_path, epochs=epochs)

    def is_complete(self) -> bool:
        """Whether training finished: its weights file exists."""
        return is_complete(self.path)

    def holds_run(self) -> bool:
        """Whether the directory holds (part of) a training run."""
        return holds_run(self.path)

    def read_generalization(self) -> Any:
        """``generalization.json`` as written by ``robustmix evaluate``; None when absent."""
        path = self.generalization_path
        return read_json(path) if path.is_file() else None

    def open(self) -> FinishedRun:
        """Check that the directory holds a finished run and read its config."""
        path = self.path
        if not path.exists():
            raise UsageError(f"run directory {path} not found")
        if not path.is_dir():
            raise UsageError(f"{path} is not a run directory (give the folder that holds "
                             f"{CONFIG} and {WEIGHTS})")
        if not self.is_complete():
            raise UsageError(f"{path} holds no finished run: {WEIGHTS} is missing "
                             f"(finish it with: robustmix train --resume {path})")
        config = self.read_config()  # types and unknown keys checked
        if "dataset" not in config:
            raise UsageError(f"{self.config_path} lacks the 'dataset' section; "
                             "it was not written by robustmix train")
        return FinishedRun(path, config)


@dataclasses.dataclass(frozen=True)
class FinishedRun(RunDir):
    """A finished run directory and its ``config.json`` (from :meth:`RunDir.open`)."""

    config: dict[str, Any]

    @property
    def train(self) -> dict[str, Any]:
        return self.config["train"]

    @property
    def mix(self) -> str:
        return str(self.train.get("mix", {}).get("mix", "vanilla"))

    @property
    def seed(self) -> int:
        return int(self.train.get("seed", 0))

    @property
    def dataset(self) -> dict[str, Any]:
        return self.config["dataset"]

    def data_identity(self) -> tuple:
        return tuple(self.dataset.get(key) for key in DATA_KEYS)

    def data_label(self) -> str:
        d = self.dataset
        return (f"{d.get('name')} {d.get('channels')}x{d.get('height')}x{d.get('width')} "
                f"({d.get('n_train')} train / {d.get('n_test')} test)")


def open_run(path: str | os.PathLike) -> FinishedRun:
    """Check that ``path`` holds a finished run and read its config (:meth:`RunDir.open`)."""
    return RunDir(path).open()
