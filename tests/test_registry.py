"""The head registry: registration forms and errors, create_head checks, and the `heads` command."""
from __future__ import annotations

import subprocess
import sys
import pytest
import torch

from insightface_pwr.heads import registry
from insightface_pwr.heads.base import EmbeddingHead
from insightface_pwr.heads.registry import check_params, create_head, get_head_spec, list_heads, register_head

BUILT_IN = ["darkrank", "feature", "hkd", "pwr", "rkd_a", "rkd_d", "rkd_da"]  # more may join later


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test heads into a copy of the registry (the real one is restored afterwards)."""
    list_heads()  # load the built-in heads first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _toy(doc: str = "A toy head.") -> type:
    class Toy(EmbeddingHead):
        paper = "Nobody, A Toy, 2000"

        def __init__(self, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def compute_loss(self, student, teacher):
            return self.scale * (student.sum() - teacher.sum())

    Toy.__doc__ = doc
    return Toy


def test_built_in_heads_are_registered():
    assert set(BUILT_IN) <= set(list_heads()) and list_heads() == sorted(list_heads())
    assert {"rkd_a", "rkd_d", "rkd_da"} <= set(list_heads("rkd")) and all("rkd" in n for n in list_heads("rkd"))
    assert get_head_spec("hkd").consumes == "logits"
    assert all(get_head_spec(n).consumes == "embeddings" for n in BUILT_IN if n != "hkd")


def test_register_bare_named_and_keyword(scratch_registry):
    bare = register_head(_toy())
    assert "toy" in list_heads() and bare.name == "toy"
    register_head("toy_named")(_toy())
    register_head(name="toy_kw")(_toy("Keyword toy.\nMore text."))
    spec = get_head_spec("toy_kw")
    assert spec.summary == "Keyword toy." and spec.paper == "Nobody, A Toy, 2000" and spec.consumes == "embeddings"
    assert spec.defaults() == {"scale": 1.0}
    head = create_head("toy_named", scale=2.0)
    assert head.scale == 2.0 and head.name == "toy_named"


def test_duplicate_name_is_an_error(scratch_registry):
    with pytest.raises(ValueError, match=r"'pwr' is already registered.*PairwiseRankingLoss"):
        register_head("pwr")(_toy())


def test_bad_registrations(scratch_registry):
    class NoDefault(EmbeddingHead):
        def __init__(self, scale: float) -> None:
            super().__init__()

    class NoHint(EmbeddingHead):
        def __init__(self, scale=1.0) -> None:
            super().__init__()

    class Star(EmbeddingHead):
        def __init__(self, **kw: float) -> None:
            super().__init__()

    for cls in (NoDefault, NoHint):
        with pytest.raises(ValueError, match="'scale' needs a default and a type hint"):
            register_head(cls)
    with pytest.raises(ValueError, match="'kw' must be a plain keyword parameter"):
        register_head(Star)
    bad = _toy()
    bad.consumes = "images"
    with pytest.raises(ValueError, match="consumes must be 'embeddings' or 'logits', got 'images'"):
        register_head("bad_consumes")(bad)
    with pytest.raises(TypeError, match="expected a class or a name"):
        register_head(42)


def test_unknown_head_names_close_matches_and_all():
    with pytest.raises(ValueError) as err:
        create_head("rkd-d")
    msg = str(err.value)
    assert "Unknown head 'rkd-d'" in msg and "Did you mean 'rkd_d'" in msg
    assert "Registered heads: " + ", ".join(list_heads()) in msg
    with pytest.raises(ValueError) as err:
        create_head("zzzzzz")
    assert "Did you mean" not in str(err.value) and ", ".join(list_heads()) in str(err.value)


@pytest.mark.parametrize("name, params, match", [
    ("rkd_d", dict(huber=1.0), r"head 'rkd_d' has no parameter 'huber'\. Did you mean 'huber_delta'"),
    ("darkrank", dict(list_len=3), r"no parameter 'list_len'.*Its parameters: alpha: float = 3\.0"),
    ("darkrank", dict(list_length=4.0), r"parameter 'list_length' must be int, got 4\.0 \(float\)"),
    ("darkrank", dict(list_length=True), r"parameter 'list_length' must be int"),
    ("hkd", dict(temperature="4"), r"parameter 'temperature' must be float, got '4' \(str\)"),
    ("hkd", dict(t2_scale=1), r"parameter 't2_scale' must be bool"),
    ("rkd_d", dict(relation="l2"), r"parameter 'relation' must be 'euclidean' \| 'cosine', got 'l2'"),
    ("pwr", dict(margin="teacher-diff"), r"parameter 'margin' must be float \| 'teacher_std' \| 'teacher_diff'"),
    ("feature", dict(kind=None), r"parameter 'kind'"),
])
def test_parameter_errors_name_the_parameter(name, params, match):
    with pytest.raises(TypeError, match=match):
        create_head(name, **params)
    with pytest.raises(TypeError, match=match):
        check_params(name, params)


def test_value_errors_from_the_head_name_the_parameter():
    with pytest.raises(ValueError, match="darkrank: list_length must be an integer >= 2, got 1"):
        create_head("darkrank", list_length=1)
    with pytest.raises(ValueError, match="hkd: temperature must be a finite number > 0, got 0"):
        create_head("hkd", temperature=0)


def test_create_head_returns_configured_heads():
    head = create_head("darkrank", alpha=2, list_length=5, soft=True, relation="cosine")
    assert (head.alpha, head.beta, head.list_length, head.soft, head.relation, head.convention) == (
        2.0, 3.0, 5, True, "cosine", "pwr")
    assert isinstance(head, torch.nn.Module) and "list_length=5" in repr(head)
    assert check_params("rkd_da", {"convention": "rkd"}) == dict(relation="euclidean", mean_normalize=False,
                                                                 huber_delta=1.0, convention="rkd")
    for name in BUILT_IN:
        head = create_head(name)
        for key, value in get_head_spec(name).defaults().items():
            assert getattr(head, key) == value, (name, key)
        assert tuple(head._param_names) == tuple(get_head_spec(name).params)


@pytest.mark.parametrize("argv", [["insightface-pwr", "heads"], [sys.executable, "-m", "insightface_pwr", "heads"]])
def test_heads_command_lists_every_head_with_defaults(argv):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    for name in list_heads():
        spec = get_head_spec(name)
        assert f"{name}  [{spec.consumes}]" in out
        assert spec.describe_params() in out
    assert "list_length: int = 4" in out and "temperature: float = 4.0" in out and "kind: 'cosine' | 'l2' = 'cosine'" in out


def test_heads_command_says_what_pwr_runs_on_a_cpu(monkeypatch):
    """The compiled pass, switched off, or not built (a user without a compiler learns why PWR is slower)."""
    from insightface_pwr.cli import heads as heads_cli
    from insightface_pwr.heads import pwr_cpu

    if pwr_cpu.available():
        assert heads_cli._cpu_pass().startswith("compiled exact pass (_pwr_cpu")
        monkeypatch.setenv(pwr_cpu.ENV, "0")
        assert pwr_cpu.ENV in heads_cli._cpu_pass()
    monkeypatch.setattr(pwr_cpu, "_LIB", None)
    monkeypatch.setattr(pwr_cpu, "_LOADED", True)
    assert "not built" in heads_cli._cpu_pass()
    out = subprocess.run([sys.executable, "-m", "insightface_pwr", "heads", "pwr"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "    cpu:    " in out
