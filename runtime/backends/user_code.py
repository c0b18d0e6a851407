"""Importing a user's Python file and finding the class in it: shared by the python backend
and the graph's Python transform step."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path


def import_user_class(path: Path, class_name: str, methods: tuple[str, ...], prefix: str) -> type:
    """The class ``class_name`` in ``path``, else the only class there with one of ``methods``.

    Each file gets a module name of its own (``prefix`` + a hash of its path), so two
    versions of one model never share a module. Errors are ValueErrors that name the file.
    """
    if not path.is_file():
        raise ValueError(f"no such file {path}")
    module_name = f"{prefix}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if class_name:
        cls = getattr(module, class_name, None)
        if not inspect.isclass(cls):
            raise ValueError(f"{path.name} has no class {class_name!r}")
        return cls
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and obj.__module__ == module_name
        and any(callable(getattr(obj, m, None)) for m in methods)
    ]
    if len(found) != 1:
        wanted = "/".join(f"{m}()" for m in methods)
        raise ValueError(
            f"{path.name} must define exactly one class with {wanted} "
            f"(found {[c.__name__ for c in found]}); or name it with class_name"
        )
    return found[0]
