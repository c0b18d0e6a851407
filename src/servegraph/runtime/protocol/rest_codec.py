"""The v2 REST wire format: JSON tensors and Triton's binary tensor extension.

A request body is a JSON header, optionally followed by raw tensor bytes; the header's
length is in the ``Inference-Header-Content-Length`` HTTP header. Binary inputs carry a
``binary_data_size`` parameter and are cut from the tail in order; outputs are sent in
binary when the request asks (``binary_data`` per output, or ``binary_data_output``).
Binary tensors are wrapped with ``np.frombuffer`` on the body: no copy on the way in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from servegraph.runtime.protocol.datatypes import (
    V2_TO_NUMPY,
    describe_input,
    element_count,
    numpy_dtype,
    tensor_from_buffer,
    tensor_to_bytes,
)
from servegraph.runtime.protocol.errors import InvalidInput
from servegraph.runtime.protocol.types import InferRequest, InferResponse, RequestedOutput

HEADER_LENGTH = "Inference-Header-Content-Length"

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
"""A caller's deadline over HTTP, in milliseconds from arrival."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInput(message)


def _parse_json(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in request body: {exc}") from None


def _json_tensor(where: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = element_count(shape, where)
    if datatype == "BYTES":
        try:
            flat = np.asarray(data, dtype=np.object_).reshape(-1)
        except ValueError as exc:
            raise InvalidInput(f"data of BYTES {where} is not a list of strings: {exc}") from None
        values = np.empty(flat.size, dtype=np.object_)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                values[i] = item.encode("utf-8")
            elif isinstance(item, bytes):
                values[i] = item
            else:
                raise InvalidInput(f"BYTES {where} holds a {type(item).__name__}; expected strings")
        array = values
    else:
        dtype = numpy_dtype(datatype, where)
        try:
            # Out-of-range values (300 as INT8, 1e10 as FP16) are the caller's error, not a 500.
            with np.errstate(over="raise", invalid="raise"):
                array = np.asarray(data, dtype=dtype).reshape(-1)
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise InvalidInput(f"data of {where} does not fit datatype {datatype}: {exc}") from None
    if array.size != count:
        raise InvalidInput(
            f"{where} has {array.size} elements in 'data', expected {count} "
            f"for shape {list(shape)}"
        )
    return array.reshape(shape)


def decode_request(
    body: bytes, header_length: int | None, model_name: str, model_version: str
) -> InferRequest:
    """Parse an infer request body (JSON or JSON + binary tail) into an InferRequest."""
    if header_length is None:
        header_bytes: bytes | memoryview = body
        tail = memoryview(b"")
    else:
        if header_length < 0:
            raise InvalidInput(f"{HEADER_LENGTH} must not be negative, got {header_length}")
        if header_length > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes")
        view = memoryview(body)
        header_bytes, tail = view[:header_length], view[header_length:]
    header = _parse_json(header_bytes)
    _expect(isinstance(header, dict), "request body must be a JSON object")
    raw_inputs = header.get("inputs")
    _expect(isinstance(raw_inputs, list) and len(raw_inputs) > 0, "request needs a non-empty 'inputs' list")
    parameters = header.get("parameters") or {}
    _expect(isinstance(parameters, dict), "'parameters' must be an object")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    input_parameters: dict[str, dict[str, Any]] = {}
    offset = 0
    # Every check below builds its message only when it fails: this runs once per input per request.
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise InvalidInput("each input must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or name == "":
            raise InvalidInput("each input needs a 'name' string")
        if name in inputs:
            raise InvalidInput(f"{describe_input(name, model_name)} appears twice")
        datatype = raw.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"{describe_input(name, model_name)} needs a 'datatype' string")
        if datatype not in V2_TO_NUMPY:
            numpy_dtype(datatype, describe_input(name, model_name))  # raises, naming the input
        shape = raw.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidInput(
                f"{describe_input(name, model_name)} needs a 'shape' list of non-negative integers, got {shape!r}"
            )
        shape_t = tuple(shape)
        params = raw.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"parameters of {describe_input(name, model_name)} must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(
                    f"binary_data_size of {describe_input(name, model_name)} must be a non-negative integer, "
                    f"got {size!r}"
                )
            if offset + size > len(tail):
                raise InvalidInput(
                    f"{describe_input(name, model_name)} declares binary_data_size {size} but only "
                    f"{len(tail) - offset} bytes of binary data remain"
                )
            inputs[name] = tensor_from_buffer(tail[offset : offset + size], datatype, shape_t, name, model_name)
            offset += size
        else:
            if "data" not in raw:
                raise InvalidInput(f"{describe_input(name, model_name)} has neither 'data' nor binary_data_size")
            inputs[name] = _json_tensor(describe_input(name, model_name), datatype, shape_t, raw["data"])
        datatypes[name] = datatype
        if params:
            input_parameters[name] = {k: v for k, v in params.items() if k != "binary_data_size"}
    if offset != len(tail):
        raise InvalidInput(
            f"binary data for model '{model_name}' is {len(tail)} bytes but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    outputs = None
    raw_outputs = header.get("outputs")
    binary_default = bool(parameters.get("binary_data_output", False))
    if raw_outputs is not None:
        _expect(isinstance(raw_outputs, list), "'outputs' must be a list")
        outputs = []
        for raw in raw_outputs:
            _expect(isinstance(raw, dict) and isinstance(raw.get("name"), str), "each output needs a 'name'")
            params = raw.get("parameters") or {}
            if not isinstance(params, dict):
                raise InvalidInput(f"parameters of output '{raw['name']}' must be an object")
            binary = bool(params.get("binary_data", binary_default))
            outputs.append(RequestedOutput(raw["name"], binary, params))
    request_id = header.get("id", "")
    _expect(isinstance(request_id, str), "'id' must be a string")
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        datatypes=datatypes,
        id=request_id,
        outputs=outputs,
        parameters=parameters,
        input_parameters=input_parameters,
        binary_output_default=binary_default,
    )


def _json_data(array: np.ndarray, datatype: str) -> Any:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [
            (item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item))
            for item in flat
        ]
    if datatype == "FP16" or not flat.flags.c_contiguous:
        return flat.tolist()
    return flat


