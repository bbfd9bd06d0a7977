"""Which files of an image folder cannot be decoded: one pass before the first step.

Every file is opened and decoded as the training loader will (PIL), in parallel worker
processes; a JPEG is decoded at 1/8 scale (``Image.draft``), which still reads every
entropy-coded block, so a truncated file is found at about 60% of a full decode's cost.
``Image.verify`` alone is not enough: it reads only the header of a JPEG and passes a
truncated one.

The result is cached keyed by the listing of the files checked (relative path, size and
modification time of each), so a second run over an unchanged folder only lists it. The
cache lives in a cache directory (``$ROBUSTMIX_CACHE_DIR``, else ``$XDG_CACHE_HOME/robustmix``,
else ``~/.cache/robustmix``), one small JSON per folder, not in the folder (data sets are
often shared and read-only, and must not change under a run) nor in a run directory (the
attacks, evaluations and other runs over the same folder reuse it).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from robustmix.core.errors import UsageError

PARALLEL_FROM = 2000      # files; below this one process checks them faster than a pool starts
CHUNK = 256               # files per task handed to a worker process
MAX_WORKERS = 32
SHOWN = 3                 # bad files named in a message
CACHE_VERSION = 1


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and its message with whitespace collapsed."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def image_problem(path: str) -> str | None:
    """Why the file at ``path`` cannot be decoded as an image (one line), or None."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Image.UnidentifiedImageError:  # its message repeats the path
        empty = os.path.isfile(path) and os.stat(path).st_size == 0
        return "empty file" if empty else "not an image PIL can read"
    except Exception as error:  # noqa: BLE001 - any failure to decode is the file's fault
        return one_line(error)
    return None


def _problems(task: tuple[str, list[str]]) -> list[str | None]:
    root, paths = task
    return [image_problem(os.path.join(root, path)) for path in paths]


def _scan(root: str, paths: Sequence[str], workers: int) -> list[str | None]:
    """:func:`image_problem` of every path (relative to ``root``), in order."""
    if workers <= 1 or len(paths) < PARALLEL_FROM:
        return _problems((root, list(paths)))
    tasks = [(root, list(paths[i:i + CHUNK])) for i in range(0, len(paths), CHUNK)]
    # fork: a worker needs only PIL, and a forked one starts at once (spawn would import
    # torch again in each).
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return [problem for chunk in pool.map(_problems, tasks) for problem in chunk]


def cache_dir() -> Path:
    """Where the checks are cached (see the module docstring)."""
    if os.environ.get("ROBUSTMIX_CACHE_DIR"):
        return Path(os.environ["ROBUSTMIX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robustmix"


def cache_path(root: str | os.PathLike) -> Path:
    """The cache file of the folder ``root``."""
    key = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16]
    return cache_dir() / f"image-check-{key}.json"


def _listing(root: str, paths: Sequence[str]) -> tuple[str, dict[str, str]]:
    """A digest of (path, size, mtime) of every file, and the files that cannot be stat'ed."""
    digest = hashlib.sha256()
    missing = {}
    for path in sorted(paths):
        try:
            stat = os.stat(os.path.join(root, path))
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError as error:
            missing[path] = one_line(error)
    return digest.hexdigest(), missing


def _read_cache(path: Path, root: str, listing: str) -> list[tuple[str, str]] | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["version"] == CACHE_VERSION and saved["root"] == os.path.abspath(root) \
                and saved["listing"] == listing:
            return [(str(p), str(reason)) for p, reason in saved["bad"]]
    except (OSError, ValueError, KeyError, TypeError):  # absent or damaged: check again
        pass
    return None


def _write_cache(path: Path, root: str, listing: str, bad: list[tuple[str, str]]) -> None:
    # The core's atomic writer: a crash leaves the old cache or the new one, never half.
    from robustmix.core.runs import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({
            "version": CACHE_VERSION, "root": os.path.abspath(root), "listing": listing,
            "bad": [list(item) for item in bad]}, indent=1))
    except (OSError, UsageError):  # no writable cache: the check is only not remembered
        pass


def find_bad_images(root: str | os.PathLike, paths: Sequence[str], *,
                    workers: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) of every file of ``paths`` (relative to ``root``) that cannot be
    decoded, in sorted order; cached by the listing (see the module docstring).

    ``workers``: processes that decode (None: the CPUs, at most 32; the pool is used only
    from 2,000 files on).
    """
    root = str(root)
    listing, missing = _listing(root, paths)
    cache = cache_path(root)
    bad = _read_cache(cache, root, listing)
    if bad is None:
        present = [p for p in paths if p not in missing]
        workers = min(MAX_WORKERS, os.cpu_count() or 1) if workers is None else workers
        found = {p: why for p, why in zip(present, _scan(root, present, workers)) if why}
        bad = sorted({**found, **missing}.items())
        _write_cache(cache, root, listing, bad)
    return bad


class BadImagesError(UsageError):
    """Files of an image folder that cannot be decoded; ``bad`` holds (path, reason)."""

    def __init__(self, root: str | os.PathLike, bad: list[tuple[str, str]], remedy: str):
        self.root, self.bad = Path(root), bad
        super().__init__(f"{self.summary()}; {remedy}")

    def summary(self) -> str:
        shown = "; ".join(f"{path} ({why})" for path, why in self.bad[:SHOWN])
        more = f"; and {len(self.bad) - SHOWN} more (all in {cache_path(self.root)})" \
            if len(self.bad) > SHOWN else ""
        return (f"image folder {self.root}/: {len(self.bad)} file"
                f"{'s' if len(self.bad) != 1 else ''} cannot be read as images: {shown}{more}")


class UnreadableImage(UsageError):
    """An image that could not be read while a command ran (it passed the check before)."""

    def __init__(self, message: str):
        text = str(message)
        marker = f"{type(self).__name__}: "
        if "\n" in text and marker in text:
            # Raised in a DataLoader worker, this class is rebuilt in the main process from
            # the worker's whole traceback: keep the original message, its last line.
            text = text.rsplit(marker, 1)[1].strip().splitlines()[0]
        super().__init__(text)


def read_image(path: str):
    """The image at ``path`` as RGB (as torchvision's ``pil_loader``); a file that cannot be
    read is an :class:`UnreadableImage` naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - any failure to decode is the file's fault
        raise UnreadableImage(f"image {path} cannot be read ({one_line(error)})") from None
