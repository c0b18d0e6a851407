"""The v2 gRPC messages (tritonclient's generated ``service_pb2``) to and from our types.

Inputs come either as ``raw_input_contents`` (one bytes blob per input, wrapped without a
copy) or as typed ``contents``; outputs always go back as ``raw_output_contents``, which is
what tritonclient and Triton use. A request carrying the parameter
``servegraph.feedback_id`` may have no inputs: it is a reward for a graph node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from servegraph.runtime.protocol.datatypes import (
    V2_TO_NUMPY,
    describe_input,
    element_count,
    numpy_dtype,
    tensor_from_buffer,
    tensor_to_bytes,
)
from servegraph.runtime.protocol.errors import InvalidInput
from servegraph.runtime.protocol.parameters import FEEDBACK_ID
from servegraph.runtime.protocol.types import InferRequest, InferResponse, RequestedOutput

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_to_dict(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain Python values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def fill_parameters(target: Any, params: dict[str, Any]) -> None:
    """Write plain values into a protobuf ``map<string, InferParameter>``."""
    for key, value in params.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


def _typed_contents(tensor: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    datatype = tensor.datatype
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"{where} of datatype {datatype} must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = element_count(shape, where)
    if len(values) != count:
        raise InvalidInput(
            f"{where} has {len(values)} elements in contents.{field}, expected {count} "
            f"for shape {list(shape)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        # int_contents carries INT8 and INT16 as int32: 300 as INT8 is the caller's error.
        return np.asarray(values, dtype=numpy_dtype(datatype, where)).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"contents.{field} of {where} do not fit datatype {datatype}: {exc}") from None


def decode_request(request: Any, deadline: float | None) -> InferRequest:
    """A ``ModelInferRequest`` as an InferRequest (400 for anything inconsistent)."""
    if not request.model_name:
        raise InvalidInput("model_name is required")
    model = request.model_name
    if not request.inputs and FEEDBACK_ID not in request.parameters:  # feedback carries none
        raise InvalidInput(f"request for model '{model}' has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"request for model '{model}' has {len(request.inputs)} inputs but "
            f"{len(raw)} raw_input_contents"
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    input_parameters: dict[str, dict[str, Any]] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"input {i} of the request for model '{model}' has no name")
        # Messages are built only when a check fails: this runs once per input per request.
        if name in inputs:
            raise InvalidInput(f"{describe_input(name, model)} appears twice")
        datatype = tensor.datatype
        if datatype not in V2_TO_NUMPY:
            numpy_dtype(datatype, describe_input(name, model))  # raises, naming the input
        shape = tuple(tensor.shape)
        for d in shape:
            if d < 0:
                raise InvalidInput(f"{describe_input(name, model)} has a negative dimension in shape {list(shape)}")
        if raw:
            inputs[name] = tensor_from_buffer(raw[i], datatype, shape, name, model)
        else:
            inputs[name] = _typed_contents(tensor, shape, describe_input(name, model))
        datatypes[name] = datatype
        if tensor.parameters:
            input_parameters[name] = parameters_to_dict(tensor.parameters)
    outputs = [
        RequestedOutput(o.name, True, parameters_to_dict(o.parameters) if o.parameters else {})
        for o in request.outputs
    ] or None
    parameters = request.parameters
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        inputs=inputs,
        datatypes=datatypes,
        id=request.id,
        outputs=outputs,
        parameters=parameters_to_dict(parameters) if parameters else {},
        input_parameters=input_parameters,
        deadline=deadline,
    )


def encode_response(response: InferResponse) -> Any:
    """An InferResponse as a ``ModelInferResponse`` with raw output contents."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
    )
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=response.datatypes[name], shape=array.shape)
        message.raw_output_contents.append(tensor_to_bytes(array))
    if response.parameters:
        fill_parameters(message.parameters, response.parameters)
    return message
