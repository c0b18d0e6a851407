"""The internal, protocol-neutral request and response: REST and gRPC both translate to these.

Plain slotted dataclasses rather than pydantic models: they sit on the hot path and hold
numpy arrays that were already checked by the codecs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]


@dataclass(slots=True)
class RequestedOutput:
    """An output the caller asked for; ``binary`` says how REST should send it back."""

    name: str
    binary: bool = False
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """One inference request, already decoded into numpy arrays."""

    model_name: str
    model_version: str
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str = ""
    outputs: list[RequestedOutput] | None = None
    parameters: Parameters = field(default_factory=dict)
    input_parameters: dict[str, Parameters] = field(default_factory=dict)
    deadline: float | None = None
    """Absolute ``time.monotonic()`` after which the caller no longer waits."""
    binary_output_default: bool = False
    """REST only: the request's ``binary_data_output`` parameter."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """HTTP headers (case-insensitive) or gRPC metadata (lower-case keys), for header routing."""
    requests: int = 1
    """How many callers' requests this one carries: more than 1 for the alike requests a
    front-end worker sends as one (``frontend.groups``), so statistics count each."""


@dataclass(slots=True)
class InferResponse:
    """The answer to one request: outputs keyed by name, in the order they should be sent."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
