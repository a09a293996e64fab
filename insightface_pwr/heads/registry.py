"""The head registry: one place that knows every distillation head by name.

``@register_head`` (bare or with a name) records a head class; ``create_head(name, **params)`` builds it after
checking every parameter against the class's ``__init__`` signature (names and type hints); ``list_heads()``
returns the registered names. Heads are discovered by importing ``insightface_pwr.heads`` (no entry points).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["HeadSpec", "register_head", "create_head", "list_heads", "get_head_spec", "check_params"]


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """What the registry knows about one head.

    ``consumes`` is ``"embeddings"`` (called ``head(student=S, teacher=T)``) or ``"logits"``
    (called ``head(student_logits=..., teacher_logits=...)``).
    """

    name: str
    cls: type
    consumes: str
    paper: str
    summary: str

    @property
    def params(self) -> Dict[str, inspect.Parameter]:
        sig = inspect.signature(self.cls.__init__)
        return {k: p for k, p in sig.parameters.items() if k != "self"}

    @property
    def hints(self) -> Dict[str, Any]:
        return typing.get_type_hints(self.cls.__init__)

    def defaults(self) -> Dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def describe_params(self) -> str:
        hints = self.hints
        parts = []
        for k, p in self.params.items():
            parts.append(f"{k}: {_type_name(hints.get(k, Any))} = {p.default!r}")
        return ", ".join(parts)


_REGISTRY: Dict[str, HeadSpec] = {}


def register_head(name_or_cls: Any = None, *, name: Optional[str] = None) -> Any:
    """Register a head class. Usable as ``@register_head``, ``@register_head("name")`` or
    ``@register_head(name="name")``. The default name is the class attribute ``name``, else the class name
    in lower case. Registering a name twice is an error.

    The class declares ``consumes`` ("embeddings" or "logits"), ``paper`` (a citation) and a docstring whose
    first line serves as its summary. Every ``__init__`` parameter must be keyword-usable, have a default and
    a type hint: ``create_head`` checks user parameters against them.
    """

    def _register(cls: type, reg_name: Optional[str]) -> type:
        reg_name = reg_name or getattr(cls, "name", None) or cls.__name__.lower()
        if not isinstance(reg_name, str) or not reg_name:
            raise ValueError(f"register_head: the head name must be a non-empty string, got {reg_name!r}")
        if reg_name in _REGISTRY:
            raise ValueError(f"register_head: a head named {reg_name!r} is already registered "
                             f"({_REGISTRY[reg_name].cls.__module__}.{_REGISTRY[reg_name].cls.__qualname__}); "
                             f"choose another name")
        consumes = getattr(cls, "consumes", "embeddings")
        if consumes not in ("embeddings", "logits"):
            raise ValueError(f"register_head: {cls.__qualname__}.consumes must be 'embeddings' or 'logits', "
                             f"got {consumes!r}")
        sig = inspect.signature(cls.__init__)
        hints = typing.get_type_hints(cls.__init__)
        for k, p in sig.parameters.items():
            if k == "self":
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise ValueError(f"register_head: {cls.__qualname__}.__init__ parameter {k!r} must be a plain "
                                 f"keyword parameter")
            if p.default is p.empty or k not in hints:
                raise ValueError(f"register_head: {cls.__qualname__}.__init__ parameter {k!r} needs a default "
                                 f"and a type hint")
        doc = inspect.getdoc(cls) or ""
        spec = HeadSpec(name=reg_name, cls=cls, consumes=consumes, paper=getattr(cls, "paper", ""),
                        summary=doc.splitlines()[0] if doc else "")
        _REGISTRY[reg_name] = spec
        cls.name = reg_name
        return cls

    if isinstance(name_or_cls, type):
        return _register(name_or_cls, name)
    if name_or_cls is not None and not isinstance(name_or_cls, str):
        raise TypeError(f"register_head: expected a class or a name, got {name_or_cls!r}")
    reg = name_or_cls or name
    return lambda cls: _register(cls, reg)


def _ensure_loaded() -> None:
    import insightface_pwr.heads  # noqa: F401  (importing registers the built-in heads)


def list_heads(filter: str = "") -> List[str]:
    """The registered head names (sorted), optionally only those containing ``filter``."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if filter in n)


def get_head_spec(name: str) -> HeadSpec:
    """The HeadSpec of ``name``; an unknown name raises a ValueError naming close matches and every head."""
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        names = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown head {name!r}.{hint} Registered heads: {', '.join(names)}")
    return _REGISTRY[name]


def check_params(name: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Validate ``params`` for head ``name`` without building it: unknown names and wrong types raise
    an error that names the parameter, its value and what was expected. Returns the full parameter set
    (defaults filled in)."""
    spec = get_head_spec(name)
    known = spec.params
    hints = spec.hints
    for k, v in params.items():
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=2, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise TypeError(f"head {name!r} has no parameter {k!r}.{hint} Its parameters: "
                            f"{spec.describe_params() or '(none)'}")
        if not _matches(v, hints[k]):
            raise TypeError(f"head {name!r}: parameter {k!r} must be {_type_name(hints[k])}, "
                            f"got {v!r} ({type(v).__name__})")
    full = spec.defaults()
    full.update(params)
    return full


def create_head(name: str, **params: Any) -> Any:
    """Build the head registered as ``name`` with ``params`` (checked by :func:`check_params`)."""
    check_params(name, params)
    return get_head_spec(name).cls(**params)


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, Tuple):
        return isinstance(value, (tuple, list))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return " | ".join(_type_name(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))

