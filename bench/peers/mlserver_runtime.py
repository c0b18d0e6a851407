"""MLServer custom runtime wrapping the benchmark MLP (copied next to mlp_model.py).

With adaptive batching MLServer merges queued requests into one ``InferenceRequest``
(rows concatenated) before ``predict`` and splits the response after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlp_model import INPUT_NAME, OUTPUT_NAME, MLP  # noqa: E402


class MLPRuntime(MLModel):
    """The benchmark MLP as an MLServer model."""

    async def load(self) -> bool:
        self.model = MLP()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensor = next(t for t in payload.inputs if t.name == INPUT_NAME)
        y = self.model(NumpyCodec.decode_input(tensor))
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name=OUTPUT_NAME, payload=y)],
        )
