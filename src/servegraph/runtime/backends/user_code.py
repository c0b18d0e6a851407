"""Importing a user's Python file and finding the class in it: shared by the python backend
and the graph's Python transform step."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
import weakref
from collections import Counter
from pathlib import Path

_lock = threading.Lock()  # loads and unloads run in worker threads
_holders: Counter[str] = Counter()
"""Per module name: how many imports of it are not released yet (one per loaded instance)."""
_modules_of: weakref.WeakKeyDictionary[type, list[str]] = weakref.WeakKeyDictionary()
"""The module names a returned class was imported under, one per unreleased import (a class
named by ``class_name`` may live in another module and come back from several imports)."""


def import_user_class(
    path: Path, class_name: str, methods: tuple[str, ...], prefix: str, fallback: tuple[str, ...] = ()
) -> type:
    """The class ``class_name`` in ``path``, else the only class there with one of ``methods``
    (or, when no class has any of them, the only one with one of ``fallback``).

    Each file gets a module name of its own (``prefix`` + a hash of its path), so two
    versions of one model never share a module. The module stays in ``sys.modules`` (pickle
    and dataclasses look it up there) until every import of it is released with
    ``release_user_class``, so hot reloads do not keep one entry per retired version.
    Errors are ValueErrors that name the file.
    """
    if not path.is_file():
        raise ValueError(f"no such file {path}")
    module_name = f"{prefix}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    with _lock:
        sys.modules[module_name] = module
        _holders[module_name] += 1
    try:
        spec.loader.exec_module(module)
        cls = _find_class(module, module_name, path, class_name, methods, fallback)
    except BaseException:
        _release(module_name)
        raise
    with _lock:
        _modules_of.setdefault(cls, []).append(module_name)
    return cls


def release_user_class(cls: type) -> None:
    """Forget one import that returned ``cls``; the last release of its module removes the
    module from sys.modules. Releasing a class twice, or one not imported here, does nothing."""
    with _lock:
        names = _modules_of.get(cls)
        if not names:
            return
        module_name = names.pop()
    _release(module_name)


def _release(module_name: str) -> None:
    with _lock:
        if _holders[module_name] <= 1:
            del _holders[module_name]
            sys.modules.pop(module_name, None)
        else:
            _holders[module_name] -= 1


def _find_class(
    module: object, module_name: str, path: Path, class_name: str, methods: tuple[str, ...], fallback: tuple[str, ...]
) -> type:
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
