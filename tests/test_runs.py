"""Run-directory files: a failed or killed write keeps the old file, every file read back is
checked, and no weights or checkpoint file can run code."""

import dataclasses
import errno
import json
import os
import pickle
import subprocess
import typing

import pytest
import torch

import robustmix
from robustmix.core import files, runs, tables
from robustmix.core.errors import UsageError
from robustmix.mixing import MixConfig

from helpers import RunsCode


# ---------------------------------------------------------------------------- writes


def fail_fsync_of(name, monkeypatch):
    """Make fsync of the temporary file of ``name`` fail as a full disk does."""
    real = os.fsync

    def fsync(fd):
        if f"/.{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_keeps_the_old_file_and_says_which_file_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    runs.atomic_write_text(path, "old\n")
    fail_fsync_of("metrics.csv", monkeypatch)
    with pytest.raises(runs.WriteError) as caught:
        runs.atomic_write_text(path, "new\n")
    message = str(caught.value)
    assert message == (f"could not write {path} (No space left on device); the previous "
                       "metrics.csv is kept")
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"], "no temporary file left"

    with pytest.raises(runs.WriteError, match="nothing was written"):
        runs.atomic_write_text(tmp_path / "sub" / "metrics.csv", "new\n")


def test_temporary_files_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    """(tests/test_kill_resume.py kills real writers; here the names are made by hand.)"""
    path = tmp_path / "checkpoint.pt"
    runs.atomic_write_bytes(path, b"epoch 1")
    dead = _dead_pid()
    host = files._host_tag()
    stale = tmp_path / f".checkpoint.pt.{dead}@{host}.k3j_x9.tmp"
    other_file = tmp_path / f".robustness.csv.{dead}@{host}.abc.tmp"
    live = tmp_path / f".metrics.csv.{os.getpid()}@{host}.abc.tmp"   # this process writes it
    other_host = tmp_path / f".metrics.csv.{dead}@00000000.abc.tmp"  # can't tell: kept
    not_ours = tmp_path / ".notes.tmp"
    for file in (stale, other_file, live, other_host, not_ours):
        file.write_text("half")
    runs.atomic_write_bytes(path, b"epoch 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other_host.name, not_ours.name, "checkpoint.pt"])
    assert path.read_bytes() == b"epoch 2"


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_written_files_get_the_ordinary_file_mode(tmp_path):
    runs.write_json(tmp_path / "config.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------- config.json


def write_config(run_dir, **changes):
    from robustmix.core.config import TrainConfig

    config = {"train": TrainConfig(epochs=2).to_dict(), "model": {"arch": "smallcnn"},
              "dataset": {"name": "digits"}, "augment": {}, "versions": {"torch": "2"},
              "git_commit": None, "device": "cpu"}
    config.update(changes)
    runs.write_json(run_dir / runs.CONFIG, config)
    return config


def test_read_config_accepts_what_train_writes(tmp_path):
    config = write_config(tmp_path)
    assert runs.read_config(tmp_path) == json.loads(json.dumps(config))


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"train": {}, "bogus": 1}', "unknown keys 'bogus'"),
    ('{"model": {}}', "lacks the 'train' section"),
    ('{"train": [1]}', "'train' must be an object, got [1]"),
    ('{"train": {}, "git_commit": 5}', "'git_commit' must be a string or null, got 5"),
    ('{"train": {', "is not valid JSON"),
    ("\xff\xfe", "is not valid JSON"),
])
def test_read_config_names_the_file_and_the_problem(tmp_path, content, fragment):
    (tmp_path / runs.CONFIG).write_bytes(content.encode("latin-1"))
    with pytest.raises(UsageError) as caught:
        runs.read_config(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / runs.CONFIG) in message and fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize("key, value, fragment", [
    ("epochs", "3", "epochs must be an integer, got \"3\""),
    ("epochs", 3.5, "epochs must be an integer, got 3.5"),
    ("epochs", True, "epochs must be an integer, got true"),
    ("lr", "0.1", "lr must be a number"),
    ("lr", None, "lr must be a number, got null"),
    ("nesterov", 1, "nesterov must be true or false, got 1"),
    ("seed", [0], "seed must be an integer"),
    ("dataset", 5, "dataset must be a string, got 5"),
    ("crop_scale", [0.5], "crop_scale must be a list of 2 numbers or null, got [0.5]"),
    ("crop_scale", "0.5,1", "crop_scale must be a list of 2 numbers or null"),
    ("milestones", [5, "x"], "milestones must be a list of integers"),
    ("image_size", 8.0, "image_size must be an integer or null, got 8.0"),
    ("mix", {"alpha": "1"}, "mix.alpha must be a number, got \"1\""),
    ("mix", {"mixx": "cutmix"}, "unknown training settings mix.mixx"),
    ("mix", "cutmix", "mix must be an object, got \"cutmix\""),
    ("bogus", 1, "unknown training settings bogus"),
])
def test_settings_of_the_wrong_type_or_unknown_are_refused_by_name(key, value, fragment):
    from robustmix.core.config import TrainConfig

    values = {**TrainConfig().to_dict(), key: value}
    with pytest.raises(UsageError) as caught:
        runs.check_fields(values, TrainConfig, "run/config.json", what="training settings")
    message = str(caught.value)
    assert message.startswith("run/config.json: ") and fragment in message, message
    assert "unknown" in message or "malformed training settings: " in message


