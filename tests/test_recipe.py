"""The recipe loader: upstream defaults, the base mechanism, strict validation of ``distill``, the formula."""
from pathlib import Path

import pytest

from insightface_pwr.distill.formula import combined_loss_formula
from insightface_pwr.distill.recipe import RecipeError, UPSTREAM_DEFAULTS, load_recipe

DATASET = '''
config.rec = "synthetic"
config.num_classes = 10
config.num_image = 64
config.num_epoch = 1
config.warmup_epoch = 0
config.val_targets = []
'''


def write(tmp: Path, name: str, body: str) -> Path:
    p = tmp / name
    p.write_text("from easydict import EasyDict as edict\nfrom insightface_pwr.distill.recipe import load_base\n" + body)
    return p


def recipe(tmp: Path, distill: str, extra: str = "") -> Path:
    return write(tmp, "r.py", "config = edict()\n" + DATASET + extra + "\nconfig.distill = " + distill + "\n")


TEACHER = 'edict(weights="t.onnx")'


def test_defaults_are_upstream_base(tmp_path):
    cfg = load_recipe(write(tmp_path, "plain.py", "config = edict()\n" + DATASET))
    # values of arcface_torch configs/base.py at 0159b24d, checked one by one against the file's text
    assert cfg.margin_list == (1.0, 0.5, 0.0) and cfg.network == "r50" and cfg.embedding_size == 512
    assert cfg.batch_size == 128 and cfg.lr == 0.1 and cfg.momentum == 0.9 and cfg.weight_decay == 5e-4
    assert cfg.frequent == 10 and cfg.verbose == 2000 and cfg.seed == 2048 and cfg.gradient_acc == 1
    assert cfg.sample_rate == 1 and cfg.fp16 is False and cfg.optimizer == "sgd" and cfg.num_workers == 2
    assert cfg.output == str(Path("work_dirs") / "plain") and "distill" not in cfg
    assert set(UPSTREAM_DEFAULTS) >= {"dali", "wandb_key", "save_all_states", "interclass_filtering_threshold"}


def test_base_mechanism_and_filled_defaults(tmp_path):
    write(tmp_path, "_base.py", "config = edict()\n" + DATASET + "config.network = 'r18'\nconfig.lr = 0.05\n")
    p = write(tmp_path, "child.py", "config = load_base(__file__, '_base.py')\nconfig.lr = 0.2\n"
              f"config.distill = edict(teacher={TEACHER}, heads=[edict(name='pwr', weight=100.0)])\n")
    cfg = load_recipe(p)
    assert cfg.network == "r18" and cfg.lr == 0.2 and cfg.batch_size == 128
    d = cfg.distill
    assert d.classification_weight == 1.0 and d.student_init is None and d.lr_schedule is None
    assert d.teacher.format == "auto" and d.teacher.input_size == (112, 112) and d.heads[0].params == {}


@pytest.mark.parametrize("distill, message", [
    (f"edict(teacher={TEACHER}, hedas=[])", "config.distill.hedas"),
    ("edict(teacher=edict(weights='t.onnx', netwrok='r50'))", "config.distill.teacher.netwrok"),
    (f"edict(teacher={TEACHER}, classification_weight='1')", "config.distill.classification_weight must be"),
    (f"edict(teacher={TEACHER}, heads=[edict(name='pwrr', weight=1.0)])", "Unknown head 'pwrr'"),
    (f"edict(teacher={TEACHER}, heads=[edict(name='pwr', params=edict(inversoin='exp'))])", "inversoin"),
    (f"edict(teacher={TEACHER}, heads=[edict(name='hkd', params=edict(temperature='4'))])", "temperature"),
    (f"edict(teacher={TEACHER}, heads=[edict(name='pwr', wieght=1.0)])", "config.distill.heads[0].wieght"),
    (f"edict(teacher={TEACHER}, heads=[edict(name='hkd')])", "teacher.classifier is required by hkd"),
    (f"edict(teacher={TEACHER}, classification_weight=0.0)", "nothing to train"),
    (f"edict(teacher={TEACHER}, lr_schedule=edict(kind='cosine'))", "lr_schedule.kind"),
    (f"edict(teacher={TEACHER}, lr_schedule=edict(kind='step', evry_epochs=2))", "lr_schedule.evry_epochs"),
    (f"edict(teacher={TEACHER}, inherit_classifier=1)", "inherit_classifier must be bool"),
    ("edict(teacher=edict(network='r50'))", "teacher.weights is required"),
    (f"edict(teacher=edict(weights='t.pt', format='pickle'))", "teacher.format"),
    ("[1]", "config.distill must be dict"),
])
def test_bad_distill_sections_name_the_key(tmp_path, distill, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe(tmp_path, distill))
    assert message in str(e.value)


