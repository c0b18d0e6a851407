"""DriftDetector: is recent traffic still distributed like the reference data?

The step keeps a sliding window of the last ``window`` rows it saw and, per feature, runs a
two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) of the window against the
reference. Drift is detected when the smallest p-value is under ``p_value_threshold``.
Tests run once the window holds ``MIN_ROWS`` rows (or the whole window, if smaller), then
after every tenth of a window of new rows, and when statistics are read while new rows are
untested, so their cost does not grow with traffic. A test is not cheap (~70 ms for a 500 x 16
window against 50k reference rows), so none runs on the event loop: the step is ``blocking``
(applied in a worker thread, under a lock), and a statistics read from the loop starts the
pending test in a background thread and returns the last results. The p-values show in the node's statistics and as the gauge
``servegraph_drift_p_value{node, feature}``. The step changes no tensor.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from servegraph.runtime.graph.batch import TensorBatch, feature_names, feature_rows, selected
from servegraph.runtime.graph.metrics import GraphMetrics
from servegraph.runtime.protocol.errors import InvalidInput

MIN_ROWS = 30
"""Fewest rows in the window before a test means anything."""


class DriftDetector:
    kind = "DriftDetector"
    blocking = True

    def __init__(
        self,
        label: str,
        node: str,
        tensors: Sequence[str],
        reference: np.ndarray,
        window: int,
        p_value_threshold: float,
        metrics: GraphMetrics,
    ) -> None:
        # Imported here, not at the top: scipy.stats takes half a second to import, and only
        # a node with a DriftDetector needs it.
        from scipy.stats import ks_2samp

        self._ks_2samp = ks_2samp
        self.label = label
        self.node = node
        self.tensors = list(tensors)
        self.reference = reference
        self.window = window
        self.threshold = p_value_threshold
        self.metrics = metrics
        self.min_rows = min(MIN_ROWS, window)
        self.test_every = max(1, window // 10)
        self._buffer = np.empty((window, reference.shape[1]))
        self._count = 0
        self._next = 0
        self.rows_seen = 0
        self._since_test = 0
        self.features: list[str] = [f"feature[{i}]" for i in range(reference.shape[1])]
        self._named = False
        self.p_values: np.ndarray | None = None
        self.tests = 0
        self._lock = threading.Lock()
        self._refreshing = False

    def apply(self, batch: TensorBatch) -> None:
        with self._lock:
            self._apply(batch)

    def _apply(self, batch: TensorBatch) -> None:
        names = selected(batch, self.tensors, self.label)
        rows = feature_rows(batch, names, self.label)
        width = self._buffer.shape[1]
        if rows.shape[1] != width:
            raise InvalidInput(
                f"{self.label}: tensors {names} have {rows.shape[1]} features per row, the reference has {width}"
            )
        if not self._named:
            self.features, self._named = feature_names(batch, names), True
        self._append(rows)
        self.rows_seen += rows.shape[0]
        self._since_test += rows.shape[0]
        if self._count >= self.min_rows and self._since_test >= self.test_every:
            self._test()

    def _append(self, rows: np.ndarray) -> None:
        rows = rows[-self.window :]
        n = rows.shape[0]
        end = self._next + n
        if end <= self.window:
            self._buffer[self._next : end] = rows
        else:
            split = self.window - self._next
            self._buffer[self._next :] = rows[:split]
            self._buffer[: n - split] = rows[split:]
        self._next = end % self.window
        self._count = min(self.window, self._count + n)

    def test(self) -> None:
        with self._lock:
            self._test()

    def _test(self) -> None:
        """KS test of the window (row order does not matter to it) against the reference."""
        result = self._ks_2samp(self._buffer[: self._count], self.reference, axis=0)
        self.p_values = np.atleast_1d(np.asarray(result.pvalue, dtype=np.float64))
        self._since_test = 0
        self.tests += 1
        for feature, p in zip(self.features, self.p_values):
            self.metrics.drift_p_value.labels(self.node, feature).set(float(p))
        self.metrics.drift_detected.labels(self.node).set(1.0 if self.drift_detected else 0.0)

    @property
    def drift_detected(self) -> bool:
        return self.p_values is not None and float(self.p_values.min()) < self.threshold

    def _stale(self) -> bool:
        return bool(self._since_test) and self._count >= self.min_rows

    def _refresh(self) -> None:
        try:
            with self._lock:
                if self._stale():
                    self._test()
        finally:
            self._refreshing = False

    def stats(self) -> dict[str, Any]:
        if self._stale():
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # no event loop to block: test here
                self._refresh()
            else:
                if not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, name=f"drift-{self.node}", daemon=True).start()
        p_values = None if self.p_values is None else dict(zip(self.features, map(float, self.p_values)))
        return {
            "kind": self.kind,
            "step": self.label,
            "window": self.window,
            "rows_in_window": self._count,
            "rows_seen": self.rows_seen,
            "tests": self.tests,
            "p_values": p_values,
            "min_p_value": None if self.p_values is None else float(self.p_values.min()),
            "p_value_threshold": self.threshold,
            "drift_detected": self.drift_detected,
        }