def encode_response(
    response: InferResponse, request: InferRequest
) -> tuple[bytes, int | None]:
    """Serialize a response; returns (body, header length or None for pure JSON)."""
    binary_names: set[str]
    if request.outputs is not None:
        binary_names = {o.name for o in request.outputs if o.binary}
    elif request.binary_output_default:
        binary_names = set(response.outputs)
    else:
        binary_names = set()
    outputs_json: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        datatype = response.datatypes[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary_names:
            blob = tensor_to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array, datatype)
        outputs_json.append(entry)
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs_json,
    }
    if response.id:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    encoded = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return encoded, None
    return b"".join([encoded, *blobs]), len(encoded)


# ------------------------------------------------------------------ client side
# A graph node calling a child over HTTP writes requests and reads responses: the mirror
# image of the server's two functions above.


def tensor_view(array: np.ndarray) -> bytes | memoryview:
    """A tensor's bytes in the v2 binary layout, without a copy when already contiguous.

    A node forwards the arrays it decoded (views on the caller's message) as they are.
    """
    if array.dtype.kind in ("O", "S", "U"):
        return tensor_to_bytes(array)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def encode_request(
    inputs: dict[str, np.ndarray],
    datatypes: dict[str, str],
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> tuple[list[bytes | memoryview], int]:
    """An infer request with every input in binary and every output asked in binary.

    Returns the body's parts (the JSON header first) and the header's length.
    """
    entries: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for name, array in inputs.items():
        blob = tensor_view(array)
        entries.append({
            "name": name,
            "datatype": datatypes[name],
            "shape": list(array.shape),
            "parameters": {"binary_data_size": len(blob)},
        })
        blobs.append(blob)
    header: dict[str, Any] = {"inputs": entries, "parameters": {**(parameters or {}), "binary_data_output": True}}
    if request_id:
        header["id"] = request_id
    encoded = orjson.dumps(header)
    return [encoded, *blobs], len(encoded)


def decode_response(
    body: bytes, header_length: int | None, where: str
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any], str]:
    """An infer response body as (outputs, datatypes, parameters, id); binary outputs are
    wrapped without a copy, JSON ones converted. A body that does not add up raises
    InvalidInput naming ``where`` (the caller turns it into its own error)."""
    if header_length is None:
        header_bytes: bytes | memoryview = body
        tail = memoryview(b"")
    else:
        _expect(0 <= header_length <= len(body), f"{where} sent {HEADER_LENGTH} {header_length} for a {len(body)}-byte body")
        view = memoryview(body)
        header_bytes, tail = view[:header_length], view[header_length:]
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{where} sent malformed JSON: {exc}") from None
    _expect(isinstance(header, dict), f"{where} sent a response that is not a JSON object")
    outputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for raw in header.get("outputs") or []:
        _expect(isinstance(raw, dict), f"{where} sent an output that is not an object")
        name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
        _expect(
            isinstance(name, str) and isinstance(datatype, str) and isinstance(shape, list),
            f"{where} sent an output without name, datatype and shape",
        )
        shape_t = tuple(shape)
        size = (raw.get("parameters") or {}).get("binary_data_size")
        label = f"output '{name}' of {where}"
        if size is not None:
            _expect(isinstance(size, int) and 0 <= size <= len(tail) - offset, f"{label} runs past the body")
            outputs[name] = tensor_from_buffer(tail[offset : offset + size], datatype, shape_t, name, where)
            offset += size
        else:
            _expect("data" in raw, f"{label} has neither data nor binary_data_size")
            outputs[name] = _json_tensor(label, datatype, shape_t, raw["data"])
        datatypes[name] = datatype
    parameters = header.get("parameters") or {}
    _expect(isinstance(parameters, dict), f"{where} sent parameters that are not an object")
    request_id = header.get("id", "")
    return outputs, datatypes, parameters, request_id if isinstance(request_id, str) else ""
