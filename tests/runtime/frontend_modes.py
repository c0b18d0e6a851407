"""The examples' server in both modes, for the conformance tests that must hold in each.

A module runs its ``example_server`` tests against one process and against two front-end
workers (``--frontend-workers 2``) by importing this fixture, which overrides the session's.
"""

from __future__ import annotations

import pytest

from tests.conftest import ServerProcess


@pytest.fixture(name="example_server", params=["one-process", "frontend-workers-2"])
def example_server_in_both_modes(request: pytest.FixtureRequest, example_server: ServerProcess) -> ServerProcess:
    if request.param == "one-process":
        return example_server
    workers: ServerProcess = request.getfixturevalue("example_server_workers")
    return workers
