"""CPU-host example, step 2: distil the teacher of host_teacher.py into a smaller student (tiny_cnn, 32-d).

    insightface-pwr train examples/host_distill.py --nproc 2   # 2 gloo processes; writes work_dirs/host_distill/

L = 0.7 * CosFace + 100 * PWR-Exp (teacher-diff) + 0.3 * HKD (T = 4). The teacher's classifier was saved by one
process and is re-sliced here over two; HKD's softmax runs over the classes of both ranks.
"""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "host_teacher.py")
config.network = "tiny_cnn"
config.batch_size = 16                  # per process: 2 x 16 = 32 images per step, 20 steps per epoch
config.output = "work_dirs/host_distill"
config.distill = edict(
    teacher=edict(network="tiny_mbf", weights="work_dirs/host_teacher/model.pt",
                  classifier="work_dirs/host_teacher", input_size=(32, 32)),
    classification_weight=0.7,
    heads=[edict(name="pwr", weight=100.0, params=edict(inversion="exp", margin="teacher_diff")),
           edict(name="hkd", weight=0.3, params=edict(temperature=4.0))])
config.lr_schedule = edict(kind="step", every_epochs=1, factor=0.1)   # lr / 10 every epoch
