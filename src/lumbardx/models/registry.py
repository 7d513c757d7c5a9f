"""Registry of detector builders: ``build_model("yolov5s", num_classes=3)``.

Each architecture module registers its variants with :func:`register`; the registry imports
those modules on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from lumbardx.models.detector import Detector

Builder = Callable[..., Detector]

_BUILDERS: dict[str, Builder] = {}
_MODULES = ("lumbardx.models.yolov5", "lumbardx.models.yolov3", "lumbardx.models.ppyolov2")
_loaded = False


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(num_classes: int, **kwargs) -> Detector`` under ``name``."""

    def wrap(builder: Builder) -> Builder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return wrap


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(module)
        _loaded = True


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load()
    return sorted(_BUILDERS)


def build_model(name: str, num_classes: int, **kwargs: object) -> Detector:
    """Build a registered model with ``num_classes`` classes (randomly initialised)."""
    _load()
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_BUILDERS))}")
    model = _BUILDERS[name](num_classes, **kwargs)
    model.name = name
    return model
