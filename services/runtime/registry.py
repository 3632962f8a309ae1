"""Services register themselves here so one runtime can serve any of them.

A service module builds its servicers from an options dict and registers a
:class:`ServiceSpec` at import time::

    registry.register(ServiceSpec(
        name="reference",
        service_names=("nnmd.v1.Reference",),
        build=lambda options: [(ReferenceServicer(**options), add_ReferenceServicer_to_server)],
        add_arguments=add_cli_arguments,       # optional: flags for `nnmd serve reference`
        options_from_args=options_from_args,  # optional: Namespace -> options dict
    ))

``nnmd serve <name>`` and the Ray actor wrapper look services up by name; a
name in ``_MODULES`` is imported on first use, so registering a new service
means one line there (or :func:`add_module` from a higher layer).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# name -> module whose import registers the service
_MODULES: dict[str, str] = {
    "store": "services.store.service",
    "reference": "services.reference.service",
    "trainer": "services.trainer.service",
    "md": "services.md.service",
}
_SPECS: dict[str, ServiceSpec] = {}


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    # Fully qualified gRPC service names (for health and reflection).
    service_names: tuple[str, ...]
    # options -> [(servicer, add_XServicer_to_server)]
    build: Callable[[dict[str, Any]], list[tuple[Any, Callable]]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    options_from_args: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    # Called with the built servicers' list on shutdown (close files, stop workers).
    close: Callable[[list[Any]], Any] | None = None


def register(spec: ServiceSpec) -> None:
    _SPECS[spec.name] = spec


def add_module(name: str, module: str) -> None:
    """Lets a higher layer (the orchestrator) make its service known by name."""
    _MODULES.setdefault(name, module)


def names() -> list[str]:
    return sorted(set(_MODULES) | set(_SPECS))


def get(name: str) -> ServiceSpec:
    if name not in _SPECS and name in _MODULES:
        try:
            importlib.import_module(_MODULES[name])
        except ModuleNotFoundError as exc:
            raise ValueError(f"service {name!r} is not installed yet ({exc})") from exc
    if name not in _SPECS:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(names())}")
    return _SPECS[name]
