"""The model process's side of the front-end workers: start them, serve them, watch them.

The model process binds the public HTTP and gRPC ports first (SO_REUSEPORT, never
listening: the kernel hands connections only to the workers' listening sockets), so port 0
resolves once and a restarted worker finds its port. Each worker's inference requests run
through the one ``DataPlane`` (batcher, models); a worker that dies is restarted, and when
workers keep dying (more than ``MAX_RESTARTS`` deaths, of any workers, within
``RESTART_WINDOW_S``) the server fails loudly (``on_failure``) rather than serving half.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from servegraph.runtime.config import ServerSettings
from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.frontend import link
from servegraph.runtime.frontend.arena import Carried, SlotArena
from servegraph.runtime.frontend.config import WorkerConfig
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.protocol.errors import ServegraphError
from servegraph.runtime.protocol.types import InferRequest

log = logging.getLogger(__name__)

SLOTS = 128
"""Requests per worker whose tensors travel in shared memory at once (more go inline)."""
SLOT_BYTES = 1 << 20
"""Bytes per slot and direction (a [32, 512] FP32 batch is 64 KiB); larger tensors go inline."""
START_TIMEOUT_S = 60.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
"""More than MAX_RESTARTS deaths within RESTART_WINDOW_S: a crash loop, the server fails."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket that holds ``port`` for the workers."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    arena: SlotArena
    receiver: link.Receiver
    sender: link.Sender
    requests: Any
    grouped: Any
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)


