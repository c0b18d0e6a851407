"""Importing a user's Python file and finding the class in it: shared by the python backend
and the graph's Python transform step."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path


def import_user_class(
    path: Path, class_name: str, methods: tuple[str, ...], prefix: str, fallback: tuple[str, ...] = ()
) -> type:
    """The class ``class_name`` in ``path``, else the only class there with one of ``methods``
    (or, when no class has any of them, the only one with one of ``fallback``).

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
    classes = [obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module_name]
    for wanted in (methods, fallback):
        found = [cls for cls in classes if any(callable(getattr(cls, m, None)) for m in wanted)]
        if found:
            break
    if len(found) != 1:
        names = "/".join(f"{m}()" for m in methods)
        if fallback and not found:
            names += " (or " + "/".join(f"{m}()" for m in fallback) + ")"
        raise ValueError(
            f"{path.name} must define exactly one class with {names} "
            f"(found {[c.__name__ for c in found]}); or name it with class_name"
        )
    return found[0]
