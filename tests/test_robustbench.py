"""Each run in RobustBench's model_info form (evaluations/robustbench.py, issue 26 item 4).

The fields, their types and their formats are RobustBench's (accuracies as percentage
strings with two decimals, ε as the leaderboard writes it); the numbers are the
robustness.csv row's; autoattack_acc comes only from full standard AutoAttack, and a run is
a leaderboard entry only at the leaderboard's ε on the full test set.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from robustmix.attacks.eps import parse_eps
from robustmix.attacks.table import CSV_FIELDS, read_rows
from robustmix.evaluations import robustbench as rb
from robustmix.evaluations import write_report
from robustmix.core import runs
from robustmix.core.config import TrainConfig
from robustmix.training.trainer import train

STRINGS = ("link", "name", "authors", "dataset", "venue", "architecture", "eps", "clean_acc",
           "reported", "autoattack_acc", "footnote", "threat_model", "evaluation",
           "leaderboard_note")


def row(attack="autoattack", eps="8/255", norm="linf", n=10_000, clean="0.912300",
        robust="0.455500", settings="standard (apgd-ce,apgd-t,fab-t,square);seed=0", checks=""):
    return {"run": "r", "attack": attack, "settings": settings, "norm": norm, "eps": eps,
            "eps_value": f"{parse_eps(eps)[0].value:.8g}", "n_examples": str(n),
            "n_attacked": str(n), "clean_acc": clean, "robust_acc": robust, "seconds": "1.0",
            "forward_passes": "1", "backward_passes": "1", "checks": checks}


def config(dataset="cifar10", arch="wrn28-10", mix="cutmix"):
    return {"dataset": {"name": dataset}, "train": {"arch": arch, "mix": {"mix": mix}}}


def check_types(info: dict) -> None:
    assert all(isinstance(info[key], str) for key in STRINGS)
    assert info["additional_data"] is False and isinstance(info["leaderboard"], bool)
    assert info["number_forward_passes"] == 1 and isinstance(info["n_examples"], int)
    for key in ("clean_acc", "autoattack_acc", "reported"):
        assert info[key] == "" or re.fullmatch(r"\d{1,3}\.\d\d", info[key]), info[key]


def test_full_standard_autoattack_at_the_leaderboards_eps_is_an_entry():
    rows = [row("fgsm", settings=""), row(eps="16/255", robust="0.100000"), row()]
    info = rb.model_info("cutmix-s0", config(), rows)
    check_types(info)
    assert (info["clean_acc"], info["autoattack_acc"], info["reported"]) == \
        ("91.23", "45.55", "45.55")
    assert (info["eps"], info["threat_model"], info["dataset"], info["n_examples"]) == \
        ("8/255", "Linf", "cifar10", 10_000)
    assert info["architecture"] == "WideResNet-28-10"
    assert info["leaderboard"] is True
    assert info["evaluation"] == "standard AutoAttack (standard (apgd-ce,apgd-t,fab-t," \
                                 "square);seed=0)"


@pytest.mark.parametrize("rows, dataset, fragments", [
    ([row(n=1000)], "cifar10", ["1000 test examples, not the 10,000 RobustBench evaluates"]),
    ([row(eps="4/255")], "cifar10", ["leaderboard is at ε = 8/255, not 4/255"]),
    ([row(norm="l2", eps="0.5")], "cifar100", ["no L2 leaderboard for cifar100"]),
    ([row(n=397)], "digits", ["no leaderboard for digits"]),
])
def test_standard_autoattack_elsewhere_keeps_its_number_and_says_why_not(rows, dataset,
                                                                          fragments):
    info = rb.model_info("r", config(dataset), rows)
    check_types(info)
    assert info["autoattack_acc"] == "45.55" and info["leaderboard"] is False
    for fragment in fragments:
        assert fragment in info["leaderboard_note"]


def test_without_standard_autoattack_autoattack_acc_is_empty_and_no_entry():
    rows = [row("fgsm", settings="", robust="0.600000"),
            row("apgd", settings="apgd-ce,apgd-t;seed=0", robust="0.300000"),
            row("worst-case", settings="per-example worst of fgsm", robust="0.300000")]
    info = rb.model_info("r", config(), rows)
    check_types(info)
    assert (info["autoattack_acc"], info["reported"], info["evaluation"]) == ("", "", "")
    assert info["clean_acc"] == "91.23" and info["eps"] == "8/255"
    assert info["leaderboard"] is False
    assert info["leaderboard_note"].startswith(
        "no full standard AutoAttack ran (attacks: apgd, fgsm)")


def test_an_unattacked_run_gives_its_test_accuracy_and_no_eps():
    info = rb.model_info("r", config(), [], test_acc=0.987654)
    check_types(info)
    assert (info["clean_acc"], info["eps"], info["autoattack_acc"]) == ("98.77", "", "")
    assert "attacks: none" in info["leaderboard_note"]


@pytest.mark.parametrize("arch, name", [
    ("wrn28-10", "WideResNet-28-10"), ("wrn70-16", "WideResNet-70-16"),
    ("preactresnet18", "PreActResNet-18"), ("resnet56", "ResNet-56"),
    ("resnet50", "ResNet-50"), ("smallcnn", "SmallCNN"), ("timm:resnet18", "resnet18 (timm)")])
def test_architectures_are_spelled_as_robustbench_spells_them(arch, name):
    assert rb.architecture(arch) == name


@pytest.mark.parametrize("fraction, text", [(0.5, "50.00"), (1.0, "100.00"), (0.0, "0.00"),
                                            (0.9278, "92.78"), (0.07, "7.00")])
def test_percentages_are_strings_with_two_decimals(fraction, text):
    assert rb.percent(fraction) == text


# ---------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("rb") / "cutmix-s0"
    train(TrainConfig(epochs=1, batch_size=256, image_size=8, device="cpu"), run,
          progress=False)
    return run


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_the_report_writes_one_file_per_run_from_its_csv_and_removes_stale_ones(trained,
                                                                              tmp_path):
    with_aa, without = tmp_path / "with-aa", tmp_path / "without"
    shutil.copytree(trained, with_aa)
    shutil.copytree(trained, without)
    runs.write_csv(with_aa / runs.ROBUSTNESS, [row("pgd", settings="steps=1"), row(n=397)],
                   CSV_FIELDS)
    runs.write_csv(without / runs.ROBUSTNESS, [row("fgsm", settings="")], CSV_FIELDS)
    out = tmp_path / "report"
    text = write_report([with_aa, without], out).read_text()
    assert "[robustbench/](robustbench/)" in text and "0 of 2 would be" in text
    files = {p.name for p in (out / "robustbench").iterdir()}
    assert files == {"with-aa.json", "without.json"}
    for run in (with_aa, without):
        info = json.loads((out / "robustbench" / f"{run.name}.json").read_text())
        check_types(info)
        picked = [r for r in read_rows(run / runs.ROBUSTNESS) if r["eps"] == info["eps"]]
        assert info["clean_acc"] == rb.percent(float(picked[0]["clean_acc"]))
        assert info["dataset"] == "digits" and info["architecture"] == "SmallCNN"
    aa = json.loads((out / "robustbench" / "with-aa.json").read_text())
    assert aa["autoattack_acc"] == "45.55" and aa["n_examples"] == 397
    assert json.loads((out / "robustbench" / "without.json").read_text())["autoattack_acc"] == ""
    write_report([without], out)     # the same folder, one run fewer
    assert {p.name for p in (out / "robustbench").iterdir()} == {"without.json"}
