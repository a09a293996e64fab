"""The CPU host drives the hooks through whole training runs, with 1 and 2 gloo processes, for every head.

Each step's combined loss is checked against an independent recomputation (the registered head built afresh
from the recipe's parameters, on the same student and teacher embeddings); the ranks' backbones must stay equal;
a head with parameters must be trained, kept equal across ranks and sit before partial FC's optimizer group."""
import json
import math

import pytest
import torch
from easydict import EasyDict as edict

from insightface_pwr import create_head, get_head_spec
from insightface_pwr.distill.sharding import shard_range
from insightface_pwr.distill.hooks import DistillHooks
from insightface_pwr.host.train import run_host
from insightface_pwr.distill.recipe import apply_defaults, validate_recipe

from gloo_helpers import run_gloo_processes
from teacher_files import write_teacher

CASES = {
    "pwr": edict(name="pwr", weight=100.0, params=edict(inversion="exp", margin="teacher_diff")),
    "pwr_alone": edict(name="pwr", weight=100.0, params=edict(inversion="diff", margin=0.1)),
    "rkd_d": edict(name="rkd_d", weight=100.0, params=edict()),
    "rkd_a": edict(name="rkd_a", weight=200.0, params=edict()),
    "rkd_da": edict(name="rkd_da", weight=50.0, params=edict()),
    "darkrank": edict(name="darkrank", weight=1.0, params=edict()),
    "feature": edict(name="feature", weight=1.0, params=edict(kind="cosine")),
    "hkd": edict(name="hkd", weight=0.3, params=edict(temperature=4.0)),
    "projection": edict(name="test_projection", weight=1.0, params=edict()),
    "inherit": edict(name="pwr", weight=10.0, params=edict()),  # + ProxylessKD's inherited, frozen classifier
}


def _register_projection_head() -> None:
    """A head WITH parameters, registered only inside the worker processes (the parent's registry is untouched)."""
    from insightface_pwr import register_head
    from insightface_pwr.heads.base import EmbeddingHead

    @register_head("test_projection")
    class ProjectionHead(EmbeddingHead):
        """Test head: mean cosine distance between a learned projection of the student and the teacher."""

        def __init__(self, dim: int = 8) -> None:
            super().__init__()
            torch.manual_seed(1234)
            self.proj = torch.nn.Linear(dim, dim)

        def compute_loss(self, student, teacher):
            return (1 - torch.nn.functional.cosine_similarity(self.proj(student), teacher)).mean()


def _cfg(root, case, world):
    cfg = apply_defaults(edict(
        margin_list=(1.0, 0.0, 0.35), network="tiny_cnn", embedding_size=8, rec="synthetic", num_classes=10,
        num_image=48, num_epoch=1, warmup_epoch=0, val_targets=[], batch_size=12 // world, image_size=(16, 16),
        frequent=2, lr=0.05, save_all_states=True, output=f"{root}/{case}_w{world}"))
    cfg.distill = edict(teacher=edict(network="tiny_cnn", weights=f"{root}/teacher/model.pt", embedding_size=8,
                                      classifier=f"{root}/teacher", input_size=(16, 16)),
                        classification_weight=0.0 if case == "pwr_alone" else 1.0, heads=[CASES[case]],
                        inherit_classifier=case == "inherit")
    validate_recipe(cfg)
    return cfg


