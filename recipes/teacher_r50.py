"""The paper's teacher: ResNet-50 (``r50``), 512-d, trained with CosFace (weight 1.0) on MS1M-ArcFace.

Same setup as the baseline student (student_r18.py), its lr schedule included (0.1, divided by 10 every 2 epochs).
    torchrun --nproc_per_node=6 train.py recipes/teacher_r50.py      # -> work_dirs/teacher_r50/model.pt
"""
from insightface_pwr.recipe import load_base

config = load_base(__file__, "student_r18.py")
config.network = "r50"
config.save_all_states = True   # keep checkpoint_gpu_{0..5}.pt: the HKD recipes read the teacher's classifier shards
