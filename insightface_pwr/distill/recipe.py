"""Recipes: arcface_torch-style config files with a strictly validated ``distill`` section and ``lr_schedule``.

A recipe is a Python file that defines ``config = edict()`` exactly like an arcface_torch config. ``load_recipe``
runs it, lays it over the defaults of :func:`recipe_defaults` (inside arcface_torch, i.e. when the working folder
holds ``train_v2.py`` and ``configs/base.py``: the ``config`` of THAT ``configs/base.py``, the user's local edits
included, like upstream's ``get_config``; elsewhere :data:`UPSTREAM_DEFAULTS`, the values of the pinned
``configs/base.py`` written here as a table of facts; ``output`` is never inherited: None means
"work_dirs/<recipe name>", as every upstream config sets it), checks the types of the ordinary keys it knows and validates ``config.distill`` strictly: an
unknown key or a wrong type is an error naming the key (``config.distill.heads[0].params.temprature``).

Building on another recipe: ``load_base(__file__, "_base.py")`` returns a deep copy of the ``config`` of the file
``_base.py`` next to the recipe (itself possibly built on another), to be modified::

    from insightface_pwr.distill.recipe import load_base
    config = load_base(__file__, "ms1mv3_r18_student.py")
    config.distill = edict(teacher=edict(network="r50", weights="work_dirs/r50/model.pt"),
                           classification_weight=0.0,
                           heads=[edict(name="pwr", weight=100.0, params=edict(inversion="exp"))])

The ``distill`` section (defaults in brackets)::

    config.distill = edict(
        teacher=edict(weights=PATH,            # model.pt / state_dict (needs network), TorchScript or ONNX file
                      network=None,            # arcface_torch backbone name for a state_dict teacher ("r50")
                      embedding_size=None,     # the teacher's embedding size (state_dict teachers: [embedding_size])
                      classifier=None,         # folder (or list of files) of checkpoint_gpu_*.pt shards (HKD)
                      format="auto",           # "auto" | "state_dict" | "torchscript" | "onnx"
                      fp16=False,              # run the teacher in half precision (CUDA only)
                      input_size=(112, 112),   # H, W of the images, used to probe the teacher before training
                      cache=None),             # insightface-pwr cache-teacher output: look embeddings up instead
        student_init=None,                     # backbone weights to start the student from (model.pt)
        classification_weight=1.0,             # weight of partial FC's margin softmax loss (0: heads alone)
        heads=[edict(name="pwr", weight=100.0, params=edict())],
        method=None,                           # "proxylesskd": partial FC starts from the teacher's classifier,
                                               # frozen (the student learns through it; no KD term needed)
        inherit_classifier=False,              # the older name of method="proxylesskd" (an alias)
        lr_schedule=None)                      # the older place of config.lr_schedule (an alias; not both)

The learning-rate schedule, for any recipe (with or without ``distill``), stepped per iteration like upstream's::

    config.lr_schedule = None                  # None: arcface_torch's polynomial decay (warmup_epoch, then to 0)
    config.lr_schedule = edict(kind="step", every_epochs=2, factor=0.1, warmup_epochs=0)  # lr x 0.1 every 2 epochs
    config.lr_schedule = edict(kind="poly", power=1.0)                                    # upstream's, any power
    config.lr_schedule = edict(kind="multistep", milestones=[10, 18, 22], factor=0.1)     # lr x 0.1 at these epochs

Classifier-replacing methods (each is the training loss; HEADS_FR.md):

- ``method="proxylesskd"`` (alias ``inherit_classifier=True``): partial FC's weight is the teacher's classifier
  (``teacher.classifier``, re-sliced to this run's shards), frozen; the loss is partial FC's margin softmax
  (``margin_list``, weighted by ``classification_weight``), plus any heads.
- the head ``adadistill``: partial FC's weight becomes AdaDistill's class centres, updated from the teacher's
  embeddings of the global batch and out of the optimizer; the head is the loss, so ``classification_weight``
  must be 0, and it cannot be combined with ``method="proxylesskd"`` or with a logits head (``hkd``).

``config.distill.lr_schedule`` is accepted as an alias of ``config.lr_schedule``; setting both is an error.
:func:`lr_schedule_of` gives the one that applies.
"""
from __future__ import annotations

import copy
import math
import numbers
import runpy
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from easydict import EasyDict as edict

