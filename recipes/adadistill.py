"""AdaDistill, AdaArcDistill (Boutros et al., ECCV 2024): L = AdaDistill(ArcFace m 0.45, s 64); r50 -> mbf.

The authors' code (fdbtrs/AdaDistill: config/config.py, train/train_AdaDistill.py; shared/spec/HEADS_FR.md):
teacher iresnet50 trained with ArcFace, student MobileFaceNet, both 512-d; MS1MV2; 4 GPUs x 128 = 512 per step;
SGD 0.1, momentum 0.9, weight decay 5e-4, x 0.1 at epochs 8, 14, 20, 25; 26 epochs; gradient clipping at norm 5
(arcface_torch's train_v2.py clips the backbone at 5 too).

The head IS the loss: its class centres are partial FC's weight (sharded over the GPUs, each centre updated by its
owner from the teacher's embeddings of the global batch, out of the optimizer, saved in checkpoint_gpu_*.pt), so
classification_weight is 0 and margin_list is not used (the head's margin_type, m and s are).
"""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_fr_base.py")
config.batch_size = 128                    # per GPU: 128 x 4 GPUs = 512 (the authors' setup)
config.num_epoch = 26
config.lr_schedule = edict(kind="multistep", milestones=[8, 14, 20, 25], factor=0.1)
config.margin_list = (1.0, 0.45, 0.0)      # unused (the head's margin applies); kept equal to it for clarity
config.distill.classification_weight = 0.0
config.distill.heads = [edict(name="adadistill", weight=1.0,
                              # AdaArcDistill: ArcFace m 0.45 (config.py; IJB-C ablation 92.98 / 93.27 / 92.97 at
                              # m 0.40 / 0.45 / 0.50); AdaCosDistill: margin_type="cosface", m=0.35
                              params=edict(margin_type="arcface", m=0.45, s=64.0,
                                           adaptive_weighted_alpha=True))]   # alpha' (the paper's Eq. 8)
