"""Downloads that fail say what happened, and a study checks its data before it starts.

No network is used: torchvision's download functions are replaced by fakes that fail as
a real network does (no route, a transfer that stops, a proxy's web page), and the files
they leave are written in the formats torchvision reads.
"""

from __future__ import annotations

import gzip
import http.client
import io
import socket
import tarfile
import urllib.error

import pytest
import torchvision.datasets.utils as tv_utils

from helpers import assert_one_line_error, run_cli
from robustmix.core.errors import UsageError
from robustmix.data import check_available, load_dataset


def _offline(url, filename, *args, **kwargs):
    raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))


@pytest.fixture
def network(monkeypatch):
    """Install a fake transfer: ``network(fn)`` makes ``fn(url, path)`` the download."""
    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)

    def install(fake):
        monkeypatch.setattr(tv_utils, "_urlretrieve", fake)
    return install


def _archive() -> bytes:
    """A complete cifar-10-python.tar.gz, of other files than the official ones."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        payload = bytes(range(256)) * 400
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _download_error(tmp_path, name="cifar10") -> str:
    with pytest.raises(UsageError) as info:
        load_dataset(name, data_dir=str(tmp_path), download=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"could not download {name}: ")
    return message


def test_no_network_says_so_and_where_to_put_the_files(tmp_path, network):
    network(_offline)
    message = _download_error(tmp_path)
    assert "no network (URLError: <urlopen error [Errno -3] Temporary failure" in message
    assert "corrupt" not in message
    assert f"fetch cifar-10-python.tar.gz (from https://www.cs.toronto.edu/~kriz/) into " \
           f"{tmp_path}/ and rerun with --download" in message


def test_no_network_for_mnist_too(tmp_path, network):
    network(_offline)
    message = _download_error(tmp_path, "mnist")
    assert "no network" in message and f"{tmp_path / 'MNIST' / 'raw'}/" in message
    assert "train-images-idx3-ubyte.gz" in message


def test_a_transfer_that_stops_is_a_partial_download(tmp_path, network):
    def stops(url, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(_archive()[:300])
        raise http.client.IncompleteRead(b"x" * 300, 5000)

    network(stops)
    message = _download_error(tmp_path)
    assert "the download broke off part way" in message
    assert f"{tmp_path / 'cifar-10-python.tar.gz'}: 300 bytes received" in message


def test_a_short_archive_is_a_partial_download(tmp_path, network):
    whole = _archive()
    network(lambda url, path, *a, **k: open(path, "wb").write(whole[:len(whole) // 2]))
    message = _download_error(tmp_path)
    assert f"{tmp_path / 'cifar-10-python.tar.gz'} ends early" in message
    assert "a partial download" in message


def test_a_complete_archive_with_another_checksum(tmp_path, network):
    network(lambda url, path, *a, **k: open(path, "wb").write(_archive()))
    message = _download_error(tmp_path)
    assert "does not match torchvision's md5 checksum" in message
    assert "ends early" not in message and "web page" not in message


@pytest.mark.parametrize("body, says", [
    (b"<!DOCTYPE html><html><body>Please sign in</body></html>", "is a web page"),
    (b"PK\x03\x04 a zip, not a gzip", "is not a gzip archive"),
])
def test_a_foreign_file_is_named(tmp_path, network, body, says):
    network(lambda url, path, *a, **k: open(path, "wb").write(body))
    message = _download_error(tmp_path)
    assert f"{tmp_path / 'cifar-10-python.tar.gz'} {says}" in message


def test_a_gzip_check_reads_a_whole_valid_stream(tmp_path):
    from robustmix.data.downloads import _file_problem

    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"data" * 1000))
    assert "md5" in _file_problem(str(path))            # whole: only the checksum differs


def test_check_available(tmp_path):
    assert check_available("digits") is None
    problem = check_available("cifar10", data_dir=str(tmp_path))
    assert problem.startswith(f"cifar10 not found in {tmp_path}/")
    assert "cifar-10-batches-py" in problem
    assert "unknown dataset" in check_available("imagenet")


def test_study_dry_run_says_cifar_is_missing_and_the_study_refuses(capsys, tmp_path):
    toml = tmp_path / "study.toml"
    out = tmp_path / "study"
    toml.write_text(f'preset = "cifar10-robustness"\nout = "{out}"\n'
                    f'[train]\ndata_dir = "{tmp_path / "nowhere"}"\n')
    code, printed, err = run_cli(capsys, "study", "--dry-run", "--config", toml)
    assert code == 0, err
    assert f"data missing: cifar10 not found in {tmp_path / 'nowhere'}/" in printed
    assert "it cannot start" in printed
    code, _, err = run_cli(capsys, "study", "--config", toml)
    assert_one_line_error(code, err, "the study's data is not ready", "cifar10 not found",
                          "--download")
    assert not out.exists()


def test_check_available_counts_examples_and_classes(tmp_path, monkeypatch):
    from test_data import _skip_cifar_checksums, _write_cifar10

    _write_cifar10(tmp_path)                    # 5 × 2 training images, 3 test images
    _skip_cifar_checksums(monkeypatch)
    problem = check_available("cifar10", data_dir=str(tmp_path))
    assert problem == (f"cifar10 in {tmp_path}: 10 train / 3 test images, expected 50000 / "
                       "10000; the files are incomplete or not cifar10")