from .schema import (_INT, _NUM, _STR_NONE, LR_SCHEDULES, RecipeError, _check_known, _check_type,  # noqa: F401
                     validate_lr_schedule)
from .spec import DistillSpec, HeadTermSpec, TeacherSpec

__all__ = ["UPSTREAM_DEFAULTS", "recipe_defaults", "RecipeError", "DistillSpec", "TeacherSpec", "HeadTermSpec",
           "load_recipe", "load_base", "apply_defaults", "validate_recipe",
           "validate_distill", "validate_lr_schedule", "lr_schedule_of", "DISTILL_DEFAULTS",
           "TEACHER_DEFAULTS"]


# arcface_torch configs/base.py at commit 0159b24d (facts, not code). ``output`` is "ms1mv3_arcface_r50" upstream;
# here None means "work_dirs/<recipe name>", which upstream's get_config also does for an explicit None.
UPSTREAM_DEFAULTS: Dict[str, Any] = {
    "margin_list": (1.0, 0.5, 0.0), "network": "r50", "resume": False, "save_all_states": False, "output": None,
    "embedding_size": 512, "sample_rate": 1.0, "interclass_filtering_threshold": 0, "fp16": False,
    "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "verbose": 2000,
    "frequent": 10, "dali": False, "dali_aug": False, "gradient_acc": 1, "seed": 2048, "num_workers": 2,
    "wandb_key": "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "suffix_run_name": None, "using_wandb": False,
    "wandb_entity": "entity", "wandb_project": "project", "wandb_log_all": True, "save_artifacts": False,
    "wandb_resume": False,
}
# the dataset keys every arcface_torch dataset config sets (no default upstream)
DATASET_KEYS = ("rec", "num_classes", "num_image", "num_epoch", "warmup_epoch", "val_targets")

# ordinary keys whose type we check (others pass through untouched: upstream configs carry many more)
_ORDINARY_TYPES: Dict[str, tuple] = {
    "network": (str,), "resume": (bool,), "save_all_states": (bool,), "output": _STR_NONE, "embedding_size": _INT,
    "sample_rate": _NUM, "interclass_filtering_threshold": _NUM, "fp16": (bool,), "batch_size": _INT,
    "optimizer": (str,), "lr": _NUM, "momentum": _NUM, "weight_decay": _NUM, "verbose": _INT, "frequent": _INT,
    "gradient_acc": _INT, "seed": _INT, "num_workers": _INT, "rec": (str,), "num_classes": _INT,
    "num_image": _INT, "num_epoch": _INT, "warmup_epoch": _INT, "val_targets": (list, tuple),
    "margin_list": (list, tuple),
}

TEACHER_DEFAULTS: Dict[str, Any] = {"weights": None, "network": None, "embedding_size": None, "classifier": None,
                                    "format": "auto", "fp16": False, "input_size": (112, 112), "cache": None}
DISTILL_DEFAULTS: Dict[str, Any] = {"teacher": None, "student_init": None, "classification_weight": 1.0,
                                    "heads": None, "method": None, "inherit_classifier": False,
                                    "lr_schedule": None}
_TEACHER_TYPES = {"weights": (str,), "network": _STR_NONE, "embedding_size": (int, type(None)),
                  "classifier": (str, list, tuple, type(None)), "format": (str,), "fp16": (bool,),
                  "input_size": (list, tuple), "cache": _STR_NONE}
_DISTILL_TYPES = {"teacher": (dict,), "student_init": _STR_NONE, "classification_weight": _NUM,
                  "heads": (list, tuple), "method": _STR_NONE, "inherit_classifier": (bool,), "lr_schedule": (dict, type(None))}
METHODS = ("proxylesskd",)  # config.distill.method (None: none)
CLASSIFIER_HEADS = ("adadistill",)  # heads that replace partial FC's margin softmax (its weight is their state)
TEACHER_FORMATS = ("auto", "state_dict", "torchscript", "onnx")
_LOADING: List[Path] = []  # the recipe files being run, outermost first (load_base nests them)


def resolve_recipe_path(path: Union[str, Path]) -> Path:
    """``path``, or ``path.py`` when only that exists (``configs/ms1mv2_r50`` as upstream's get_config takes it)."""
    path = Path(path)
    if not path.is_file() and path.suffix != ".py" and path.with_name(path.name + ".py").is_file():
        return path.with_name(path.name + ".py")
    return path


