"""The v2 REST transport on aiohttp: routes, body limits, and errors as ``{"error": ...}``.

The endpoints, routes and every answer's shape are ``rest_api``'s; this module adapts them
to aiohttp. Every error answer is JSON ``{"error": str}``: ours (mapped by ``ERROR_TABLE``),
aiohttp's own (unknown route, wrong method, body too large, what its parser refuses) and,
as a last resort, an unexpected exception, which is logged and answered 500 rather than
aiohttp's plain-text page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.protocol.errors import PayloadTooLarge, ServegraphError
from servegraph.runtime.servers import rest_api
from servegraph.runtime.servers.rest_api import Endpoint, Reply

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def response(reply: Reply) -> web.Response:
    """``rest_api``'s reply as aiohttp's response."""
    return web.Response(
        body=reply.body or None,
        status=reply.status,
        content_type=reply.content_type or None,
        headers=reply.headers,
    )


def error_response(exc: ServegraphError) -> web.Response:
    return response(rest_api.error_reply(exc))


def unexpected_reply(exc: Exception, method: str, path: str) -> Reply:
    """A bug behind an endpoint: logged with its traceback, answered 500 naming it."""
    log.exception("unexpected error in %s %s", method, path)
    return rest_api.error_reply(ServegraphError(f"internal server error: {type(exc).__name__}: {exc}"))


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
        allow = {"Allow": exc.headers["Allow"]} if exc.status == 405 and "Allow" in exc.headers else None
        return response(rest_api.http_error_reply(exc.status, f"{request.method} {request.path}", allow))
    except Exception as exc:
        return response(unexpected_reply(exc, request.method, request.path))


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
        detail = (message or "").strip() or (str(exc) if exc is not None else "")
        answer = response(rest_api.http_error_reply(status, detail))
        answer.force_close()  # as aiohttp's own page: the stream may be out of step
        return answer


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


class _Call:
    """An aiohttp request as ``rest_api.RestCall``."""

    __slots__ = ("_request", "_limit")

    def __init__(self, request: web.Request, limit: int) -> None:
        self._request = request
        self._limit = limit

    @property
    def params(self) -> Mapping[str, str]:
        return self._request.match_info

    @property
    def headers(self) -> Mapping[str, str]:
        return self._request.headers

    async def body(self) -> bytes:
        """Over the limit is 413; a body aiohttp cannot read (a Content-Encoding that does
        not match it, a broken chunk) is the caller's fault, 400."""
        request, limit = self._request, self._limit
        if request.content_length is not None and request.content_length > limit:
            raise rest_api.too_large(limit, request.content_length)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise rest_api.too_large(limit) from None
        except web.RequestPayloadError as exc:
            raise rest_api.unreadable(request.headers.get("Content-Encoding"), exc.__cause__ or exc) from None


def _handler(endpoint: Endpoint, limit: int) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return response(await endpoint(_Call(request, limit)))

    return handle


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, read as the REST API reads it (413 over ``limit``, 400 unreadable):
    the front-end workers' proxy answers bad bodies exactly as one process does."""
    return await _Call(request, limit).body()


def create_app(dataplane: DataPlane) -> web.Application:
    """The REST application for one data plane (built on demand, never at import time)."""
    api = rest_api.RestApi(dataplane)
    app = web.Application(client_max_size=api.limit + 1, middlewares=[_errors])
    for method, path, endpoint in api.routes():
        app.router.add_route(method, path, _handler(endpoint, api.limit))
    return app


class AiohttpListener:
    """An aiohttp app on one TCP port, for ``rest_listeners.RestListener``."""

    def __init__(self, runner: web.AppRunner, site: web.TCPSite) -> None:
        self._runner = runner
        self._site = site
        # asyncio's and uvloop's servers both have .sockets (uvloop's is no asyncio.Server).
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else site._port

    @classmethod
    async def open(cls, app: web.Application, host: str, port: int, reuse_port: bool = False) -> AiohttpListener:
        runner = AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port or None)
        await site.start()
        return cls(runner, site)

    @classmethod
    async def serve(cls, dataplane: DataPlane, host: str, port: int) -> AiohttpListener:
        return await cls.open(create_app(dataplane), host, port)

    async def stop_accepting(self) -> None:
        await self._site.stop()

    async def close(self) -> None:
        await self._runner.cleanup()


def create_metrics_app(render: Callable[[], bytes]) -> web.Application:
    """Prometheus text on ``/metrics`` (a separate port, as Triton keeps it)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
