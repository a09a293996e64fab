"""ProxylessKD by name (``config.distill.method = "proxylesskd"``, alias ``inherit_classifier=True``) and the
recipe rules of the classifier-replacing head ``adadistill``.

That a student learns through ProxylessKD alone, into the teacher's space: tests/host/test_proxylesskd_learns.py."""
import pytest
from easydict import EasyDict as edict

from insightface_pwr.distill.recipe import RecipeError, validate_distill


def test_method_and_its_alias():
    teacher = edict(weights="t.pt", classifier="shards")
    by_name = validate_distill(edict(teacher=teacher, method="proxylesskd"))
    alias = validate_distill(edict(teacher=teacher, inherit_classifier=True))
    assert (by_name.method, by_name.inherit_classifier) == (alias.method, alias.inherit_classifier) == \
        ("proxylesskd", True)
    assert validate_distill(edict(teacher=teacher)).method is None
    with pytest.raises(RecipeError, match=r"config.distill.method must be None or one of \('proxylesskd',\), "
                                          r"got 'proxyless'"):
        validate_distill(edict(teacher=teacher, method="proxyless"))
    with pytest.raises(RecipeError, match="config.distill.teacher.classifier is required by inherit_classifier"):
        validate_distill(edict(teacher=edict(weights="t.pt"), method="proxylesskd"))


@pytest.mark.parametrize("section, message", [
    (edict(classification_weight=1.0), "set config.distill.classification_weight = 0, got 1.0"),
    (edict(classification_weight=0.0, method="proxylesskd"), "cannot be combined with config.distill.method"),
    (edict(classification_weight=0.0, extra=[edict(name="hkd")]), r"logits head\(s\) \['hkd'\]"),
    (edict(classification_weight=0.0, extra=[edict(name="adadistill")]), "only one head can replace"),
])
def test_adadistill_recipe_rules(section, message):
    heads = [edict(name="adadistill", params=edict(num_classes=10))] + section.pop("extra", [])
    d = edict(teacher=edict(weights="t.pt", classifier="shards"), heads=heads, **section)
    with pytest.raises(RecipeError, match=message):
        validate_distill(d)
