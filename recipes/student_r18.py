"""The paper's baseline student and the shared base of every recipe here (Nikitin et al., GraphiCon 2020, sec. 4.2).

ResNet-18 (arcface_torch's ``r18``), 512-d, CosFace on MS1M-ArcFace, 6 GPUs. Every other recipe in this folder is
``load_base(__file__, "student_r18.py")`` plus a few lines. Run from arcface_torch after ``insightface-pwr patch``:
    torchrun --nproc_per_node=6 train.py recipes/student_r18.py      # -> work_dirs/student_r18/model.pt
"""
from easydict import EasyDict as edict

config = edict()
config.network = "r18"
config.embedding_size = 512
config.margin_list = (1.0, 0.0, 0.35)      # CosFace m = 0.35 in arcface_torch's (m1, m2, m3); scale is fixed at 64
config.sample_rate = 1.0                   # full softmax over all 85,742 classes (the paper does no sampling)
config.fp16 = False                        # paper silent (its MXNet code trains in fp32): we choose fp32

config.batch_size = 92                     # per GPU: 92 x 6 GPUs = 552 images per step (the paper's batch)
config.optimizer = "sgd"
config.lr = 0.1                            # not scaled by the batch: arcface_torch uses cfg.lr as given
config.momentum = 0.9
config.weight_decay = 5e-4

# MS1M-ArcFace ("faces_emore", InsightFace's RecordIO): 85,742 identities, 5,822,653 aligned 112x112 images
config.rec = "/train_tmp/faces_emore"
config.num_classes = 85742
config.num_image = 5822653
config.num_epoch = 13                      # 13 x (5,822,653 // 552 = 10,548 steps) = 137,124 steps
config.warmup_epoch = 0                    # the paper does not warm up
config.val_targets = ["lfw", "cplfw", "agedb_30"]   # <rec>/<name>.bin, evaluated every config.verbose steps
config.verbose = 2000
config.frequent = 10
# "divided by 10 every 2 epochs", for every model of the paper (teacher, baseline and the distilled students):
# 0.1 (epochs 0-1), 0.01 (2-3), ..., 1e-7 (epoch 12), stepped per iteration; replaces arcface_torch's linear decay
config.lr_schedule = edict(kind="step", every_epochs=2, factor=0.1)
