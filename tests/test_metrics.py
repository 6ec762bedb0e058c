import numpy as np
import pytest

from segdeploy.data.metrics import confusion_matrix, per_class_metrics, summarize


def test_confusion_matrix_ignores_void():
    truth = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    cm = confusion_matrix(truth, pred, 3)
    expected = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(cm, expected)


def test_metrics_against_hand_computed_matrix():
    # rows truth, columns prediction
    cm = np.array([[50, 10, 0], [5, 30, 0], [0, 0, 0]])
    m = summarize(cm, ["a", "b", "c"])
    # class a: tp 50, fp 5, fn 10 -> IoU 50/65, Dice 100/115, acc 50/60
    # class b: tp 30, fp 10, fn 5 -> IoU 30/45, Dice 60/75, acc 30/35
    # class c: absent from truth and prediction -> left out of the means
    assert m["per_class"]["a"]["iou"] == pytest.approx(50 / 65)
    assert m["per_class"]["b"]["dice"] == pytest.approx(60 / 75)
    assert m["per_class"]["a"]["accuracy"] == pytest.approx(50 / 60)
    assert m["per_class"]["b"]["accuracy"] == pytest.approx(30 / 35)
    assert m["per_class"]["c"] == {"iou": None, "dice": None, "accuracy": None}
    assert m["miou"] == pytest.approx((50 / 65 + 30 / 45) / 2)
    assert m["mean_dice"] == pytest.approx((100 / 115 + 60 / 75) / 2)
    assert m["pixel_accuracy"] == pytest.approx(80 / 95)


def test_class_only_predicted_counts_as_zero_iou():
    cm = np.array([[10, 2], [0, 0]])  # class 1 never in truth but predicted twice
    per_class = per_class_metrics(cm)
    assert per_class["iou"][1] == 0.0
    assert np.isnan(per_class["accuracy"][1])
    assert summarize(cm)["miou"] == pytest.approx((10 / 12 + 0) / 2)
