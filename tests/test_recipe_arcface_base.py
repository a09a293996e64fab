"""Recipes inside arcface_torch are laid over THAT folder's ``configs/base.py`` (the user's local edits reach them),
through the patched ``utils/utils_config.get_config`` of a temporary copy of the pinned upstream; elsewhere over
UPSTREAM_DEFAULTS."""
from __future__ import annotations

import pytest

from insightface_pwr.distill.recipe import UPSTREAM_DEFAULTS, RecipeError, load_recipe, recipe_defaults

from upstream_helpers import extract_upstream, forget_upstream_utils, patched_copy, prefer_upstream_utils

RECIPE = """from easydict import EasyDict as edict
config = edict()
config.rec = "synthetic"
config.num_classes = 10
config.num_image = 100
config.num_epoch = 1
config.warmup_epoch = 0
config.val_targets = []
config.lr = 0.02
"""


@pytest.fixture(scope="module")
def arcface(tmp_path_factory):
    """A patched copy whose configs/base.py the user edited: weight_decay, momentum, lr changed, a key added."""
    root = tmp_path_factory.mktemp("arcface_base")
    tree = patched_copy(extract_upstream(root / "pristine"), root / "patched")
    base = tree / "configs" / "base.py"
    text = base.read_text()
    for old, new in (("config.weight_decay = 5e-4", "config.weight_decay = 1e-3"),
                     ("config.momentum = 0.9", "config.momentum = 0.8"),
                     ("config.lr = 0.1", "config.lr = 0.5")):
        assert old in text
        text = text.replace(old, new)
    base.write_text(text + "\nconfig.my_local_key = 'mine'\n")
    recipe = root / "recipes" / "mine.py"
    recipe.parent.mkdir()
    recipe.write_text(RECIPE)
    return tree, recipe


def test_inside_arcface_torch_the_users_base_is_the_default(arcface, monkeypatch):
    tree, recipe = arcface
    monkeypatch.chdir(tree)  # train_v2.py runs in the arcface_torch folder
    prefer_upstream_utils(monkeypatch, tree)
    try:
        from utils.utils_config import get_config  # upstream's loader, patched
        cfg = get_config(str(recipe))
    finally:
        forget_upstream_utils()
    assert (cfg.weight_decay, cfg.momentum, cfg.my_local_key) == (1e-3, 0.8, "mine")  # the user's base.py
    assert cfg.lr == 0.02  # the recipe's own value wins over base.py's
    assert cfg.output == "work_dirs/mine" and cfg.network == "r50"
    defaults, source = recipe_defaults()
    assert str((tree / "configs" / "base.py").resolve()) in source and defaults["lr"] == 0.5


def test_elsewhere_the_pinned_defaults_apply(arcface, tmp_path, monkeypatch):
    _, recipe = arcface
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(recipe)
    assert (cfg.weight_decay, cfg.momentum) == (UPSTREAM_DEFAULTS["weight_decay"], UPSTREAM_DEFAULTS["momentum"])
    assert "my_local_key" not in cfg and "UPSTREAM_DEFAULTS" in recipe_defaults()[1]
    (tmp_path / "configs").mkdir()  # a configs/base.py without train_v2.py next to it is not arcface_torch
    (tmp_path / "configs" / "base.py").write_text("raise SystemExit('not read')\n")
    assert load_recipe(recipe).weight_decay == UPSTREAM_DEFAULTS["weight_decay"]


def test_a_broken_base_is_reported_with_its_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.py").write_text("config = edict()\n")  # forgot the import
    (tmp_path / "train_v2.py").write_text("")
    recipe = tmp_path / "r.py"
    recipe.write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"configs/base\.py.*NameError"):
        load_recipe(recipe)
