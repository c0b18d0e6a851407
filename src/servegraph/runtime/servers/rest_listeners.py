"""The REST transports behind one small interface, chosen by ``ServerSettings.http_server``.

Each serves ``rest_api`` over one data plane on one TCP port; the server only opens one,
reads its port, stops it accepting when draining begins and closes it at the end.
"""

from __future__ import annotations

from typing import Protocol

from servegraph.runtime.config import HttpServer
from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.servers.rest import AiohttpListener
from servegraph.runtime.servers.rest_uvicorn import UvicornListener


class RestListener(Protocol):
    port: int
    """The port bound (the kernel's pick when asked for port 0)."""

    async def stop_accepting(self) -> None:
        """Refuse new connections; requests on open ones are still answered."""

    async def close(self) -> None:
        """Let requests in flight finish (a short grace), then close every connection."""


async def open_rest(kind: HttpServer, dataplane: DataPlane, host: str, port: int) -> RestListener:
    """Serve the v2 REST API on ``host:port`` with the HTTP server ``kind``."""
    if kind == "uvicorn":
        return await UvicornListener.serve(dataplane, host, port)
    return await AiohttpListener.serve(dataplane, host, port)
