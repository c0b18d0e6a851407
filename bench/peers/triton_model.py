"""Triton python-backend model (copied to <repo>/mlp/1/model.py next to mlp_model.py).

Triton's dynamic batcher hands ``execute`` several requests; their rows are stacked into
one matrix, run once, and split back, as any batching python-backend model must do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the python backend stub

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlp_model import INPUT_NAME, OUTPUT_NAME, MLP  # noqa: E402


class TritonPythonModel:
    """The benchmark MLP behind Triton's python backend."""

    def initialize(self, args: dict[str, str]) -> None:
        self.model = MLP()

    def execute(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
        out = self.model(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
        responses, row = [], 0
        for a in arrays:
            part = out[row : row + a.shape[0]]
            row += a.shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT_NAME, part)]))
        return responses