class FrontendPool:
    def __init__(
        self,
        dataplane: DataPlane,
        settings: ServerSettings,
        metrics: ServerMetrics,
        on_failure: Callable[[str], None],
        forward_headers: bool,
    ) -> None:
        """``forward_headers``: a graph node may route on headers; a model never reads them."""
        self.dataplane = dataplane
        self.settings = settings
        self.on_failure = on_failure
        self.forward_headers = forward_headers
        self.count = settings.frontend_workers
        self.http_port = 0
        self.grpc_port = 0
        self._private_http = ""
        self._private_grpc = ""
        self._reserved: list[socket.socket] = []
        self._workers: dict[int, _Worker] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._deaths: deque[float] = deque(maxlen=MAX_RESTARTS + 1)
        self._stopping = False
        self._requests = Counter(
            "servegraph_frontend_requests",
            "Inference requests each front-end worker forwarded to this (the model) process.",
            ("worker",),
            registry=metrics.registry,
        )
        self._grouped = Counter(
            "servegraph_frontend_grouped_requests",
            "Inference requests that ran as part of a group of alike ones a worker sent as one.",
            ("worker",),
            registry=metrics.registry,
        )
        self._restarts = Counter(
            "servegraph_frontend_restarts",
            "Front-end workers restarted after they died.",
            registry=metrics.registry,
        )
        self._alive = Gauge("servegraph_frontend_workers", "Front-end workers running now.", registry=metrics.registry)

    async def start(self, private_http: str, private_grpc: str) -> tuple[int, int]:
        """Bind the public ports, start every worker and wait until each listens."""
        s = self.settings
        self._private_http, self._private_grpc = private_http, private_grpc
        self._reserved = [reserve_port(s.host, s.http_port), reserve_port(s.host, s.grpc_port)]
        self.http_port = self._reserved[0].getsockname()[1]
        self.grpc_port = self._reserved[1].getsockname()[1]
        await asyncio.gather(*(self._spawn(index) for index in range(self.count)))
        return self.http_port, self.grpc_port

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        arena = SlotArena.create(f"servegraph-frontend-{index}", SLOTS, SLOT_BYTES)
        try:
            config = WorkerConfig(
                index=index,
                parent_pid=os.getpid(),
                log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                settings=self.settings,
                http_port=self.http_port,
                grpc_port=self.grpc_port,
                link_fd=theirs.fileno(),
                arena_fd=arena.fd,
                slots=SLOTS,
                slot_bytes=SLOT_BYTES,
                max_inflight=4 * self.settings.default_max_queue_size,
                private_http=self._private_http,
                private_grpc=self._private_grpc,
                forward_headers=self.forward_headers,
            )
            # Defaults left out: the worker's settings then hold what was chosen, as here.
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "servegraph.runtime.frontend.worker", config.model_dump_json(exclude_defaults=True),
                pass_fds=(theirs.fileno(), arena.fd),
            )  # fmt: skip
        except BaseException:
            arena.close()
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        receiver = link.Receiver(reader)
        label = str(index)
        worker = _Worker(
            index, process, arena, receiver, link.Sender(writer),
            self._requests.labels(worker=label), self._grouped.labels(worker=label),
        )  # fmt: skip
        try:
            first = await asyncio.wait_for(receiver.receive(), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            first = None
        hello = first[0] if first else None
        if first:
            receiver.unread(first[1:])  # requests may follow the greeting in the same read
        if hello is None or hello[0] != link.HELLO:
            await self._bury(worker)
            raise RuntimeError(f"front-end worker {index} did not start (exit status {process.returncode})")
        self._workers[index] = worker
        self._alive.inc()
        if self._stopping:  # restarted while the server began to stop: it stops with the others
            process.send_signal(signal.SIGTERM)
        watcher = asyncio.get_running_loop().create_task(self._serve(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("front-end worker %d listening (pid %d)", index, process.pid)

    async def _serve(self, worker: _Worker) -> None:
        """Run the worker's requests until its link closes; then restart it or fail."""
        loop = asyncio.get_running_loop()
        try:
            while (messages := await worker.receiver.receive()) is not None:
                for message in messages:
                    if message[0] == link.INFER:
                        _, rid, slot, fields, inputs, counts, again = message
                        task = loop.create_task(self._infer(worker, rid, slot, fields, inputs, counts, again))
                        worker.tasks[rid] = task
                        task.add_done_callback(functools.partial(_finished, worker, rid))
                    elif message[0] == link.CANCEL:
                        running = worker.tasks.get(message[1])
                        if running is not None:
                            running.cancel()
        except Exception:  # an unreadable message: the link is as good as gone
            log.exception("front-end worker %d: its link failed; restarting it", worker.index)
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        for task in list(worker.tasks.values()):
            task.cancel()
        self._workers.pop(worker.index, None)
        self._alive.dec()
        status = await self._bury(worker)
        if self._stopping:
            return
        now = time.monotonic()
        self._deaths.append(now)
        if len(self._deaths) > MAX_RESTARTS and now - self._deaths[0] < RESTART_WINDOW_S:
            self.on_failure(
                f"front-end worker {worker.index} died (exit status {status}), the {len(self._deaths)}th"
                f" death within {RESTART_WINDOW_S:.0f} s: giving up"
            )
            return
        log.error("front-end worker %d died (exit status %s); restarting it", worker.index, status)
        self._restarts.inc()
        try:
            await self._spawn(worker.index)
        except Exception as exc:
            self.on_failure(f"front-end worker {worker.index} died and could not be restarted: {exc}")

    async def _infer(
        self, worker: _Worker, rid: int, slot: int | None, fields: tuple[Any, ...], inputs: Carried,
        counts: tuple[int, ...] | None, again: bool,
    ) -> None:  # fmt: skip
        """Run one request, or a group of alike ones (``counts``: each member's rows), and send
        the answer. A group runs only where the model takes it, and any failure of a group is
        answered REGROUP: its members come again one by one (``again``: counted already), each
        for its own verdict."""
        if not again:
            worker.requests.inc(1 if counts is None else len(counts))
        message: tuple[Any, ...]
        group_rows = 0
        try:
            request = link.rebuild_request(fields, worker.arena.view(inputs), 1 if counts is None else len(counts))
            if counts is not None:
                group_rows = self._group_rows(request)
            if counts is not None and sum(counts) > group_rows:
                message = (link.REGROUP, rid, group_rows)
            else:
                response = await self.dataplane.infer(request)
                outputs = worker.arena.put(slot, True, response.outputs)
                if counts is not None:
                    worker.grouped.inc(len(counts))
                message = (link.ANSWER, rid, link.response_fields(response), outputs, None if counts is None else group_rows)
        except asyncio.CancelledError:
            message = (link.CANCELLED, rid)
        except Exception as exc:
            if not isinstance(exc, ServegraphError):  # as the transports answer a bug in one process
                log.exception("unexpected error in a front-end worker's inference request")
                exc = ServegraphError(f"internal server error: {type(exc).__name__}: {exc}")
            message = (link.FAILED, rid, link.describe_error(exc)) if counts is None else (link.REGROUP, rid, group_rows)
        if worker.sender.writer.is_closing():
            return
        worker.sender.send(message)
        try:
            await worker.sender.drain()
        except ConnectionError:
            pass  # the worker died; its watcher restarts it

    def _group_rows(self, request: InferRequest) -> int:
        """The rows a group for ``request``'s model may carry (0: none; the model's own
        errors, such as an unknown model, are each member's to hear)."""
        try:
            return self.dataplane.model_for(request).group_rows
        except ServegraphError:
            return 0

    async def _bury(self, worker: _Worker) -> int | None:
        """Wait for a worker whose link closed (kill it if it lingers) and free its memory."""
        worker.sender.writer.close()
        try:
            await asyncio.wait_for(worker.process.wait(), 5.0)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            await worker.process.wait()
        worker.arena.close()
        return worker.process.returncode

    def begin_stop(self) -> None:
        """SIGTERM every worker: they stop accepting and answer what they hold as we drain."""
        self._stopping = True
        for worker in self._workers.values():
            try:
                worker.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def close(self, timeout: float) -> None:
        """Wait for the workers to exit (SIGKILL after ``timeout``), then release the ports."""
        self.begin_stop()
        for worker in list(self._workers.values()):
            try:
                await asyncio.wait_for(worker.process.wait(), timeout)
            except asyncio.TimeoutError:
                log.error("front-end worker %d did not stop in %.0f s; killing it", worker.index, timeout)
                with contextlib.suppress(ProcessLookupError):  # it may exit just now
                    worker.process.kill()
        if self._watchers:
            await asyncio.gather(*list(self._watchers), return_exceptions=True)
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()

    def pids(self) -> list[int]:
        """The running workers' process ids (for tests and logs)."""
        return [w.process.pid for w in self._workers.values()]


def _finished(worker: _Worker, rid: int, task: asyncio.Task[None]) -> None:
    """Forget a finished request; one cancelled before it started never ran ``_infer``'s
    handler, so the worker is told here (else it would hold the request and its slot)."""
    worker.tasks.pop(rid, None)
    if task.cancelled() and not worker.sender.writer.is_closing():
        worker.sender.send((link.CANCELLED, rid))
