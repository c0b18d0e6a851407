"""The ceiling: the MLP alone, in-process, rows/s at each batch size.

Run as a script pinned to the server core with one BLAS thread (run.py does that); prints
JSON ``{"numpy": version, "rows_per_s": {batch: rows_per_s}}``. run.py runs it with each
target's interpreter, since each numpy brings its own OpenBLAS. Each batch size is warmed up, then timed for ``seconds``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from mlp_model import MLP, sample_input  # noqa: E402

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def rows_per_second(model: MLP, batch: int, seconds: float) -> float:
    """Back-to-back forward passes for ``seconds``; rows per second."""
    x = sample_input(batch)
    for _ in range(3):
        model(x)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        model(x)
        calls += 1
    return calls * batch / elapsed


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    model = MLP()
    rates = {b: rows_per_second(model, b, seconds) for b in BATCHES}
    print(json.dumps({"numpy": np.__version__, "rows_per_s": rates}))


if __name__ == "__main__":
    main()
