"""The demo's plot: the seed spread as error bars where several seeds exist, and chance (50%) as a line."""
import io

import numpy as np
import pytest
from PIL import Image

from insightface_pwr.demo.report import bar_values, plot_png


def _row(label, acc, rank1=None, seeds=None):
    r = {"label": label, "verification": [{"accuracy_flip": acc}], "rank1": rank1}
    if seeds:
        r["seeds"] = [{"verification": [{"accuracy_flip": a}], "rank1": k} for a, k in seeds]
    return r


def test_bar_values_are_the_seeds_mean_and_sample_std():
    seeds = [(0.80, 0.5), (0.90, 0.7), (0.85, 0.6)]
    (acc, acc_sd), (r1, r1_sd) = bar_values(_row("x", 0.0, 0.0, seeds))
    assert acc == pytest.approx(np.mean([0.80, 0.90, 0.85])) and acc_sd == pytest.approx(np.std([0.8, 0.9, 0.85], ddof=1))
    assert r1 == pytest.approx(0.6) and r1_sd == pytest.approx(0.1)
    assert bar_values(_row("y", 0.7, None)) == [(0.7, 0.0), None]


def test_plot_draws_error_bars_only_for_several_seeds_and_a_chance_line():
    rows = [_row("one seed", 0.8), _row("three seeds", 0.0, None, [(0.80, None), (0.90, None), (0.85, None)])]
    img = np.asarray(Image.open(io.BytesIO(plot_png(rows, "t"))).convert("RGB")).astype(int)
    red = ((img[..., 0] == 200) & (img[..., 1] == 0) & (img[..., 2] == 0)).sum(axis=1)
    assert red.max() > img.shape[1] // 3  # a dashed horizontal line across the plot
    left, top, bottom = 60, 50, 110
    chance_row = int(np.argmax(red))
    black_cols = []
    for i in range(2):  # the accuracy bar's centre column: black above the bar top only with an error bar
        xc = left + 20 + 150 * i + 22
        col = img[top:img.shape[0] - bottom, xc]
        black_cols.append(int(((col == 0).all(axis=1)).sum()))
    assert black_cols[0] == 0 and black_cols[1] > 5
    # the chance line sits below both bars' tops (accuracy 80% and 85% > 50%)
    blue = (img[..., 0] == 66) & (img[..., 1] == 114)
    assert blue[:chance_row].any() and blue[chance_row + 1:].any()
