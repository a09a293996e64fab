"""gpu_check.sh, step 1: the small recipes (one per head family) and a random teacher for the patched arcface_torch.

    python benchmarks/gpu/prepare.py --tree PATCHED_ARCFACE --work WORK [--cpu-dry-run]

Writes ``WORK/teacher/model.pt`` (upstream's iresnet50 with random weights, 512-d, built from the tree's own
``backbones``, BatchNorm statistics set on random images: see :func:`calibrate_batchnorm`), ``WORK/teacher/checkpoint_gpu_0.pt`` (a random C x 512 classifier shard, for HKD) and
``WORK/recipes/<family>.py``; prints the family names, one a line. Students: upstream's r18, fp16, synthetic data
(``data_backend = "insightface_pwr"``, ``rec = "synthetic"``), 100 steps (50 per epoch, 2 epochs).
``--cpu-dry-run``: 2 steps of batch 6, 16 classes, fp32 (the teacher too), no loader workers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

# head family -> the recipe's distill.heads (python source); every family of the registry
FAMILIES: Dict[str, str] = {
    "pwr": "[edict(name='pwr', weight=100.0, gather='global', params=edict(inversion='exp', margin='teacher_diff'))]",
    "rkd": "[edict(name='rkd_d', weight=25.0), edict(name='rkd_a', weight=50.0)]",
    "rkd_da": "[edict(name='rkd_da', weight=25.0)]",
    "darkrank": "[edict(name='darkrank', weight=1.0)]",
    "feature": "[edict(name='feature', weight=10.0)]",
    "ekd": "[edict(name='ekd', weight=1.0, params=edict(topk={ekd_topk}, anchors=(2, 4, 8)))]",
    "adadistill": "[edict(name='adadistill', weight=1.0, params=edict(num_classes={classes}, embedding_size=512))]",
    "coupleface": "[edict(name='coupleface_provisional', weight=1.0, params=edict(num_negatives=4))]",
    "hkd": "[edict(name='hkd', weight=1.0, params=edict(temperature=4.0))]",
}

RECIPE = """from easydict import EasyDict as edict
config = edict()
config.network = "r18"
config.embedding_size = 512
config.margin_list = (1.0, 0.5, 0.0)
config.fp16 = {fp16}
config.batch_size = {batch}
config.lr = 0.1
config.rec = "synthetic"
config.data_backend = "insightface_pwr"
config.num_classes = {classes}
config.num_image = {num_image}
config.num_epoch = 2
config.warmup_epoch = 0
config.val_targets = []
config.frequent = {frequent}
config.verbose = 1000000
config.num_workers = {workers}
config.output = "{output}"
config.distill = edict(
    teacher=edict(weights="{teacher}/model.pt", network="r50", classifier="{teacher}", fp16={fp16}),
    classification_weight={cls_weight},
    heads={heads})
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, required=True, help="the patched arcface_torch copy")
    p.add_argument("--work", type=Path, required=True, help="where the recipes, teacher and outputs go")
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes, CPU, fp32")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ",".join(FAMILIES))
    p.add_argument("--no-teacher", action="store_true", help="recipes only (tests)")
    args = p.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    return args


def sizes(cpu: bool) -> Dict[str, int]:
    # GPU: 50 steps an epoch x 2 epochs = 100 steps; CPU: 1 step an epoch, 2 steps
    return (dict(batch=6, classes=16, num_image=6, frequent=1, workers=0, ekd_topk=2) if cpu
            else dict(batch=64, classes=1000, num_image=3200, frequent=10, workers=2, ekd_topk=64))


def recipes(args: argparse.Namespace) -> Dict[str, str]:
    """family -> recipe source (paths absolute: train.py runs in the tree)."""
    s = sizes(args.cpu_dry_run)
    teacher = (args.work / "teacher").resolve()
    out = {}
    for fam in args.families:
        heads = FAMILIES[fam].format(**s)
        cls_weight = 0.0 if fam == "adadistill" else 1.0  # adadistill IS the loss: it replaces the margin softmax
        out[fam] = RECIPE.format(fp16=not args.cpu_dry_run, teacher=teacher, heads=heads, cls_weight=cls_weight,
                                 output=(args.work / "runs" / fam).resolve(), **s)
    return out


def calibrate_batchnorm(model, images) -> None:
    """Set every BatchNorm's running statistics to those of ``images`` (one forward in train mode, cumulative
    averages). A freshly initialised upstream iresnet50 in eval mode gives embeddings of about 1e26 (inf in fp16):
    with its own statistics the random teacher gives finite, distinct embeddings."""
    import torch
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def write_teacher(tree: Path, folder: Path, num_classes: int, calibration_images: int = 32) -> None:
    import torch
    sys.path.insert(0, str(tree))
    from backbones import get_model  # upstream's, from the patched tree
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    teacher = get_model("r50", dropout=0.0, fp16=False, num_features=512)
    calibrate_batchnorm(teacher, torch.rand(calibration_images, 3, 112, 112) * 2 - 1)
    torch.save(teacher.state_dict(), folder / "model.pt")
    torch.save({"state_dict_softmax_fc": {"weight": torch.randn(num_classes, 512)}}, folder / "checkpoint_gpu_0.pt")


def main(argv=None) -> int:
    args = parse_args(argv)
    (args.work / "recipes").mkdir(parents=True, exist_ok=True)
    for fam, text in recipes(args).items():
        (args.work / "recipes" / f"{fam}.py").write_text(text)
        print(fam)
    if not args.no_teacher:
        write_teacher(args.tree, args.work / "teacher", sizes(args.cpu_dry_run)["classes"],
                      8 if args.cpu_dry_run else 32)
    return 0


if __name__ == "__main__":
    sys.exit(main())
