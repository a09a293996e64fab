"""Evaluation of the shared teacher on a subset of lfw_dev.bin: ONNX and TorchScript give the same embeddings,
and ``insightface-pwr eval --json`` reports every key with a plausible accuracy. The full check (5,660 images,
accuracy with flip 0.9898 +- 0.003) is benchmarks/eval_lfw_dev.py: too slow for the suite on 2 CPU cores."""
import json

import numpy as np
import pytest
import torch

from insightface_pwr.cli import main
from insightface_pwr.eval.embedding_models import embed_images, load_embedding_model
from insightface_pwr.data.verification_bin import decode_bin_images, load_bin


@pytest.fixture(scope="module")
def models(shared):
    torch.set_num_threads(1)  # CI has 2 cores; one thread avoids OpenMP spinning when they are shared
    stem = shared / "models" / "mbf_y1_ms1m_arcface_128d"
    return (load_embedding_model(f"{stem}.onnx", 127.5, 128.0),
            load_embedding_model(f"{stem}.torchscript.pt", 127.5, 128.0))


def test_onnx_equals_torchscript(shared, models):
    b = load_bin(shared / "data" / "lfw" / "lfw_dev.bin")
    b.images = b.images[:8]
    images = decode_bin_images(b)
    onnx_emb = embed_images(models[0], images, 8, progress=False)
    ts_emb = embed_images(models[1], images, 8, progress=False)
    assert onnx_emb.shape == (8, 128)
    np.testing.assert_allclose(onnx_emb, ts_emb, rtol=1e-4, atol=1e-4 * np.abs(ts_emb).max())
    # the normalisation is applied: a different std changes the embedding
    other = load_embedding_model(shared / "models" / "mbf_y1_ms1m_arcface_128d.onnx", 127.5, 127.5)
    assert np.abs(embed_images(other, images[:2], progress=False) - onnx_emb[:2]).max() > 1e-3


def test_eval_cli_json_subset(shared, capsys):
    rc = main(["eval", "--model", str(shared / "models" / "mbf_y1_ms1m_arcface_128d.onnx"), "--input-std", "128",
               "--bin", str(shared / "data" / "lfw" / "lfw_dev.bin"), "--limit-pairs", "40", "--json",
               "--no-progress", "--threads", "1"])
    assert rc == 0
    [r] = json.loads(capsys.readouterr().out)
    assert {"name", "pairs", "accuracy", "accuracy_std", "accuracy_flip", "accuracy_flip_std", "auc",
            "tpr_at_fpr"} <= set(r)
    assert r["name"] == "lfw_dev" and r["pairs"] == 40
    # the teacher scores 98.98% on the whole set; 40 pairs (folds of 4) leave room for a couple of errors only
    assert r["accuracy_flip"] >= 0.95 and r["accuracy"] >= 0.93 and r["auc"] >= 0.98
    assert set(r["tpr_at_fpr"]) == set()  # 20 different pairs cannot support FPR 1e-2


def test_eval_cli_table(shared, capsys):
    rc = main(["eval", "--model", str(shared / "models" / "mbf_y1_ms1m_arcface_128d.torchscript.pt"),
               "--input-std", "128", "--bin", str(shared / "data" / "insightface_small_lfw.bin"), "--folds", "2",
               "--limit-pairs", "4", "--no-progress", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["set", "pairs", "acc", "%"] and out[2].startswith("insightface_small_lfw  4")
    assert out[2].split()[-1] == "-"  # only same pairs: no AUC


FAKE_BACKBONES = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(48, num_features)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


def get_model(name, dropout=0.0, fp16=False, num_features=512):
    assert name == "fake" and dropout == 0.0 and not fp16
    return Net(num_features)
'''


def test_eval_cli_arcface_checkpoint(shared, tmp_path, capsys):
    """An arcface_torch checkpoint (state_dict_backbone, DDP 'module.' keys) through --network/--arcface-root
    gives the metrics of the same network evaluated directly."""
    (tmp_path / "arc" / "backbones").mkdir(parents=True)
    (tmp_path / "arc" / "backbones" / "__init__.py").write_text(FAKE_BACKBONES)
    torch.manual_seed(0)
    pool, fc = torch.nn.AdaptiveAvgPool2d(4), torch.nn.Linear(48, 8)  # the fake network, built independently
    state = {f"module.fc.{k}": v for k, v in fc.state_dict().items()}
    torch.save({"epoch": 1, "state_dict_backbone": state}, tmp_path / "checkpoint_gpu_0.pt")
    rc = main(["eval", "--model", str(tmp_path / "checkpoint_gpu_0.pt"), "--network", "fake", "--num-features", "8",
               "--arcface-root", str(tmp_path / "arc"), "--bin", str(shared / "data" / "lfw" / "lfw_dev.bin"),
               "--limit-pairs", "20", "--json", "--no-progress"])
    assert rc == 0
    [r] = json.loads(capsys.readouterr().out)
    from insightface_pwr.eval.verification_metrics import evaluate_verification
    b = load_bin(shared / "data" / "lfw" / "lfw_dev.bin")
    b.images, b.issame = b.images[:40], b.issame[:20]
    x = decode_bin_images(b).float()
    with torch.no_grad():
        emb = lambda t: fc(pool((t - 127.5) / 127.5).flatten(1)).numpy()
        want = evaluate_verification("lfw_dev", emb(x), b.issame, flipped=emb(torch.flip(x, dims=[3])))
    assert r["accuracy"] == pytest.approx(want.accuracy) and r["accuracy_flip"] == pytest.approx(want.accuracy_flip)
    assert r["auc"] == pytest.approx(want.auc, abs=1e-9)
