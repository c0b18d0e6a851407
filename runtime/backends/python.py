"""The python backend: ``model.py`` holding a user class with ``load()`` and ``predict()``.

The class is the one named in the config parameter ``class_name``, else the only class in
the file that defines ``predict``. Before ``load()`` runs it gets two attributes:
``model_dir`` (the version directory) and ``config`` (the model's ModelConfig).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from servegraph.runtime.backends.user_code import import_user_class
from servegraph.runtime.config import ModelConfig, TensorConfig


class PythonModel:
    """Adapter from the user's class to the backend protocol."""

    def __init__(self, user_model: Any) -> None:
        self._model = user_model

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._model.predict(inputs)
        if not isinstance(outputs, dict):
            raise TypeError(
                f"predict() must return a dict of output name to array, got {type(outputs).__name__}"
            )
        return outputs

    def unload(self) -> None:
        unload = getattr(self._model, "unload", None)
        if callable(unload):
            unload()


def _model_file(config: ModelConfig, version_dir: Path) -> Path:
    return version_dir / (config.default_model_filename or "model.py")


def _user_class(config: ModelConfig, path: Path) -> type:
    if not path.is_file():
        raise FileNotFoundError(f"python backend needs {path.name} in {path.parent}")
    return import_user_class(
        path, config.parameters.get("class_name", ""), ("predict",), "servegraph_user_model"
    )


def load(config: ModelConfig, version_dir: Path) -> PythonModel:
    cls = _user_class(config, _model_file(config, version_dir))
    user_model = cls()
    user_model.model_dir = version_dir
    user_model.config = config
    loader = getattr(user_model, "load", None)
    if callable(loader):
        loader()
    return PythonModel(user_model)


def signature(
    config: ModelConfig, version_dir: Path
) -> tuple[list[TensorConfig], list[TensorConfig]] | None:
    """Python models declare their signature in the config only."""
    return None
