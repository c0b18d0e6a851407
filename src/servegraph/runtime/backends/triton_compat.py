"""Triton's python-backend API, so a Triton ``model.py`` runs here unchanged.

A Triton python model is a class ``TritonPythonModel`` with ``initialize(args)``,
``execute(requests) -> responses`` and ``finalize()``, written against the module
``triton_python_backend_utils`` (``pb_utils``) that Triton's stub provides. This module is
that API for servegraph: the python backend makes it importable under Triton's name
before it imports a model file, and ``TritonModel`` adapts the class to the backend
protocol. So a Triton user points ``servegraph serve`` at an existing repository.

What differs from Triton, on purpose:
- The dynamic batcher merges callers' requests before the model runs (Triton hands the
  model the list and lets it loop). ``execute`` gets one request holding the merged batch;
  a model that loops over its requests works the same. When that request's answer carries
  an error, the batcher runs each caller's rows alone, so the error reaches only the caller
  it belongs to.
- Business logic scripting (``InferenceRequest(...).exec()``) and decoupled models
  (``get_response_sender``) are refused with a ``TritonModelException`` that says so.
- ``auto_complete_config`` can declare inputs and outputs a config leaves out (its other
  settings are not applied).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from servegraph.runtime.backends.user_code import release_user_class
from servegraph.runtime.config import v2_datatype
from servegraph.runtime.protocol.datatypes import numpy_dtype

MODULE_NAME = "triton_python_backend_utils"
"""The name Triton model files import this API under."""

log = logging.getLogger("servegraph.triton_python_model")


# ----------------------------------------------------------------------------- errors


class TritonError:
    """An error a model puts in a response (Triton: ``pb_utils.TritonError``)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r})"


class TritonModelException(Exception):
    """Raised by a model (or by this API) to fail the request with a message."""

    def message(self) -> str:
        return str(self)


# ----------------------------------------------------------------------------- tensors


class Tensor:
    """A named numpy array (Triton: ``pb_utils.Tensor``); always on the CPU here."""

    def __init__(self, name: str, data: np.ndarray) -> None:
        if not isinstance(data, np.ndarray):
            raise TritonModelException(f"Tensor '{name}' needs a numpy array, got {type(data).__name__}")
        self._name = name
        self._data = data

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._data

    def shape(self) -> list[int]:
        return list(self._data.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._data.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, tensor: Any) -> Tensor:
        """From any object with ``__dlpack__`` (a torch CPU tensor, a numpy array)."""
        return Tensor(name, np.from_dlpack(tensor))


class InferenceRequest:
    """What ``execute`` receives: inputs, an id, requested outputs and parameters.

    Constructing one in a model to call another model (business logic scripting) works, but
    ``exec`` and ``async_exec`` refuse: servegraph graphs compose models instead.
    """

    def __init__(
        self,
        inputs: Sequence[Tensor] = (),
        request_id: str = "",
        requested_output_names: Sequence[str] = (),
        parameters: dict[str, Any] | str | None = None,
        model_name: str = "",
        **_: Any,
    ) -> None:
        self._inputs = list(inputs)
        self._id = request_id
        self._requested = list(requested_output_names)
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        self._model_name = model_name

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int:
        return 0

    def flags(self) -> int:
        return 0

    def requested_output_names(self) -> list[str]:
        return self._requested

    def parameters(self) -> str:
        """The request's parameters as a JSON object string, as Triton gives them."""
        return self._parameters

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self) -> Any:
        raise TritonModelException(
            "decoupled models (get_response_sender) are not supported by servegraph: return one"
            " InferenceResponse per request from execute()"
        )

    def exec(self, **_: Any) -> Any:
        raise TritonModelException(
            f"business logic scripting (InferenceRequest.exec to model '{self._model_name}') is not"
            " supported by servegraph; compose models in a ModelDeployment graph instead"
        )

    async def async_exec(self, **kwargs: Any) -> Any:
        return self.exec(**kwargs)


class InferenceResponse:
    """What ``execute`` returns per request: output tensors, or an error."""

    def __init__(self, output_tensors: Sequence[Tensor] = (), error: TritonError | None = None, **_: Any) -> None:
        self._outputs = list(output_tensors)
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


# ----------------------------------------------------------------------------- helpers


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("output", []) if t.get("name") == name), None)


def triton_string_to_numpy(triton_type: str) -> type:
    """``"TYPE_FP32"`` -> ``np.float32``; ``TYPE_STRING`` (and ``BYTES``) -> ``np.object_``."""
    return np.dtype(numpy_dtype(v2_datatype(triton_type))).type


