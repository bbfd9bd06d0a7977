"""Calibration metrics: a hand-computed ECE, NLL against torch's cross-entropy, the Brier
score's closed forms and the invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from robustmix.evaluations.calibration import (BINS, bin_index, brier_score, calibration,
                                     expected_calibration_error, negative_log_likelihood,
                                     predict)


def logits_with_confidence(confidences, predicted, k=2):
    """Two-class logits whose top-1 softmax probability is ``confidence`` on class ``predicted``."""
    rows = []
    for c, p in zip(confidences, predicted):
        row = torch.full((k,), math.log((1 - c) / (k - 1)), dtype=torch.float64)
        row[p] = math.log(c)
        rows.append(row)
    return torch.stack(rows)


def test_ece_of_a_hand_computed_case():
    # confidences 0.9, 0.9, 0.6, 0.6 (bins 13 and 8 of 15); the first bin is right 1 of 2
    # times, the second 2 of 2: ECE = 2/4·|0.5 − 0.9| + 2/4·|1 − 0.6| = 0.2 + 0.2
    logits = logits_with_confidence([0.9, 0.9, 0.6, 0.6], [0, 0, 1, 1])
    labels = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.4, abs=1e-12)
    # within one bin, over- and under-confidence cancel: 0.9 and 0.87 share bin 13
    logits = logits_with_confidence([0.9, 0.87], [0, 0])
    assert expected_calibration_error(logits, torch.tensor([0, 1])) == \
        pytest.approx(abs(0.5 - 0.885), abs=1e-12)


def test_bins_are_right_closed():
    edges = torch.tensor([1 / 15, 2 / 15, 1.0, 1 / 15 + 1e-9], dtype=torch.float64)
    assert bin_index(edges).tolist() == [0, 1, BINS - 1, 1]


def test_nll_is_torch_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g) * 3
    labels = torch.randint(0, 7, (50,), generator=g)
    assert negative_log_likelihood(logits, labels) == \
        pytest.approx(float(F.cross_entropy(logits.double(), labels)), rel=1e-12)


def test_brier_closed_forms():
    labels = torch.tensor([0, 3, 2, 1])
    perfect = F.one_hot(labels, 5).double() * 200.0           # softmax is one-hot to 1e-80
    assert brier_score(perfect, labels) == pytest.approx(0.0, abs=1e-12)
    assert brier_score(torch.zeros(4, 5), labels) == pytest.approx(1 - 1 / 5, abs=1e-12)
    wrong = F.one_hot((labels + 1) % 5, 5).double() * 200.0    # confidently wrong: 2
    assert brier_score(wrong, labels) == pytest.approx(2.0, abs=1e-12)


def test_invariants_on_random_predictions():
    g = torch.Generator().manual_seed(1)
    for scale in (0.1, 1.0, 10.0):
        logits = torch.randn(200, 10, generator=g) * scale
        labels = torch.randint(0, 10, (200,), generator=g)
        result = calibration(logits, labels)
        assert 0.0 <= result["ece"] <= 1.0
        assert 0.0 <= result["brier"] <= 2.0
        assert result["nll"] >= 0.0
        table = result["reliability"]
        assert sum(table["count"]) == 200
        assert sum(table["correct"]) == round(result["accuracy"] * 200)
        # the ECE is at least |accuracy − mean confidence| (the triangle inequality)
        confidence = logits.double().softmax(1).max(1).values.mean().item()
        assert result["ece"] >= abs(result["accuracy"] - confidence) - 1e-12


def test_predict_restores_the_mode_and_returns_every_example():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))
    model.train()
    x = torch.rand(10, 1, 2, 2)
    y = torch.arange(10) % 3
    logits, labels = predict(model, [(x[:6], y[:6]), (x[6:], y[6:])])
    assert model.training and logits.shape == (10, 3) and torch.equal(labels, y)
    assert torch.equal(logits, model.eval()(x))      # eval mode: no dropout


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="logits must be"):
        expected_calibration_error(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="no examples"):
        brier_score(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
