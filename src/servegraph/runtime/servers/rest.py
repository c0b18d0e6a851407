"""The v2 REST transport on aiohttp: routes, body limits, and errors as ``{"error": ...}``.

Every error answer is JSON ``{"error": str}``: ours (mapped by ``ERROR_TABLE``), aiohttp's
own (unknown route, wrong method, body too large) and, as a last resort, an unexpected
exception, which is logged and answered 500 rather than aiohttp's plain-text page.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

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

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
"""A caller's deadline over HTTP, in milliseconds from arrival."""


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(exc: ServegraphError) -> web.Response:
    response = _json({"error": exc.message}, status=status_of(exc)[0])
    if isinstance(exc, QueueFull):
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        response.headers["X-Retry-After-Ms"] = str(max(1, round(exc.retry_after * 1000)))
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One exception boundary for the app, so no error escapes as aiohttp's text page."""
    try:
        return await handler(request)
    except ServegraphError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return error_response(PayloadTooLarge(exc.text or exc.reason))
        response = _json({"error": f"{exc.reason}: {request.method} {request.path}"}, status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(ServegraphError(f"internal server error: {type(exc).__name__}: {exc}"))


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses (a bad request line,
    URL bytes, chunk size or Content-Length, an unknown method) as ``{"error": str}``
    instead of its plain-text page. The app's middleware never sees those requests."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; raises if already answering
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        detail = (message or "").strip() or (str(exc) if exc is not None else "") or phrase
        response = _json({"error": f"{phrase}: {detail}"}, status=status)
        response.force_close()  # as aiohttp's own page: the stream may be out of step
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parser errors as JSON (``_JsonErrorHandler``).

    aiohttp offers no hook for those answers, so the server it builds is given the one
    method that names the connection handler's class.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server


def _integer_header(request: web.Request, name: str) -> int | None:
    value = request.headers.get(name)
    if value is None:
        return None
    # int() also reads Unicode digits ("٣" as 3), spaces and underscores: only ASCII digits.
    if not (value.isascii() and value.strip().lstrip("-").isdigit()):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    return int(value)


def _timeout_header(request: web.Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
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


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body: over ``limit`` is 413, and a body aiohttp cannot read (a
    Content-Encoding that does not match it, a broken chunk) is the caller's fault, 400."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the {limit}-byte limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is over the {limit}-byte limit") from None
    except web.RequestPayloadError as exc:
        cause = exc.__cause__ or exc
        encoding = request.headers.get("Content-Encoding")
        where = f" (Content-Encoding: {encoding})" if encoding else ""
        raise InvalidInput(f"unreadable request body{where}: {cause}") from None


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
        return _json(dataplane.model_config(request.match_info["model"], _version(request)))

    async def model_stats(request: web.Request) -> web.Response:
        name = request.match_info.get("model", "")
        return _json({"model_stats": dataplane.model_statistics(name, _version(request))})

    async def repository_index(request: web.Request) -> web.Response:
        ready_only = False
        body = await read_body(request, limit)
        if body:
            try:
                options = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"malformed JSON in request body: {exc}") from None
            ready_only = bool(isinstance(options, dict) and options.get("ready"))
        return _json(dataplane.repository_index(ready_only))

    async def model_control(request: web.Request) -> web.Response:
        raise PermissionDenied(MODEL_CONTROL_DISABLED)

    async def infer(request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await read_body(request, limit)
        length = _integer_header(request, rest_codec.HEADER_LENGTH)
        timeout_ms = _timeout_header(request)
        decoded = rest_codec.decode_request(body, length, request.match_info["model"], _version(request))
        if timeout_ms is not None:
            decoded.deadline = arrived + timeout_ms / 1000
        decoded.headers = request.headers  # for header routing in graph nodes (no copy)
        response = await dataplane.infer(decoded)
        payload, json_length = rest_codec.encode_response(response, decoded)
        if json_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(
            body=payload,
            content_type="application/octet-stream",
            headers={rest_codec.HEADER_LENGTH: str(json_length)},
        )

    async def feedback(request: web.Request) -> web.Response:
        """A reward for an earlier request to a graph node: ``{"id": str, "reward": number}``."""
        body = await read_body(request, limit)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"malformed JSON in feedback body: {exc}") from None
        if not isinstance(payload, dict) or "id" not in payload or "reward" not in payload:
            raise InvalidInput('feedback body must be a JSON object {"id": <request id>, "reward": <number>}')
        result = await dataplane.feedback(
            request.match_info["model"], _version(request), payload["id"], payload["reward"]
        )
        return _json(result)

    app = web.Application(client_max_size=limit + 1, middlewares=[_errors])
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
            ("POST", prefix + "/feedback", feedback),
        ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return app


def create_metrics_app(render: Callable[[], bytes]) -> web.Application:
    """Prometheus text on ``/metrics`` (a separate port, as Triton keeps it)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