def test_bad_ordinary_keys_and_files(tmp_path):
    with pytest.raises(RecipeError, match="config.batch_size must be int"):
        load_recipe(recipe(tmp_path, "None", "config.batch_size = 12.5\n"))
    with pytest.raises(RecipeError, match="config.rec, config.num_classes"):
        load_recipe(write(tmp_path, "nodata.py", "config = edict()\n"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.py")
    with pytest.raises(RecipeError, match="must define `config = edict\\(\\)`"):
        load_recipe(write(tmp_path, "noconfig.py", "cfg = 1\n"))


def test_formula(tmp_path):
    cfg = load_recipe(recipe(tmp_path, "edict(teacher=edict(weights='t.onnx', classifier='c'), heads=["
                                       "edict(name='pwr', weight=100.0, params=edict(inversion='exp')),"
                                       "edict(name='hkd', weight=0.3, params=edict(temperature=4.0))],"
                                       "classification_weight=0.7)", "config.margin_list = (1.0, 0.0, 0.35)\n"))
    assert combined_loss_formula(cfg) == ("L = 0.7 * CosFace(m=0.35, s=64) + 100 * pwr(inversion=exp) + "
                                          "0.3 * hkd(temperature=4.0)")
    cfg.distill.classification_weight = 0.0
    assert combined_loss_formula(cfg) == "L = 100 * pwr(inversion=exp) + 0.3 * hkd(temperature=4.0)"


def test_the_example_recipes_validate():
    root = Path(__file__).resolve().parents[1] / "examples"
    teacher = load_recipe(root / "host_teacher.py")
    student = load_recipe(root / "host_distill.py")
    assert teacher.network == "tiny_mbf" and student.network == "tiny_cnn"
    assert student.num_classes == teacher.num_classes and student.image_size == teacher.image_size
    assert combined_loss_formula(student) == ("L = 0.7 * CosFace(m=0.35, s=64) + 100 * pwr(inversion=exp, "
                                              "margin=teacher_diff) + 0.3 * hkd(temperature=4.0)")


# ----------------------------------------------------------------- config.lr_schedule (top level, no distill needed)
def test_top_level_lr_schedule_without_distill(tmp_path):
    from insightface_pwr.distill.recipe import lr_schedule_of
    cfg = load_recipe(recipe(tmp_path, "None", "config.lr_schedule = edict(kind='step', every_epochs=3)\n"))
    assert "distill" in cfg and cfg.distill is None
    assert dict(cfg.lr_schedule) == {"kind": "step", "every_epochs": 3, "factor": 0.1, "warmup_epochs": 0}
    assert lr_schedule_of(cfg) == cfg.lr_schedule
    poly = load_recipe(recipe(tmp_path, "None", "config.lr_schedule = edict(kind='poly', power=2.0)\n"))
    assert dict(lr_schedule_of(poly)) == {"kind": "poly", "power": 2.0}
    assert lr_schedule_of(load_recipe(recipe(tmp_path, "None"))) is None  # upstream's schedule stays
    # the older place, config.distill.lr_schedule, is an alias
    alias = load_recipe(recipe(tmp_path, f"edict(teacher={TEACHER}, heads=[edict(name='pwr')], "
                                         "lr_schedule=edict(kind='step', factor=0.5))"))
    assert dict(lr_schedule_of(alias)) == {"kind": "step", "every_epochs": 2, "factor": 0.5, "warmup_epochs": 0}


@pytest.mark.parametrize("extra, distill, message", [
    ("config.lr_schedule = edict(kind='cosine')\n", "None", "config.lr_schedule.kind must be one of"),
    ("config.lr_schedule = edict(kind='step', evry_epochs=2)\n", "None", "unknown key config.lr_schedule.evry_epochs"),
    ("config.lr_schedule = edict(kind='step', factor='0.1')\n", "None", "config.lr_schedule.factor must be number"),
    ("config.lr_schedule = edict(kind='step', factor=10.0)\n", "None", "config.lr_schedule: need every_epochs > 0"),
    ("config.lr_schedule = edict(kind='poly', every_epochs=2)\n", "None", "unknown key config.lr_schedule.every_"),
    ("config.lr_schedule = 'step'\n", "None", "config.lr_schedule must be dict"),
    ("config.lr_schedule = edict(kind='step')\n",
     f"edict(teacher={TEACHER}, heads=[edict(name='pwr')], lr_schedule=edict(kind='step'))",
     "config.lr_schedule and config.distill.lr_schedule are both set"),
])
def test_bad_top_level_lr_schedule_names_the_key(tmp_path, extra, distill, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe(tmp_path, distill, extra))
    assert message in str(e.value)