def _load_config_file(path: Union[str, Path]) -> edict:
    path = resolve_recipe_path(path)
    if not path.is_file():
        also = "" if path.suffix == ".py" else f" (nor {str(path.resolve()) + '.py'!r})"
        raise RecipeError(f"recipe file not found: {str(path.resolve())!r}{also}")
    resolved = path.resolve()
    if resolved in _LOADING:
        chain = " -> ".join(str(p) for p in _LOADING[_LOADING.index(resolved):] + [resolved])
        raise RecipeError(f"load_base cycle: {chain} (a recipe cannot be built on itself)")
    _LOADING.append(resolved)
    try:
        ns = runpy.run_path(str(path), run_name=f"insightface_pwr_recipe_{path.stem}")
    except RecipeError:
        raise
    except Exception as e:  # noqa: BLE001  (a recipe is user code: report any failure with its file)
        raise RecipeError(f"recipe {str(resolved)!r} failed to run: {type(e).__name__}: {e}") from e
    finally:
        _LOADING.pop()
    if not isinstance(ns.get("config"), dict):
        raise RecipeError(f"recipe {str(resolved)!r} must define `config = edict()` (a dict), "
                          f"got {type(ns.get('config')).__name__}")
    return edict(copy.deepcopy(dict(ns["config"])))


def load_base(recipe_file: Union[str, Path], base: Union[str, Path]) -> edict:
    """A deep copy of the ``config`` of the recipe ``base`` (relative to the folder of ``recipe_file``); a chain
    of bases that comes back to a file already being loaded is an error naming the cycle."""
    base_path = Path(base)
    if not base_path.is_absolute():
        base_path = Path(recipe_file).resolve().parent / base_path
    return _load_config_file(base_path)


def recipe_defaults(cwd: Union[str, Path, None] = None) -> Tuple[Dict[str, Any], str]:
    """(the defaults a recipe is laid over, where they come from): the ``config`` of ``<cwd>/configs/base.py`` when
    ``cwd`` (default: the working folder) is an arcface_torch folder (it holds ``train_v2.py`` too), else
    :data:`UPSTREAM_DEFAULTS`. ``output`` is None in both (see the module docstring)."""
    base = Path.cwd() if cwd is None else Path(cwd)
    base_file = base / "configs" / "base.py"
    if not (base_file.is_file() and (base / "train_v2.py").is_file()):
        return copy.deepcopy(UPSTREAM_DEFAULTS), "insightface-pwr's copy of arcface_torch configs/base.py " \
                                                 "(UPSTREAM_DEFAULTS; no arcface_torch in the working folder)"
    try:
        config = runpy.run_path(str(base_file), run_name="insightface_pwr_arcface_base").get("config")
    except Exception as e:  # noqa: BLE001  (user code: report any failure with its file)
        raise RecipeError(f"arcface_torch's {str(base_file)!r} failed to run: {type(e).__name__}: {e}") from e
    if not isinstance(config, dict):
        raise RecipeError(f"arcface_torch's {str(base_file)!r} must define `config = edict()` (a dict), "
                          f"got {type(config).__name__}")
    defaults = copy.deepcopy(dict(config))
    defaults["output"] = None
    return defaults, f"arcface_torch's {str(base_file.resolve())}"


def apply_defaults(config: Dict[str, Any], name: str = "recipe",
                   defaults: Optional[Dict[str, Any]] = None) -> edict:
    """``defaults`` (None: :func:`recipe_defaults` of the working folder) updated by ``config`` (shallow, like
    upstream's get_config), ``output`` filled in."""
    cfg = edict(copy.deepcopy(recipe_defaults()[0] if defaults is None else defaults))
    cfg.update(edict(copy.deepcopy(dict(config))))
    if cfg.get("output") is None:
        cfg.output = str(Path("work_dirs") / name)
    return cfg


def load_recipe(path: Union[str, Path]) -> edict:
    """Run the recipe file ``path`` (or ``path.py``) and return the complete, validated config (upstream defaults
    filled in)."""
    cfg = apply_defaults(_load_config_file(path), Path(path).stem)
    validate_recipe(cfg, require_dataset=True)
    return cfg


