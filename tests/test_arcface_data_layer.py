"""``insightface_pwr.integration.arcface_torch.build.data_layer``: the MXNet-free (get_dataloader, CallBackVerification) pair that the patched
train_v2.py uses when ``cfg.data_backend = "insightface_pwr"``.

The verification callback is checked against embeddings computed here by hand (normalisation (x - 127.5) / 127.5,
mirror image, flip-sum) fed to the data layer's metrics; the loader against upstream's sampler (from the mirror).
"""
from __future__ import annotations

import io
import logging
import pickle
import re

import numpy as np
import pytest
import torch
from easydict import EasyDict as edict

from insightface_pwr.integration.arcface_torch import data_layer
from insightface_pwr.eval.verification_metrics import evaluate_verification
from insightface_pwr.distill.recipe import RecipeError

from upstream_helpers import extract_upstream, forget_upstream_utils, prefer_upstream_utils, require_upstream_snapshot


def _png(a: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def tiny_bin(tmp_path):
    """20 pairs of 112 x 112 RGB images: even pairs the same face plus a little noise, odd pairs two faces."""
    rng = np.random.default_rng(0)
    images, issame = [], []
    for i in range(20):
        a = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        same = i % 2 == 0
        b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8) if same else \
            rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        images += [_png(a), _png(b)]
        issame.append(same)
    (tmp_path / "tiny.bin").write_bytes(pickle.dumps((images, issame), protocol=4))
    from PIL import Image
    raw = np.stack([np.asarray(Image.open(io.BytesIO(x)).convert("RGB")) for x in images])
    return tmp_path, raw, np.array(issame)


class _Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, scalar_value, global_step):
        self.scalars.append((tag, scalar_value, global_step))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())


def test_rejects_other_backends_and_dali():
    with pytest.raises(RecipeError, match="config.data_backend must be 'insightface_pwr'"):
        data_layer(edict(data_backend="mxnet"))
    get_dataloader, _ = data_layer(edict(data_backend="insightface_pwr"))
    with pytest.raises(RecipeError, match="config.dali"):
        get_dataloader("synthetic", 0, 8, True)


def test_verification_callback_matches_hand_computed_flip_sum(tiny_bin, caplog):
    folder, raw, issame = tiny_bin
    _, CallBackVerification = data_layer(edict(data_backend="insightface_pwr"))
    writer = _Writer()
    callback = CallBackVerification(val_targets=["tiny"], rec_prefix=str(folder), summary_writer=writer)
    net = _net().train()
    with caplog.at_level(logging.INFO):
        callback(2000, net)
    assert net.training, "the backbone must be back in train mode"

    x = torch.from_numpy(raw).permute(0, 3, 1, 2).float()  # N x 3 x H x W, RGB
    with torch.no_grad():
        plain = net.eval()((x - 127.5) / 127.5).numpy()
        flipped = net((x.flip(3) - 127.5) / 127.5).numpy()
    net.train()
    ref = evaluate_verification("tiny", plain, issame, flipped=flipped, folds=10)
    assert ref.accuracy_flip > 0.9, "the fixture should be easy"
    log = caplog.text
    acc = float(re.search(r"\[tiny\]\[2000\]Accuracy-Flip: ([0-9.]+)\+-", log).group(1))
    xnorm = float(re.search(r"\[tiny\]\[2000\]XNorm: ([0-9.]+)", log).group(1))
    assert acc == pytest.approx(ref.accuracy_flip, abs=1e-5)
    assert xnorm == pytest.approx(np.linalg.norm(np.concatenate([plain, flipped]), axis=1).mean(), rel=1e-5)
    assert writer.scalars == [("tiny", pytest.approx(ref.accuracy_flip), 2000)]
    assert "[tiny][2000]Accuracy-Highest" in log

    callback(0, net)  # step 0: nothing (as upstream)
    assert len(writer.scalars) == 1


def test_verification_callback_names_a_missing_bin(tmp_path):
    _, CallBackVerification = data_layer(edict(data_backend="insightface_pwr"))
    with pytest.raises(RecipeError, match=r"config.val_targets lists 'lfw' but .*lfw.bin' does not exist"):
        CallBackVerification(val_targets=["lfw"], rec_prefix=str(tmp_path))


@pytest.fixture(scope="module")
def upstream_utils(tmp_path_factory):
    require_upstream_snapshot("(the loader uses upstream's sampler)")
    return extract_upstream(tmp_path_factory.mktemp("upstream"), only="utils")


def test_synthetic_loader_uses_upstream_sampling(upstream_utils, monkeypatch):
    prefer_upstream_utils(monkeypatch, upstream_utils)
    cfg = edict(data_backend="insightface_pwr", num_image=40, num_classes=4, seed=7)
    get_dataloader, _ = data_layer(cfg)
    loader = get_dataloader("synthetic", 0, 8, False, False, 2048, 0)
    assert isinstance(loader, torch.utils.data.DataLoader)  # train_v2 then calls loader.sampler.set_epoch
    from utils.utils_distributed_sampler import DistributedSampler
    assert isinstance(loader.sampler, DistributedSampler)
    loader.sampler.set_epoch(3)
    batches = list(loader)
    assert len(batches) == 5 and all(img.shape == (8, 3, 112, 112) and lab.shape == (8,) for img, lab in batches)
    ref = DistributedSampler(loader.dataset, num_replicas=1, rank=0, shuffle=True, seed=2048)
    ref.set_epoch(3)
    labels = torch.cat([lab for _, lab in batches])  # upstream's sampler, seed and epoch: upstream's order
    assert labels.tolist() == [int(loader.dataset[i][1]) for i in list(ref)[:40]]
    forget_upstream_utils()
