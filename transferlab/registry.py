"""Discovery shared by the registries of backbones and datasets: each package holds one module
per family, and each module declares its items in a tuple (`BACKBONES`, `DATASETS`) of frozen
dataclasses with a `name` and a `family` field. Imports nothing heavy: the params schema is
built from these registries and check_params must stay light."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def discover(package: str, path: Iterable[str], attribute: str, kind: str) -> dict:
    """{name: item} of every item the modules of `package` (its `__path__`) declare in
    `attribute`, in module-name order and then as each module lists them; each item's `family`
    is set to its module's name. A name declared twice is an error naming the `kind`."""
    found = {}
    for info in pkgutil.iter_modules(path):
        module = importlib.import_module(f"{package}.{info.name}")
        for item in getattr(module, attribute, ()):
            if item.name in found:
                raise ValueError(f"{kind} {item.name} is declared twice ({found[item.name].family}"
                                 f" and {info.name})")
            object.__setattr__(item, "family", info.name)  # frozen: set once, here
            found[item.name] = item
    return found