def validate_recipe(cfg: Dict[str, Any], require_dataset: bool = True) -> None:
    """Check the types of the ordinary keys we know and, when present, the ``distill`` section (strictly)."""
    if require_dataset:
        missing = [k for k in DATASET_KEYS if k not in cfg]
        if missing:
            raise RecipeError(f"config is missing the dataset key(s) {', '.join('config.' + k for k in missing)} "
                              f"(arcface_torch dataset configs set {', '.join(DATASET_KEYS)})")
    for k, types in _ORDINARY_TYPES.items():
        if k in cfg:
            _check_type(f"config.{k}", cfg[k], types)
    ml = cfg.get("margin_list")
    if ml is not None and (len(ml) != 3 or not all(isinstance(m, numbers.Real) for m in ml)):
        raise RecipeError(f"config.margin_list must be 3 numbers (m1, m2, m3), got {ml!r}")
    if "sample_rate" in cfg and not 0 < cfg.sample_rate <= 1:
        raise RecipeError(f"config.sample_rate must be in (0, 1], got {cfg.sample_rate!r}")
    for k in ("batch_size", "embedding_size", "num_classes", "frequent", "gradient_acc"):
        if k in cfg and cfg[k] <= 0:
            raise RecipeError(f"config.{k} must be > 0, got {cfg[k]!r}")
    if cfg.get("distill") is not None:
        cfg["distill"] = validate_distill(cfg["distill"])
    if cfg.get("lr_schedule") is not None:
        cfg["lr_schedule"] = validate_lr_schedule(cfg["lr_schedule"], "config.lr_schedule")
    lr_schedule_of(cfg)  # not both config.lr_schedule and config.distill.lr_schedule


def validate_distill(distill: Any) -> DistillSpec:
    """Validate ``config.distill`` strictly into a :class:`DistillSpec` (every default filled in). An already
    validated section is returned as it is: a recipe is validated once."""
    if isinstance(distill, DistillSpec):
        if distill.is_whole():
            return distill
        distill = distill.to_section()  # a part was replaced by a raw section: validate that
    _check_type("config.distill", distill, (dict,))
    _check_known("config.distill", distill, list(DISTILL_DEFAULTS))
    d = edict(copy.deepcopy(DISTILL_DEFAULTS))
    d.update(edict(copy.deepcopy(dict(distill))))
    for k, types in _DISTILL_TYPES.items():
        if k == "teacher" and d.teacher is None:
            raise RecipeError("config.distill.teacher is required: edict(weights=PATH, ...)")
        if k == "heads" and d.heads is None:
            d.heads = []
        _check_type(f"config.distill.{k}", d[k], types)
    d.teacher = _validate_teacher(d.teacher)
    if not math.isfinite(d.classification_weight) or d.classification_weight < 0:
        raise RecipeError(f"config.distill.classification_weight must be >= 0, got {d.classification_weight!r}")
    d.heads = [_validate_head(i, h) for i, h in enumerate(d.heads)]
    if d.classification_weight == 0 and not d.heads:
        raise RecipeError("config.distill: classification_weight is 0 and there are no heads: nothing to train")
    if d.lr_schedule is not None:
        d.lr_schedule = validate_lr_schedule(d.lr_schedule, "config.distill.lr_schedule")
    _validate_method(d)
    needs_classifier = [h.name for h in d.heads if _consumes(h.name) == "logits"]
    if d.inherit_classifier:
        needs_classifier.append("inherit_classifier")
    if needs_classifier and d.teacher.classifier is None:
        raise RecipeError(f"config.distill.teacher.classifier is required by {', '.join(needs_classifier)}: "
                          f"the folder (or list) of the teacher's checkpoint_gpu_*.pt shards")
    return DistillSpec(teacher=TeacherSpec(**d.teacher), heads=list(d.heads), student_init=d.student_init,
                       classification_weight=float(d.classification_weight), inherit_classifier=d.inherit_classifier,
                       lr_schedule=d.lr_schedule, method=d.method)


def _validate_method(d: edict) -> None:
    """``method`` and its alias ``inherit_classifier`` made consistent; the classifier-replacing heads' rules."""
    if d.method is not None and d.method not in METHODS:
        raise RecipeError(f"config.distill.method must be None or one of {METHODS}, got {d.method!r}")
    if d.method == "proxylesskd":
        d.inherit_classifier = True
    elif d.inherit_classifier:
        d.method = "proxylesskd"
    replacing = [i for i, h in enumerate(d.heads) if h.name in CLASSIFIER_HEADS]
    if not replacing:
        return
    where = f"config.distill.heads[{replacing[0]}] ({d.heads[replacing[0]].name!r})"
    if len(replacing) > 1:
        raise RecipeError(f"config.distill.heads{replacing}: only one head can replace partial FC's margin softmax")
    if d.classification_weight != 0:
        raise RecipeError(f"{where} replaces partial FC's margin softmax (it is the loss, over partial FC's class "
                          f"centres): set config.distill.classification_weight = 0, got {d.classification_weight!r}")
    if d.method is not None:
        raise RecipeError(f"{where} keeps its own class centres in partial FC's weight: it cannot be combined with "
                          f"config.distill.method={d.method!r} (inherit_classifier), which freezes the teacher's there")
    logits = [h.name for h in d.heads if _consumes(h.name) == "logits"]
    if logits:
        raise RecipeError(f"{where} replaces partial FC's margin softmax, so there are no classifier logits for "
                          f"the logits head(s) {logits}")


