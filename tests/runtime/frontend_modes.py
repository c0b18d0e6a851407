"""The examples' server in both modes, for the conformance tests that must hold in each.

A module runs its ``example_server`` tests against one process and against two front-end
workers (``--frontend-workers 2``) by importing these fixtures; the second overrides the
session's ``example_server``. The parameter sits on its own fixture: on the overriding one it
would also key the session server's cache and restart that server for every test.
"""

from __future__ import annotations

import pytest

from tests.conftest import ServerProcess


@pytest.fixture(params=["one-process", "frontend-workers-2"])
def frontend_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture(name="example_server")
def example_server_in_both_modes(
    request: pytest.FixtureRequest, frontend_mode: str, example_server: ServerProcess
) -> ServerProcess:
    if frontend_mode == "one-process":
        return example_server
    workers: ServerProcess = request.getfixturevalue("example_server_workers")
    return workers
