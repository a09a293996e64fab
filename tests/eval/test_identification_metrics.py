"""Rank-1 / rank-k identification against hand-worked cases and a brute-force loop."""
import numpy as np
import pytest

from insightface_pwr.eval.identification_metrics import mate_ranks, rank_k_accuracy


def brute_ranks(p, plab, g, glab, d, self_gallery, distractors_only):
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    p, g = unit(p), unit(g)
    d = unit(d) if d is not None and len(d) else np.zeros((0, p.shape[1]))
    out = []
    for i in range(len(p)):
        for j in range(len(g)):
            if glab[j] != plab[i] or (self_gallery and i == j):
                continue
            s = p[i] @ g[j]
            rank = 1 + sum(1 for c in d if p[i] @ c >= s)
            if not distractors_only:
                rank += sum(1 for k in range(len(g)) if glab[k] != plab[i] and p[i] @ g[k] >= s)
            out.append(rank)
    return np.array(out)


def test_hand_worked():
    probes = np.array([[1.0, 0.0]])
    gallery = np.array([[0.8, 0.6], [1.0, 0.1], [0.0, 1.0]])  # mate is row 0 (cos 0.8); row 1 (cos ~0.995) beats it
    distractors = np.array([[0.9, 0.436], [-1.0, 0.0]])       # cos 0.9 beats the mate, -1 does not
    assert mate_ranks(probes, [7], gallery, [7, 8, 9], distractors).tolist() == [3]
    assert mate_ranks(probes, [7], gallery, [7, 8, 9], distractors, distractors_only=True).tolist() == [2]
    r = rank_k_accuracy(probes, [7], gallery, [7, 8, 9], distractors, ks=(1, 2, 3))
    assert r == {1: 0.0, 2: 0.0, 3: 1.0}


@pytest.mark.parametrize("self_gallery", [False, True])
@pytest.mark.parametrize("distractors_only", [False, True])
def test_matches_brute_force(self_gallery, distractors_only):
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(6, 5))
    plab = rng.integers(0, 6, 30)
    p = centers[plab] + 0.8 * rng.normal(size=(30, 5))
    glab = rng.integers(0, 6, 25)
    g = centers[glab] + 0.8 * rng.normal(size=(25, 5))
    d = rng.normal(size=(40, 5))
    if self_gallery:
        g, glab = p, plab
    got = mate_ranks(p, plab, None if self_gallery else g, None if self_gallery else glab, d,
                     distractors_only=distractors_only, chunk=7)
    want = brute_ranks(p, plab, g, glab, d, self_gallery, distractors_only)
    np.testing.assert_array_equal(got, want)
    acc = rank_k_accuracy(p, plab, None if self_gallery else g, None if self_gallery else glab, d, ks=(1, 5),
                          distractors_only=distractors_only)
    assert acc == {1: pytest.approx(np.mean(want <= 1)), 5: pytest.approx(np.mean(want <= 5))}


def test_no_mates_is_an_error():
    with pytest.raises(ValueError, match="no probe has a mate"):
        rank_k_accuracy(np.eye(2), [0, 1], np.eye(2), [2, 3])
