"""The v2 REST API whichever HTTP server carries it: routes, endpoints, headers, error answers.

A REST transport (``rest.py`` on aiohttp, ``rest_uvicorn.py`` on uvicorn) hands each request
to an endpoint as a ``RestCall`` and writes the ``Reply`` back. What a caller can see (status,
body, headers, every error message) is decided here once, so the transports answer alike and
stay swappable; they keep only what their server does differently (parsing, reading bodies).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import NamedTuple, Protocol
from urllib.parse import unquote

import orjson

from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.protocol import rest_codec
from servegraph.runtime.protocol.errors import (
    MODEL_CONTROL_DISABLED,
    InvalidInput,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    ServegraphError,
    status_of,
)

TIMEOUT_HEADER = rest_codec.TIMEOUT_HEADER
"""A caller's deadline over HTTP, in milliseconds from arrival (graph nodes send it too)."""

JSON = "application/json"
BINARY = "application/octet-stream"

# Header lookups use lower-case names: aiohttp's headers are case-insensitive, and the
# uvicorn transport (like gRPC metadata) hands over lower-case keys.
_TIMEOUT_KEY = TIMEOUT_HEADER.lower()


class Reply(NamedTuple):
    """One answer: ``content_type`` is empty when there is no body (health, readiness)."""

    status: int
    body: bytes = b""
    content_type: str = ""
    headers: Mapping[str, str] | None = None


class RestCall(Protocol):
    """One request as a transport hands it to an endpoint."""

    @property
    def params(self) -> Mapping[str, str]:
        """The route's ``{model}`` and ``{version}`` segments, percent-decoded."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Request headers; looked up by lower-case name."""

    async def body(self) -> bytes:
        """The whole (decoded) body: ``PayloadTooLarge`` over the limit, ``InvalidInput`` unreadable."""


Endpoint = Callable[[RestCall], Awaitable[Reply]]


def json_reply(data: object, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(data), JSON)


def error_reply(exc: ServegraphError) -> Reply:
    """Our error as ``{"error": str}`` with its status from the error table."""
    headers = None
    if isinstance(exc, QueueFull):
        headers = {
            "Retry-After": str(max(1, math.ceil(exc.retry_after))),
            "X-Retry-After-Ms": str(max(1, round(exc.retry_after * 1000))),
        }
    return Reply(status_of(exc)[0], orjson.dumps({"error": exc.message}), JSON, headers)