def test_settings_that_train_writes_pass_the_type_check():
    from robustmix.core.config import TrainConfig

    config = TrainConfig(crop_scale=(0.35, 1.0), milestones=(5, 8), image_size=8, epochs=10,
                         mix=MixConfig(mix="hmix", alpha=0.5), schedule="multistep")
    runs.check_fields(json.loads(json.dumps(config.to_dict())), TrainConfig, "c")
    runs.check_fields({"lr": 1, "warmup_epochs": 0}, TrainConfig, "c")  # ints are numbers


# ---------------------------------------------------------------------------- metrics.csv


METRICS = ("epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds,images_per_s\n"
           "1,2.0,0.30,1.4,0.38,0.03,8.8,154.1\n"
           "2,1.6,0.55,0.6,0.85,0.01,1.6,892.9\n")


def test_read_metrics_reads_what_train_writes(tmp_path):
    path = tmp_path / runs.METRICS
    path.write_text(METRICS)
    rows = runs.read_metrics(path)
    assert [r["test_acc"] for r in rows] == ["0.38", "0.85"]
    assert [r["epoch"] for r in runs.read_metrics(path, epochs=1)] == ["1"]
    with pytest.raises(UsageError, match="holds 2 epochs, but checkpoint.pt was saved after "
                                         "epoch 3"):
        runs.read_metrics(path, epochs=3)


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace("0.85", "abc"), "line 3: test_acc is 'abc', not a number"),
    (lambda t: t.replace("0.85", "1.5"), "line 3: test_acc is 1.5, outside [0, 1]"),
    (lambda t: t.replace("0.85", "nan"), "line 3: test_acc is 'nan', not a finite number"),
    (lambda t: t.replace("0.85", ""), "line 3: test_acc is '', not a number"),
    (lambda t: t.replace(",test_acc", "").replace(",0.38", "").replace(",0.85", ""),
     "lacks the column 'test_acc'"),
    (lambda t: t.replace("images_per_s", "images_per_s,note").replace("154.1", "154.1,x")
     .replace("892.9", "892.9,y"), "has the unknown column 'note'"),
    (lambda t: t.replace("\n2,", "\n3,"), "line 3: epoch is 3, expected 2"),
    (lambda t: t.replace("\n2,", "\n2.0,"), "line 3: epoch is '2.0', not an integer"),
    (lambda t: t.replace("892.9", "892.9,7"), "line 3: 9 values, but the header has 8"),
    (lambda t: t.replace(",892.9", ""), "line 3: 7 values, but the header has 8"),
    (lambda t: "", "is empty"),
    (lambda t: t.replace("0.85", "0.8\x005"), "test_acc is '0.8\\x005', not a number"),
])
def test_a_hand_edited_metrics_csv_is_refused_with_file_line_and_problem(tmp_path, edit,
                                                                         fragment):
    path = tmp_path / runs.METRICS
    path.write_text(edit(METRICS))
    with pytest.raises(UsageError) as caught:
        runs.read_metrics(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and fragment in message, message
    assert "\n" not in message


def test_a_metrics_csv_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / runs.METRICS
    path.write_bytes(METRICS.encode() + b"\xff\xfe\n")
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        runs.read_metrics(path)


# ---------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    from robustmix.models import build_model

    path = tmp_path_factory.mktemp("weights") / runs.WEIGHTS
    model = build_model("smallcnn", num_classes=10, in_channels=1, mean=[0.5], std=[0.25])
    runs.save_weights(path, model, model.config)
    return path


def test_saved_weights_load_back_exactly(weights_file):
    from safetensors.torch import load_file

    model = robustmix.load_model(weights_file)
    assert not model.training
    saved = load_file(str(weights_file))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, 0.999])