def _consumes(name: str) -> str:
    from ..heads.registry import get_head_spec
    return get_head_spec(name).consumes


def _validate_teacher(t: Dict[str, Any]) -> edict:
    _check_known("config.distill.teacher", t, list(TEACHER_DEFAULTS))
    out = edict(copy.deepcopy(TEACHER_DEFAULTS))
    out.update(edict(copy.deepcopy(dict(t))))
    if out.weights is None:
        raise RecipeError("config.distill.teacher.weights is required: the path of the teacher "
                          "(model.pt, a TorchScript file or an ONNX file)")
    for k, types in _TEACHER_TYPES.items():
        _check_type(f"config.distill.teacher.{k}", out[k], types)
    if out.format not in TEACHER_FORMATS:
        raise RecipeError(f"config.distill.teacher.format must be one of {TEACHER_FORMATS}, got {out.format!r}")
    if len(out.input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in out.input_size):
        raise RecipeError(f"config.distill.teacher.input_size must be (H, W) positive ints, got {out.input_size!r}")
    out.input_size = tuple(out.input_size)
    if out.embedding_size is not None and out.embedding_size <= 0:
        raise RecipeError(f"config.distill.teacher.embedding_size must be > 0, got {out.embedding_size!r}")
    return out


def _validate_head(i: int, h: Any) -> edict:
    key = f"config.distill.heads[{i}]"
    _check_type(key, h, (dict,))
    _check_known(key, h, ["name", "weight", "params", "gather"])
    if "name" not in h:
        raise RecipeError(f"{key}.name is required (one of the registered heads)")
    _check_type(f"{key}.name", h["name"], (str,))
    weight = h.get("weight", 1.0)
    _check_type(f"{key}.weight", weight, _NUM)
    if weight < 0:
        raise RecipeError(f"{key}.weight must be >= 0, got {weight!r}")
    if not math.isfinite(weight):
        raise RecipeError(f"{key}.weight must be a finite number, got {weight!r}")
    params = h.get("params") or {}
    _check_type(f"{key}.params", params, (dict,))
    params = dict(params)
    gather = h.get("gather", "local")
    if "scope" in params and h["name"] == "pwr":  # pwr's former head parameter is now the term's gather
        if "gather" in h:
            raise RecipeError(f"{key}: params.scope and gather are both set; keep gather")
        gather = params.pop("scope")
    if gather not in ("local", "global"):
        raise RecipeError(f"{key}.gather must be 'local' (this rank's batch) or 'global' (the all-gathered "
                          f"batch), got {gather!r}")
    from ..heads.registry import check_params
    try:
        full = check_params(h["name"], params)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{key}: {e}") from e
    return HeadTermSpec(name=h["name"], weight=float(weight), params=edict(copy.deepcopy(params)),
                        full_params=full, gather=gather)


def lr_schedule_of(cfg: Dict[str, Any]) -> Optional[edict]:
    """The validated lr schedule that replaces arcface_torch's, or None (upstream's polynomial decay stays).

    ``config.lr_schedule``, or its alias ``config.distill.lr_schedule``; a recipe that sets both is an error."""
    top = cfg.get("lr_schedule")
    distill = cfg.get("distill")
    alias = distill.get("lr_schedule") if isinstance(distill, (dict, DistillSpec)) else None
    if top is not None and alias is not None:
        raise RecipeError("config.lr_schedule and config.distill.lr_schedule are both set: keep config.lr_schedule "
                          "and remove config.distill.lr_schedule (its older alias)")
    if top is not None:
        return validate_lr_schedule(top, "config.lr_schedule")
    if alias is not None:
        return validate_lr_schedule(alias, "config.distill.lr_schedule")
    return None