def http_error_reply(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Reply:
    """An HTTP-level refusal (no route, wrong method, what a parser refuses) as
    ``{"error": "<reason phrase>: <detail>"}``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return Reply(status, orjson.dumps({"error": f"{phrase}: {detail.strip() or phrase}"}), JSON, headers)


def too_large(limit: int, length: int | None = None) -> PayloadTooLarge:
    if length is None:
        return PayloadTooLarge(f"request body is over the {limit}-byte limit")
    return PayloadTooLarge(f"request body of {length} bytes is over the {limit}-byte limit")


def unreadable(encoding: str | None, cause: object) -> InvalidInput:
    """A body the server cannot read: a Content-Encoding that does not match it, a broken chunk."""
    where = f" (Content-Encoding: {encoding})" if encoding else ""
    return InvalidInput(f"unreadable request body{where}: {cause}")


def integer_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name.lower())
    if value is None:
        return None
    # int() also reads Unicode digits ("٣" as 3), spaces and underscores: only ASCII digits.
    if not re.fullmatch(r"-?[0-9]+", value.strip()):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    return int(value)


def timeout_header(headers: Mapping[str, str]) -> float | None:
    value = headers.get(_TIMEOUT_KEY)
    if value is None:
        return None
    try:
        if not value.isascii():  # float() reads Unicode digits too
            raise ValueError(value)
        timeout = float(value)
    except ValueError:
        raise InvalidInput(f"{TIMEOUT_HEADER} must be a number, got {value!r}") from None
    if not math.isfinite(timeout) or timeout < 0:
        raise InvalidInput(f"{TIMEOUT_HEADER} must be a finite, non-negative number, got {value!r}")
    return timeout


def _load_json(body: bytes, what: str) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in {what}: {exc}") from None


class RestApi:
    """The v2 endpoints over one data plane (built on demand, never at import time)."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.limit = dataplane.settings.max_request_bytes
        """Largest request body in bytes: more is 413 before it is parsed."""

    def routes(self) -> list[tuple[str, str, Endpoint]]:
        """(method, path pattern, endpoint) in matching order: the first path that matches wins."""
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        routes: list[tuple[str, str, Endpoint]] = [
            ("GET", "/v2/health/live", self.live),
            ("GET", "/v2/health/ready", self.ready),
            ("GET", "/v2", self.server_metadata),
            ("GET", "/v2/models/stats", self.model_stats),
            ("POST", "/v2/repository/index", self.repository_index),
            ("POST", "/v2/repository/models/{model}/load", self.model_control),
            ("POST", "/v2/repository/models/{model}/unload", self.model_control),
        ]
        for prefix in (model, versioned):
            routes += [
                ("GET", prefix, self.model_metadata),
                ("GET", prefix + "/ready", self.model_ready),
                ("POST", prefix + "/infer", self.infer),
                ("GET", prefix + "/stats", self.model_stats),
                ("GET", prefix + "/config", self.model_config),
                ("POST", prefix + "/feedback", self.feedback),
            ]
        return routes

    async def live(self, call: RestCall) -> Reply:
        return Reply(200 if self.dataplane.live() else 503)

    async def ready(self, call: RestCall) -> Reply:
        return Reply(200 if self.dataplane.ready() else 503)

    async def server_metadata(self, call: RestCall) -> Reply:
        return json_reply(self.dataplane.server_metadata())

    async def model_metadata(self, call: RestCall) -> Reply:
        p = call.params
        return json_reply(self.dataplane.model_metadata(p["model"], p.get("version", "")))

    async def model_ready(self, call: RestCall) -> Reply:
        p = call.params
        return Reply(200 if self.dataplane.model_ready(p["model"], p.get("version", "")) else 503)

    async def model_config(self, call: RestCall) -> Reply:
        p = call.params
        return json_reply(self.dataplane.model_config(p["model"], p.get("version", "")))

    async def model_stats(self, call: RestCall) -> Reply:
        p = call.params
        return json_reply({"model_stats": self.dataplane.model_statistics(p.get("model", ""), p.get("version", ""))})

    async def repository_index(self, call: RestCall) -> Reply:
        ready_only = False
        body = await call.body()
        if body:
            options = _load_json(body, "request body")
            ready_only = bool(isinstance(options, dict) and options.get("ready"))
        return json_reply(self.dataplane.repository_index(ready_only))

    async def model_control(self, call: RestCall) -> Reply:
        raise PermissionDenied(MODEL_CONTROL_DISABLED)

    async def infer(self, call: RestCall) -> Reply:
        arrived = time.monotonic()
        body = await call.body()
        headers = call.headers
        length = integer_header(headers, rest_codec.HEADER_LENGTH)
        timeout_ms = timeout_header(headers)
        p = call.params
        decoded = rest_codec.decode_request(body, length, p["model"], p.get("version", ""))
        if timeout_ms is not None:
            decoded.deadline = arrived + timeout_ms / 1000
        decoded.headers = headers  # for header routing in graph nodes (no copy)
        response = await self.dataplane.infer(decoded)
        payload, json_length = rest_codec.encode_response(response, decoded)
        if json_length is None:
            return Reply(200, payload, JSON)
        return Reply(200, payload, BINARY, {rest_codec.HEADER_LENGTH: str(json_length)})

    async def feedback(self, call: RestCall) -> Reply:
        """A reward for an earlier request to a graph node: ``{"id": str, "reward": number}``."""
        payload = _load_json(await call.body(), "feedback body")
        if not isinstance(payload, dict) or "id" not in payload or "reward" not in payload:
            raise InvalidInput('feedback body must be a JSON object {"id": <request id>, "reward": <number>}')
        p = call.params
        return json_reply(
            await self.dataplane.feedback(p["model"], p.get("version", ""), payload["id"], payload["reward"])
        )


class RouteMiss(Exception):
    """No route answers this request: 404, or 405 with the methods the path allows."""

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(allowed)
        self.allowed = allowed

    def reply(self, method: str, path: str) -> Reply:
        if self.allowed:
            return http_error_reply(405, f"{method} {path}", {"Allow": ",".join(sorted(set(self.allowed)))})
        return http_error_reply(404, f"{method} {path}")


class Router:
    """Matches a raw path against ``RestApi.routes()`` much as aiohttp's router does: in order,
    segment by segment (a ``{name}`` is one non-empty segment without braces, percent-decoded
    after splitting, so ``%2F`` stays inside it), the first path whose method fits. Unlike
    aiohttp, fixed segments are compared as sent (``/v2/health/%6Cive`` is 404 here, 200 there)."""

    CACHE_SIZE = 4096
    """Paths remembered once matched (a server sees few): a hit is one dict lookup."""

    def __init__(self, routes: list[tuple[str, str, Endpoint]]) -> None:
        self._found: dict[tuple[str, str], tuple[Endpoint, dict[str, str]]] = {}
        self._by_length: dict[int, list[tuple[tuple[str | None, ...], tuple[str, ...], str, Endpoint]]] = {}
        for method, pattern, endpoint in routes:
            parts = pattern.split("/")
            segments = tuple(None if p.startswith("{") else p for p in parts)
            names = tuple(p[1:-1] for p in parts if p.startswith("{"))
            self._by_length.setdefault(len(parts), []).append((segments, names, method, endpoint))

    def resolve(self, method: str, raw_path: str) -> tuple[Endpoint, Mapping[str, str]]:
        """The endpoint and its path parameters (shared: read them, never change them);
        ``RouteMiss`` when none fits."""
        found = self._found.get((method, raw_path))
        if found is None:
            found = self._match(method, raw_path)
            if len(self._found) >= self.CACHE_SIZE:
                self._found.clear()
            self._found[method, raw_path] = found
        return found

    def _match(self, method: str, raw_path: str) -> tuple[Endpoint, dict[str, str]]:
        parts = raw_path.split("/")
        allowed: list[str] = []
        for segments, names, route_method, endpoint in self._by_length.get(len(parts), ()):
            values = []
            for want, got in zip(segments, parts):
                if want is None:
                    if not got or "{" in got or "}" in got:
                        break
                    values.append(unquote(got) if "%" in got else got)
                elif want != got:
                    break
            else:
                if route_method == method:
                    return endpoint, dict(zip(names, values))
                allowed.append(route_method)
        raise RouteMiss(allowed)
