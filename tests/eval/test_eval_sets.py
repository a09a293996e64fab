"""``insightface-pwr eval`` over several sets and models: every distinct image (and its mirror) embedded once,
named sets resolved under --data-dir and all checked before the first is evaluated, metrics equal to a
brute-force evaluation of each set on its own."""
import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from insightface_pwr.cli import main
from insightface_pwr.eval.embedding_store import EmbeddingStore
from insightface_pwr.eval.evaluate import SetError, load_sets
from insightface_pwr.eval.verification_metrics import evaluate_verification

S = 8  # image size


def _png(seed):
    arr = np.random.default_rng(seed).integers(0, 256, (S, S, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), arr


class Counting:
    """A fake model: embedding = flatten(normalised image) @ W; remembers every image it was given."""

    def __init__(self, w):
        self.w, self.seen = w, []

    def __call__(self, x):
        self.seen.extend(bytes(img.numpy().tobytes()) for img in x)
        return ((x.double().reshape(len(x), -1).numpy() - 127.5) / 127.5) @ self.w


def _brute(images, w):
    """Plain and flip embeddings, one image at a time (explicit loop, no store)."""
    plain, flip = [], []
    for arr in images:
        chw = arr.transpose(2, 0, 1).astype(np.float64)
        plain.append(((chw.reshape(-1) - 127.5) / 127.5) @ w)
        flip.append(((chw[:, :, ::-1].reshape(-1) - 127.5) / 127.5) @ w)
    return np.array(plain), np.array(flip)


def test_store_embeds_each_distinct_image_once():
    w = np.random.default_rng(0).standard_normal((3 * S * S, 4))
    enc = [_png(i) for i in range(5)]
    model = Counting(w)
    store = EmbeddingStore(model, image_size=S, batch_size=2, decode_threads=2, progress=False)
    order = [0, 1, 0, 2, 1, 0]
    plain, flip = store.embed([enc[i][0] for i in order])
    ref_p, ref_f = _brute([enc[i][1] for i in order], w)
    np.testing.assert_allclose(plain, ref_p, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flip, ref_f, rtol=1e-5, atol=1e-5)
    assert store.embedded == 3 and len(model.seen) == 6  # 3 distinct images and their mirrors
    assert len(set(model.seen)) == 6
    # a second call: only the new images run
    plain2, _ = store.embed([enc[i][0] for i in (4, 2, 3)])
    np.testing.assert_allclose(plain2, _brute([enc[i][1] for i in (4, 2, 3)], w)[0], rtol=1e-5, atol=1e-5)
    assert store.embedded == 5 and len(model.seen) == 10


def _write_bin(path, encoded, issame):
    with open(path, "wb") as f:
        pickle.dump((encoded, issame), f, protocol=4)


def test_eval_cli_several_sets_and_models(tmp_path, linear_onnx, capsys):
    rng = np.random.default_rng(1)
    imgs = [_png(100 + i) for i in range(12)]
    # set A: 6 pairs over images 0..7; set B: 5 pairs, sharing images 2..5 with A and repeating image 9
    a_idx = [0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 1, 3]
    b_idx = [2, 3, 4, 5, 8, 9, 9, 10, 11, 2]
    a_same, b_same = [True, False, True, False, True, False], [True, False, True, False, True]
    (tmp_path / "d").mkdir()
    _write_bin(tmp_path / "d" / "seta.bin", [imgs[i][0] for i in a_idx], a_same)
    _write_bin(tmp_path / "d" / "setb.bin", [imgs[i][0] for i in b_idx], b_same)
    w1, w2 = rng.standard_normal((3 * S * S, 5)), rng.standard_normal((3 * S * S, 3))
    m1, m2 = linear_onnx(tmp_path / "m1.onnx", w1, size=S), linear_onnx(tmp_path / "m2.onnx", w2, size=S)
    argv = ["eval", "--model", str(m1), str(m2), "--input-std", "127.5", "--input-mean", "127.5",
            "--data-dir", str(tmp_path / "d"), "--bin", "seta", "--bin", str(tmp_path / "d" / "setb.bin"),
            "--image-size", str(S), "--folds", "2", "--batch-size", "3", "--no-progress", "--threads", "1"]
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["name"]) for r in rows] == [(str(m1), "seta"), (str(m1), "setb"),
                                                       (str(m2), "seta"), (str(m2), "setb")]
    for r in rows:
        w = w1 if r["model"] == str(m1) else w2
        idx, same = (a_idx, a_same) if r["name"] == "seta" else (b_idx, b_same)
        plain, flip = _brute([imgs[i][1] for i in idx], w)
        want = evaluate_verification(r["name"], plain, same, flipped=flip, folds=2)
        assert r["accuracy"] == pytest.approx(want.accuracy) and r["accuracy_flip"] == pytest.approx(want.accuracy_flip)
        assert r["auc"] == pytest.approx(want.auc, abs=1e-9)
        assert r["timing"]["distinct_images"] == len(set(a_idx) | set(b_idx)) == 12
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "accuracy with flip, %" in out and out.rstrip().splitlines()[-1].split()[0] == str(m2)


def test_every_set_checked_before_the_first_runs(tmp_path, capsys):
    _write_bin(tmp_path / "lfw.bin", [_png(0)[0], _png(1)[0]], [True])
    assert len(load_sets(["lfw"], str(tmp_path))) == 1
    with pytest.raises(SetError, match=r"'cfp_fp': '.*cfp_fp.bin' not found"):
        load_sets(["lfw", "cfp_fp"], str(tmp_path))
    with pytest.raises(SetError, match="'agedb_30': a name needs --data-dir"):
        load_sets(["agedb_30"])
    # through the CLI: one error line, no evaluation and no model loaded (the model file does not even exist)
    rc = main(["eval", "--model", str(tmp_path / "absent.onnx"), "--data-dir", str(tmp_path), "--bin", "lfw",
               "calfw", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out == "" and "calfw" in captured.err and "absent.onnx" not in captured.err
