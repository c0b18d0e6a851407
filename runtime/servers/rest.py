"""The v2 REST transport on aiohttp: routes, body limits, and errors as ``{"error": ...}``."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.protocol import rest_codec
from servegraph.runtime.protocol.errors import (
    InvalidInput,
    PayloadTooLarge,
    QueueFull,
    ServegraphError,
)
from servegraph.runtime.repository.triton_config import to_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
"""A caller's deadline over HTTP, in milliseconds from arrival."""


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(exc: ServegraphError) -> web.Response:
    response = _json({"error": exc.message}, status=exc.http_status)
    if isinstance(exc, QueueFull):
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        response.headers["X-Retry-After-Ms"] = str(max(1, round(exc.retry_after * 1000)))
    return response


def _errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServegraphError as exc:
            return error_response(exc)

    return wrapped


def _version(request: web.Request) -> str:
    return request.match_info.get("version", "")


def create_app(dataplane: DataPlane) -> web.Application:
    """The REST application for one data plane (built on demand, never at import time)."""
    limit = dataplane.settings.max_request_bytes

    async def live(request: web.Request) -> web.Response:
        return web.Response(status=200 if dataplane.live() else 503)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200 if dataplane.ready() else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return _json(dataplane.server_metadata())

    async def model_metadata(request: web.Request) -> web.Response:
        return _json(dataplane.model_metadata(request.match_info["model"], _version(request)))

    async def model_ready(request: web.Request) -> web.Response:
        ok = dataplane.model_ready(request.match_info["model"], _version(request))
        return web.Response(status=200 if ok else 503)

    async def model_config(request: web.Request) -> web.Response:
        return _json(to_json(dataplane.model_config(request.match_info["model"], _version(request))))

    async def model_stats(request: web.Request) -> web.Response:
        name = request.match_info.get("model", "")
        return _json({"model_stats": dataplane.model_statistics(name, _version(request))})

    async def repository_index(request: web.Request) -> web.Response:
        ready_only = False
        body = await request.read()
        if body:
            try:
                options = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"malformed JSON in request body: {exc}") from None
            ready_only = bool(isinstance(options, dict) and options.get("ready"))
        return _json(dataplane.repository_index(ready_only))

    async def model_control(request: web.Request) -> web.Response:
        return _json(
            {
                "error": "model control is disabled: servegraph loads what the model repository "
                "holds (see --repository-poll-secs)"
            },
            status=403,
        )

    async def infer(request: web.Request) -> web.Response:
        arrived = time.monotonic()
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(
                f"request body of {request.content_length} bytes is over the {limit}-byte limit"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit") from None
        header_length = request.headers.get(rest_codec.HEADER_LENGTH)
        length: int | None = None
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise InvalidInput(f"{rest_codec.HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        decoded = rest_codec.decode_request(body, length, request.match_info["model"], _version(request))
        timeout_ms = request.headers.get(TIMEOUT_HEADER)
        if timeout_ms is not None:
            try:
                decoded.deadline = arrived + float(timeout_ms) / 1000
            except ValueError:
                raise InvalidInput(f"{TIMEOUT_HEADER} must be a number, got {timeout_ms!r}") from None
        response = await dataplane.infer(decoded)
        payload, json_length = rest_codec.encode_response(response, decoded)
        if json_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(
            body=payload,
            content_type="application/octet-stream",
            headers={rest_codec.HEADER_LENGTH: str(json_length)},
        )

    app = web.Application(client_max_size=limit + 1)
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes = [
        ("GET", "/v2/health/live", live),
        ("GET", "/v2/health/ready", ready),
        ("GET", "/v2", server_metadata),
        ("GET", "/v2/models/stats", model_stats),
        ("POST", "/v2/repository/index", repository_index),
        ("POST", "/v2/repository/models/{model}/load", model_control),
        ("POST", "/v2/repository/models/{model}/unload", model_control),
    ]
    for prefix in (model, versioned):
        routes += [
            ("GET", prefix, model_metadata),
            ("GET", prefix + "/ready", model_ready),
            ("POST", prefix + "/infer", infer),
            ("GET", prefix + "/stats", model_stats),
            ("GET", prefix + "/config", model_config),
        ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _errors(handler))
    return app


def create_metrics_app(render: Callable[[], bytes]) -> web.Application:
    """Prometheus text on ``/metrics`` (a separate port, as Triton keeps it)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
