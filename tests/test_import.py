"""`robustmix import`: weights saved by plain PyTorch code become a run that every command
takes, with exactly the numbers of the same weights as a robustmix run (issue 15)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

from robustmix.attacks.table import read_rows
from helpers import assert_one_line_error, one_thread, run_cli
from robustmix import load_model
from robustmix.core import runs

TRAIN = ["train", "--quiet", "--image-size", "8", "--batch-size", "128", "--epochs", "1"]
ATTACK = ["attack", "--quiet", "--attacks", "fgsm,pgd", "--eps", "8/255,32/255",
          "--pgd-steps", "3", "--n-examples", "48"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("import") / "trained"
    with one_thread():
        from robustmix.app.cli import main
        assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def plain_checkpoint(model, path, *, wrap=True):
    """What a user's own script saves: the raw network's state dict, DataParallel's
    ``module.`` prefix, inside a checkpoint dict, with torch.save."""
    state = {f"module.{k}": v.clone() for k, v in model.net.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state} if wrap else state, path)
    return path


def attack_rows(run):
    return [{k: v for k, v in row.items() if k not in ("run", "seconds")}
            for row in read_rows(run / runs.ROBUSTNESS)]


@pytest.mark.slow
def test_imported_weights_give_the_runs_own_numbers(trained, tmp_path, capsys):
    weights = plain_checkpoint(load_model(trained), tmp_path / "mine.pt")
    imported = tmp_path / "imported"
    code, out, err = run_cli(capsys, "import", "--weights", str(weights), "--arch", "smallcnn",
                             "--image-size", "8", "--out", str(imported))
    assert code == 0, err
    x = torch.rand(16, 1, 8, 8)
    assert torch.equal(load_model(imported)(x), load_model(trained)(x))
    record = json.loads((imported / runs.CONFIG).read_text())["imported"]
    assert record["format"] == "torch" and len(record["sha256"]) == 64
    with one_thread():
        for run in (trained, imported):
            assert run_cli(capsys, *ATTACK, str(run))[0] == 0
    assert attack_rows(imported) == attack_rows(trained)
    assert {row["robust_acc"] for row in attack_rows(trained)} != {"0.000000"}


def test_a_safetensors_file_of_a_robustmix_model_imports_whole(trained, tmp_path, capsys):
    """A robustmix weights file (net.* keys with its mean and std) is taken as it is."""
    imported = tmp_path / "again"
    code, _, err = run_cli(capsys, "import", "--weights", str(trained / runs.WEIGHTS),
                           "--arch", "smallcnn", "--image-size", "8", "--mean", "0.5",
                           "--std", "0.5", "--out", str(imported))
    assert code == 0, err
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(load_model(imported)(x), load_model(trained)(x))   # its own mean/std


def test_the_normalization_goes_inside_the_model(trained, tmp_path, capsys):
    weights = plain_checkpoint(load_model(trained), tmp_path / "mine.pt", wrap=False)
    imported = tmp_path / "normalized"
    assert run_cli(capsys, "import", "--weights", str(weights), "--arch", "smallcnn",
                   "--image-size", "8", "--mean", "0.25", "--std", "2", "--out",
                   str(imported))[0] == 0
    model, raw = load_model(imported), load_model(trained).net
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(model(x), raw((x - 0.25) / 2), atol=1e-6)


def test_weights_that_do_not_fit_are_one_line(trained, tmp_path, capsys):
    weights = plain_checkpoint(load_model(trained), tmp_path / "mine.pt")
    code, _, err = run_cli(capsys, "import", "--weights", str(weights), "--arch", "resnet20",
                           "--image-size", "8", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "does not fit resnet20", "missing", "unexpected")
    assert not (tmp_path / "r").exists()


def test_a_pickle_that_carries_code_is_refused_unrun(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path)
    code, _, err = run_cli(capsys, "import", "--weights", str(path), "--arch", "smallcnn",
                           "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "weights_only=True")
    assert not marker.exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, fragments", [
    (["--weights", "missing.pt"], ["missing.pt not found"]),
    (["--mean", "0.1,0.2"], ["--mean must give one value per channel (1), got 2"]),
    (["--arch", "timm:"], ["timm:NAME needs a timm model name"]),
    (["--mix", "nope"], ["--mix must be one of", "got 'nope'"]),
])
def test_bad_import_arguments_are_one_line(trained, tmp_path, capsys, argv, fragments):
    settings = {"--weights": str(trained / runs.WEIGHTS), "--arch": "smallcnn",
                "--image-size": "8", "--out": str(tmp_path / "r")}
    settings.update(zip(argv[::2], argv[1::2]))
    code, _, err = run_cli(capsys, "import", *[t for kv in settings.items() for t in kv])
    assert_one_line_error(code, err, *fragments)


def test_a_non_empty_out_is_refused(trained, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "import", "--weights", str(trained / runs.WEIGHTS),
                           "--arch", "smallcnn", "--image-size", "8", "--out",
                           str(tmp_path / "r"))
    assert_one_line_error(code, err, "not an empty directory")
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


# --- timm ---------------------------------------------------------------------------------

class _TinyNet(nn.Module):
    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.stem(x).mean(dim=(2, 3)))


@pytest.fixture
def fake_timm(monkeypatch):
    """A stand-in for the timm package (same two calls), for the code path without it."""
    module = types.SimpleNamespace(
        is_model=lambda name: name == "tiny",
        create_model=lambda name, pretrained, num_classes, in_chans: _TinyNet(num_classes,
                                                                              in_chans))
    monkeypatch.setitem(sys.modules, "timm", module)


def test_a_timm_architecture_imports_and_loads_back(fake_timm, tmp_path, capsys):
    torch.manual_seed(0)
    theirs = _TinyNet(10, 1)
    torch.save(theirs.state_dict(), tmp_path / "tiny.pt")
    out = tmp_path / "r"
    assert run_cli(capsys, "import", "--weights", str(tmp_path / "tiny.pt"), "--arch",
                   "timm:tiny", "--image-size", "8", "--mean", "0", "--std", "1",
                   "--out", str(out))[0] == 0
    model, x = load_model(out), torch.rand(3, 1, 8, 8)
    assert torch.equal(model(x), theirs(x))
    assert model.first_layer is model.net.stem    # the first conv, for the first-layer norms
    code, _, err = run_cli(capsys, "import", "--weights", str(tmp_path / "tiny.pt"), "--arch",
                           "timm:nosuch", "--out", str(tmp_path / "r2"))
    assert_one_line_error(code, err, "unknown timm model 'nosuch'")


def test_without_timm_a_timm_arch_is_one_line(monkeypatch, tmp_path, capsys, trained):
    monkeypatch.setitem(sys.modules, "timm", None)   # import timm raises ImportError
    code, _, err = run_cli(capsys, "import", "--weights", str(trained / runs.WEIGHTS),
                           "--arch", "timm:resnet18", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "needs the timm package", "robustmix[timm]")


def test_real_timm_weights_import_exactly(tmp_path, capsys):
    import timm   # the test extra brings it: a missing timm fails here, never skips
    torch.manual_seed(0)
    theirs = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()
    torch.save(theirs.state_dict(), tmp_path / "resnet.pt")
    out = tmp_path / "r"
    assert run_cli(capsys, "import", "--weights", str(tmp_path / "resnet.pt"), "--arch",
                   "timm:test_resnet", "--image-size", "16", "--mean", "0.5", "--std", "0.25",
                   "--out", str(out))[0] == 0
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(load_model(out)(x), theirs((x - 0.5) / 0.25), atol=1e-6)
