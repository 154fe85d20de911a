"""Every CAM method by name, and how names and settings become instances.

The names are Dual-CAM's ``--method`` names where it has the method, and
pytorch-grad-cam's / torchcam's otherwise (docs/method.md lists where each
default comes from).
"""
from __future__ import annotations

import inspect
import typing
from typing import Any, Sequence

from wsol.cams.base import CAMMethod
from wsol.cams.decomposition import EigenCAM, EigenGradCAM, KPCACAM
from wsol.cams.legrad import LeGrad
from wsol.cams.methods import (CAM, FEM, FinerCAM, GradCAM, GradCAMElementWise,
                               GradCAMPlusPlus, HiResCAM, LayerCAM, ShapleyCAM,
                               SmoothGradCAMPlusPlus, XGradCAM)
from wsol.cams.multilayer import FullGrad, RefineCAM
from wsol.cams.perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM
from wsol.model import CAMModel

__all__ = ["CAM_METHODS", "METHOD_CLASSES", "parse_methods", "resolve_methods", "make_method",
           "parse_method_options"]

METHOD_CLASSES: dict[str, type[CAMMethod]] = {c.name: c for c in (
    CAM, GradCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus, XGradCAM, LayerCAM, ScoreCAM,
    HiResCAM, EigenCAM,
    AblationCAM, EigenGradCAM, FEM, FinerCAM, FullGrad, GradCAMElementWise, KPCACAM,
    ShapleyCAM, RefineCAM, SSCAM, ISCAM, LeGrad)}

# The methods with their default settings, by name.
CAM_METHODS: dict[str, CAMMethod] = {name: cls() for name, cls in METHOD_CLASSES.items()}


def parse_methods(spec: str | Sequence[str], fitting: CAMModel | None = None) -> list[str]:
    """``"cam,gradcam"``, ``["cam", "gradcam"]`` or ``"all"`` -> method names,
    in the given order, without repeats.  With ``fitting``, "all" means the
    methods that can run on that model (no legrad on a CNN, ...)."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"CAM method names must be strings, got {part!r}")
        for name in part.split(","):
            name = name.strip()
            if not name:
                continue
            expanded = [name]
            if name == "all":
                expanded = [n for n, m in CAM_METHODS.items()
                            if fitting is None or m.misfit(fitting) is None]
            for n in expanded:
                if n not in CAM_METHODS:
                    raise ValueError(f"unknown CAM method {n!r}; known methods: "
                                     f"{', '.join(CAM_METHODS)} (or 'all')")
                if n not in names:
                    names.append(n)
    if not names:
        raise ValueError(f"no CAM method given; known methods: {', '.join(CAM_METHODS)}")
    return names


def resolve_methods(methods: str | CAMMethod | Sequence[str | CAMMethod],
                    fitting: CAMModel | None = None) -> list[CAMMethod]:
    """Method instances from names (their default settings), instances, a
    comma-separated string or "all" (with ``fitting``: those that fit that
    model); one per name, the first given wins."""
    if isinstance(methods, (str, CAMMethod)):
        methods = [methods]
    chosen: list[CAMMethod] = []
    for method in methods:
        found = [method] if isinstance(method, CAMMethod) else \
            [CAM_METHODS[n] for n in parse_methods(method, fitting)]
        for m in found:
            if all(c.name != m.name for c in chosen):
                chosen.append(m)
    if not chosen:
        raise ValueError(f"no CAM method given; known methods: {', '.join(CAM_METHODS)}")
    return chosen


def _convert(method: str, key: str, text: str) -> Any:
    """A setting's text (``--cam_option``) as its constructor's type; tuples
    are written with ``+`` between the items (``layer2+layer3``)."""
    hint = typing.get_type_hints(METHOD_CLASSES[method].__init__).get(key, str)
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if text.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    for kind in kinds:
        origin = typing.get_origin(kind) or kind
        try:
            if origin is tuple:
                item = (typing.get_args(kind) or (str,))[0]
                return tuple(item(t) for t in text.split("+") if t)
            if origin is bool:
                return {"true": True, "false": False}[text.lower()]
            return origin(text)
        except (ValueError, KeyError):
            continue
    raise ValueError(f"--cam_option {method}.{key}={text}: not a {hint}")


def make_method(name: str, options: dict[str, str] | None = None, **fixed: Any) -> CAMMethod:
    """The method ``name`` with settings from text ``options`` (``--cam_option``)
    and typed ``fixed`` ones; an error naming the settings it has."""
    if name not in METHOD_CLASSES:
        raise ValueError(f"unknown CAM method {name!r}; known methods: {', '.join(CAM_METHODS)}")
    cls = METHOD_CLASSES[name]
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self",)]
    settings = dict(fixed)
    for key, text in (options or {}).items():
        if key not in known or key == "generator":
            offered = ", ".join(k for k in known if k != "generator") or "none"
            raise ValueError(f"--cam_option {name}.{key}: {name} has no setting {key!r} "
                             f"(its settings: {offered})")
        settings[key] = _convert(name, key, text)
    return cls(**{k: v for k, v in settings.items() if k in known})


def parse_method_options(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["sscam.samples=10", "refinecam.layers=layer3+layer4"]`` ->
    ``{"sscam": {"samples": "10"}, ...}``; each checked against the method's settings."""
    options: dict[str, dict[str, str]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        method, dot, key = head.partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"--cam_option {item!r}: write METHOD.SETTING=VALUE, "
                             f"e.g. sscam.samples=10")
        options.setdefault(method.strip(), {})[key.strip()] = value.strip()
    for method, values in options.items():
        make_method(method, values)  # the names and values, checked now
    return options
