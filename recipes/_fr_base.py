"""The shared base of the face-recognition distillation recipes (ekd.py, adadistill.py, proxylesskd.py,
coupleface.py; not a recipe itself): the setup common to EKD's and AdaDistill's papers (shared/spec/HEADS_FR.md).

Student MobileFaceNet (arcface_torch's ``mbf``), 512-d; teacher ResNet-50 (arcface_torch's ``r50``, an IResNet-50:
the papers' IR_50 / iresnet50), 512-d, trained on the same data with ArcFace; refined MS1M ("MS1MV2",
InsightFace's ``faces_emore`` RecordIO: 85,742 identities, 5,822,653 aligned 112x112 images); SGD with momentum
0.9 and weight decay 5e-4. Each recipe sets its batch, margin, schedule and loss. Run from arcface_torch after
``insightface-pwr patch``:
    torchrun --nproc_per_node=8 train.py recipes/ekd.py
"""
from easydict import EasyDict as edict

config = edict()
config.network = "mbf"                     # MobileFaceNet, the student of EKD's and AdaDistill's tables
config.embedding_size = 512
config.sample_rate = 1.0                   # full softmax (the papers do not sample classes)
config.fp16 = False
config.optimizer = "sgd"
config.lr = 0.1
config.momentum = 0.9
config.weight_decay = 5e-4

config.rec = "/train_tmp/faces_emore"      # MS1MV2 (the refined MS1M)
config.num_classes = 85742
config.num_image = 5822653
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"]   # the papers' verification benchmarks
config.verbose = 2000
config.frequent = 10

# the teacher: ResNet-50 trained with ArcFace (s 64, m 0.5) on the same data, e.g. arcface_torch's
# configs/ms1mv2_r50.py with save_all_states=True (its checkpoint_gpu_*.pt hold the classifier ProxylessKD needs)
config.distill = edict(
    teacher=edict(network="r50", weights="work_dirs/ms1mv2_r50/model.pt", embedding_size=512),
    classification_weight=1.0,             # each recipe sets its loss
    heads=[])
