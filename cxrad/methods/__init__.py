"""Methods cxrad can run, by name. Each is loaded only when a run asks for it.

``"module:attribute"`` targets keep start-up light (the CLI never imports torch models to print
--help) and keep the generic stages free of method imports: they reach a method only through
:func:`get` and :class:`cxrad.methods.base.Method`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Union

from cxrad.errors import CxradError

if TYPE_CHECKING:
    from cxrad.methods.base import Method

_REGISTRY: dict[str, Union[str, "Method"]] = {
    "ddad": "cxrad.methods.ddad.method:DDAD_ASR",
    "patchcore": "cxrad.methods.patchcore.method:PATCHCORE",
    "simsid": "cxrad.methods.simsid.method:SIMSID",
    "wscxr": "cxrad.methods.wscxr.method:WSCXR",
}


def register(name: str, target: Union[str, "Method"]) -> None:
    """Make a method known under ``name``: a Method instance or a "module:attribute" string."""
    _REGISTRY[name] = target


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> "Method":
    """The method registered as ``name`` (imported on first use)."""
    target = _REGISTRY.get(name)
    if target is None:
        raise CxradError(f"method {name!r} is not known to this cxrad; known: {', '.join(names())}.")
    if isinstance(target, str):
        module, attr = target.split(":")
        target = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = target
    return target


def summarizer(kind: str) -> Callable | None:
    """The `cxrad inspect` summary function of a method-specific artifact kind, if any."""
    for name in names():
        fn = get(name).summarizers.get(kind)
        if fn is not None:
            return fn
    return None
