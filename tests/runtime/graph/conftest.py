"""The fixture every graph test starts from: one model server holding the affine children."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servegraph.runtime.server import Server
from tests.conftest import serve
from tests.runtime.graph.helpers import add_affine_models


@pytest.fixture
async def models(repo: Path) -> AsyncIterator[Server]:
    """One model server holding model-a (x), model-b (x + 100) and model-c (2x + 1)."""
    add_affine_models(repo)
    async with serve(repo) as server:
        yield server
