"""The control plane: ModelDeployment spec models, manifest rendering and kopf handlers.

Imported as ``servegraph.operator`` (never as a top-level ``operator``, which would shadow
Python's standard library).

But a Python started in the repository root with ``-c``, ``-m`` or as a REPL puts that root
first on ``sys.path``, and then ``import operator`` finds this folder wherever the standard
``operator`` was not imported at startup (a plain venv without .pth files, ``python -S``):
pip, pytest or pytriton would then fail with "cannot import name 'or_' from 'operator'".
When that happens, this module becomes the standard library's ``operator`` by running its
source, and nothing of servegraph's loads.
"""

if __name__ == "operator":
    import os as _os

    _stdlib_operator = _os.path.join(_os.path.dirname(_os.__file__), "operator.py")
    if not _os.path.isfile(_stdlib_operator):
        raise ImportError(
            f"'operator' resolved to servegraph's {__file__!r} (the repository root is on sys.path)"
            " and the standard library's operator.py is not beside os.py; run Python outside the"
            " repository root"
        )
    with open(_stdlib_operator, encoding="utf-8") as _source:
        exec(compile(_source.read(), _stdlib_operator, "exec"))  # noqa: S102 - the stdlib's own code
    del _os, _stdlib_operator, _source