def _worker(rank, world, root):
    _register_projection_head()
    checks = {}
    original = DistillHooks.step

    def checked_step(self, global_step, img, emb, labels, loss):
        total = original(self, global_step, img, emb, labels, loss)
        term = self.terms[0]
        if term.consumes == "embeddings":
            with torch.no_grad():
                head = term.module if list(term.module.parameters()) else \
                    create_head(term.name, **self._test_params)
                value = head(student=emb, teacher=self.teacher(img)).item()
            expected = self.classification_weight * loss.item() + term.weight * value
            self._test_log.append((total.item(), expected, value))
        else:
            self._test_log.append((total.item(), math.nan, math.nan))
        return total

    DistillHooks.step = checked_step
    for case in CASES:
        cfg = _cfg(root, case, world)
        import insightface_pwr.integration.arcface_torch.build as arcface
        built = {}
        build = arcface.build_hooks

        def spy_build(*a, **k):
            hooks = build(*a, **k)
            hooks._test_log, hooks._test_params = [], dict(cfg.distill.heads[0].params)
            built["hooks"], built["opt"] = hooks, k["optimizer"]
            return hooks

        arcface.build_hooks = spy_build
        try:
            run_host(cfg, rank, world)
        finally:
            arcface.build_hooks = build
        hooks, opt = built["hooks"], built["opt"]
        checks[case] = {"log": hooks._test_log, "last": hooks.last,
                        "groups": [len(g["params"]) for g in opt.param_groups]}
    return checks


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("host_train")
    write_teacher(root / "teacher", shards=3, seed=7)
    return root, {w: run_gloo_processes(_worker, w, str(root), timeout=300) for w in (1, 2)}


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_every_head_trains_on_the_host(trained, case, world):
    root, results = trained
    for rank, res in enumerate(results[world]):
        log = res[case]["log"]
        assert len(log) == 48 // 12  # steps of the one epoch
        for total, expected, value in log:
            assert math.isfinite(total)
            if not math.isnan(expected):
                assert total == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert set(res[case]["last"]) == {"classification", CASES[case].name, "total"}
    out = root / f"{case}_w{world}"
    states = [torch.load(out / f"checkpoint_gpu_{r}.pt", weights_only=True) for r in range(world)]
    for s in states[1:]:  # DDP keeps the backbones equal under the combined loss
        for k, v in states[0]["state_dict_backbone"].items():
            if "running" not in k and "num_batches" not in k:
                assert torch.equal(v, s["state_dict_backbone"][k]), k
    log = (out / "training.log").read_text()
    assert log.count("distillation: L = ") == 1  # the formula, printed once
    assert log.count("distill step ") == 2  # every cfg.frequent = 2 steps
    losses = [json.loads(line) for line in (out / "host_losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]


@pytest.mark.parametrize("world", [1, 2])
def test_head_with_parameters_is_trained_and_equal_across_ranks(trained, world):
    root, results = trained
    groups = results[world][0]["projection"]["groups"]
    assert len(groups) == 3 and groups[1] == 2  # backbone, head (weight, bias), partial FC last
    out = root / f"projection_w{world}"
    heads = [torch.load(out / f"distill_gpu_{r}.pt", weights_only=True)["heads"][0] for r in range(world)]
    torch.manual_seed(1234)
    init = torch.nn.Linear(8, 8).state_dict()
    assert not torch.equal(heads[0]["proj.weight"], init["proj.weight".split(".", 1)[1]])
    for h in heads[1:]:
        for k in h:
            assert torch.equal(h[k], heads[0][k]), k


def test_pwr_alone_ignores_the_classifier_loss(trained):
    root, results = trained
    for total, expected, value in results[1][0]["pwr_alone"]["log"]:
        assert total == pytest.approx(100.0 * value, rel=1e-5)
    assert get_head_spec("pwr").consumes == "embeddings"


@pytest.mark.parametrize("world", [1, 2])
def test_inherited_classifier_stays_the_teachers(trained, world):
    root, _ = trained
    teacher = torch.cat([torch.load(root / "teacher" / f"checkpoint_gpu_{r}.pt", weights_only=True)
                         ["state_dict_softmax_fc"]["weight"] for r in range(3)])
    for r in range(world):
        start, count = shard_range(10, world, r)
        got = torch.load(root / f"inherit_w{world}" / f"checkpoint_gpu_{r}.pt", weights_only=True)
        assert torch.equal(got["state_dict_softmax_fc"]["weight"], teacher[start:start + count])
