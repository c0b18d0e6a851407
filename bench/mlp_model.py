"""The benchmark's numpy MLP, standalone (numpy only) so every peer can import a copy.

FP32 [n, 512] -> 2048 ReLU -> 2048 ReLU -> 16. Weights are drawn exactly as in
examples/models/mlp/1/model.py (``default_rng(seed)``, one ``standard_normal`` per layer in
order, scaled by 1/sqrt(fan_in), cast to float32; zero biases), so every target computes
the same function.
"""

from __future__ import annotations

import numpy as np

SIZES = (512, 2048, 2048, 16)
INPUT_NAME = "INPUT"
OUTPUT_NAME = "OUTPUT"
MODEL_NAME = "mlp"

Layers = list[tuple[np.ndarray, np.ndarray]]


def make_layers(seed: int = 0) -> Layers:
    """The weights and biases, layer by layer."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
            np.zeros(n_out, dtype=np.float32),
        )
        for n_in, n_out in zip(SIZES, SIZES[1:])
    ]


def forward(layers: Layers, x: np.ndarray) -> np.ndarray:
    """Run the MLP on a float32 [n, 512] batch; returns float32 [n, 16]."""
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            np.maximum(x, 0, out=x)
    return x


class MLP:
    """The model as an object: ``MLP()(x)``."""

    def __init__(self, seed: int = 0) -> None:
        self.layers = make_layers(seed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return forward(self.layers, x)


def sample_input(rows: int = 1, seed: int = 1234) -> np.ndarray:
    """A fixed float32 [rows, 512] request payload."""
    return np.random.default_rng(seed).standard_normal((rows, SIZES[0])).astype(np.float32)
