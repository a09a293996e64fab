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
        inherit_classifier=False,              # ProxylessKD: partial FC starts from the teacher's classifier, frozen
        lr_schedule=None)                      # the older place of config.lr_schedule (an alias; not both)

The learning-rate schedule, for any recipe (with or without ``distill``), stepped per iteration like upstream's::

    config.lr_schedule = None                  # None: arcface_torch's polynomial decay (warmup_epoch, then to 0)
    config.lr_schedule = edict(kind="step", every_epochs=2, factor=0.1, warmup_epochs=0)  # lr x 0.1 every 2 epochs
    config.lr_schedule = edict(kind="poly", power=1.0)                                    # upstream's, any power

``config.distill.lr_schedule`` is accepted as an alias of ``config.lr_schedule``; setting both is an error.
:func:`lr_schedule_of` gives the one that applies.
"""
from __future__ import annotations

import copy
import math
import difflib
import numbers
import runpy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from easydict import EasyDict as edict

from ..infra.errors import UserError
from .spec import DistillSpec, HeadTermSpec, TeacherSpec
__all__ = ["UPSTREAM_DEFAULTS", "recipe_defaults", "RecipeError", "DistillSpec", "TeacherSpec", "HeadTermSpec", "load_recipe", "load_base", "apply_defaults", "validate_recipe",
           "validate_distill", "validate_lr_schedule", "lr_schedule_of", "combined_loss_formula", "DISTILL_DEFAULTS",
           "TEACHER_DEFAULTS"]


class RecipeError(UserError, ValueError):
    """A recipe is missing, malformed, or holds an unknown key or a value of the wrong type."""


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

_INT = (int,)
_NUM = (numbers.Real,)
_STR_NONE = (str, type(None))
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
                                    "heads": None, "inherit_classifier": False, "lr_schedule": None}
_TEACHER_TYPES = {"weights": (str,), "network": _STR_NONE, "embedding_size": (int, type(None)),
                  "classifier": (str, list, tuple, type(None)), "format": (str,), "fp16": (bool,),
                  "input_size": (list, tuple), "cache": _STR_NONE}
_DISTILL_TYPES = {"teacher": (dict,), "student_init": _STR_NONE, "classification_weight": _NUM,
                  "heads": (list, tuple), "inherit_classifier": (bool,), "lr_schedule": (dict, type(None))}
TEACHER_FORMATS = ("auto", "state_dict", "torchscript", "onnx")
LR_SCHEDULES = {"step": {"kind": (str,), "every_epochs": _INT, "factor": _NUM, "warmup_epochs": _INT},
                "poly": {"kind": (str,), "power": _NUM}}


def _type_names(types: tuple) -> str:
    names = {int: "int", float: "float", str: "str", bool: "bool", dict: "dict (edict)", list: "list",
             tuple: "tuple", type(None): "None", numbers.Real: "number"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_type(key: str, value: Any, types: tuple) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # nan < 0 is False: refuse non-finite numbers here
        raise RecipeError(f"{key} must be a finite number, got {value!r}")
    ok = isinstance(value, types)
    if isinstance(value, bool) and bool not in types:  # True is an int in Python; never accept it as a number
        ok = False
    if not ok:
        raise RecipeError(f"{key} must be {_type_names(types)}, got {value!r} ({type(value).__name__})")


def _check_known(key: str, d: Dict[str, Any], known: Sequence[str]) -> None:
    for k in d:
        if k not in known:
            close = difflib.get_close_matches(str(k), list(known), n=2, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(f"unknown key {key}.{k}.{hint} Known keys: {', '.join(known)}")


def _load_config_file(path: Union[str, Path]) -> edict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {str(path)!r}")
    try:
        ns = runpy.run_path(str(path), run_name=f"insightface_pwr_recipe_{path.stem}")
    except RecipeError:
        raise
    except Exception as e:  # noqa: BLE001  (a recipe is user code: report any failure with its file)
        raise RecipeError(f"recipe {str(path)!r} failed to run: {type(e).__name__}: {e}") from e
    if not isinstance(ns.get("config"), dict):
        raise RecipeError(f"recipe {str(path)!r} must define `config = edict()` (a dict), "
                          f"got {type(ns.get('config')).__name__}")
    return edict(copy.deepcopy(dict(ns["config"])))


def load_base(recipe_file: Union[str, Path], base: Union[str, Path]) -> edict:
    """A deep copy of the ``config`` of the recipe ``base`` (relative to the folder of ``recipe_file``)."""
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
    """Run the recipe file ``path`` and return the complete, validated config (upstream defaults filled in)."""
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
    needs_classifier = [h.name for h in d.heads if _consumes(h.name) == "logits"]
    if d.inherit_classifier:
        needs_classifier.append("inherit_classifier")
    if needs_classifier and d.teacher.classifier is None:
        raise RecipeError(f"config.distill.teacher.classifier is required by {', '.join(needs_classifier)}: "
                          f"the folder (or list) of the teacher's checkpoint_gpu_*.pt shards")
    return DistillSpec(teacher=TeacherSpec(**d.teacher), heads=list(d.heads), student_init=d.student_init,
                       classification_weight=float(d.classification_weight), inherit_classifier=d.inherit_classifier,
                       lr_schedule=d.lr_schedule)


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


def validate_lr_schedule(s: Any, key: str = "config.lr_schedule") -> edict:
    """Validate one lr schedule section (``key`` names it in errors); returns it with its defaults filled in."""
    _check_type(key, s, (dict,))
    kind = s.get("kind")
    if kind not in LR_SCHEDULES:
        raise RecipeError(f"{key}.kind must be one of {tuple(LR_SCHEDULES)}, got {kind!r}")
    _check_known(key, s, list(LR_SCHEDULES[kind]))
    out = edict({"kind": "step", "every_epochs": 2, "factor": 0.1, "warmup_epochs": 0} if kind == "step"
                else {"kind": "poly", "power": 1.0})
    out.update(edict(copy.deepcopy(dict(s))))
    for k, types in LR_SCHEDULES[kind].items():
        _check_type(f"{key}.{k}", out[k], types)
    if kind == "step" and (out.every_epochs <= 0 or not 0 < out.factor <= 1 or out.warmup_epochs < 0):
        raise RecipeError(f"{key}: need every_epochs > 0, 0 < factor <= 1, warmup_epochs >= 0, got {dict(out)}")
    return out


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


def _margin_name(margin_list: Optional[Sequence[float]]) -> str:
    m1, m2, m3 = margin_list if margin_list is not None else UPSTREAM_DEFAULTS["margin_list"]
    if m1 == 1.0 and m2 == 0.0 and m3 > 0:
        return f"CosFace(m={m3:g}, s=64)"
    if m1 == 1.0 and m3 == 0.0:
        return f"ArcFace(m={m2:g}, s=64)"
    return f"CombinedMargin(m1={m1:g}, m2={m2:g}, m3={m3:g}, s=64)"


def combined_loss_formula(cfg: Dict[str, Any]) -> str:
    """The combined loss of a recipe as one line, e.g. ``L = 100 * pwr(inversion=exp, margin=teacher_diff)``."""
    d = validate_distill(cfg["distill"])  # already a DistillSpec after load_recipe: not validated again
    terms: List[Tuple[float, str]] = []
    if d.classification_weight != 0:
        terms.append((d.classification_weight, _margin_name(cfg.get("margin_list"))))
    for h in d.heads:
        params = ", ".join(f"{k}={v}" for k, v in h.params.items())
        where = ", over the global batch" if h.gather == "global" else ""
        terms.append((h.weight, f"{h.name}({params}{where})"))
    return "L = " + " + ".join(f"{w:g} * {name}" for w, name in terms)
