"""The fixture every graph test starts from: one model server holding the affine children."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from servegraph.runtime.server import Server
from tests.conftest import serve
from tests.runtime.graph.helpers import CHILD_TRANSPORTS, add_affine_models, child_transport


@pytest.fixture(params=CHILD_TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test once with nodes calling child servers over gRPC, once over HTTP."""
    child_transport["now"] = request.param
    try:
        yield request.param
    finally:
        child_transport["now"] = "grpc"


@pytest.fixture
async def models(repo: Path) -> AsyncIterator[Server]:
    """One model server holding model-a (x), model-b (x + 100) and model-c (2x + 1)."""
    add_affine_models(repo)
    async with serve(repo) as server:
        yield server
