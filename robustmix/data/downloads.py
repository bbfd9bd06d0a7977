"""What went wrong when torchvision could not download a data set, as one line.

torchvision reports every failure of a download as the error of whatever broke (a
``URLError`` without network, ``IncompleteRead`` when a transfer stops) or as
"File not found or corrupted." once a file fails its md5 check; the files it leaves
behind tell the rest: a web page or a non-gzip file where the archive should be (a proxy
or a login page answered), a gzip stream that ends early (a partial download), or a
complete file with another checksum. Each gets its own message, which names the file and
says where to put the files fetched by hand (torchvision checks and unpacks an archive it
finds there instead of downloading it).
"""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import urllib.error
import zlib

from robustmix.data.image_check import one_line

_WEB_PAGE = (b"<!doctype", b"<html", b"<?xml", b"<head", b"{")


def downloads(name: str, cls, root: str) -> list[tuple[str, str, str]]:
    """(url, path, md5) of every file torchvision downloads for data set ``name``."""
    if name == "svhn":
        return [(url, os.path.join(root, filename), md5)
                for url, filename, md5 in (cls.split_list[s] for s in ("train", "test"))]
    if hasattr(cls, "resources"):  # MNIST, Fashion-MNIST: raw/*.gz from the first mirror
        raw = os.path.join(root, cls.__name__, "raw")
        return [(cls.mirrors[0] + filename, os.path.join(raw, filename), md5)
                for filename, md5 in cls.resources]
    return [(cls.url, os.path.join(root, cls.filename), cls.tgz_md5)]  # CIFAR


def _chain(error: BaseException) -> list[BaseException]:
    found, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def _size(path: str) -> str:
    try:
        return f"{os.path.getsize(path):,} bytes"
    except OSError:
        return "nothing"


def _file_problem(path: str) -> str:
    """Why a downloaded file failed its checksum: a foreign file, a partial one, or another
    version of it."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.lstrip().lower().startswith(_WEB_PAGE):
        return (f"{path} is a web page, not the data set's file (a proxy or login page "
                "answered instead of the server)")
    if path.endswith(".gz"):
        if head[:2] != b"\x1f\x8b":
            return f"{path} is not a gzip archive (a foreign file: {head[:16]!r}...)"
        try:
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 20):
                    pass
        except (EOFError, zlib.error, OSError):
            return f"{path} ends early ({_size(path)}: a partial download)"
    return f"{path} ({_size(path)}) does not match torchvision's md5 checksum"


def _what_happened(files: list[tuple[str, str, str]], error: BaseException) -> str | None:
    from torchvision.datasets.utils import check_integrity

    chain = _chain(error)
    text = " ".join(str(e) for e in chain)
    present = [(url, path) for url, path, _ in files if os.path.isfile(path)]
    if any(isinstance(e, (http.client.IncompleteRead, ConnectionResetError,
                          ConnectionAbortedError)) for e in chain):
        where = f" ({present[-1][1]}: {_size(present[-1][1])} received)" if present else ""
        return f"the download broke off part way{where}: {one_line(error)}"
    for e in chain:
        if isinstance(e, urllib.error.HTTPError):
            return f"the server answered HTTP {e.code} ({e.reason}) for {e.url}"
    if any(isinstance(e, (urllib.error.URLError, socket.gaierror, socket.timeout,
                          ConnectionError, TimeoutError)) for e in chain) \
            or "urlopen error" in text:
        return f"no network ({one_line(error)})"
    if "not found or corrupted" in text:  # a downloaded file failed its md5 check
        for _, path, md5 in files:
            if os.path.isfile(path) and not check_integrity(path, md5):
                return _file_problem(path)
    return None


def download_problem(name: str, cls, root: str, error: BaseException) -> str | None:
    """One line for a failed download of ``name`` into ``root`` (torchvision class
    ``cls``), naming what happened and where to put the files by hand; None when
    ``error`` did not come from the download (the files are then read and judged)."""
    files = downloads(name, cls, root)
    what = _what_happened(files, error)
    if what is None:
        return None
    folder = os.path.dirname(files[0][1])
    names = ", ".join(os.path.basename(path) for _, path, _ in files)
    return (f"could not download {name}: {what}; to install it by hand, fetch {names} "
            f"(from {files[0][0].rsplit('/', 1)[0]}/) into {os.path.join(folder, '')} and "
            "rerun with --download (torchvision checks and unpacks them there), or point "
            "--data-dir at a copy")
