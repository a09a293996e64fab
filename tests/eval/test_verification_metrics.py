"""Verification metrics against hand-worked cases and brute-force loops."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from insightface_pwr.eval.verification_metrics import (evaluate_verification, flip_sum, fold_slices, kfold_accuracy,
                                                       pair_distances, roc_auc, tpr_at_fpr)


def embeddings_with_distances(dist):
    """2-D unit vectors whose pair i has squared distance dist[i] (= 2 - 2 cos angle)."""
    rows = []
    for d in dist:
        angle = math.acos(1 - d / 2)
        rows += [[1.0, 0.0], [math.cos(angle), math.sin(angle)]]
    return np.array(rows) * 3.0  # raw (unnormalised) embeddings


def test_pair_distances_hand_worked():
    e = np.array([[1, 0], [0, 2], [3, 0], [-1, 0]], dtype=float)  # 90 and 180 degrees
    np.testing.assert_allclose(pair_distances(e, [True, False]), [2.0, 4.0])
    np.testing.assert_allclose(pair_distances(embeddings_with_distances([0.3, 1.7]), [1, 0]), [0.3, 1.7])


def test_fold_slices_like_kfold():
    assert [s.stop - s.start for s in fold_slices(23, 10)] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert fold_slices(20, 10)[4] == slice(8, 10)
    with pytest.raises(ValueError, match="folds=10 for 5 pairs"):
        fold_slices(5, 10)


def test_kfold_accuracy_hand_worked():
    # 20 pairs, folds of 2: same pairs at 0.5, different at 1.5, except pair 0 (same) at 2.0.
    issame = np.array([True, False] * 10)
    dist = np.where(issame, 0.5, 1.5)
    dist[0] = 2.0
    r = kfold_accuracy(dist, issame)
    # fold 0 gets pair 0 wrong (1/2), the 9 others are perfect: mean 0.95, population std 0.15
    assert r["fold_accuracies"] == [0.5] + [1.0] * 9
    assert r["accuracy"] == pytest.approx(0.95) and r["accuracy_std"] == pytest.approx(0.15)
    # the first grid threshold above 0.5 separates the training folds: 0.51 everywhere
    assert r["thresholds"] == pytest.approx([0.51] * 10)


def test_kfold_threshold_chosen_on_other_folds():
    # fold 0 (pairs 0, 1) would like a threshold of 1.0; the other folds want 0.21..0.3: fold 0 gets 0.21 -> 1/2
    issame = np.array([True, False] * 10)
    dist = np.where(issame, 0.2, 0.3)
    dist[0], dist[1] = 0.9, 1.2
    r = kfold_accuracy(dist, issame)
    assert r["thresholds"][0] == pytest.approx(0.21) and r["fold_accuracies"][0] == 0.5
    assert r["accuracy"] == pytest.approx(0.95)


def brute_tpr_at_fpr(dist, issame, target):
    pos, neg = issame.sum(), (~issame).sum()
    best = 0.0
    for t in [-np.inf] + sorted(set(dist.tolist())):
        pred = dist <= t
        fp = (pred & ~issame).sum()
        if fp / neg <= target + 1e-12:
            best = max(best, (pred & issame).sum() / pos)
    return best


def brute_auc(dist, issame):
    pos, neg = dist[issame], dist[~issame]
    return np.mean([[1.0 if p < n else 0.5 if p == n else 0.0 for n in neg] for p in pos])


def test_tpr_at_fpr_and_auc_hand_worked():
    issame = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    dist = np.array([0.1, 0.5, 0.9, 0.3, 0.8, 1.0, 1.2])
    # FPR 0: accept dist <= 0.1 -> TPR 1/3; FPR 1/4: accept <= 0.5 -> 2/3
    r = tpr_at_fpr(dist, issame, [0.5, 0.25])
    assert r == {"5e-01": pytest.approx(1.0), "2e-01": pytest.approx(2 / 3)}
    assert tpr_at_fpr(dist, issame, [0.01]) == {}  # 4 negatives cannot support FPR 1e-2
    # AUC: pairs (pos < neg): 0.1 beats 4, 0.5 beats 3, 0.9 beats 2 -> 9/12
    assert roc_auc(dist, issame) == pytest.approx(9 / 12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=4, max_size=60))
def test_tpr_at_fpr_and_auc_match_brute_force(pairs):
    dist = np.array([d / 4 for d, _ in pairs])  # many ties on purpose
    issame = np.array([s for _, s in pairs])
    if issame.all() or not issame.any():
        return
    neg = (~issame).sum()
    fprs = [0.5, 0.2, 0.1, 0.05, 0.01]
    got = tpr_at_fpr(dist, issame, fprs)
    assert set(got) == {f"{f:.0e}" for f in fprs if f * neg >= 1}
    for f in fprs:
        if f * neg >= 1:
            assert got[f"{f:.0e}"] == pytest.approx(brute_tpr_at_fpr(dist, issame, f))
    assert roc_auc(dist, issame) == pytest.approx(brute_auc(dist, issame))


def test_flip_sum_hand_worked():
    e, f = np.array([[3.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(flip_sum(e, f), [[3 / math.sqrt(10), 1 / math.sqrt(10)]])


def test_evaluate_verification_uses_flip_sum():
    rng = np.random.default_rng(0)
    issame = np.array([True, False] * 20)
    e = rng.normal(size=(80, 8))
    f = rng.normal(size=(80, 8))
    r = evaluate_verification("x", e, issame, flipped=f)
    assert r.pairs == 40
    assert r.accuracy == kfold_accuracy(pair_distances(e, issame), issame)["accuracy"]
    flip_dist = pair_distances(flip_sum(e, f), issame)
    assert r.accuracy_flip == kfold_accuracy(flip_dist, issame)["accuracy"]
    assert r.auc == roc_auc(flip_dist, issame)
    with pytest.raises(ValueError, match="2P x D for P = len\\(issame\\) = 40"):
        evaluate_verification("x", e[:-1], issame)