class Logger:
    """Triton's ``pb_utils.Logger``: messages go to the server's log."""

    @staticmethod
    def log_info(message: str) -> None:
        log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        log.debug(message)

    @staticmethod
    def log(message: str, level: int = logging.INFO) -> None:
        log.log(level, message)


# ----------------------------------------------------------------------------- auto-complete


class ModelConfigEditor:
    """What ``auto_complete_config`` receives: the config, to add inputs and outputs to."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def max_batch_size(self) -> int:
        return int(self._config.get("max_batch_size", 0))

    def add_input(self, tensor: dict[str, Any]) -> None:
        self._add("input", tensor)

    def add_output(self, tensor: dict[str, Any]) -> None:
        self._add("output", tensor)

    def _add(self, kind: str, tensor: dict[str, Any]) -> None:
        if not {"name", "data_type", "dims"} <= tensor.keys():
            raise TritonModelException(f"auto_complete_config: an {kind} needs name, data_type and dims, got {tensor}")
        tensors = self._config.setdefault(kind, [])
        if not any(t.get("name") == tensor["name"] for t in tensors):
            tensors.append(dict(tensor))

    def set_max_batch_size(self, size: int) -> None:
        self._config.setdefault("max_batch_size", size)

    def set_dynamic_batching(self) -> None:
        """Batching is the config's to set here; accepted and left as configured."""

    def set_model_transaction_policy(self, policy: dict[str, Any]) -> None:
        if policy.get("decoupled"):
            raise TritonModelException("decoupled models are not supported by servegraph")


# ----------------------------------------------------------------------------- the adapter


def install() -> None:
    """Make this API importable as ``triton_python_backend_utils`` (unless Triton's is there)."""
    if MODULE_NAME not in sys.modules:
        sys.modules[MODULE_NAME] = _this_module()


def _this_module() -> ModuleType:
    return sys.modules[__name__]


def is_triton_model(cls: type) -> bool:
    return cls.__name__ == "TritonPythonModel" or (
        callable(getattr(cls, "execute", None)) and not callable(getattr(cls, "predict", None))
    )


def _int64_fields_as_numbers(config: dict[str, Any]) -> dict[str, Any]:
    """Protobuf JSON writes int64 fields (dims, delays) as strings; Triton's JSON writes numbers."""

    def fix(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: fix(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v, key) for v in value]
        if isinstance(value, str) and key in _INT64_KEYS and value.lstrip("-").isdigit():
            return int(value)
        return value

    return fix(config)  # type: ignore[no-any-return]


_INT64_KEYS = frozenset(
    {"dims", "max_queue_delay_microseconds", "default_timeout_microseconds", "versions", "num_versions"}
)


def initialize_args(model_config: dict[str, Any], version_dir: Path, instance: int) -> dict[str, str]:
    """The ``args`` Triton passes to ``initialize``: every value a string, the config as JSON."""
    name = str(model_config.get("name") or version_dir.parent.name)
    return {
        "model_config": json.dumps(_int64_fields_as_numbers(model_config)),
        "model_instance_kind": "CPU",
        "model_instance_name": f"{name}_{instance}",
        "model_instance_device_id": "0",
        "model_repository": str(version_dir.parent),
        "model_version": version_dir.name,
        "model_name": name,
    }


class TritonModel:
    """A ``TritonPythonModel`` as a servegraph LoadedModel."""

    def __init__(self, user_model: Any, output_names: list[str]) -> None:
        self._model = user_model
        self._outputs = output_names

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = InferenceRequest([Tensor(name, array) for name, array in inputs.items()], requested_output_names=self._outputs)
        responses = self._model.execute([request])
        if not isinstance(responses, list | tuple) or len(responses) != 1:
            got = f"{len(responses)} responses" if isinstance(responses, list | tuple) else type(responses).__name__
            raise TritonModelException(f"execute() must return one InferenceResponse per request (1 request), got {got}")
        response = responses[0]
        if not isinstance(response, InferenceResponse):
            raise TritonModelException(f"execute() must return InferenceResponse objects, got {type(response).__name__}")
        error = response.error()
        if error is not None:
            raise TritonModelException(error.message())
        return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}

    def unload(self) -> None:
        try:
            finalize = getattr(self._model, "finalize", None)
            if callable(finalize):
                finalize()
        finally:
            release_user_class(type(self._model))
