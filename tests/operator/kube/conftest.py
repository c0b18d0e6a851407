"""Fixtures: ``emulator`` (the API server on 127.0.0.1), ``api_client`` (the ``kubernetes``
client pointed at it) and ``run_operator`` (kopf embedded against it, in the test's loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import kubernetes.client
import kubernetes.config
import pytest
import pytest_asyncio
import yaml

from .emulator import MODELDEPLOYMENTS, ServegraphEmulator

FINALIZER = 'servegraph.io/finalizer'


@pytest_asyncio.fixture()
async def emulator() -> AsyncIterator[ServegraphEmulator]:
    """The emulated API server, listening on 127.0.0.1 (a free port) in the test's loop."""
    async with ServegraphEmulator() as handler, kmock.Server(handler, host='127.0.0.1'):
        try:
            yield handler
        finally:
            handler.close_watches()  # or the server's shutdown waits for the open streams
        bugs = [exc for exc in handler.errors if not isinstance(exc, kmock.KubernetesError)]
        assert not bugs, f'the emulator failed on requests: {bugs!r}'


@pytest.fixture()
def api_client(emulator: ServegraphEmulator) -> Iterator[kubernetes.client.ApiClient]:
    """A ``kubernetes`` client on the emulator. It is synchronous and the emulator serves in
    the test's loop: call it from a coroutine only through ``asyncio.to_thread``."""
    configuration = kubernetes.client.Configuration()
    configuration.host = str(emulator.url).rstrip('/')
    configuration.retries = False  # fail fast: no hidden urllib3 retries in tests
    client = kubernetes.client.ApiClient(configuration)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture()
def kubeconfig(emulator: ServegraphEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig for the emulator, made the default (``KUBECONFIG`` and the client's default
    location, which ``kubernetes.config`` read at import): for code that calls
    ``kubernetes.config.load_kube_config()`` itself."""
    path = tmp_path / 'kubeconfig'
    path.write_text(yaml.safe_dump({
        'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'emulator',
        'clusters': [{'name': 'emulator', 'cluster': {'server': str(emulator.url).rstrip('/')}}],
        'users': [{'name': 'tester', 'user': {'token': 'not-checked'}}],
        'contexts': [{'name': 'emulator', 'context': {'cluster': 'emulator', 'user': 'tester', 'namespace': 'default'}}],
    }))
    monkeypatch.setenv('KUBECONFIG', str(path))
    monkeypatch.setattr(kubernetes.config.kube_config, 'KUBE_CONFIG_DEFAULT_LOCATION', str(path))
    return path


def operator_settings(settings: kopf.OperatorSettings) -> None:
    """The settings of every embedded operator in these tests (fast, quiet, standalone)."""
    settings.peering.standalone = True
    settings.posting.enabled = False
    settings.scanning.disabled = True
    settings.networking.error_backoffs = [0.1, 0.2, 0.3]
    settings.queueing.error_delays = [0.1, 0.2, 0.5]  # throttling after unexpected errors
    settings.networking.request_timeout = 10
    settings.watching.reconnect_backoff = 0.05
    settings.watching.inactivity_timeout = 30
    settings.execution.default_backoff = 0.2
    settings.queueing.idle_timeout = 0.5
    settings.queueing.exit_timeout = 0.5
    settings.background.instant_exit_timeout = 0.5
    settings.process.ultimate_exiting_timeout = 5
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix='servegraph.io')
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix='servegraph.io')


class _IgnoredTasks(Collection[asyncio.Task[Any]]):
    """Tasks kopf must neither wait for nor cancel at exit: those that existed before it
    started (pytest-asyncio's, the test's) and the emulator's HTTP handlers (its watch
    streams end on the emulator's own teardown)."""

    def __init__(self, existing: set[asyncio.Task[Any]], emulator: ServegraphEmulator) -> None:
        self._existing = existing
        self._emulator = emulator

    def __contains__(self, task: object) -> bool:
        return task in self._existing or (isinstance(task, asyncio.Task) and self._emulator.is_server_task(task))

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(self._existing)

    def __len__(self) -> int:
        return len(self._existing)


OperatorRunner = Callable[..., contextlib.AbstractAsyncContextManager[kopf.OperatorSettings]]


@pytest.fixture()
def run_operator(emulator: ServegraphEmulator) -> OperatorRunner:
    """``async with run_operator(registry, settings_fn=None, *, namespaces=(), watched=...):``

    Runs kopf embedded against the emulator (cluster-wide unless ``namespaces`` is given)
    with the ``registry`` (a fresh ``kopf.OperatorRegistry()`` per test; a login handler
    for the emulator is added to it), the settings of :func:`operator_settings` then
    ``settings_fn(settings)``; it yields once a watch stream is open for every resource in
    ``watched`` (default: modeldeployments), yielding the settings, and stops the operator
    on exit (letting its workers finish; kopf's own errors are re-raised there).
    """

    @contextlib.asynccontextmanager
    async def run(
        registry: kopf.OperatorRegistry,
        settings_fn: Callable[[kopf.OperatorSettings], None] | None = None,
        *,
        namespaces: Collection[str] = (),
        watched: Collection[str | kmock.resource] = (MODELDEPLOYMENTS,),
        startup_timeout: float = 10,
    ) -> AsyncIterator[kopf.OperatorSettings]:
        @kopf.on.login(registry=registry)
        def login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=str(emulator.url).rstrip('/'), insecure=True)

        settings = kopf.OperatorSettings()
        operator_settings(settings)
        if settings_fn is not None:
            settings_fn(settings)

        existing = set(asyncio.all_tasks())
        stop_flag = asyncio.Event()
        tasks = await kopf.spawn_tasks(
            registry=registry, settings=settings, standalone=True,
            clusterwide=not namespaces, namespaces=list(namespaces),
            stop_flag=stop_flag,
        )
        runner = asyncio.create_task(kopf.run_tasks(tasks, ignored=_IgnoredTasks(existing, emulator)))
        existing.add(runner)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + startup_timeout
            while not all(emulator.watching(resource) for resource in watched):
                if runner.done():
                    await runner  # re-raise why it stopped
                    raise RuntimeError('the operator exited before watching')
                if loop.time() > deadline:
                    raise TimeoutError(f'the operator does not watch {list(watched)} after {startup_timeout}s')
                await asyncio.sleep(0.01)
            yield settings
        finally:
            stop_flag.set()
            try:
                await asyncio.wait_for(runner, timeout=10)
            finally:
                if threading.current_thread() is threading.main_thread():
                    for signum in (signal.SIGINT, signal.SIGTERM):  # kopf installs handlers
                        asyncio.get_running_loop().remove_signal_handler(signum)

    return run


@pytest.fixture(autouse=True)
def _kopf_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger='kopf')