def test_a_truncated_weights_file_is_refused_in_one_line(weights_file, tmp_path, keep):
    data = weights_file.read_bytes()
    cut = tmp_path / runs.WEIGHTS
    cut.write_bytes(data[:int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(UsageError) as caught:
        robustmix.load_model(cut)
    message = str(caught.value)
    assert message.startswith(str(cut)) and "\n" not in message, message


def test_weights_for_another_model_are_refused(weights_file, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights_file))
    tensors.pop("net.linear.bias")
    path = tmp_path / runs.WEIGHTS
    with open(weights_file, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        metadata = json.loads(handle.read(header_len))["__metadata__"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(UsageError, match="weights do not match their model spec"):
        robustmix.load_model(path)


def evil_files(tmp_path, marker):
    """Code-carrying pickles in every form a weights or checkpoint file could take."""
    zipped = tmp_path / "zipped.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": RunsCode(marker)}, zipped)
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": RunsCode(marker)}, legacy, _use_new_zipfile_serialization=False)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(RunsCode(marker)))
    return [zipped, legacy, raw]


def test_the_payload_does_run_code_when_unpickled(tmp_path):
    """The control: the same payload runs when an ordinary unpickler reads it."""
    marker = tmp_path / "ran"
    for path in evil_files(tmp_path, marker):
        if path.suffix == ".pkl":
            pickle.loads(path.read_bytes())
        else:
            torch.load(path, weights_only=False)
        assert marker.exists(), path
        marker.unlink()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_no_weights_or_checkpoint_file_runs_code(tmp_path):
    marker = tmp_path / "ran"
    for path in evil_files(tmp_path, marker):
        with pytest.raises(UsageError, match="not a readable robustmix checkpoint"):
            runs.load_checkpoint(path)
        as_weights = tmp_path / runs.WEIGHTS
        as_weights.write_bytes(path.read_bytes())
        for target in (as_weights, tmp_path):
            with pytest.raises(UsageError, match="not a readable safetensors"):
                robustmix.load_model(target)
    assert not marker.exists()


def test_checkpoints_hold_tensors_and_plain_data_only(tmp_path):
    path = tmp_path / runs.CHECKPOINT
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "rng": json.dumps({"a": 1}),
             "torch_rng": torch.get_rng_state()}
    runs.save_checkpoint(path, state)
    loaded = runs.load_checkpoint(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    data = path.read_bytes()
    for keep in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:keep])
        with pytest.raises(UsageError, match="not a readable robustmix checkpoint"):
            runs.load_checkpoint(path)


def test_dataclass_type_check_covers_every_training_setting():
    """Every field of TrainConfig and MixConfig has a type the checker understands."""
    from robustmix.core.config import TrainConfig

    for cls in (TrainConfig, MixConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(hints[f.name]):
                assert not tables._matches(object(), hints[f.name]), (cls.__name__, f.name)
