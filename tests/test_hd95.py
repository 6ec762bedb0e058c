"""HD95 on masks with known answers and against a brute-force point-distance reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist, directed_hausdorff

from segdeploy.evaluation.hd95 import (hausdorff_percentile, hd95, hd95_images, hd95_per_class, summarize_hd95,
                            surface)


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_squares_offset_by_k_pixels_give_k(k):
    truth = square(64, 10, 10, 24)
    assert hd95(square(64, 10, 10 + k, 24), truth) == pytest.approx(k)
    assert hd95(square(64, 10 + k, 10, 24), truth) == pytest.approx(k)


def test_identical_masks_give_zero_and_empty_sides():
    mask = square(32, 4, 6, 10)
    assert hd95(mask, mask) == 0.0
    assert hd95(np.zeros((8, 8)), np.zeros((8, 8))) == 0.0
    assert hd95(mask, np.zeros_like(mask)) is None
    assert hd95(np.zeros_like(mask), mask) is None


def test_surface_is_the_inner_boundary():
    mask = square(10, 2, 2, 5)
    edge = surface(mask)
    assert edge.sum() == 16  # 5x5 square: 25 pixels minus the 3x3 interior
    assert not edge[4, 4] and edge[2, 2] and edge[6, 4]


def brute_force_percentile(pred: np.ndarray, truth: np.ndarray, q: float) -> float:
    a, b = np.argwhere(surface(pred)), np.argwhere(surface(truth))
    d = cdist(a, b)
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), q))


@pytest.mark.parametrize("seed", range(8))
def test_matches_point_distance_reference_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(12, 40))
    pred = rng.random((size, size)) < rng.uniform(0.1, 0.6)
    truth = rng.random((size, size)) < rng.uniform(0.1, 0.6)
    # Hausdorff (q=100) equals scipy's symmetric directed_hausdorff on the surface points.
    a, b = np.argwhere(surface(pred)), np.argwhere(surface(truth))
    reference = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
    assert hausdorff_percentile(pred, truth, 100) == pytest.approx(reference)
    assert hausdorff_percentile(pred, truth, 95) == pytest.approx(brute_force_percentile(pred, truth, 95))


def test_blobs_far_apart_match_reference():
    pred = square(48, 2, 2, 6) | square(48, 30, 36, 8)
    truth = square(48, 20, 5, 10)
    assert hd95(pred, truth) == pytest.approx(brute_force_percentile(pred, truth, 95))


def test_per_class_counts_undefined_and_ignores_void():
    truth = np.zeros((32, 32), np.uint8)
    truth[4:14, 4:14] = 1
    truth[20:30, 20:30] = 2  # class 2 in truth only
    truth[0, :] = 255
    pred = np.zeros_like(truth)
    pred[4:14, 7:17] = 1  # class 1 shifted by 3
    pred[0, :] = 3  # predicted where truth is void: ignored, so class 3 is absent, not undefined
    values, undefined = hd95_per_class(pred, truth, 4)
    assert values[1] == pytest.approx(3)
    assert np.isnan(values[2]) and undefined[2]
    assert np.isnan(values[3]) and not undefined[3]
    assert not np.isnan(values[0]) and not undefined[0]


def test_summary_means_over_defined_pairs():
    truths = np.zeros((3, 32, 32), np.uint8)
    preds = np.zeros_like(truths)
    truths[0, 5:15, 5:15] = 1
    preds[0, 5:15, 7:17] = 1  # 2 px
    truths[1, 5:15, 5:15] = 1
    preds[1, 5:15, 9:19] = 1  # 4 px
    truths[2, 5:15, 5:15] = 1  # missed entirely: undefined
    values, undefined = hd95_images(preds, truths, 2)
    summary = summarize_hd95(values, undefined)
    assert summary.per_class[1] == pytest.approx(3.0)
    assert summary.undefined_pairs == 1 and summary.undefined_per_class == [0, 1]
    assert summary.pairs == 5  # background in all 3 images, class 1 in 2
    assert summary.mean == pytest.approx(np.nanmean(values))


@pytest.mark.parametrize("seed", range(6))
def test_distance_multiset_matches_brute_force_for_blobs_touching_the_frame(seed):
    from segdeploy.evaluation.hd95 import surface_distances

    rng = np.random.default_rng(100 + seed)
    size = 48
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), bool)
    pred = np.zeros((size, size), bool)
    for mask in (truth, pred):
        for _ in range(2):
            cy, cx, r = rng.integers(-5, size + 5), rng.integers(-5, size + 5), rng.integers(6, 20)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    for a, b in ((pred, truth), (~pred, ~truth)):  # the foreground and its background class
        if not a.any() or not b.any():
            continue
        pa, pb = np.argwhere(surface(a)), np.argwhere(surface(b))
        d = cdist(pa, pb)
        expected = np.sort(np.concatenate([d.min(1), d.min(0)]))
        assert np.allclose(np.sort(surface_distances(a, b)), expected)
