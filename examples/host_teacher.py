"""CPU-host example, step 1: a small teacher (tiny_mbf, 32-d) trained with CosFace on synthetic faces.

    insightface-pwr train examples/host_teacher.py          # 1 process; writes work_dirs/host_teacher/
"""
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.0, 0.35)   # CosFace, m = 0.35, s = 64
config.network = "tiny_mbf"             # the host's MobileFaceNet-shaped network
config.embedding_size = 32
config.rec = "synthetic"                # 20 classes x 32 images of 32 x 32, made from config.seed
config.num_classes = 20
config.num_image = 640
config.image_size = (32, 32)            # host key (H, W)
config.num_epoch = 3
config.warmup_epoch = 0
config.val_targets = []
config.batch_size = 32                  # 640 / 32 = 20 steps per epoch
config.lr = 0.1
config.frequent = 10
config.save_all_states = True           # checkpoint_gpu_{rank}.pt: the classifier shards HKD needs
config.output = "work_dirs/host_teacher"
