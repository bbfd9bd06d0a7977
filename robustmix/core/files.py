"""Files written atomically and read back safely: the only way robustmix writes a file.

Every file is written to a temporary name in the same directory and renamed into place,
so a crash leaves either the old file or the new one, never half of one; a write that
fails (a full disk) leaves the old file and raises :class:`WriteError`, one line. A
process killed mid-write leaves its temporary file behind; the next write into that
directory removes it (:func:`remove_stale_temporaries`).

Plain Python, no torch: the run directory (:mod:`robustmix.core.runs`), the reports and
the benchmarks all write through here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from robustmix.core.errors import UsageError


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

    Files of a run directory are read with :func:`robustmix.core.tables.read_table` or
    :func:`robustmix.core.runs.read_metrics`.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

